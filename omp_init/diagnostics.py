"""``omp-init inspect``: what a transplant will do, read from the tokenizers before any solve.

Three checks, each usable on its own:

- overlap (:func:`overlap_report`): how many new tokens keep a base row (same bytes, or a special
  matched by content / role / ``--special-map``), how many OMP builds from donor rows, and which
  get no row at all, with examples. The alignment itself is ``vocab.align_vocabularies``'s.
- digit splitting (:func:`digit_split_report`): the paper's main failure is arithmetic (GSM8K
  collapses) when the base and the new tokenizer cut numbers differently, e.g. one digit per
  token vs up to three. Both tokenizers encode a fixed probe set (:data:`PROBES`); the lengths of
  the digit pieces give each side's scheme (:func:`classify_digit_runs`), and every "number token"
  (a token whose bytes hold 2+ consecutive ASCII digits and that its tokenizer really produces)
  is re-encoded by the other side to count the tokens the two split differently. ``transplant``
  puts this section into ``omp_init_report.json`` as ``diagnostics.digits``.
- residuals (:func:`residual_report`, only with ``--k`` and readable donor weights): OMP on a
  seeded sample of the tokens to solve; statistics as in the report (``report.residual_statistics``).

Loading is ``sources.py``'s and ``checkpoint.py``'s job; this module never writes files and
never prints (``cli.py`` prints :func:`format_summary`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Literal

import torch

from . import checkpoint, sources
from .errors import AlignmentError, ConfigError, SourceError
from .omp import resolve_score_dtype, solve_omp
from .report import residual_statistics
from .specials import load_special_map
from .vocab import VocabAlignment, VocabBytes, align_vocabularies, describe_overlap, token_bytes

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


def _label(vocab_bytes: VocabBytes, token_id: int) -> str:
    """Printable form of a token: ``" the"``, ``"<|im_end|>"``, ``"<id 5>"`` for an unused id."""
    if token_id in vocab_bytes.special_content_by_id:
        return vocab_bytes.special_content_by_id[token_id]
    data = vocab_bytes.bytes_by_id[token_id] if token_id < vocab_bytes.size else None
    return f"<id {token_id}>" if data is None else data.decode("utf-8", errors="backslashreplace")


def _spread(ids: list[int], n: int) -> list[int]:
    """``n`` ids evenly spaced over ``ids`` (the first ids are usually single bytes)."""
    return ids[:: max(1, len(ids) // n)][:n] if n > 0 else []


def overlap_report(
    alignment: VocabAlignment,
    base: VocabBytes,
    donor: VocabBytes,
    new: VocabBytes,
    *,
    n_examples: int = 20,
) -> dict[str, Any]:
    """Sizes, ``vocab.describe_overlap`` counts, every kind of special match, and example tokens."""
    copied_bytes = [
        i
        for i, how in zip(alignment.copy_new_ids, alignment.copy_how, strict=True)
        if how == "bytes"
    ]
    unmatched = [i for i in alignment.fallback_new_ids if i in new.special_content_by_id]
    by_content = [
        f"{m.new_content} -> {m.source_content}"
        for m in alignment.special_matches
        if m.how == "special_content" and m.source == "base"
    ]
    solved_specials = [m.new_content for m in alignment.special_matches if m.source == "donor"]
    return {
        "sizes": {"base": base.size, "donor": donor.size, "new": new.size},
        "families": {"base": base.family, "donor": donor.family, "new": new.family},
        **describe_overlap(alignment, limit=n_examples),
        "special_by_content": by_content[:n_examples],
        "special_solved_count": len(solved_specials),
        "special_unmatched_count": len(unmatched),
        "special_unmatched": [_label(new, i) for i in unmatched[:n_examples]],
        "examples": {
            "copied": [_label(new, i) for i in _spread(copied_bytes, n_examples)],
            "solved": [_label(new, i) for i in _spread(alignment.solve_new_ids, n_examples)],
            "fallback": [_label(new, i) for i in _spread(alignment.fallback_new_ids, n_examples)],
        },
    }


def residual_report(
    donor_matrix: torch.Tensor,
    alignment: VocabAlignment,
    new: VocabBytes,
    *,
    k: int,
    sample: int,
    seed: int = 0,
    n_worst: int = 20,
) -> dict[str, Any]:
    """OMP residuals, in donor space, of a seeded sample of the tokens a transplant would solve.

    Args:
        donor_matrix: [n_donor, d_donor] the donor's input embedding (or lm_head).
        alignment: ``vocab.align_vocabularies`` output.
        new: bytes of the new tokenizer (for the worst-token labels).
        k, sample, seed: atoms per token, tokens solved (at most), sampling seed.

    Returns:
        ``report.residual_statistics`` plus ``k``, ``sample``, ``of`` (tokens to solve in all).

    Raises:
        AlignmentError: ``k`` exceeds the tokens base and donor share, or a donor id has no row.
    """
    n_solve = len(alignment.solve_donor_ids)
    _check_k(k, len(alignment.dict_donor_ids))
    if (
        max(alignment.solve_donor_ids + alignment.dict_donor_ids, default=-1)
        >= donor_matrix.shape[0]
    ):
        raise AlignmentError(
            f"the donor's tokenizer uses ids beyond its {donor_matrix.shape[0]:,} embedding rows; "
            "the tokenizer and the weights do not belong together."
        )
    gen = torch.Generator().manual_seed(seed)
    # [n_sample] int64, positions in solve_new_ids / solve_donor_ids, in id order
    picked = torch.randperm(n_solve, generator=gen)[:sample].sort().values
    solve_donor = torch.tensor(alignment.solve_donor_ids, dtype=torch.long)[picked]
    dictionary = donor_matrix[torch.tensor(alignment.dict_donor_ids, dtype=torch.long)].float()
    score_dtype = resolve_score_dtype("auto", "cpu")
    result = solve_omp(dictionary, donor_matrix[solve_donor].float(), k, score_dtype=score_dtype)
    labels = [_label(new, alignment.solve_new_ids[i]) for i in picked.tolist()]
    stats = residual_statistics(result.residual_norm, result.target_norm, labels, n_worst=n_worst)
    return {
        **stats,
        "k": k,
        "sample": len(labels),
        "of": n_solve,
        "seed": seed,
        "score_dtype": str(score_dtype),
    }


def _check_k(k: int, n_dict: int) -> None:
    if k > n_dict:
        raise AlignmentError(
            f"--k {k} is larger than the {n_dict:,} tokens base and donor share; pass --k {min(64, n_dict)} or less."
        )


def _read_donor_matrices(
    spec: str, *, cache_dir: str | None, trust_remote_code: bool
) -> tuple[dict[str, torch.Tensor], str | None]:
    """{"embed": ..., "lm_head": ... (untied donors)} of the donor, or ({}, why not)."""
    try:
        donor = sources.resolve_model(
            spec, role="donor", trust_remote_code=trust_remote_code, cache_dir=cache_dir
        )
        layout = checkpoint.locate_embeddings(
            donor.local_dir, donor.config, role="donor", trust_remote_code=trust_remote_code
        )
    except SourceError as exc:
        return {}, str(exc)
    embed, head = checkpoint.read_embeddings(donor.local_dir, layout)
    return ({"embed": embed} | ({"lm_head": head} if head is not None else {})), None


def inspect_transplant(
    base: str,
    donor: str,
    *,
    tokenizer: str | None = None,
    special_map: str | None = None,
    k: int | None = None,
    sample: int = 2000,
    top: int = 20,
    seed: int = 0,
    cache_dir: str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Everything ``omp-init inspect`` reports, as a JSON-ready dict.

    Args:
        base, donor: model or tokenizer specs (HF directory, ``tokenizer.json``, ``.gguf``).
        tokenizer: the new tokenizer, when it is not the donor's.
        special_map: a ``--special-map`` JSON file.
        k: atoms per token; residuals are computed only when given and the donor has weights.
        sample, top, seed: tokens solved for residuals, examples / worst tokens shown, seed.

    Returns:
        ``{"inputs", "overlap", "digits", "residuals"}``; ``residuals`` is ``{"skipped": why}``
        without ``--k`` or donor weights.

    Raises:
        ConfigError: a non-positive ``--k`` / ``--sample`` / ``--top``, or a bad ``--special-map``.
        SourceError: a tokenizer cannot be found or loaded.
        AlignmentError: ``--k`` exceeds the shared tokens.
    """
    bad = [
        f"--{name} {value}"
        for name, value in (("k", k), ("sample", sample), ("top", top))
        if value is not None and value <= 0
    ]
    if bad:
        raise ConfigError(f"{', '.join(bad)} must be positive; pass a value of 1 or more.")
    overrides = load_special_map(special_map) if special_map else None
    common = {"trust_remote_code": trust_remote_code, "cache_dir": cache_dir}
    base_tokenizer = sources.load_tokenizer(base, role="base", **common)
    donor_tokenizer = sources.load_tokenizer(donor, role="donor", **common)
    new_tokenizer = (
        sources.load_tokenizer(tokenizer, role="tokenizer", **common)
        if tokenizer
        else donor_tokenizer
    )
    base_bytes, donor_bytes = token_bytes(base_tokenizer), token_bytes(donor_tokenizer)
    new_bytes = donor_bytes if new_tokenizer is donor_tokenizer else token_bytes(new_tokenizer)
    alignment = align_vocabularies(base_bytes, donor_bytes, new_bytes, special_map=overrides)
    result: dict[str, Any] = {
        "inputs": {"base": base, "donor": donor, "tokenizer": tokenizer or "donor"},
        "overlap": overlap_report(alignment, base_bytes, donor_bytes, new_bytes, n_examples=top),
        "digits": digit_split_report(
            base_tokenizer,
            new_tokenizer,
            base_bytes=base_bytes,
            new_bytes=new_bytes,
            n_examples=top,
        ),
        "residuals": {"skipped": "pass --k to reconstruct a sample of the new tokens"},
    }
    if k is not None and alignment.solve_new_ids:
        _check_k(k, len(alignment.dict_donor_ids))  # before the weights are read
        matrices, why_not = _read_donor_matrices(
            donor, cache_dir=cache_dir, trust_remote_code=trust_remote_code
        )
        if why_not:
            logger.warning("residuals skipped: the donor's embeddings cannot be read (%s)", why_not)
            result["residuals"] = {"skipped": f"the donor's embeddings cannot be read: {why_not}"}
        else:
            result["residuals"] = {
                name: residual_report(
                    matrix, alignment, new_bytes, k=k, sample=sample, seed=seed, n_worst=top
                )
                for name, matrix in matrices.items()
            }
    elif k is not None:
        result["residuals"] = {"skipped": "no new token needs a donor row"}
    return result


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    """Left-aligned text columns, two spaces apart, indented by two."""
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]


def _examples(items: list[str], n: int = 4) -> str:
    return ", ".join(repr(item) for item in items[:n])


def format_summary(result: dict[str, Any], n_examples: int = 4) -> str:
    """The human summary ``omp-init inspect`` prints: overlap, digit splitting, residuals."""
    overlap, digits = result["overlap"], result["digits"]
    sizes, families, total = (
        overlap["sizes"],
        overlap["families"],
        max(overlap["new_vocab_size"], 1),
    )
    inputs = result["inputs"]
    lines = ["Tokenizers"]
    lines += _table(
        ("", "source", "tokens", "family"),
        [
            (
                role,
                inputs[role] if role != "new" else inputs["tokenizer"],
                f"{sizes[role]:,}",
                families[role],
            )
            for role in ("base", "donor", "new")
        ],
    )
    ex = overlap["examples"]
    rows = [
        (
            "copied from base (same bytes)",
            overlap["copied_bytes"],
            _examples(ex["copied"], n_examples),
        ),
        (
            "special, copied by content",
            overlap["copied_special_content"],
            _examples(overlap["special_by_content"], n_examples),
        ),
        (
            "special, copied by role",
            overlap["copied_special_role"],
            _examples(overlap["special_by_role"], n_examples),
        ),
        (
            "special, copied by --special-map",
            overlap["copied_special_map"],
            _examples(overlap["special_by_map"], n_examples),
        ),
        ("built by OMP from donor rows", overlap["solved"], _examples(ex["solved"], n_examples)),
        (
            "  of which specials",
            overlap["special_solved_count"],
            _examples(overlap["special_solved"], n_examples),
        ),
        ("no base or donor row (mean)", overlap["fallback"], _examples(ex["fallback"], n_examples)),
        (
            "  of which specials",
            overlap["special_unmatched_count"],
            _examples(overlap["special_unmatched"], n_examples),
        ),
    ]
    lines += ["", "New vocabulary: where each row comes from"]
    lines += _table(
        ("", "tokens", "share", "examples"),
        [(n, f"{c:,}", f"{c / total:.1%}", e) for n, c, e in rows],
    )
    lines.append(
        f"  OMP dictionary (base and donor tokens with the same bytes): {overlap['dictionary_size']:,}"
    )

    lines += ["", "Digit splitting ('|' marks a token boundary inside a number)"]
    probes = [(repr(p), digits["base"]["probes"][p], digits["new"]["probes"][p]) for p in PROBES]
    lines += _table(("probe", "base", "new"), probes)
    for side in ("base", "new"):
        s = digits[side]
        lines.append(
            f"  {side}: {s['description']}; number tokens (2+ digits) produced: "
            f"{s['number_tokens_produced']:,} (in vocabulary: {s['number_tokens_in_vocab']:,})"
        )
    lines.append(
        f"  new number tokens not in the base: {digits['new_number_tokens_new_to_base']:,}; "
        f"split differently by the base: {digits['new_number_tokens_split_by_base']:,}; "
        f"base number tokens split differently by the new tokenizer: {digits['base_number_tokens_split_by_new']:,}"
    )
    lines.append(
        f"  WARNING: {digits['warning']}"
        if digits["warning"]
        else "  OK: both tokenizers cut the probe numbers alike."
    )

    lines += ["", "Reconstruction residuals (relative, donor space)"]
    residuals = result["residuals"]
    if "skipped" in residuals:
        lines.append(f"  skipped: {residuals['skipped']}")
        return "\n".join(lines)
    stat_rows = [
        (
            name,
            s["k"],
            f"{s['sample']:,} of {s['of']:,}",
            *(
                f"{s[key]:.3f}"
                for key in ("mean_relative", "median_relative", "p90_relative", "max_relative")
            ),
        )
        for name, s in residuals.items()
        if s.get("count")
    ]
    lines += _table(("space", "k", "tokens", "mean", "median", "p90", "max"), stat_rows)
    for name, s in residuals.items():
        worst = ", ".join(
            f"{w['token']!r} {w['relative_residual']:.3f}"
            for w in s.get("worst_tokens", [])[: 2 * n_examples]
        )
        lines.append(f"  worst ({name}): {worst}")
    return "\n".join(lines)
