"""Finished OMP chunks on disk, so a killed run restarted with the same arguments continues.

Rows to solve are cut into chunks on a grid that depends only on the problem (never on the
number of ranks), so a restart may even use another world size. Each chunk's result is saved
as one small ``.pt`` file named after its row range, under a directory keyed by the run's
fingerprint (:meth:`TransplantConfig.fingerprint` plus the identity of the inputs). Files are
written to a temporary name and renamed, so a chunk is either complete or absent.

Saved chunks of a run with other arguments are discarded with a log line naming both
fingerprints; the directory is removed once the checkpoint is written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

_MANIFEST = "fingerprint.json"


class ChunkStore:
    """Per-run store of solved chunks: ``{pass_name}-{start:09d}-{stop:09d}.pt`` files.

    Args:
        root: the store directory (e.g. ``OUT.omp_init-partial``).
        fingerprint: hash of everything that determines the results.
        enabled: when False, nothing is read or written (``--no-resume``).
    """

    def __init__(self, root: str | Path, fingerprint: str, enabled: bool = True):
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.enabled = enabled

    def prepare(self) -> None:
        """Create the store, discarding one made with a different fingerprint (call on rank 0)."""
        if not self.enabled:
            return
        manifest = self.root / _MANIFEST
        if manifest.is_file():
            saved = json.loads(manifest.read_text()).get("fingerprint")
            if saved == self.fingerprint:
                n_done = len(list(self.root.glob("*.pt")))
                if n_done:
                    logger.info("resuming: %d finished chunk(s) found in %s", n_done, self.root)
                return
            logger.warning(
                "discarding saved chunks in %s: they were made with different inputs or options "
                "(fingerprint %s, this run %s)",
                self.root,
                saved,
                self.fingerprint,
            )
            shutil.rmtree(self.root)
        elif self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps({"fingerprint": self.fingerprint}))

    def _path(self, pass_name: str, start: int, stop: int) -> Path:
        return self.root / f"{pass_name}-{start:09d}-{stop:09d}.pt"

    def load(self, pass_name: str, start: int, stop: int) -> dict[str, torch.Tensor] | None:
        """The saved result of rows ``[start, stop)`` of ``pass_name``, or None."""
        if not self.enabled:
            return None
        path = self._path(pass_name, start, stop)
        if not path.is_file():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)

    def save(self, pass_name: str, start: int, stop: int, tensors: dict[str, torch.Tensor]) -> None:
        if not self.enabled:
            return
        path = self._path(pass_name, start, stop)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        torch.save({name: t.detach().cpu() for name, t in tensors.items()}, tmp)
        os.replace(tmp, path)

    def remove(self) -> None:
        """Delete the store once the checkpoint it served is written."""
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
