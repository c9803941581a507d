"""Bits-per-byte and tokens-per-byte of causal LMs over text files.

Bits per byte (the token NLL of a text in bits, summed, over the text's UTF-8 bytes) compares
models that use different tokenizers: every model scores the same bytes (the whole file, or its
first ``max_bytes`` bytes cut at a character boundary), each with its own tokenizer.

How a text is scored: the model's tokenizer encodes the whole text with no special tokens; the
token sequence is cut into windows; each window starts with the model's document-start tokens
(see :func:`_document_start_ids`), so that the first token of the text, and of every window, is
predicted the way the model predicts the start of a document. Every text token is scored exactly
once; with ``stride`` set, windows overlap and the overlap serves only as context.

This module owns scoring only: it loads local Hugging Face directories (conversion of
``.gguf`` or hub models is ``sources.py``'s job), never writes a checkpoint, and never writes a
report (``eval_report.py`` turns its result into ``eval.json``, ``eval.md`` and ``eval.png``).
"""

from __future__ import annotations

import logging
import math
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, SourceError

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}
ALL_TEXTS = "all texts"  # row of the byte-weighted totals over every text


def evaluate_models(
    models: Sequence[str | Path],
    texts: Sequence[str | Path],
    *,
    max_window_tokens: int = 1024,
    stride: int | None = None,
    batch_size: int = 4,
    dtype: str = "bfloat16",
    device: str = "cpu",
    max_bytes: int | None = None,
    progress: bool = True,
    baseline: str | Path | None = None,
) -> dict[str, Any]:
    """Score every text with every model; return a JSON-able result.

    Args:
        models: local Hugging Face model directories (config, weights and tokenizer).
        texts: UTF-8 text files; each is scored whole (or its first ``max_bytes`` bytes).
        max_window_tokens: length of one model input, document-start tokens and context included;
            lowered to the model's ``max_position_embeddings`` when that is smaller.
        stride: new tokens scored per window; the rest of the window is context from the previous
            window. ``None`` scores a full window each time (no overlap).
        batch_size: windows per forward pass; the logits of a batch take
            ``batch_size * max_window_tokens * vocab * 2`` bytes in bf16 (1.2 GiB for Qwen2.5).
        dtype: ``bfloat16``, ``float16`` or ``float32``, the weights' dtype; log-softmax runs in fp32.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        max_bytes: truncate every text to at most this many bytes, at a character boundary.
        progress: draw a tqdm bar (tokens scored) on stderr.
        baseline: a model (its path or label) to compare the others with; see
            :func:`compare_to_baseline`.

    Returns:
        ``{"settings", "versions", "texts": {text: {path, n_bytes}}, "models": {model: {path,
        document_start_ids, document_start_tokens, window_tokens, stride_tokens, vocab_size,
        elapsed_s, "texts": {text | "all texts": {bits_per_byte, tokens_per_byte, n_tokens,
        n_bytes, nll_bits}}}}, "baseline"}``, plus
        ``bpb_change_pct`` per model and text when ``baseline`` is given. Models are keyed by
        directory name (the full path when two share a name), texts by file name.

    Raises:
        ConfigError: a setting is out of range (names the flag).
        SourceError: a model or text cannot be read (names ``--model`` or ``--text``).
    """
    _check_settings(models, texts, max_window_tokens, stride, batch_size, dtype, max_bytes)
    resolved_device = _resolve_device(device)
    model_paths = dict(zip(_labels(models), (Path(m) for m in models), strict=True))
    if baseline is not None:
        _find_baseline(model_paths, baseline)
    text_items = _read_texts(texts, max_bytes)
    # Open every tokenizer and config first: a bad path or window fails before any weights load.
    plans = {
        label: _plan_model(path, max_window_tokens, stride) for label, path in model_paths.items()
    }
    result = {
        "settings": {
            "max_window_tokens": max_window_tokens,
            "stride": stride,
            "batch_size": batch_size,
            "dtype": dtype,
            "device": str(resolved_device),
            "max_bytes": max_bytes,
        },
        "versions": _versions(),
        "texts": {
            label: {"path": str(item[0]), "n_bytes": len(item[1].encode())}
            for label, item in text_items.items()
        },
        "models": {},
        "baseline": None,
    }
    for label, plan in plans.items():
        result["models"][label] = _evaluate_one(
            plan, text_items, batch_size, DTYPES[dtype], resolved_device, progress
        )
    if baseline is not None:
        compare_to_baseline(result, baseline)
    return result


def _check_settings(models, texts, max_window_tokens, stride, batch_size, dtype, max_bytes) -> None:
    """Collect every out-of-range setting into one ConfigError."""

    def is_positive_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    problems = []
    if not models:
        problems.append("no model given; pass at least one --model DIR")
    if not texts:
        problems.append("no text given; pass at least one --text FILE")
    if not is_positive_int(max_window_tokens) or max_window_tokens < 2:
        problems.append(
            f"--max-window-tokens must be an integer >= 2 (got {max_window_tokens!r}); 1024 is the default"
        )
    if stride is not None and not (is_positive_int(stride) and stride < max_window_tokens):
        problems.append(
            f"--stride must be a positive integer below --max-window-tokens (got {stride!r}); leave it unset for no overlap"
        )
    if not is_positive_int(batch_size):
        problems.append(
            f"--batch-size must be a positive integer (got {batch_size!r}); 4 is the default"
        )
    if dtype not in DTYPES:
        problems.append(f"--dtype {dtype!r} is unknown; choose one of {', '.join(DTYPES)}")
    if max_bytes is not None and not is_positive_int(max_bytes):
        problems.append(
            f"--max-bytes must be a positive integer (got {max_bytes!r}); leave it unset to score whole files"
        )
    if problems:
        raise ConfigError("; ".join(problems) + ".")


def _labels(paths: Sequence[str | Path]) -> list[str]:
    """Short, unique names: the last path component, or the whole path when two share it.

    Example: ``["runs/a/model", "runs/b/model", "x/base"]`` -> ``["runs/a/model", "runs/b/model", "base"]``.
    """
    names = [Path(p).name or str(p) for p in paths]
    return [
        name if names.count(name) == 1 else str(p) for name, p in zip(names, paths, strict=True)
    ]


def _read_texts(texts: Sequence[str | Path], max_bytes: int | None) -> dict[str, tuple[Path, str]]:
    """Read each file as exact UTF-8 (no newline translation) and truncate it to ``max_bytes``."""
    items = {}
    for label, path in zip(_labels(texts), (Path(t) for t in texts), strict=True):
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise SourceError(
                f"--text {path} does not exist; pass an existing UTF-8 text file."
            ) from None
        except (IsADirectoryError, PermissionError) as exc:
            raise SourceError(
                f"--text {path} cannot be read ({exc.strerror}); pass a readable UTF-8 text file."
            ) from None
        except UnicodeDecodeError as exc:
            raise SourceError(
                f"--text {path} is not valid UTF-8 (byte {exc.start}); convert it to UTF-8 first."
            ) from None
        text = _truncate_utf8(text, max_bytes)
        if not text:
            raise SourceError(f"--text {path} is empty; pass a file with some text.")
        items[label] = (path, text)
    return items


def _truncate_utf8(text: str, max_bytes: int | None) -> str:
    """The longest prefix of ``text`` whose UTF-8 form has at most ``max_bytes`` bytes.

    Example: ``_truncate_utf8("aé", 2) == "a"`` ("é" is 2 bytes, so it does not fit).
    """
    data = text.encode("utf-8")
    if max_bytes is None or len(data) <= max_bytes:
        return text
    cut = max_bytes
    while cut > 0 and (data[cut] & 0xC0) == 0x80:  # step back off a continuation byte
        cut -= 1
    return data[:cut].decode("utf-8")


def _find_baseline(model_paths: dict[str, Path], baseline: str | Path) -> str:
    """The label of ``baseline``, given as a label or as a path of one of the models."""
    if str(baseline) in model_paths:
        return str(baseline)
    wanted = Path(baseline).resolve()
    for label, path in model_paths.items():
        if path.resolve() == wanted:
            return label
    raise ConfigError(
        f"--baseline {baseline} is not one of the evaluated models ({', '.join(model_paths)}); "
        "pass one of those names or paths."
    )


def _plan_model(path: Path, max_window_tokens: int, stride: int | None) -> dict[str, Any]:
    """Open the tokenizer and config of one model; fix its window, stride and start tokens."""
    from transformers import AutoConfig, AutoTokenizer

    if not path.exists():
        raise SourceError(
            f"--model {path} does not exist; pass a local Hugging Face model directory "
            "(convert .gguf files or hub ids first)."
        )
    if not (path / "config.json").is_file():
        raise SourceError(
            f"--model {path} is not a Hugging Face model directory (no config.json); pass a local directory "
            "saved with save_pretrained (convert .gguf files or hub ids first)."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(
            f"--model {path}: cannot load its tokenizer or config ({first_line}); pass a directory with both."
        ) from exc
    window_tokens = max_window_tokens
    max_positions = getattr(config, "max_position_embeddings", None)
    if isinstance(max_positions, int) and max_positions < window_tokens:
        logger.warning(
            "%s: window lowered from %d to max_position_embeddings=%d tokens",
            path,
            window_tokens,
            max_positions,
        )
        window_tokens = max_positions
    start_ids = _document_start_ids(tokenizer, path)
    context_tokens = window_tokens - len(start_ids)  # text tokens that fit after the start tokens
    if context_tokens < 1 or (stride is not None and stride > context_tokens):
        raise ConfigError(
            f"--stride {stride} does not fit: a window of {window_tokens} tokens for {path} holds "
            f"{context_tokens} text tokens after {len(start_ids)} document-start token(s); "
            "raise --max-window-tokens (up to max_position_embeddings) or lower --stride."
        )
    return {
        "path": path,
        "tokenizer": tokenizer,
        "start_ids": start_ids,
        "window_tokens": window_tokens,
        "context_tokens": context_tokens,
        "stride_tokens": stride or context_tokens,
    }


def _document_start_ids(tokenizer, path: Path) -> list[int]:
    """Token ids that start a document for this tokenizer.

    The special tokens the tokenizer puts before the text (found by encoding a probe text with
    and without them, so a trailing EOS is not taken); when it adds none, ``<|endoftext|>`` if in
    the vocabulary, else EOS, else BOS. Example: a Gemma tokenizer gives ``[<bos>]``; Qwen2.5 and
    SmolLM2 add nothing and give ``[<|endoftext|>]``.
    """
    probe = "Hello"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    with_specials = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for offset in range(len(with_specials) - len(plain) + 1):
        if with_specials[offset : offset + len(plain)] == plain:
            if offset:
                return list(with_specials[:offset])
            break
    endoftext_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if "<|endoftext|>" in tokenizer.get_vocab() and isinstance(endoftext_id, int):
        return [endoftext_id]
    for token_id in (tokenizer.eos_token_id, tokenizer.bos_token_id):
        if token_id is not None:
            return [token_id]
    raise SourceError(
        f"--model {path}: its tokenizer has no BOS, EOS or <|endoftext|> token to start a document with; "
        "set bos_token in its tokenizer_config.json."
    )


def _plan_windows(
    n_tokens: int, context_tokens: int, stride_tokens: int
) -> list[tuple[int, int, int]]:
    """Cut ``n_tokens`` text tokens into windows; each token is scored in exactly one window.

    Returns ``(context_start, score_start, score_end)`` per window: the window holds text tokens
    ``[context_start, score_end)`` (at most ``context_tokens``) and scores ``[score_start, score_end)``
    (at most ``stride_tokens``). Example: ``_plan_windows(5, 3, 2)`` ->
    ``[(0, 0, 2), (1, 2, 4), (3, 4, 5)]``.
    """
    assert 1 <= stride_tokens <= context_tokens, (stride_tokens, context_tokens)
    windows = []
    for score_start in range(0, n_tokens, stride_tokens):
        score_end = min(score_start + stride_tokens, n_tokens)
        # The same overlap before every window (none when stride_tokens == context_tokens).
        context_start = max(0, score_start - (context_tokens - stride_tokens))
        windows.append((context_start, score_start, score_end))
    return windows


def _resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as torch spells it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"--device {device!r} is unknown; use auto, cpu, cuda or cuda:N."
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {device} asks for CUDA, which this machine lacks; use --device cpu."
        )
    return resolved


def _evaluate_one(
    plan: dict[str, Any],
    text_items: dict[str, tuple[Path, str]],
    batch_size: int,
    dtype: torch.dtype,
    device: torch.device,
    progress: bool,
) -> dict[str, Any]:
    """Score every text with one model; per-text and all-text statistics."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    path, tokenizer = plan["path"], plan["tokenizer"]
    # text label -> token ids of the whole text, no special tokens
    token_ids = {
        label: tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        for label, (_, text) in text_items.items()
    }
    model = _load_model(path, dtype, device)
    stats = {}
    with tqdm(
        total=sum(map(len, token_ids.values())),
        unit="tok",
        desc=path.name,
        file=sys.stderr,
        disable=not progress,
    ) as bar:
        for label, (_, text) in text_items.items():
            nll_bits = _score_tokens(model, token_ids[label], plan, batch_size, bar)
            stats[label] = _stats(nll_bits, len(token_ids[label]), len(text.encode("utf-8")))
    stats[ALL_TEXTS] = _stats(
        sum(s["nll_bits"] for s in stats.values()),
        sum(s["n_tokens"] for s in stats.values()),
        sum(s["n_bytes"] for s in stats.values()),
    )
    elapsed_s = time.perf_counter() - started
    logger.info(
        "%s: %.4f bits/byte over %d texts in %.1f s",
        path,
        stats[ALL_TEXTS]["bits_per_byte"],
        len(text_items),
        elapsed_s,
    )
    return {
        "path": str(path),
        "document_start_ids": plan["start_ids"],
        "document_start_tokens": tokenizer.convert_ids_to_tokens(plan["start_ids"]),
        "window_tokens": plan["window_tokens"],
        "stride_tokens": plan["stride_tokens"],
        "vocab_size": int(model.get_output_embeddings().weight.shape[0]),
        "elapsed_s": round(elapsed_s, 3),
        "texts": stats,
    }


def _stats(nll_bits: float, n_tokens: int, n_bytes: int) -> dict[str, float | int]:
    return {
        "bits_per_byte": nll_bits / n_bytes,
        "tokens_per_byte": n_tokens / n_bytes,
        "n_tokens": n_tokens,
        "n_bytes": n_bytes,
        "nll_bits": nll_bits,
    }


def _load_model(path: Path, dtype: torch.dtype, device: torch.device):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(
            f"--model {path}: cannot load it as a causal LM ({first_line}); pass a causal LM directory."
        ) from exc
    return model.to(device).eval()


def _score_tokens(model, token_ids: list[int], plan: dict[str, Any], batch_size: int, bar) -> float:
    """Summed NLL in bits of ``token_ids``, window by window, ``batch_size`` windows per forward."""
    windows = _plan_windows(len(token_ids), plan["context_tokens"], plan["stride_tokens"])
    total_nats = 0.0
    for first in range(0, len(windows), batch_size):
        batch = windows[first : first + batch_size]
        total_nats += _score_batch(model, token_ids, plan["start_ids"], batch)
        bar.update(sum(end - start for _, start, end in batch))
    return total_nats / math.log(2)


@torch.inference_mode()
def _score_batch(
    model, token_ids: list[int], start_ids: list[int], windows: list[tuple[int, int, int]]
) -> float:
    """Summed NLL in nats of the scored tokens of a few windows, in one forward pass.

    A window ``(context_start, score_start, score_end)`` becomes the input row
    ``start_ids + token_ids[context_start:score_end]``, right-padded; the logits at the position
    before each scored token predict it. Example: start ``[S]``, window ``(0, 0, 2)`` over text
    ``[a, b]`` -> input ``[S, a, b]``; ``a`` is predicted at position 0, ``b`` at position 1.
    """
    rows = [
        start_ids + token_ids[context_start:score_end] for context_start, _, score_end in windows
    ]
    device = next(model.parameters()).device
    # [B, L] int64, right-padded with id 0 (masked; causal attention never looks right anyway)
    input_ids = torch.zeros((len(rows), max(map(len, rows))), dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)  # [B, L] 1 on real tokens
    for row_index, row in enumerate(rows):
        input_ids[row_index, : len(row)] = torch.tensor(row)
        attention_mask[row_index, : len(row)] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    # [B, L, V] in the model's dtype; only the scored rows are upcast, one window at a time.
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    total_nats = 0.0
    for row_index, (context_start, score_start, score_end) in enumerate(windows):
        first = len(start_ids) + score_start - context_start  # input position of 1st scored token
        n_scored = score_end - score_start
        scored = logits[row_index, first - 1 : first - 1 + n_scored].float()  # [n, V] fp32
        targets = input_ids[row_index, first : first + n_scored]  # [n] int64
        nll = torch.logsumexp(scored, dim=-1) - scored.gather(-1, targets[:, None]).squeeze(-1)
        total_nats += nll.double().sum().item()
    return total_nats


def _versions() -> dict[str, str]:
    import transformers

    from . import __version__

    return {
        "omp_init": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def compare_to_baseline(result: dict[str, Any], baseline: str | Path) -> dict[str, Any]:
    """Add each model's relative bits-per-byte change vs ``baseline`` to ``result`` (in place).

    Sets ``result["baseline"]`` to the baseline's label and, per model,
    ``bpb_change_pct[text] = 100 * (bpb - bpb_baseline) / bpb_baseline`` (negative is better).
    Example: baseline 1.00 bpb, model 0.95 bpb -> ``-5.0``.

    Raises:
        ConfigError: ``baseline`` is neither a label nor a path of an evaluated model.
    """
    models = result["models"]
    label = _find_baseline({name: Path(entry["path"]) for name, entry in models.items()}, baseline)
    result["baseline"] = label
    reference = models[label]["texts"]
    for entry in models.values():
        entry["bpb_change_pct"] = {
            text: 100.0
            * (stats["bits_per_byte"] - reference[text]["bits_per_byte"])
            / reference[text]["bits_per_byte"]
            for text, stats in entry["texts"].items()
        }
    return result
