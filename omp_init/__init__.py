"""omp_init: transplant a new tokenizer into a pretrained causal LM with Orthogonal Matching Pursuit.

Shared tokens keep the base model's rows; each new token is reconstructed, in the donor model's
embedding space, as a sparse combination of k shared tokens (OMP), and the same coefficients are
applied to those tokens' rows in the base model.

Public API (what integrations may use): :func:`transplant`, :class:`TransplantConfig`,
:func:`freeze_copied_rows` and the errors.
"""

from .config import TransplantConfig
from .errors import (
    AlignmentError,
    ConfigError,
    DistributedError,
    MissingDependencyError,
    OmpInitError,
    OutputExistsError,
    OutputSpaceError,
    ResumeMismatchError,
    SourceError,
)

__version__ = "0.1.0"


def transplant(config: TransplantConfig | None = None, **kwargs):
    """Transplant the donor's tokenizer into the base model; see :func:`omp_init.transplant.transplant`.

    Imported lazily so that ``import omp_init`` stays cheap (no torch/transformers import).
    """
    from .transplant import transplant as _transplant

    return _transplant(config, **kwargs)


def expected_fingerprint(config: TransplantConfig) -> str | None:
    """Fingerprint a transplant of ``config`` would store, computed without loading anything.

    See :func:`omp_init.transplant.expected_fingerprint`.
    """
    from .transplant import expected_fingerprint as _expected

    return _expected(config)


def freeze_copied_rows(model, checkpoint_dir):
    """Train only the rows a transplant built; see :func:`omp_init.train_rows.freeze_copied_rows`."""
    from .train_rows import freeze_copied_rows as _freeze

    return _freeze(model, checkpoint_dir)


__all__ = [
    "transplant",
    "freeze_copied_rows",
    "expected_fingerprint",
    "TransplantConfig",
    "OmpInitError",
    "ConfigError",
    "SourceError",
    "MissingDependencyError",
    "AlignmentError",
    "OutputExistsError",
    "OutputSpaceError",
    "ResumeMismatchError",
    "DistributedError",
    "__version__",
]
