"""The report files of an evaluation: ``eval.json``, ``eval.md`` and ``eval.png``.

Scoring is ``evaluate.py``'s job; this module only writes what
:func:`omp_init.evaluate.evaluate_models` returned: the result as JSON, markdown tables (bits per
byte with the change vs a baseline, tokens per byte; one row per text) and, when matplotlib is
installed, a bar chart. Kept apart so that scoring does not carry the formatting and plotting.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

from .evaluate import ALL_TEXTS, compare_to_baseline

logger = logging.getLogger(__name__)

REPORT_FILES = ("eval.json", "eval.md", "eval.png")


def write_report(
    result: dict[str, Any], out_dir: str | Path, *, baseline: str | Path | None = None
) -> list[Path]:
    """Write ``eval.json``, ``eval.md`` and ``eval.png`` (when matplotlib is installed).

    Args:
        result: what :func:`omp_init.evaluate.evaluate_models` returned (not modified).
        out_dir: created if missing; existing report files in it are replaced.
        baseline: compare with this model (label or path); defaults to the result's baseline.

    Returns:
        The paths written.
    """
    result = copy.deepcopy(result)
    if baseline is not None or result.get("baseline"):
        compare_to_baseline(result, baseline if baseline is not None else result["baseline"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path, png_path = (out_dir / name for name in REPORT_FILES)
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    markdown_path.write_text(format_markdown(result), encoding="utf-8")
    written = [json_path, markdown_path]
    if _write_png(result, png_path):
        written.append(png_path)
    logger.info("wrote %s", ", ".join(str(p) for p in written))
    return written


def format_markdown(result: dict[str, Any]) -> str:
    """Two tables (bits per byte with the change vs the baseline, tokens per byte): rows = texts."""
    models, baseline = result["models"], result.get("baseline")
    settings = result["settings"]
    lines = [
        "# Bits per byte",
        "",
        f"Lower is better. Window {settings['max_window_tokens']} tokens, stride {settings['stride'] or 'none'}, "
        f"dtype {settings['dtype']}, max bytes {settings['max_bytes'] or 'all'}"
        + (f"; Δ% vs baseline `{baseline}`." if baseline else "."),
        "",
    ]

    def bpb_cell(name: str, text: str) -> str:
        cell = f"{models[name]['texts'][text]['bits_per_byte']:.4f}"
        if baseline and name != baseline:
            cell += f" ({models[name]['bpb_change_pct'][text]:+.2f}%)"
        return cell

    lines += _markdown_table(models, bpb_cell)
    lines += ["", "## Tokens per byte", ""]
    lines += _markdown_table(
        models, lambda name, text: f"{models[name]['texts'][text]['tokens_per_byte']:.4f}"
    )
    return "\n".join(lines) + "\n"


def _markdown_table(models: dict[str, Any], cell) -> list[str]:
    names = list(models)
    # Every model has the same texts, ALL_TEXTS last.
    texts = list(next(iter(models.values()))["texts"])
    lines = [
        "| text | " + " | ".join(f"`{name}`" for name in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for text in texts:
        label = f"**{text}**" if text == ALL_TEXTS else text
        lines.append(f"| {label} | " + " | ".join(cell(name, text) for name in names) + " |")
    return lines


def _write_png(result: dict[str, Any], path: Path) -> bool:
    """Grouped bar chart of bits per byte: one group per text, one bar per model."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning(
            "matplotlib is not installed; skipping %s (pip install matplotlib)", path.name
        )
        return False
    models = result["models"]
    texts = list(next(iter(models.values()))["texts"])
    width = 0.8 / len(models)
    figure = Figure(figsize=(max(6.0, 1.2 * len(texts) + 2), 4.5), layout="constrained")
    FigureCanvasAgg(figure)  # the Agg canvas: no display, no global pyplot state
    axes = figure.add_subplot()
    for index, (name, entry) in enumerate(models.items()):
        offsets = [x + (index - (len(models) - 1) / 2) * width for x in range(len(texts))]
        axes.bar(offsets, [entry["texts"][t]["bits_per_byte"] for t in texts], width, label=name)
    axes.set_xticks(range(len(texts)), texts, rotation=30, ha="right")
    axes.set_ylabel("bits per byte (lower is better)")
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=120)
    return True
