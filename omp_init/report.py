"""The ``omp_init_report.json`` written next to every transplanted checkpoint.

Schema (version 1), all JSON-native:

- ``omp_init_version``, ``schema_version``, ``created_utc``, ``fingerprint``
- ``config``: the resolved :class:`TransplantConfig`
- ``inputs``: base / donor / tokenizer sources (kind, path, identity); ``donor_is_base`` when the
  donor resolves to the base itself (no donor model)
- ``vocab``: sizes (base, donor, new, written rows) and counts of copied / solved / fallback /
  padding tokens, specials matched and how; ``fallback_built``: fallback tokens (no base or
  donor row, only with a ``--tokenizer`` that is not the donor's) that the method built anyway
  (``omp+fvt``: half the FVT row, half the mean row; ``fvt``: the FVT row; ``zero`` / ``random``
  their own rows); the rest of the fallback rows are the mean
- ``residuals``: per pass (``embed``, ``lm_head``) statistics of the relative reconstruction
  residual ||target - combination|| / ||target|| in donor space, and the worst tokens
- ``document_start``: what the transplanted tokenizer puts at the start of a document, and why
- ``row_norm_cap`` (OMP methods): per matrix the norm cap (the base's 99.9th-percentile row
  norm) and how many built rows were scaled down to it
- ``omp_fvt`` (method ``omp+fvt`` only): the OMP row's weight, and per matrix the FVT half's
  piece-position power (``{"tied": 0}``: plain mean; untied ``{"embed": 1, "lm_head": -1}``:
  towards the last piece for input rows, the first for output rows)
- ``timings_s``: wall seconds of the steps ``load``, ``solve`` and ``write`` (the checkpoint write
  included) and ``total`` since the transplant was called; ``world_size``; ``device``
- ``versions``: python, torch, transformers, tokenizers, safetensors
"""

from __future__ import annotations

import datetime
import platform
from importlib import metadata
from typing import Any

import torch

SCHEMA_VERSION = 1
REPORT_NAME = "omp_init_report.json"
# Which rows of the output were copied from the base (the rest were built or are padding), for
# training that should move only the built rows (the axolotl plugin's
# omp_init_train_new_rows_only): {"rows": n_rows, "copied_ids": [sorted new-vocabulary ids]}.
ROWS_NAME = "omp_init_rows.json"
# Mean relative donor-space residual at which the summary suggests --k 128: the two pairs
# measured at 0.48 and 0.61 gained 1.4-1.5% bits-per-byte from it, those at 0.33 nothing.
HIGH_RESIDUAL = 0.45
# How each method builds a fallback token (no base or donor row) that has bytes.
_FALLBACK_BUILDER = {"omp+fvt": "half FVT (the base's pieces) + half the mean row", "fvt": "FVT (the base's pieces)"}


def rows_record(n_rows: int, copied_ids: list[int]) -> dict:
    """The ``ROWS_NAME`` payload. Example: ``rows_record(4, [2, 0])`` -> rows 4, copied [0, 2]."""
    return {"rows": n_rows, "copied_ids": sorted(copied_ids)}


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine the result."""
    versions = {"python": platform.python_version()}
    for name in ("omp_init", "torch", "transformers", "tokenizers", "safetensors", "accelerate"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def residual_statistics(
    residual_norm: torch.Tensor,
    target_norm: torch.Tensor,
    token_labels: list[str],
    n_worst: int = 20,
) -> dict[str, Any]:
    """Summary of relative residuals ``residual_norm / target_norm`` of one pass.

    Args:
        residual_norm: [T] float32.
        target_norm: [T] float32 (zero targets count as residual 0).
        token_labels: [T] printable token strings, for the worst-token list.
    """
    if residual_norm.numel() == 0:
        return {"count": 0}
    relative = residual_norm / target_norm.clamp_min(1e-12)
    relative = torch.where(target_norm > 0, relative, torch.zeros_like(relative)).double()
    quantiles = torch.quantile(relative, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64))
    worst = torch.argsort(relative, descending=True)[:n_worst].tolist()
    return {
        "count": int(relative.numel()),
        "mean_relative": float(relative.mean()),
        "median_relative": float(quantiles[0]),
        "p90_relative": float(quantiles[1]),
        "p99_relative": float(quantiles[2]),
        "max_relative": float(relative.max()),
        "mean_absolute": float(residual_norm.double().mean()),
        "worst_tokens": [{"token": token_labels[i], "relative_residual": round(float(relative[i]), 6)} for i in worst],
    }


def rounded_timings(timings_s: dict[str, float]) -> dict[str, float]:
    """Step name -> seconds, to the millisecond, as the report stores them."""
    return {name: round(value, 3) for name, value in timings_s.items()}


def build_report(
    *,
    fingerprint: str,
    config: dict[str, Any],
    inputs: dict[str, Any],
    vocab: dict[str, Any],
    residuals: dict[str, Any],
    document_start: dict[str, Any],
    timings_s: dict[str, float],
    world_size: int,
    device: str,
) -> dict[str, Any]:
    """Assemble the report dict (see the module docstring for the schema)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "omp_init_version": package_versions().get("omp_init"),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": fingerprint,
        "config": config,
        "inputs": inputs,
        "vocab": vocab,
        "residuals": residuals,
        "document_start": document_start,
        "timings_s": rounded_timings(timings_s),
        "world_size": world_size,
        "device": device,
        "versions": package_versions(),
    }


def summarize(report: dict[str, Any]) -> str:
    """A few human lines for stdout at the end of a run."""
    vocab = report["vocab"]
    lines = [
        f"new vocabulary: {vocab['new_size']:,} tokens ({vocab['rows_written']:,} rows written)",
        f"  copied from base: {vocab['copied']:,}  built by {report['config']['method']}: {vocab['solved']:,}"
        f"  fallback: {vocab['fallback']:,}  padding: {vocab['padding']:,}",
    ]
    if report.get("inputs", {}).get("donor_is_base") and vocab["fallback"]:
        lines.append("  no donor model (the base stands in), so no new token has a donor row: all are fallback tokens")
    if vocab.get("fallback_built") and report["config"]["method"] != "mean":
        lines.append(
            f"  {vocab['fallback_built']:,} fallback tokens (no base or donor row) built as "
            f"{_FALLBACK_BUILDER.get(report['config']['method'], report['config']['method'])}; the others are the mean row"
        )
    for name, stats in report["residuals"].items():
        if stats.get("count"):
            lines.append(
                f"  {name} residual (relative, donor space): mean {stats['mean_relative']:.3f}"
                f"  median {stats['median_relative']:.3f}  p90 {stats['p90_relative']:.3f}"
            )
    worst = max((stats["mean_relative"] for stats in report["residuals"].values() if stats.get("count")), default=0.0)
    if worst >= HIGH_RESIDUAL and report["config"].get("k", 0) < 128:
        lines.append(
            f"  hint: a mean residual of {worst:.2f} leaves much of the donor rows unexplained; --k 128 measured "
            "1.3-1.5% lower bits-per-byte at residuals of 0.48-0.61 (nothing at 0.33), for about 2.6 times the OMP "
            "time (docs/quality.md, 'Choosing k')"
        )
    for name, capped in report.get("row_norm_cap", {}).items():
        if capped["capped"]:
            lines.append(f"  {name}: {capped['capped']:,} built rows scaled down to the norm cap {capped['cap']:.4g}")
    lines.append(f"  total time: {report['timings_s'].get('total', 0.0):.1f} s on {report['world_size']} rank(s), {report['device']}")
    return "\n".join(lines)
