"""The ``omp_init_*`` keys of an axolotl config: their schema, checks and the one conversion.

Owns: the pydantic model axolotl merges into its config schema (``OmpInitArgs``) and
:func:`transplant_config_from_cfg`, the only place an axolotl ``cfg`` becomes a
:class:`omp_init.TransplantConfig`. A key is ``omp_init_`` + the ``TransplantConfig`` field name
(``omp_init_pad_to_multiple_of`` <-> ``pad_to_multiple_of``). Value checks live in the core;
this module only renames them to the keys a recipe author wrote.

Leaves to others: when the transplant runs and where the config is redirected (``plugin.py``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field, model_validator

from omp_init import ConfigError, TransplantConfig
from omp_init.config import fill_in_no_donor

KEY_PREFIX = "omp_init_"
PLUGIN_NAME = "omp_init.axolotl.OmpInitPlugin"
TRANSPLANT_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TransplantConfig))
# Keys about training from the checkpoint, not about building it (not TransplantConfig fields).
TRAINING_FIELDS: tuple[str, ...] = ("train_new_rows_only",)
# Fields holding local paths (or hub ids, which never start with "~"): "~" is expanded.
_PATH_FIELDS = ("base", "donor", "output", "tokenizer", "special_map", "cache_dir")


def _key(description: str) -> Any:
    return Field(default=None, json_schema_extra={"description": description})


class OmpInitArgs(BaseModel):
    """``omp_init_*`` keys; unset keys take the :class:`TransplantConfig` default.

    A test checks that every ``TransplantConfig`` field has exactly one key here; the
    ``TRAINING_FIELDS`` keys are the plugin's own.
    """

    omp_init_donor: str | None = _key(
        "Model that supplies the new tokenizer and the embedding space OMP runs in (HF dir, .gguf or hub id). "
        "Required unless omp_init_tokenizer is set (then the base stands in and omp_init_method defaults to fvt)."
    )
    omp_init_output: str | None = _key(
        "Directory the transplanted checkpoint is written to; training then starts from it. Required."
    )
    omp_init_base: str | None = _key(
        "Model whose weights are kept (HF dir, .gguf or hub id). Default: base_model."
    )
    omp_init_tokenizer: str | None = _key(
        "Take the new tokenizer from here instead of from omp_init_donor."
    )
    omp_init_k: int | None = _key("Shared tokens OMP combines per new token (default 64).")
    omp_init_method: str | None = _key(
        "omp+fvt (default: half OMP, half FVT), omp (OMP alone), or a baseline for comparison: zero, mean, random, fvt."
    )
    omp_init_special_map: str | None = _key(
        'JSON file mapping new special tokens to base tokens or roles, e.g. {"<|im_end|>": "eos"}.'
    )
    omp_init_pad_to_multiple_of: int | None = _key(
        "Pad the embedding rows up to a multiple of this (e.g. 64 for tensor cores)."
    )
    omp_init_vocab_size: int | None = _key(
        "Pad the embedding rows to exactly this many (a draft model matching its target's vocab_size)."
    )
    omp_init_overwrite: bool | None = _key(
        "Replace omp_init_output even if it was not made by omp_init. A stale omp_init checkpoint is always rebuilt."
    )
    omp_init_device: str | None = _key("auto (this rank's GPU if any), cpu, cuda or cuda:N.")
    omp_init_allow_pickle: bool | None = _key(
        "Accept pickled .bin weights (they can run code when loaded)."
    )
    omp_init_trust_remote_code: bool | None = _key(
        "Let transformers run model code shipped with a checkpoint. Default: trust_remote_code."
    )
    omp_init_max_batch_tokens: int | None = _key(
        "New tokens solved per chunk (default: picked from the dictionary size)."
    )
    omp_init_score_dtype: str | None = _key(
        "Precision OMP scores candidates in: auto, bfloat16, float32."
    )
    omp_init_seed: int | None = _key("Seed of omp_init_method: random.")
    omp_init_document_start: str | None = _key(
        "auto: add a document-start token when the base tokenizer has one and the new one not; never."
    )
    omp_init_dtype: str | None = _key(
        "dtype of the written embeddings: auto (the base's), float32, bfloat16, float16."
    )
    omp_init_cache_dir: str | None = _key(
        "Where converted .gguf models and resume chunks are kept (default ~/.cache/omp_init)."
    )
    omp_init_resume: bool | None = _key(
        "Reuse finished chunks of an interrupted transplant with the same inputs (default true)."
    )
    omp_init_center: bool | None = _key(
        "Solve OMP on rows minus the dictionary mean (default true); false for the paper's plain combination."
    )
    omp_init_norm_cap: bool | None = _key(
        "Scale rows built by omp+fvt / omp that are longer than the base's 99.9th-percentile row norm "
        "down to it (default true)."
    )
    omp_init_train_new_rows_only: bool | None = _key(
        "Train only the embedding (and lm_head) rows the transplant built: the copied rows' "
        "gradients are masked, so they stay the base model's. For an embeddings-only first stage; "
        "use weight_decay: 0 with it. Default false."
    )

    @model_validator(mode="after")
    def _check_omp_init_keys(self):
        # axolotl merges this model into its own config model, so `self` is the whole config;
        # the plugin manager is a singleton, so only check configs that list the plugin.
        if plugin_listed(getattr(self, "plugins", None)):
            transplant_config_from_cfg(
                {name: getattr(self, name, None) for name in _cfg_keys_read()}
            )
        return self


def plugin_listed(plugins: Any) -> bool:
    """True when the axolotl ``plugins:`` list names this plugin."""
    return bool(plugins) and PLUGIN_NAME in list(plugins)


def _cfg_keys_read() -> tuple[str, ...]:
    return (
        *(KEY_PREFIX + name for name in TRANSPLANT_FIELDS),
        "base_model",
        "trust_remote_code",
        "plugins",
    )


def transplant_config_from_cfg(cfg: Mapping[str, Any]) -> TransplantConfig:
    """The plugin's one conversion: axolotl ``cfg`` (or plain YAML dict) -> :class:`TransplantConfig`.

    Unset keys keep the core's defaults, except ``omp_init_base`` (default ``base_model``) and
    ``omp_init_trust_remote_code`` (default ``trust_remote_code``): the transplant reads the
    same model axolotl would have trained.

    Args:
        cfg: mapping with ``omp_init_*`` keys, ``base_model`` and ``trust_remote_code``.

    Returns:
        The frozen config; nothing is loaded or written.

    Raises:
        ValueError: one message naming every offending ``omp_init_*`` key and the fix.
    """
    kwargs = {name: cfg.get(KEY_PREFIX + name) for name in TRANSPLANT_FIELDS}
    kwargs = {name: value for name, value in kwargs.items() if value is not None}
    kwargs.setdefault("base", cfg.get("base_model"))
    if cfg.get("trust_remote_code") is True:
        kwargs.setdefault("trust_remote_code", True)
    for name in _PATH_FIELDS:
        if isinstance(kwargs.get(name), str):
            kwargs[name] = os.path.expanduser(kwargs[name])
    problems = _required_problems(kwargs)
    if problems:
        raise ValueError("; ".join(problems) + ".")
    try:
        return TransplantConfig(**fill_in_no_donor(kwargs))
    except ConfigError as exc:
        raise ValueError(flags_to_keys(str(exc))) from None


def _required_problems(kwargs: dict[str, Any]) -> list[str]:
    """Missing required keys and an output that would overwrite its own input."""
    problems = []
    if not kwargs.get("donor") and not kwargs.get("tokenizer"):
        problems.append(
            f"{KEY_PREFIX}donor is required by {PLUGIN_NAME}; set it to the model whose tokenizer you "
            f"want (HF directory, .gguf file or hub id), or, with no such model, set {KEY_PREFIX}tokenizer "
            "(new rows are then built from the base's own pieces)"
        )
    if not kwargs.get("output"):
        problems.append(
            f"{KEY_PREFIX}output is required by {PLUGIN_NAME}; set it to a new directory for the "
            "transplanted checkpoint (and point base_model, base_model_config and tokenizer_config at it)"
        )
    if not kwargs.get("base"):
        problems.append(
            f"{KEY_PREFIX}base is unset and so is base_model; set {KEY_PREFIX}base to the model to transplant into"
        )
    elif kwargs.get("output") and same_path(kwargs["base"], kwargs["output"]):
        problems.append(
            f"the transplant would read and write {kwargs['output']!r}: base_model points at {KEY_PREFIX}output, so set "
            f"{KEY_PREFIX}base to the original model (e.g. {KEY_PREFIX}base: meta-llama/Llama-3.2-1B)"
        )
    return problems


def same_path(a: str, b: str) -> bool:
    return os.path.normpath(os.path.abspath(os.path.expanduser(a))) == os.path.normpath(
        os.path.abspath(os.path.expanduser(b))
    )


_FLAG = re.compile(r"--([a-z][a-z-]*)")


def flags_to_keys(message: str) -> str:
    """Rename the core's CLI flags to the plugin's keys in an error message.

    Example: ``"--k must be a positive integer (got 0)"`` -> ``"omp_init_k must be ... (got 0)"``.
    """

    def rename(match: re.Match) -> str:
        name = match.group(1).replace("-", "_")
        if name.startswith("no_") and name[3:] in TRANSPLANT_FIELDS:  # --no-resume, --no-center, --no-norm-cap
            return f"{KEY_PREFIX}{name[3:]}: false"
        return KEY_PREFIX + name if name in TRANSPLANT_FIELDS else match.group(0)

    return _FLAG.sub(rename, message)
