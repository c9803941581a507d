"""User-facing errors.

Every problem a user can cause (a wrong path, a bad flag value, an input the method cannot
handle) raises an :class:`OmpInitError` subclass whose message is one line: what is wrong,
with the value, then the fix, naming the flag or key. ``omp_init.cli`` prints such errors
without a traceback and exits with status 2; any other exception is a bug.
"""

import errno
import shutil
from pathlib import Path

import torch


class OmpInitError(Exception):
    """Base class of every error a user can cause and fix."""


class ConfigError(OmpInitError):
    """An option value is invalid on its face (k <= 0, unknown method, ...)."""


class SourceError(OmpInitError):
    """A model or tokenizer source cannot be used (missing, pickled, not a causal LM, ...)."""


class MissingDependencyError(OmpInitError):
    """An optional package is needed; the message gives the exact ``pip install`` command."""


class AlignmentError(OmpInitError):
    """The two vocabularies cannot be transplanted (no shared tokens, k too large, ...)."""


class OutputExistsError(OmpInitError):
    """The output directory exists and ``--overwrite`` was not given."""


class OutputSpaceError(OmpInitError):
    """The disk that would hold the output directory has too little free space."""


class ResumeMismatchError(OmpInitError):
    """Saved partial results were made with different inputs or options."""


class DistributedError(OmpInitError):
    """A rank failed or the process group is inconsistent; the message names the rank."""


class SolveMemoryError(OmpInitError):
    """The OMP solve ran out of device or host memory; the message names a smaller chunk."""


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT from Python, or from safetensors' Rust writer (which reports it as text).

    A full disk is the user's to fix, so writers turn it into :class:`OutputSpaceError`.
    """
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return type(exc).__name__ == "SafetensorError" and ("os error 28" in text or "No space left" in text)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's ``torch.OutOfMemoryError``, Python's ``MemoryError``, or the CPU allocator's
    ``RuntimeError`` ("DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text)


def gib(n_bytes: int) -> str:
    """``3.5e9`` -> ``"3.26 GiB"``: sizes in disk-space messages."""
    return f"{n_bytes / 2**30:.2f} GiB"


def disk_filled_error(subject: str, doing: str, directory: str | Path, fix: str) -> OutputSpaceError:
    """The one-line error for a disk that filled up mid-write, with what is free now.

    Call it after the partial files are removed, so the free space it reports is real.
    Example: ``disk_filled_error("--output out", "writing the checkpoint", "runs", "free some space")``.
    """
    free = shutil.disk_usage(directory).free
    return OutputSpaceError(
        f"{subject}: the disk filled up while {doing} ({gib(free)} free after removing the partial files); {fix}"
    )
