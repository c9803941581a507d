"""What the transplanted tokenizer puts at the start of a document.

A base trained with a document-start token (Gemma's ``<bos>``, Llama's ``<s>``) uses it as an
attention sink; measured with mergekit on Gemma3-270M <- SmolLM2's tokenizer, leaving it out
raised English bits-per-byte by +55% instead of +25%. So, by default (``--document-start
auto``), when the base tokenizer adds a token to every text and the new tokenizer adds none,
the new tokenizer is changed to add its counterpart of that token, and that token's row is
copied from the base's document-start row. When the base adds nothing (Qwen, SmolLM2),
nothing is added. ``--document-start never`` keeps the new tokenizer as it is.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import replace
from typing import Any

from tokenizers import processors

logger = logging.getLogger(__name__)

# Tried in order when the new tokenizer has no bos_token of its own.
_FALLBACK_START_TOKENS = ("<|begin_of_text|>", "<bos>", "<s>", "<|endoftext|>", "<|end_of_text|>")


def prefix_ids(tokenizer) -> list[int]:
    """Ids the tokenizer adds to an empty text (its document start), e.g. ``[2]`` for Gemma."""
    return list(tokenizer("", add_special_tokens=True)["input_ids"])


def apply_policy(policy: str, base_tokenizer, new_tokenizer, alignment) -> tuple[Any, Any, dict[str, Any]]:
    """Return (new tokenizer, alignment, report entry) after applying ``policy``.

    The tokenizer and alignment are copies when changed; the inputs are never modified.
    """
    base_prefix = prefix_ids(base_tokenizer)
    new_prefix = prefix_ids(new_tokenizer)
    entry: dict[str, Any] = {
        "policy": policy,
        "base_adds": base_tokenizer.convert_ids_to_tokens(base_prefix),
        "new_tokenizer_adds": new_tokenizer.convert_ids_to_tokens(new_prefix),
        "added": None,
    }
    if policy == "never" or not base_prefix or new_prefix:
        entry["reason"] = (
            "--document-start never"
            if policy == "never"
            else ("the base adds no document-start token" if not base_prefix else "the new tokenizer already adds one")
        )
        return new_tokenizer, alignment, entry
    start_token = _counterpart(new_tokenizer)
    if start_token is None:
        entry["reason"] = "the new vocabulary has no bos/<|endoftext|>-like token to add"
        logger.warning("base adds %s at document start but the new vocabulary has no counterpart", entry["base_adds"])
        return new_tokenizer, alignment, entry
    start_id = new_tokenizer.convert_tokens_to_ids(start_token)
    changed = _with_prefix(new_tokenizer, start_token, start_id)
    base_start_id = base_prefix[-1]
    alignment = _copy_row(alignment, start_id, base_start_id)
    entry.update(
        added=start_token,
        row_copied_from_base=base_tokenizer.convert_ids_to_tokens(base_start_id),
        reason="the base adds a document-start token and the new tokenizer did not",
        new_tokenizer_adds=changed.convert_ids_to_tokens(prefix_ids(changed)),
    )
    logger.info("new tokenizer now starts every text with %s (row from base %s)", start_token, entry["row_copied_from_base"])
    return changed, alignment, entry


def _counterpart(tokenizer) -> str | None:
    if tokenizer.bos_token is not None:
        return tokenizer.bos_token
    vocab = tokenizer.get_vocab()
    return next((t for t in _FALLBACK_START_TOKENS if t in vocab), None)


def _with_prefix(tokenizer, token: str, token_id: int):
    """A copy of ``tokenizer`` whose post-processor prepends ``token`` to every text."""
    changed = copy.deepcopy(tokenizer)
    template = processors.TemplateProcessing(
        single=f"{token} $A", pair=f"{token} $A {token} $B", special_tokens=[(token, token_id)]
    )
    backend = changed.backend_tokenizer
    current = json.loads(backend.to_str()).get("post_processor")
    if current and current.get("type") == "ByteLevel":
        # keep byte-level offset trimming, then add the prefix
        backend.post_processor = processors.Sequence([backend.post_processor, template])
    else:
        backend.post_processor = template
    return changed


def _copy_row(alignment, new_id: int, base_id: int):
    """Make ``new_id`` a bit-exact copy of ``base_id`` in the alignment (replacing any other plan)."""
    copy_pairs = [(n, b, how) for n, b, how in zip(alignment.copy_new_ids, alignment.copy_base_ids, alignment.copy_how, strict=True) if n != new_id]
    copy_pairs.append((new_id, base_id, "document_start"))
    keep = [i for i, n in enumerate(alignment.solve_new_ids) if n != new_id]
    return replace(
        alignment,
        copy_new_ids=[n for n, _, _ in copy_pairs],
        copy_base_ids=[b for _, b, _ in copy_pairs],
        copy_how=[h for _, _, h in copy_pairs],
        solve_new_ids=[alignment.solve_new_ids[i] for i in keep],
        solve_donor_ids=[alignment.solve_donor_ids[i] for i in keep],
        fallback_new_ids=[n for n in alignment.fallback_new_ids if n != new_id],
    )
