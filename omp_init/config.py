"""The one typed configuration of a transplant, its cheap checks and its fingerprint.

Each front end (``cli.py``, ``axolotl/args.py``, the ``transplant()`` keyword arguments) converts
its own input into :class:`TransplantConfig` in one function; nothing further in ever sees an
argparse ``Namespace`` or an axolotl ``cfg``. A field name is the CLI flag with underscores
(``--pad-to-multiple-of`` <-> ``pad_to_multiple_of``) and the axolotl key without its
``omp_init_`` prefix.

Checks here are the ones that need no file to be read (value ranges, known names). Checks on
data (paths, overlap, ``k`` against the shared vocabulary) live where the data is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal, get_args

from .errors import ConfigError

Method = Literal["omp+fvt", "omp", "zero", "mean", "random", "fvt"]
# Methods that run OMP (and can resume its chunks).
OMP_METHODS: tuple[str, ...] = ("omp+fvt", "omp")
# Without a donor model (the base stands in): no new token has a donor row, and full FVT rows
# measured lower bits-per-byte than omp+fvt's half-mean rows on all three pairs tried (docs/quality.md).
NO_DONOR_METHOD: Method = "fvt"
METHODS: tuple[str, ...] = get_args(Method)
ScoreDtype = Literal["auto", "bfloat16", "float32"]
SCORE_DTYPES: tuple[str, ...] = get_args(ScoreDtype)
DocumentStart = Literal["auto", "never"]
DOCUMENT_START_POLICIES: tuple[str, ...] = get_args(DocumentStart)
OutputDtype = Literal["auto", "float32", "bfloat16", "float16"]
OUTPUT_DTYPES: tuple[str, ...] = get_args(OutputDtype)

# Fields that change what is written. Everything else (where to write, how fast, on which
# device) must not change the result, so it stays out of the fingerprint used for resume/reuse.
_RESULT_FIELDS = (
    "base",
    "donor",
    "tokenizer",
    "k",
    "method",
    "special_map",
    "pad_to_multiple_of",
    "vocab_size",
    "score_dtype",
    "seed",
    "document_start",
    "dtype",
    "center",
    "norm_cap",
)


@dataclass(frozen=True)
class TransplantConfig:
    """Everything a transplant needs to know; defaults are what a user gets without flags.

    Attributes:
        base: model whose weights are kept (HF directory, ``.gguf`` file or hub id).
        donor: model that supplies the new tokenizer and the embedding space OMP runs in.
        output: directory the new checkpoint is written to.
        tokenizer: take the new tokenizer from here instead of from ``donor``.
        k: number of shared tokens OMP combines per new token.
        method: ``omp+fvt`` (default: half the OMP row, half the FVT row, the latter
            position-weighted per matrix on an untied base; see ``baselines.omp_fvt_recipe``
            and ``baselines.FVT_POSITION_POWER``), ``omp`` (OMP alone, the paper's method) or one of
            the baselines ``zero``, ``mean``, ``random``, ``fvt``.
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N``.
        special_map: JSON file mapping new special tokens to base tokens (by content).
        pad_to_multiple_of: pad the new vocabulary's rows up to a multiple of this.
        vocab_size: pad the rows up to exactly this many (e.g. a draft matching its target).
        overwrite: replace ``output`` if it exists.
        allow_pickle: accept pickled ``.bin`` weights (they can run code when loaded).
        trust_remote_code: let transformers run model code shipped with a checkpoint.
        max_batch_tokens: new tokens solved per batch; ``None`` picks from free memory.
        score_dtype: precision OMP scores candidates in (the solve itself is always fp32+).
        seed: seed of the ``random`` baseline.
        document_start: ``auto`` makes the new tokenizer add a document-start token when the
            base tokenizer adds one and the new one does not; ``never`` leaves it as it is.
        dtype: dtype of the written embedding matrices; ``auto`` keeps the base's.
        cache_dir: where converted ``.gguf`` models and resume chunks are kept.
        resume: reuse finished chunks of an interrupted run with the same fingerprint.
        center: run OMP on rows minus the dictionary mean and rebuild base rows as the base
            dictionary mean plus the same combination (an affine combination); False is the
            paper's plain combination, kept for comparison.
        norm_cap: scale down OMP-built rows longer than the base matrix's 99.9th-percentile row
            norm (``baselines.ROW_NORM_CAP_QUANTILE``); False keeps the plain least-squares rows.
    """

    base: str
    donor: str
    output: str
    tokenizer: str | None = None
    k: int = 64
    method: Method = "omp+fvt"
    device: str = "auto"
    special_map: str | None = None
    pad_to_multiple_of: int | None = None
    vocab_size: int | None = None
    overwrite: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    max_batch_tokens: int | None = None
    score_dtype: ScoreDtype = "auto"
    seed: int = 0
    document_start: DocumentStart = "auto"
    dtype: OutputDtype = "auto"
    cache_dir: str | None = None
    resume: bool = True
    center: bool = True
    norm_cap: bool = True

    def __post_init__(self) -> None:
        problems = _find_problems(self)
        if problems:
            raise ConfigError("; ".join(problems) + ".")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> TransplantConfig:
        """Build a config from keyword arguments, naming every unknown key in one error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            shown = ", ".join(unknown[:10]) + (f" (+{len(unknown) - 10} more)" if len(unknown) > 10 else "")
            raise ConfigError(
                f"unknown option(s) {shown}; valid options are {', '.join(sorted(known))}."
            )
        missing = sorted(n for n in ("base", "donor", "output") if kwargs.get(n) in (None, ""))
        if missing:
            raise ConfigError(f"missing required option(s) {', '.join(missing)}; pass them as --{' / --'.join(missing)}.")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self, input_identity: dict[str, Any] | None = None) -> str:
        """Hash of everything that determines the output, for resume and reuse.

        Args:
            input_identity: identities of the resolved inputs (file sizes, mtimes, hashes) so
                that an edited checkpoint at the same path changes the fingerprint too.

        Returns:
            A 16-hex-digit string.
        """
        payload = {name: getattr(self, name) for name in _RESULT_FIELDS}
        payload["input_identity"] = input_identity or {}
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def fill_in_no_donor(values: dict[str, Any]) -> dict[str, Any]:
    """Options without a donor model, made explicit: the base stands in as the donor.

    With only ``--tokenizer``, no new token has a donor row, so OMP has nothing to solve and
    ``method`` defaults to :data:`NO_DONOR_METHOD` (an explicit method still wins): full FVT rows
    measured lower bits-per-byte than ``omp+fvt``'s half-mean rows there on all three pairs tried
    (docs/quality.md, "Tokens no donor has"). The CLI and the axolotl plugin both call this, so
    the rule lives in one place.

    Raises:
        ConfigError: neither ``donor`` nor ``tokenizer`` is given.
    """
    if values.get("donor"):
        return values
    if not values.get("tokenizer"):
        raise ConfigError(
            "--donor is missing: give --donor MODEL (the model whose tokenizer you want; its "
            "embeddings guide OMP), or, with no such model, --tokenizer NEW (new rows are built "
            "from the base's own pieces)."
        )
    return {**values, "donor": values.get("base"), "method": values.get("method") or NO_DONOR_METHOD}


def _find_problems(config: TransplantConfig) -> list[str]:
    """Collect every value problem, so the user fixes them all in one go."""
    problems = []
    for name in ("base", "donor", "output"):
        if not isinstance(getattr(config, name), str) or not getattr(config, name):
            problems.append(f"--{name} is required (got {getattr(config, name)!r})")
    if not isinstance(config.k, int) or isinstance(config.k, bool) or config.k <= 0:
        problems.append(f"--k must be a positive integer (got {config.k!r}); 64 is the default")
    if config.method not in METHODS:
        problems.append(f"--method {config.method!r} is unknown; choose one of {', '.join(METHODS)}")
    if config.score_dtype not in SCORE_DTYPES:
        problems.append(f"--score-dtype {config.score_dtype!r} is unknown; choose one of {', '.join(SCORE_DTYPES)}")
    if config.document_start not in DOCUMENT_START_POLICIES:
        problems.append(
            f"--document-start {config.document_start!r} is unknown; choose one of {', '.join(DOCUMENT_START_POLICIES)}"
        )
    if config.dtype not in OUTPUT_DTYPES:
        problems.append(f"--dtype {config.dtype!r} is unknown; choose one of {', '.join(OUTPUT_DTYPES)}")
    for name in ("pad_to_multiple_of", "vocab_size", "max_batch_tokens"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            flag = "--" + name.replace("_", "-")
            problems.append(f"{flag} must be a positive integer (got {value!r}); leave it unset for the default")
    device = config.device
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        problems.append(f"--device {device!r} is unknown; use auto, cpu, cuda or cuda:N")
    return problems
