"""Train only the rows a transplant built: gradient masks on the copied embedding rows.

Why: after a transplant, the rows of the tokens both vocabularies share are the base model's own
and already right; the rows OMP built are approximations. The first training stage of the
recipes trains the embeddings alone, and with every row trainable the copied rows drift with
the training mix: in ``scripts/bench_recovery.py`` English bits-per-byte *rose* during that stage
(docs/quality.md, "Recovery"). Masking the copied rows' gradients keeps them bit-exact while
the built rows learn. Used by the axolotl plugin (``omp_init_train_new_rows_only``); works with
any PyTorch training loop on the transplanted model.

With Adam/AdamW a zero gradient row gets no update (both moments stay 0), but decoupled weight
decay still shrinks it: use ``weight_decay: 0`` for the stage (the plugin warns). The hooks
see whole parameters, so sharded parameters (DeepSpeed ZeRO-3, FSDP) are not supported.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError
from .report import ROWS_NAME

logger = logging.getLogger(__name__)


def copied_rows_mask(checkpoint_dir: str | Path) -> torch.Tensor:
    """[rows] bool, True for the rows the transplant copied from the base (``omp_init_rows.json``).

    Raises:
        ConfigError: the checkpoint has no rows file (written by omp-init before it existed,
            or not by omp-init).
    """
    path = Path(checkpoint_dir) / ROWS_NAME
    if not path.is_file():
        raise ConfigError(
            f"{path} is missing: training only the new rows needs the list of copied rows that "
            "omp-init writes next to the checkpoint since 2026-11-22; rebuild the checkpoint "
            "(delete it and run the transplant again)."
        )
    record = json.loads(path.read_text())
    mask = torch.zeros(int(record["rows"]), dtype=torch.bool)
    mask[torch.tensor(record["copied_ids"], dtype=torch.long)] = True
    return mask


def freeze_copied_rows(model: Any, checkpoint_dir: str | Path) -> list[Any]:
    """Zero the gradient of every copied row of the input embedding and of an untied lm_head.

    Args:
        model: a transformers model (or PEFT wrapper) loaded from ``checkpoint_dir``.
        checkpoint_dir: the transplant's output.

    Returns:
        The hook handles (``handle.remove()`` undoes the mask).

    Raises:
        ConfigError: no rows file, or the model's embedding has another row count.
    """
    is_copied = copied_rows_mask(checkpoint_dir)
    weights = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not weights[0]:
        weights.append(output.weight)
    handles = []
    for weight in weights:
        if weight.shape[0] != is_copied.shape[0]:
            raise ConfigError(
                f"the model's embedding has {weight.shape[0]} rows but {checkpoint_dir} lists "
                f"{is_copied.shape[0]}; load the model from that checkpoint."
            )
        keep = (~is_copied).to(device=weight.device, dtype=weight.dtype).unsqueeze(1)
        handles.append(weight.register_hook(lambda grad, keep=keep: grad * keep))
    logger.info(
        "training only the %d built rows of %d (%d copied rows masked, %s)",
        int((~is_copied).sum()), is_copied.numel(), int(is_copied.sum()),
        "tied" if len(weights) == 1 else "input embedding and lm_head",
    )  # fmt: skip
    return handles
