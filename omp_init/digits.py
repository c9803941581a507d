"""Digit splitting: how the base and the new tokenizer cut numbers into tokens.

This is its own module because it is the paper's main failure: when the base and the new
tokenizer split numbers differently (e.g. one digit per token vs up to three, as Llama 3's
``\\p{N}{1,3}`` does), the transplanted model's arithmetic collapses (GSM8K) until it is trained.
The check reads the tokenizers only, before any solve:

- both tokenizers encode a fixed probe set (:data:`PROBES`); the lengths of the digit pieces
  give each side's scheme (:func:`detect_digit_scheme`, :func:`classify_digit_runs`);
- every "number token" (a token whose bytes hold 2+ consecutive ASCII digits and that its
  tokenizer really produces) is re-encoded by the other side to count the tokens the two split
  differently (:func:`digit_split_report`), with a warning when the schemes differ.

``diagnostics.inspect_transplant`` (``omp-init inspect``) prints this section, and
``transplant`` puts it into ``omp_init_report.json`` as ``diagnostics.digits``. This module never
writes files and never prints; it logs the warning.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Literal

from .vocab import VocabBytes, token_bytes

logger = logging.getLogger(__name__)

# Numbers as they appear in text: lengths 1-20, with a leading space, inside words and prices.
PROBES: tuple[str, ...] = (
    "7", "42", "123", "2025", "12345", "123456", "1234567", "9876543210",
    "31415926535897932384", "3.14159", "0.5", "1,000,000", "$4,299.99", " 12345", " 2025",
    "in 1999 and 2024,", "x=100000;", "Q3 2023: 15%",
)  # fmt: skip
DigitSchemeKind = Literal["single_digits", "fixed_groups", "bpe_merges", "unknown"]
_SEGMENTS = re.compile(rb"[0-9]+|[^0-9]+")
_NUMBER_TOKEN = re.compile(rb"[0-9]{2}")
_TEXT_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class DigitScheme:
    """How one tokenizer cuts numbers into tokens.

    Attributes:
        kind: ``single_digits`` (one digit per token), ``fixed_groups`` (runs cut into groups of
            ``max_digits_per_token``, like Llama 3's ``\\p{N}{1,3}``), ``bpe_merges`` (learned
            merges, lengths vary with the digits) or ``unknown`` (no digits came back).
        max_digits_per_token: the longest digit piece seen in the probes.
        direction: ``left_to_right`` or ``right_to_left`` for ``fixed_groups``, else None.
        runs_by_probe: probe -> chunk lengths of each of its digit runs, e.g.
            ``{"2025": [[3, 1]], "3.14159": [[1], [3, 2]]}``.
    """

    kind: DigitSchemeKind
    max_digits_per_token: int
    direction: str | None
    runs_by_probe: dict[str, list[list[int]]]

    def describe(self) -> str:
        """E.g. ``"merges up to 3 digits per token (groups from the left)"``."""
        if self.kind == "single_digits":
            return "splits digits one by one"
        if self.kind == "fixed_groups":
            side = "left" if self.direction == "left_to_right" else "right"
            return f"merges up to {self.max_digits_per_token} digits per token (groups from the {side})"
        if self.kind == "bpe_merges":
            return (
                f"merges digits by learned BPE merges (up to {self.max_digits_per_token} per token)"
            )
        return "produces no digit pieces for the probe numbers"

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.kind,
            "max_digits_per_token": self.max_digits_per_token,
            "direction": self.direction,
            "description": self.describe(),
            "probes": {p: render_digit_runs(p, runs) for p, runs in self.runs_by_probe.items()},
        }


def digit_runs(pieces: list[bytes | None]) -> list[list[int]]:
    """Chunk lengths of every digit run in a sequence of token bytes (``None``: a special).

    Example: ``[b" 1", b"2", b"345", b".", b"5"] -> [[1, 1, 3], [1]]`` (the run "12345" is cut
    into 1, 1 and 3 digits; "5" after the dot is a second run).
    """
    runs: list[list[int]] = []
    is_in_run = False  # the previous token ended with a digit
    for piece in pieces:
        if not piece:
            is_in_run = False
            continue
        for position, segment in enumerate(_SEGMENTS.findall(piece)):
            if not segment[:1].isdigit():
                is_in_run = False
            elif is_in_run and position == 0:
                runs[-1].append(len(segment))
            else:
                runs.append([len(segment)])
                is_in_run = True
    return runs


def _grouped(length: int, size: int, direction: str) -> list[int]:
    """``_grouped(7, 3, "left_to_right") == [3, 3, 1]``; ``right_to_left``: ``[1, 3, 3]``."""
    full, rest = [size] * (length // size), [length % size] if length % size else []
    return full + rest if direction == "left_to_right" else rest + full


def classify_digit_runs(runs: list[list[int]]) -> tuple[DigitSchemeKind, int, str | None]:
    """(kind, max digits per token, direction) of a tokenizer from its probe digit runs.

    Example: ``[[1, 1, 1, 1], [1]] -> ("single_digits", 1, None)``;
    ``[[3, 1], [3, 3, 2]] -> ("fixed_groups", 3, "left_to_right")``;
    ``[[4], [1, 1, 1]] -> ("bpe_merges", 4, None)``.
    """
    if not runs:
        return "unknown", 0, None
    widest = max(max(run) for run in runs)
    if widest == 1:
        return "single_digits", 1, None
    for direction in ("left_to_right", "right_to_left"):
        if all(run == _grouped(sum(run), widest, direction) for run in runs):
            return "fixed_groups", widest, direction
    return "bpe_merges", widest, None


def render_digit_runs(text: str, runs: list[list[int]]) -> str:
    """``text`` with ``|`` at each token boundary inside a number: ``("2025", [[3, 1]]) -> "202|5"``.

    ``?`` when the runs do not match the text's digits (a digit came back as ``<unk>``).
    """
    matches = list(_TEXT_DIGITS.finditer(text))
    if [len(m.group()) for m in matches] != [sum(run) for run in runs]:
        return "?"
    out, last = [], 0
    for match, run in zip(matches, runs, strict=True):
        bounds = [match.start() + sum(run[:i]) for i in range(len(run) + 1)]
        out.append(text[last : match.start()])
        out.append("|".join(text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)))
        last = match.end()
    return "".join(out) + text[last:]


def _vocab_bytes(tokenizer: Any, vocab_bytes: VocabBytes | None) -> VocabBytes:
    if vocab_bytes is not None and vocab_bytes.size == len(tokenizer):
        return vocab_bytes
    return token_bytes(tokenizer)


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Ids of each text through the full pipeline (normalizer, pre-tokenizer), no specials added."""
    backend = tokenizer.backend_tokenizer
    return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]


def _pieces(ids: list[int], vocab_bytes: VocabBytes) -> list[bytes | None]:
    return [vocab_bytes.bytes_by_id[i] if i < vocab_bytes.size else None for i in ids]


def detect_digit_scheme(tokenizer: Any, vocab_bytes: VocabBytes | None = None) -> DigitScheme:
    """Encode :data:`PROBES` and classify how the tokenizer cuts their digits.

    Args:
        tokenizer: a transformers fast tokenizer.
        vocab_bytes: ``vocab.token_bytes(tokenizer)`` when already computed.
    """
    vocab_bytes = _vocab_bytes(tokenizer, vocab_bytes)
    encoded = _encode(tokenizer, list(PROBES))
    runs_by_probe = {
        p: digit_runs(_pieces(ids, vocab_bytes)) for p, ids in zip(PROBES, encoded, strict=True)
    }
    kind, widest, direction = classify_digit_runs(
        [r for runs in runs_by_probe.values() for r in runs]
    )
    return DigitScheme(kind, widest, direction, runs_by_probe)


def _number_tokens(
    tokenizer: Any, own: VocabBytes, other_tokenizer: Any, other: VocabBytes
) -> dict[str, Any]:
    """Number tokens of one side and how the other side handles them.

    A number token holds 2+ consecutive ASCII digits; it counts as *produced* when its own
    tokenizer emits it for its text between newlines (a digit-splitting pre-tokenizer makes
    vocabulary entries like Qwen2's ``"00"`` unreachable, and those matter to no one). Added
    tokens (Gemma's ``<unused12>``) are matched verbatim before any splitting: not numbers.
    """
    added_ids = set(getattr(tokenizer, "added_tokens_decoder", {}))
    # [(bytes, text)], one per distinct byte string; undecodable partial-UTF-8 tokens skipped.
    tokens = []
    for data, token_id in own.id_by_bytes.items():
        if _NUMBER_TOKEN.search(data) and token_id not in added_ids:
            try:
                tokens.append((data, data.decode("utf-8")))
            except UnicodeDecodeError:
                continue
    contexts = [f"\n{text}\n" for _, text in tokens]
    own_ids = _encode(tokenizer, contexts)
    produced = [
        (data, context, ids)
        for (data, _), context, ids in zip(tokens, contexts, own_ids, strict=True)
        if data in _pieces(ids, own)
    ]
    other_ids = _encode(other_tokenizer, [context for _, context, _ in produced])
    split = [
        data
        for (data, _, ids), theirs in zip(produced, other_ids, strict=True)
        if digit_runs(_pieces(ids, own)) != digit_runs(_pieces(theirs, other))
    ]
    return {
        "in_vocab": len(tokens),
        "produced": [data for data, _, _ in produced],
        "split_by_other": split,
        "missing_from_other": [data for data, _, _ in produced if data not in other.id_by_bytes],
    }


def digit_split_report(
    base_tokenizer: Any,
    new_tokenizer: Any,
    *,
    base_bytes: VocabBytes | None = None,
    new_bytes: VocabBytes | None = None,
    n_examples: int = 10,
) -> dict[str, Any]:
    """Compare how the base and the new tokenizer split numbers; warn when they differ.

    Args:
        base_tokenizer, new_tokenizer: transformers fast tokenizers.
        base_bytes, new_bytes: their ``vocab.token_bytes`` when already computed.
        n_examples: number tokens listed per example list.

    Returns:
        JSON-ready dict: ``base`` / ``new`` (scheme, description, rendered probes, number tokens
        in the vocabulary and produced), ``schemes_differ``, ``probes_split_differently``, the
        counts ``new_number_tokens_new_to_base`` (rows OMP must build), ``new_number_tokens_
        split_by_base``, ``base_number_tokens_split_by_new``, ``base_number_tokens_missing_from_new``,
        ``affected_tokens`` (distinct number tokens one side splits differently), ``examples``
        and ``warning`` (None when the schemes agree). The warning is also logged.
    """
    base_bytes = _vocab_bytes(base_tokenizer, base_bytes)
    new_bytes = _vocab_bytes(new_tokenizer, new_bytes)
    base_scheme = detect_digit_scheme(base_tokenizer, base_bytes)
    new_scheme = detect_digit_scheme(new_tokenizer, new_bytes)
    new_side = _number_tokens(new_tokenizer, new_bytes, base_tokenizer, base_bytes)
    base_side = _number_tokens(base_tokenizer, base_bytes, new_tokenizer, new_bytes)
    new_to_base = [d for d in new_side["produced"] if d not in base_bytes.id_by_bytes]
    lists = {
        "new_number_tokens_new_to_base": new_to_base,
        "new_number_tokens_split_by_base": new_side["split_by_other"],
        "base_number_tokens_split_by_new": base_side["split_by_other"],
        "base_number_tokens_missing_from_new": base_side["missing_from_other"],
    }
    n_probes_differ = sum(
        base_scheme.runs_by_probe[p] != new_scheme.runs_by_probe[p] for p in PROBES
    )
    result: dict[str, Any] = {
        "base": base_scheme.to_dict()
        | {
            "number_tokens_in_vocab": base_side["in_vocab"],
            "number_tokens_produced": len(base_side["produced"]),
        },
        "new": new_scheme.to_dict()
        | {
            "number_tokens_in_vocab": new_side["in_vocab"],
            "number_tokens_produced": len(new_side["produced"]),
        },
        "schemes_differ": n_probes_differ > 0,
        "probes_split_differently": n_probes_differ,
        **{name: len(items) for name, items in lists.items()},
        "affected_tokens": len(set(new_side["split_by_other"]) | set(base_side["split_by_other"])),
        "examples": {
            name: [d.decode("utf-8") for d in sorted(items, key=lambda d: (len(d), d))[:n_examples]]
            for name, items in lists.items()
        },
        "warning": None,
    }
    if n_probes_differ:
        result["warning"] = _digit_warning(base_scheme, new_scheme, result)
        logger.warning("digit splitting differs: %s", result["warning"])
    return result


def _digit_warning(base: DigitScheme, new: DigitScheme, counts: dict[str, Any]) -> str:
    """E.g. "the new tokenizer merges up to 3 digits per token (groups from the left) while the
    base splits digits one by one: 1,110 number tokens are new; expect arithmetic ..."."""
    n_new, n_cut = (
        counts["new_number_tokens_new_to_base"],
        counts["base_number_tokens_split_by_new"],
    )
    what = [f"{n_new:,} number tokens are new"] if n_new else []
    what += [f"{n_cut:,} of the base's number tokens are cut differently"] if n_cut else []
    what = what or [
        f"{counts['probes_split_differently']} of {len(PROBES)} probe numbers are cut differently"
    ]
    how = (
        f"the new tokenizer and the base cut numbers differently (both: {new.describe()})"
        if new.describe() == base.describe()
        else f"the new tokenizer {new.describe()} while the base {base.describe()}"
    )
    return f"{how}: {' and '.join(what)}; expect arithmetic (e.g. GSM8K) to degrade until trained."
