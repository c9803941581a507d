"""``OmpInitPlugin``: run the transplant inside ``axolotl preprocess``/``train``, then train from it.

Owns: which axolotl hooks run the transplant, the reuse decision (is ``omp_init_output`` a
checkpoint of the same inputs?), and the redirect of ``base_model``, ``base_model_config``,
``tokenizer_config`` and ``dataset_prepared_path`` to the transplanted checkpoint.

Hooks (axolotl 0.19.0; see README.md for the source lines they rely on):

- ``register(cfg)`` runs in ``load_cfg`` on every rank of every command, before validation and
  before axolotl reads ``base_model_config``. A checkpoint that is already current is adopted
  here, so ``axolotl evaluate``/``inference``/``merge-lora`` see it too. A ``.gguf`` base is
  transplanted here (axolotl cannot read a ``.gguf``'s config, which it does next).
- ``load_datasets(cfg, preprocess)`` is the first hook ``preprocess`` and ``train`` call after
  ``load_cfg``, before the tokenizer is loaded. It joins axolotl's process group (for DeepSpeed
  axolotl has started it already), every rank takes a shard of the OMP work, rank 0 writes. It
  returns ``None`` so axolotl goes on to tokenize the data with the new tokenizer.
- ``post_model_load(cfg, model)``: with ``omp_init_train_new_rows_only``, masks the gradients of
  the copied rows of the model loaded from the checkpoint (``omp_init/train_rows.py``).

Leaves to others: the ``omp_init_*`` keys (``args.py``) and the transplant itself (the core).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from axolotl.integrations.base import BasePlugin

import omp_init
from omp_init import OutputExistsError, TransplantConfig, transplant
from omp_init.train_rows import freeze_copied_rows

from .args import KEY_PREFIX, PLUGIN_NAME, plugin_listed, same_path, transplant_config_from_cfg

# axolotl shows INFO only from loggers named "axolotl.*" (axolotl/logging_config.py); other
# loggers start at WARNING. Our few lines (reuse / build / where) belong in its log.
logger = logging.getLogger("axolotl.integrations.omp_init")

REPORT_NAME = "omp_init_report.json"  # written by the core next to every checkpoint
REDIRECTED_KEYS = ("base_model", "base_model_config", "tokenizer_config")
_PREPARED_PREFIX = "omp_init-"


class OmpInitPlugin(BasePlugin):
    """Transplant ``omp_init_donor``'s tokenizer into the base model, then train from the result."""

    def get_input_args(self) -> str:
        return "omp_init.axolotl.args.OmpInitArgs"

    def register(self, cfg: Any) -> None:
        # axolotl's plugin manager is a process-wide singleton and `axolotl.cli.config`
        # calls register() on every plugin it ever loaded: act only for configs that list us.
        if not plugin_listed(cfg.get("plugins")):
            return
        config = transplant_config_from_cfg(cfg)  # clear ValueError before anything else runs
        # Pin the source now: base_model may be redirected to the output below.
        cfg[KEY_PREFIX + "base"] = config.base
        decision = decide(config)
        if decision.action == "reuse":
            logger.info(
                "omp_init: reusing %s (fingerprint %s)", config.output, decision.fingerprint
            )
            redirect(cfg, config.output, decision.fingerprint)
        elif config.base.endswith(".gguf"):
            # axolotl reads base_model_config right after register(); a .gguf has no config
            # it can read, so the checkpoint has to exist now. The core starts (and ends) its
            # own process group from the launcher's variables.
            logger.info(
                "omp_init: %s is a .gguf, so the transplant runs now, in register()", config.base
            )
            redirect(cfg, config.output, ensure_checkpoint(config, decision))
        elif not cfg.get("base_model_config") or same_path(cfg["base_model_config"], config.output):
            # Until load_datasets builds the checkpoint, let axolotl read the base's config
            # (same architecture; only the vocabulary size differs).
            cfg["base_model_config"] = config.base
            logger.info(
                "omp_init: %s will be built in load_datasets (axolotl preprocess/train)",
                config.output,
            )

    def load_datasets(self, cfg: Any, preprocess: bool = False) -> None:
        if not plugin_listed(cfg.get("plugins")):
            return None
        config = transplant_config_from_cfg(cfg)
        _init_axolotl_distributed()
        redirect(cfg, config.output, ensure_checkpoint(config))
        return None  # axolotl loads and tokenizes the datasets itself, now with the new tokenizer

    def post_model_load(self, cfg: Any, model: Any) -> None:
        # omp_init_train_new_rows_only: mask the copied rows' gradients (omp_init/train_rows.py).
        # Only for the model loaded from our checkpoint (a KD teacher goes through here too).
        if not plugin_listed(cfg.get("plugins")) or not cfg.get(KEY_PREFIX + "train_new_rows_only"):
            return
        output = transplant_config_from_cfg(cfg).output
        loaded_from = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", "")
        if not loaded_from or not same_path(str(loaded_from), output):
            return
        if cfg.get("weight_decay"):
            logger.warning(
                "omp_init: weight_decay %s still shrinks the copied rows; set weight_decay: 0 "
                "to keep them the base model's exactly", cfg.get("weight_decay"),
            )  # fmt: skip
        freeze_copied_rows(model, output)
        logger.info("omp_init: training only the rows the transplant built (%s)", output)


@dataclasses.dataclass(frozen=True)
class Decision:
    """What to do with ``omp_init_output``: ``build`` (absent), ``rebuild`` (stale) or ``reuse``."""

    action: str
    fingerprint: str | None = None
    reason: str = ""


def decide(config: TransplantConfig) -> Decision:
    """Compare ``omp_init_output`` with the inputs, reading only its report (no weights).

    Raises:
        OutputExistsError: the directory exists, was not made by omp_init, and
            ``omp_init_overwrite`` is not set.
    """
    output = Path(config.output)
    if not output.exists():
        return Decision("build", reason="it does not exist")
    report = read_report(output)
    if report is None:
        if config.overwrite:
            return Decision("rebuild", reason="omp_init_overwrite is set")
        raise OutputExistsError(
            f"{KEY_PREFIX}output {config.output} exists but has no {REPORT_NAME}, so omp_init did not make it; "
            f"choose another {KEY_PREFIX}output or set {KEY_PREFIX}overwrite: true to replace it."
        )
    stored = report.get("fingerprint")
    expected = expected_fingerprint(config, report)
    if stored == expected:
        return Decision("reuse", fingerprint=stored)
    return Decision("rebuild", reason=f"its inputs changed (fingerprint {stored} -> {expected})")


def expected_fingerprint(config: TransplantConfig, report: dict[str, Any]) -> str:
    """Fingerprint a transplant of ``config`` would get, without loading any weights.

    The core's ``omp_init.expected_fingerprint(config)`` re-identifies the input files, so an
    edited donor at the same path rebuilds. A hub id can't be identified without downloading
    it; then the input identities stored in the report are reused: every option change is
    caught, a new revision on the hub is not.
    """
    expected = omp_init.expected_fingerprint(config)
    if expected is not None:
        return expected
    inputs = report.get("inputs") or {}
    identity = {
        "base": (inputs.get("base") or {}).get("identity"),
        "donor": (inputs.get("donor") or {}).get("identity"),
        "tokenizer": inputs.get("tokenizer"),
    }
    return config.fingerprint(identity)


def read_report(output: Path) -> dict[str, Any] | None:
    path = Path(output) / REPORT_NAME
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def ensure_checkpoint(config: TransplantConfig, decision: Decision | None = None) -> str:
    """Make ``omp_init_output`` current on every rank; return its fingerprint.

    Rank 0 decides (so all ranks agree, even while a file changes) and the decision is
    broadcast when a process group is live; then every rank joins the transplant, which
    shards the OMP work, writes on rank 0 and returns once the checkpoint is complete.
    """
    decision = _agree(config, decision)
    if decision.action != "reuse":
        logger.info("omp_init: building %s (%s)", config.output, decision.reason)
        overwrite = config.overwrite or decision.action == "rebuild"
        result = transplant(dataclasses.replace(config, overwrite=overwrite))
        # The core returns the report on the rank that wrote (rank 0) and None elsewhere.
        done = "wrote it" if result.report is not None else "solved its shard; rank 0 wrote it"
        logger.info("omp_init: rank %s of %s %s", _rank(), _world_size(), done)
    report = read_report(Path(config.output))
    if report is None:  # a rank on another node without a shared filesystem
        raise OutputExistsError(
            f"[rank {_rank()}] {KEY_PREFIX}output {config.output} has no {REPORT_NAME} after the "
            f"transplant; put {KEY_PREFIX}output on a filesystem every node shares."
        )
    return report["fingerprint"]


def _agree(config: TransplantConfig, decision: Decision | None) -> Decision:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return decision or decide(config)
    # [decision or None, error message or None], filled on rank 0
    box: list[Any] = [None, None]
    if dist.get_rank() == 0:
        try:
            box[0] = dataclasses.asdict(decision or decide(config))
        except OutputExistsError as exc:  # every rank raises it, none waits at a barrier
            box[1] = str(exc)
    dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise OutputExistsError(box[1])
    return Decision(**box[0])


def redirect(cfg: Any, output: str, fingerprint: str) -> None:
    """Point axolotl at the transplanted checkpoint.

    ``base_model``/``base_model_config``: the model loads with the new vocabulary.
    ``tokenizer_config``: the data is tokenized with the new tokenizer.
    ``dataset_prepared_path``: gets an ``omp_init-<fingerprint>`` subfolder, because axolotl
    keys prepared data by the tokenizer's *path*, which stays the same when a changed donor
    rebuilds the checkpoint in place.
    """
    for key in REDIRECTED_KEYS:
        cfg[key] = output
    from axolotl.common.const import DEFAULT_DATASET_PREPARED_PATH

    prepared = Path(cfg.get("dataset_prepared_path") or DEFAULT_DATASET_PREPARED_PATH)
    if prepared.name.startswith(_PREPARED_PREFIX):  # keyed earlier (register), maybe stale
        prepared = prepared.parent
    cfg["dataset_prepared_path"] = str(prepared / f"{_PREPARED_PREFIX}{fingerprint}")


def _rank() -> int:
    import torch.distributed as dist

    return (
        dist.get_rank()
        if dist.is_available() and dist.is_initialized()
        else int(os.environ.get("RANK", "0"))
    )


def _world_size() -> int:
    import torch.distributed as dist

    return (
        dist.get_world_size()
        if dist.is_available() and dist.is_initialized()
        else int(os.environ.get("WORLD_SIZE", "1"))
    )


def _init_axolotl_distributed() -> None:
    """Start (or join) the process group the way axolotl does, so DeepSpeed keeps working.

    axolotl starts it through accelerate's ``PartialState``; for DeepSpeed it has done so
    already in ``load_cfg`` and this is a no-op. A single process gets no group.
    """
    from axolotl.utils.distributed import init_distributed_state

    init_distributed_state()


__all__ = ["OmpInitPlugin", "PLUGIN_NAME", "decide", "ensure_checkpoint", "redirect"]
