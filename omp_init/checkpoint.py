"""Read a checkpoint's two embedding tensors; write a new checkpoint around new ones.

This module owns where the input embedding and the lm_head live in a safetensors checkpoint
(single file or sharded), reading only those two tensors, and writing the output: every other
tensor streamed unchanged shard by shard, then ``config.json``, ``generation_config.json``, the new
tokenizer and report files, all into a temp directory that is renamed into place at the end.
Resolving what a ``--base``/``--donor`` spec is belongs to ``sources.py``; computing the new
rows to ``omp.py``/``baselines.py``; the report's content to ``report.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from .errors import (
    ConfigError,
    OutputExistsError,
    OutputSpaceError,
    SourceError,
    disk_filled_error,
    gib,
    is_disk_full,
)
from .saved_tokenizer import pin_tokenizer_class

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"

# The base's tokenizer does not apply to the output; the new tokenizer writes its own files.
_TOKENIZER_FILES = {
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
}
# Weights (ours are written from the shards), and the GGUF conversion's provenance note.
_NOT_COPIED_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".gguf",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".onnx",
    ".tiktoken",
)
_NOT_COPIED = _TOKENIZER_FILES | {"config.json", "generation_config.json", "omp_init_gguf.json"}
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class EmbeddingLayout:
    """Where a checkpoint keeps its input embedding and lm_head.

    Attributes:
        embed_in_name: tensor name of the input embedding in the files.
        lm_head_name: tensor name of the lm_head in the files, or None when the files have none.
        is_tied: the lm_head is the input embedding (no lm_head tensor, or
            ``tie_word_embeddings``); a tied checkpoint is written without an lm_head tensor.
        weight_files: safetensors file names in order (one, or the shards of the index).
        embed_in_file: file holding the input embedding.
        lm_head_file: file holding the lm_head, or None.
        vocab_rows: rows of the input embedding as stored (may exceed ``len(tokenizer)``).
        hidden_size: columns of the input embedding.
        dtype: dtype of the stored input embedding.
    """

    embed_in_name: str
    lm_head_name: str | None
    is_tied: bool
    weight_files: tuple[str, ...]
    embed_in_file: str
    lm_head_file: str | None
    vocab_rows: int
    hidden_size: int
    dtype: torch.dtype

    @property
    def is_sharded(self) -> bool:
        return len(self.weight_files) > 1


def list_weight_files(model_dir: str | Path) -> list[str]:
    """Safetensors files of a checkpoint: the index's shards in order, or ``model.safetensors``.

    Returns ``[]`` when there are none (e.g. only pickled weights).
    """
    model_dir = Path(model_dir)
    index = model_dir / WEIGHTS_INDEX_NAME
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return [WEIGHTS_NAME] if (model_dir / WEIGHTS_NAME).is_file() else []


def locate_embeddings(
    model_dir: str | Path, config: Any, *, role: str = "base", trust_remote_code: bool = False
) -> EmbeddingLayout:
    """Find the input embedding and lm_head tensors without reading any tensor data.

    The model is built on the meta device to ask it for ``get_input_embeddings()`` /
    ``get_output_embeddings()``; their parameter names are matched against the names in the
    files, allowing for a missing or extra prefix (``embed_tokens.weight`` vs
    ``model.embed_tokens.weight``).

    Args:
        model_dir: directory with ``config.json`` and safetensors.
        config: its ``PretrainedConfig``.
        role: flag name without dashes, for error messages.
        trust_remote_code: needed to build models that ship their own code.

    Raises:
        SourceError: no safetensors, or no input embedding tensor in them.
    """
    model_dir = Path(model_dir)
    flag = f"--{role}"
    weight_files = list_weight_files(model_dir)
    if not weight_files:
        raise SourceError(
            f"{flag} {str(model_dir)!r} has no safetensors weights; {flag} must be a full model checkpoint."
        )
    tensor_files = _tensor_files(model_dir, weight_files)  # tensor name -> file name
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    module_names = {
        id(module): name for name, module in model.named_modules(remove_duplicate=False)
    }
    embed_param = module_names[id(model.get_input_embeddings())] + ".weight"
    output = model.get_output_embeddings()
    lm_head_param = module_names[id(output)] + ".weight" if output is not None else None
    embed_in_name = _match_tensor_name(embed_param, tensor_files)
    if embed_in_name is None:
        raise SourceError(
            f"{flag} {str(model_dir)!r} has no input embedding tensor (expected {embed_param!r}); "
            f"{flag} must be a full model checkpoint."
        )
    lm_head_name = _match_tensor_name(lm_head_param, tensor_files) if lm_head_param else None
    if lm_head_name == embed_in_name:
        lm_head_name = None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    is_tied = lm_head_name is None or bool(getattr(text_config, "tie_word_embeddings", False))
    embed_in_file = tensor_files[embed_in_name]
    with safe_open(model_dir / embed_in_file, framework="pt") as f:
        tensor_slice = f.get_slice(embed_in_name)
        rows, cols = tensor_slice.get_shape()
        dtype = _SAFETENSORS_DTYPES.get(tensor_slice.get_dtype(), torch.float32)
    return EmbeddingLayout(
        embed_in_name=embed_in_name,
        lm_head_name=lm_head_name,
        is_tied=is_tied,
        weight_files=tuple(weight_files),
        embed_in_file=embed_in_file,
        lm_head_file=tensor_files[lm_head_name] if lm_head_name else None,
        vocab_rows=rows,
        hidden_size=cols,
        dtype=dtype,
    )


def read_embeddings(
    model_dir: str | Path, layout: EmbeddingLayout
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read only the two embedding tensors.

    Returns:
        ``embed_in``: [vocab_rows, hidden_size] in the stored dtype, and ``lm_head``: the same
        shape, or None when the checkpoint is tied.
    """
    model_dir = Path(model_dir)
    with safe_open(model_dir / layout.embed_in_file, framework="pt") as f:
        embed_in = f.get_tensor(layout.embed_in_name)
    lm_head = None
    if not layout.is_tied:
        with safe_open(model_dir / layout.lm_head_file, framework="pt") as f:
            lm_head = f.get_tensor(layout.lm_head_name)
    return embed_in, lm_head


def check_output_path(out: str | Path, overwrite: bool) -> Path:
    """Cheap up-front check that ``--output`` can be written; call it before any heavy work.

    Raises:
        OutputExistsError: ``out`` exists and ``overwrite`` is False, or it is a file.
        ConfigError: the nearest existing parent is not writable.
    """
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise OutputExistsError(
                f"--output {out} already exists; pass --overwrite or choose another directory."
            )
        if not out.is_dir():
            raise OutputExistsError(
                f"--output {out} is a file, not a directory; remove it or choose another directory."
            )
    parent = _nearest_existing_parent(out)
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"--output {out}: {parent} is not writable; choose another directory.")
    return out


# Files written beside the weights (tokenizer, config, report) and filesystem slack.
_OUTPUT_SLACK_BYTES = 64 * 2**20


def estimate_output_bytes(base_dir: str | Path, layout: EmbeddingLayout, n_rows: int, dtype: torch.dtype) -> int:
    """Bytes :func:`write_checkpoint` will write: the base's weight files with the embedding
    matrices resized to ``n_rows`` rows of ``dtype`` (a tied base's redundant lm_head dropped),
    plus slack for the tokenizer and JSON files.

    Example: SmolLM2-135M (fp32 files, 538 MB, tied, 49,152 rows of 576) with 151,936 rows
    -> about 538 + 237 + 64 MiB.
    """
    base_dir = Path(base_dir)
    total = sum((base_dir / name).stat().st_size for name in layout.weight_files)
    old_row = layout.hidden_size * layout.dtype.itemsize
    new_matrix = n_rows * layout.hidden_size * dtype.itemsize
    total += new_matrix - layout.vocab_rows * old_row
    if layout.lm_head_name:
        total -= layout.vocab_rows * old_row  # rewritten below (untied) or dropped (tied)
        if not layout.is_tied:
            total += new_matrix
    return max(total, 0) + _OUTPUT_SLACK_BYTES


def check_free_space(out: str | Path, needed_bytes: int) -> None:
    """Fail before the OMP work, not after it, when ``out``'s disk cannot take the checkpoint.

    Raises:
        OutputSpaceError: the nearest existing parent of ``out`` has less than ``needed_bytes`` free.
    """
    out = Path(out)
    parent = _nearest_existing_parent(out)
    free = shutil.disk_usage(parent).free
    if free < needed_bytes:
        raise OutputSpaceError(
            f"--output {out}: the new checkpoint needs about {gib(needed_bytes)} and {parent} has "
            f"{gib(free)} free; free some space or choose an --output on another disk."
        )


def _nearest_existing_parent(out: Path) -> Path:
    """The directory ``out`` would be created in, or its nearest ancestor that exists."""
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    return parent


def write_checkpoint(
    base_dir: str | Path,
    out_dir: str | Path,
    *,
    layout: EmbeddingLayout,
    embed_in: torch.Tensor,
    lm_head: torch.Tensor | None,
    config_updates: dict[str, Any],
    tokenizer: Any,
    extra_json: dict[str, dict],
    overwrite: bool,
    generation_config_updates: dict[str, Any] | None = None,
    report_name: str | None = None,
    before_json: Callable[[], None] | None = None,
) -> Path:
    """Write the base checkpoint with new embeddings, new tokenizer and extra JSON files.

    Everything goes into ``.{name}.tmp-{pid}`` next to ``out_dir`` and is renamed into place at
    the end, so a failure leaves no ``out_dir`` (with ``overwrite``, the old one stays) and no
    temp directory. Shards are streamed one at a time: peak memory is about the largest shard
    plus the embedding matrices.

    Args:
        base_dir: the base checkpoint (``config.json`` + safetensors).
        out_dir: directory to create.
        layout: :func:`locate_embeddings` of ``base_dir``.
        embed_in: [n_new, hidden_size], written as given (dtype kept).
        lm_head: [n_new, hidden_size] for an untied base; None for a tied one.
        config_updates: keys to set in ``config.json`` (``vocab_size`` defaults to ``n_new``;
            ``bos_token_id``/``eos_token_id``/``pad_token_id`` also go to the generation config).
        tokenizer: the new fast tokenizer; ``save_pretrained`` writes its files.
        extra_json: file name -> dict, written as pretty JSON (e.g. ``omp_init_report.json``).
        overwrite: replace an existing ``out_dir``.
        generation_config_updates: extra keys for ``generation_config.json``.
        report_name: the ``extra_json`` entry (updated in place) that also gets
            ``saved_tokenizer``: whether ``AutoTokenizer`` reloads the tokenizer as saved, and
            whether its class had to be pinned (``saved_tokenizer.py``).
        before_json: called after the weights, config and tokenizer are written and before
            the ``extra_json`` files, so it can still update them (the transplant stamps its
            timings there, the write included).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        OutputExistsError: ``out_dir`` exists and ``overwrite`` is False.
        ConfigError: ``out_dir`` is, or contains, ``base_dir``.
        OutputSpaceError: the disk filled up (the partial files are removed first).
    """
    base_dir, out_dir = Path(base_dir), check_output_path(out_dir, overwrite)
    if out_dir.resolve() == base_dir.resolve() or out_dir.resolve() in base_dir.resolve().parents:
        raise ConfigError(
            f"--output {out_dir} is or contains the base model directory; choose another directory."
        )
    embed_in, lm_head = _checked_tensors(layout, embed_in, lm_head)
    config_updates = {"vocab_size": embed_in.shape[0], **config_updates}
    if config_updates["vocab_size"] != embed_in.shape[0]:
        raise ValueError(
            f"config_updates vocab_size {config_updates['vocab_size']} != embed_in rows {embed_in.shape[0]}"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_weights(base_dir, tmp, layout, embed_in, lm_head)
        config = _write_config(base_dir, tmp, layout, config_updates)
        _write_generation_config(
            base_dir, tmp, config, config_updates, generation_config_updates or {}
        )
        tokenizer.save_pretrained(tmp)
        tokenizer_check = pin_tokenizer_class(tmp, tokenizer)
        if report_name is not None:
            extra_json[report_name]["saved_tokenizer"] = tokenizer_check  # the caller's dict too
        _copy_other_files(base_dir, tmp, skip=set(extra_json))
        if before_json is not None:
            before_json()
        for name, payload in extra_json.items():
            if Path(name).name != name:
                raise ValueError(f"extra_json names must be plain file names, got {name!r}")
            (tmp / name).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        _move_into_place(tmp, out_dir, overwrite)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):
            raise disk_filled_error(
                f"--output {out_dir}", "writing the checkpoint", out_dir.absolute().parent,
                "free some space or choose an --output on another disk.",
            ) from exc
        raise
    logger.info("wrote %s", out_dir)
    return out_dir


def _tensor_files(model_dir: Path, weight_files: list[str]) -> dict[str, str]:
    """Tensor name -> file name, from the index or the single file's header."""
    index = model_dir / WEIGHTS_INDEX_NAME
    if index.is_file():
        return dict(json.loads(index.read_text())["weight_map"])
    with safe_open(model_dir / weight_files[0], framework="pt") as f:
        return dict.fromkeys(f.keys(), weight_files[0])


def _match_tensor_name(param_name: str, tensor_files: dict[str, str]) -> str | None:
    """Find ``param_name`` among the file's names, allowing a prefix on either side.

    Example: ``"model.embed_tokens.weight"`` matches a file key ``"embed_tokens.weight"``, and
    ``"lm_head.weight"`` matches ``"base.lm_head.weight"``.
    """
    if param_name in tensor_files:
        return param_name
    candidates = [
        k for k in tensor_files if k.endswith("." + param_name) or param_name.endswith("." + k)
    ]
    return min(candidates, key=len) if candidates else None


def _checked_tensors(
    layout: EmbeddingLayout, embed_in: torch.Tensor, lm_head: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if embed_in.dim() != 2 or embed_in.shape[1] != layout.hidden_size:
        raise ValueError(
            f"embed_in must be [n_new, {layout.hidden_size}], got {tuple(embed_in.shape)}"
        )
    if layout.is_tied:
        if lm_head is not None:
            raise ValueError("the base is tied: pass lm_head=None")
        return embed_in.detach().cpu().contiguous(), None
    if lm_head is None or lm_head.shape != embed_in.shape:
        raise ValueError(
            f"the base is untied: lm_head must be {tuple(embed_in.shape)}, got {lm_head if lm_head is None else tuple(lm_head.shape)}"
        )
    lm_head = lm_head.detach().cpu().contiguous()
    if lm_head.untyped_storage().data_ptr() == embed_in.untyped_storage().data_ptr():
        lm_head = lm_head.clone()  # safetensors refuses two names for one memory block
    return embed_in.detach().cpu().contiguous(), lm_head


def _write_weights(
    base_dir: Path,
    tmp: Path,
    layout: EmbeddingLayout,
    embed_in: torch.Tensor,
    lm_head: torch.Tensor | None,
) -> None:
    """Copy every shard, swapping in the two new tensors; keep shard names and the index."""
    replacements = {layout.embed_in_name: embed_in}
    if lm_head is not None:
        replacements[layout.lm_head_name] = lm_head
    # A tied base with a (redundant) lm_head tensor: drop it, it has the old vocabulary's rows.
    dropped = {layout.lm_head_name} if layout.is_tied and layout.lm_head_name else set()
    weight_map: dict[str, str] = {}
    total_size = 0
    for file_name in layout.weight_files:
        with safe_open(base_dir / file_name, framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {
                k: replacements.get(k) if k in replacements else f.get_tensor(k)
                for k in f.keys()
                if k not in dropped
            }
        if not tensors:
            continue  # the shard held only the dropped lm_head
        save_file(tensors, tmp / file_name, metadata={"format": "pt", **metadata})
        for name, tensor in tensors.items():
            weight_map[name] = file_name
            total_size += tensor.numel() * tensor.element_size()
        del tensors
    if (base_dir / WEIGHTS_INDEX_NAME).is_file():
        index = json.loads((base_dir / WEIGHTS_INDEX_NAME).read_text())
        index["metadata"] = {**index.get("metadata", {}), "total_size": total_size}
        index["weight_map"] = {k: v for k, v in index["weight_map"].items() if k in weight_map}
        (tmp / WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def _write_config(
    base_dir: Path, tmp: Path, layout: EmbeddingLayout, updates: dict[str, Any]
) -> dict[str, Any]:
    config = json.loads((base_dir / "config.json").read_text())
    config.update(updates)
    if layout.is_tied and config.get("tie_word_embeddings") is False:
        # The files have no lm_head: without tying, transformers would initialize one randomly.
        logger.warning("%s has no lm_head tensor; writing tie_word_embeddings=true", base_dir)
        config["tie_word_embeddings"] = True
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config


def _write_generation_config(
    base_dir: Path,
    tmp: Path,
    config: dict[str, Any],
    config_updates: dict[str, Any],
    updates: dict[str, Any],
) -> None:
    special_ids = ("bos_token_id", "eos_token_id", "pad_token_id")
    source = base_dir / "generation_config.json"
    if source.is_file():
        generation = json.loads(source.read_text())
        generation.update({k: config_updates[k] for k in special_ids if k in config_updates})
    else:
        generation = {k: config[k] for k in special_ids if config.get(k) is not None}
    generation.update(updates)
    (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def _copy_other_files(base_dir: Path, tmp: Path, skip: set[str]) -> None:
    """Copy top-level files that still apply (README, LICENSE, model code), not weights or tokenizer."""
    for item in sorted(base_dir.iterdir()):
        name = item.name
        if (
            not item.is_file()
            or name.startswith(".")
            or name in _NOT_COPIED
            or name in skip
            or name.endswith((".index.json", *_NOT_COPIED_SUFFIXES))
            or name.startswith("tokenization_")
            or (tmp / name).exists()
        ):
            continue
        shutil.copy2(item, tmp / name)


def _move_into_place(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename ``tmp`` to ``out_dir``; an old ``out_dir`` is moved aside first, deleted after."""
    if not (out_dir.exists() or out_dir.is_symlink()):
        os.rename(tmp, out_dir)
        return
    if not overwrite:  # created by someone else while we were writing
        raise OutputExistsError(
            f"--output {out_dir} already exists; pass --overwrite or choose another directory."
        )
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
