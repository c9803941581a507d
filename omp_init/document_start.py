"""What the transplanted tokenizer puts at the start of a document.

A base trained with a document-start token (Gemma's ``<bos>``, Llama's ``<s>``) uses it as an
attention sink; measured with mergekit on Gemma3-270M <- SmolLM2's tokenizer, leaving it out
raised English bits-per-byte by +55% instead of +25%. So, by default (``--document-start
auto``), when the base tokenizer adds a token to every text and the new tokenizer adds none,
the new tokenizer is changed to add its counterpart of that token, and that token's row is
copied from the base's document-start row. When the base adds nothing (Qwen, SmolLM2),
nothing is added. ``--document-start never`` keeps the new tokenizer as it is.

The counterpart is the new tokenizer's bos_token, unless its chat template opens every turn
with it (SmolLM2-Instruct declares ``<|im_start|>`` as bos_token): that token then keeps its
own row, since giving it the base's document-start row would make every chat turn look like a
new document, and a chat-formatted text would start with it twice. The next candidate of
``_FALLBACK_START_TOKENS`` that the template does not repeat is used instead
(``<|endoftext|>`` there).
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
    start_token, passed_over = _counterpart(new_tokenizer)
    if passed_over:
        entry["passed_over"] = passed_over
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


def _counterpart(tokenizer) -> tuple[str | None, dict[str, str]]:
    """The token to start documents with, and the candidates passed over (token -> why).

    Candidates: the bos_token, then ``_FALLBACK_START_TOKENS`` present in the vocabulary; the
    first one that does not open the chat template's turns wins. If every candidate does,
    the first is used anyway (a document start matters more than the turn marker's row).
    """
    vocab = tokenizer.get_vocab()
    candidates = [tokenizer.bos_token] if tokenizer.bos_token is not None else []
    candidates += [t for t in _FALLBACK_START_TOKENS if t in vocab and t not in candidates]
    markers = chat_turn_markers(tokenizer, candidates)
    passed_over = {t: "it opens every turn of the new tokenizer's chat template" for t in candidates if t in markers}
    chosen = next((t for t in candidates if t not in markers), candidates[0] if candidates else None)
    passed_over.pop(chosen, None)
    return chosen, passed_over


def chat_turn_markers(tokenizer, tokens: list[str]) -> set[str]:
    """Those of ``tokens`` that the tokenizer's chat template writes once per message.

    Found by rendering a three-message conversation and counting: a token written three or
    more times opens (or closes) turns; a document-start token is written at most once.
    A tokenizer without a template, or whose template fails on a plain conversation, has none.
    Example: SmolLM2-Instruct, ``["<|im_start|>", "<|endoftext|>"]`` -> ``{"<|im_start|>"}``.
    """
    if not tokens or not getattr(tokenizer, "chat_template", None):
        return set()
    messages = [
        {"role": "user", "content": "Hello."},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Bye."},
    ]
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as exc:  # any template error: a user's template, not ours to fix
        logger.debug("chat template not rendered (%s); no turn markers assumed", exc)
        return set()
    if not isinstance(rendered, str):
        return set()
    return {t for t in tokens if rendered.count(t) >= len(messages)}


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
