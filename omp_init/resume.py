"""Finished OMP chunks on disk, so a killed run restarted with the same arguments continues.

Rows to solve are cut into chunks on a grid that depends only on the problem (never on the
number of ranks), so a restart may even use another world size. Each chunk's result is saved
as one small ``.pt`` file named after its row range, under a directory keyed by the run's
fingerprint (:meth:`TransplantConfig.fingerprint` plus the identity of the inputs). Files are
written to a temporary name and renamed, so a chunk is either complete or absent.

Saved chunks of a run with other arguments are discarded with a log line naming both
fingerprints; the directory is removed once the checkpoint is written. When the disk fills up,
the store stops saving (with a warning) instead of failing the run: the chunks are only a
convenience for a restart, and raising on one rank would leave the others waiting.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from .errors import gib, is_disk_full

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
        self.saving = enabled

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
        """Keep one finished chunk; on a full disk, warn once and save no more (the run goes on)."""
        if not self.saving:
            return
        path = self._path(pass_name, start, stop)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        try:
            torch.save({name: t.detach().cpu() for name, t in tensors.items()}, tmp)
            os.replace(tmp, path)
        except (OSError, RuntimeError) as exc:
            if not (is_disk_full(exc) or _disk_nearly_full(self.root, tensors)):
                raise
            tmp.unlink(missing_ok=True)
            self.saving = False
            logger.warning(
                "the disk holding %s is full (%s free): finished chunks are no longer saved, so a "
                "restart would redo the rest; the run goes on, but the checkpoint may not fit: free "
                "some space (or pass --no-resume next time to keep no chunks)",
                self.root,
                gib(shutil.disk_usage(self.root).free),
            )

    @staticmethod
    def bytes_needed(n_rows: int, k: int, n_passes: int) -> int:
        """Disk the chunks of ``n_passes`` passes over ``n_rows`` tokens take, less file headers (for the
        free-space check): int64 indices and float32 coefficients per atom, two float32 norms."""
        return n_passes * n_rows * (k * (8 + 4) + 2 * 4)

    def remove(self) -> None:
        """Delete the store once the checkpoint it served is written."""
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)


def _disk_nearly_full(root: Path, tensors: dict[str, torch.Tensor]) -> bool:
    """torch.save's C++ writer reports a full disk as a bare RuntimeError ("unexpected pos ..."),
    so a failed save counts as disk-full when less than twice the chunk's size is free."""
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    return shutil.disk_usage(root).free < 2 * size + 2**20
