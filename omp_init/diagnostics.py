"""``omp-init inspect``: what a transplant will do, read from the tokenizers before any solve.

Three checks, each usable on its own:

- overlap (:func:`overlap_report`): how many new tokens keep a base row (same bytes, or a special
  matched by content / role / ``--special-map``), how many OMP builds from donor rows, and which
  get no row at all, with examples. The alignment itself is ``vocab.align_vocabularies``'s.
- digit splitting (``digits.digit_split_report``): whether the base and the new tokenizer cut
  numbers differently, the paper's main failure (arithmetic, GSM8K, collapses). The analysis
  lives in ``digits.py``; this module runs it and prints it. ``transplant`` puts the same
  section into ``omp_init_report.json`` as ``diagnostics.digits``.
- residuals (:func:`residual_report`, only with ``--k`` and readable donor weights): OMP on a
  seeded sample of the tokens to solve; statistics as in the report (``report.residual_statistics``).

Loading is ``sources.py``'s and ``checkpoint.py``'s job; this module never writes files and
never prints (``cli.py`` prints :func:`format_summary`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from . import checkpoint, sources
from .digits import PROBES, digit_split_report
from .errors import AlignmentError, ConfigError, SourceError
from .omp import resolve_score_dtype, solve_omp
from .report import residual_statistics
from .specials import load_special_map
from .vocab import VocabAlignment, VocabBytes, align_vocabularies, describe_overlap, token_bytes

logger = logging.getLogger(__name__)


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


def _same_source(base: str, donor: str) -> bool:
    """The donor spec names the base itself: the same string, or two spellings of one path."""
    if base == donor:
        return True
    return Path(base).exists() and Path(donor).exists() and Path(base).resolve() == Path(donor).resolve()


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
        "inputs": {
            "base": base,
            "donor": donor,
            "tokenizer": tokenizer or "donor",
            "donor_is_base": _same_source(base, donor),
        },
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
        ("no base or donor row", overlap["fallback"], _examples(ex["fallback"], n_examples)),
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
    if overlap["fallback"] and inputs.get("donor_is_base"):
        lines.append(
            "  no donor model: transplant without --donor builds each such token with bytes from the base's "
            "pieces (--method fvt, the default then); specials keep the mean row"
        )
    elif overlap["fallback"]:
        lines.append(
            "  no base or donor row: omp+fvt builds each such token with bytes as half the mean row and half its "
            "FVT row (the base's pieces); specials, and every one under --method omp, keep the mean row"
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
