"""Side by side with mergekit-tokensurgeon: OMP wall time and mean residual on one real pair.

Both solvers get the same problem: the donor rows of the shared tokens (dictionary) and of the
new tokens (targets), from omp-init's byte alignment of the two tokenizers. mergekit's solver
(``mergekit.tokensurgeon.batch_omp``, fp32, 512 targets per batch as its CLI does) runs in the
Python environment given by ``--mergekit-python`` (mergekit pins its own dependencies, so it
lives in a venv of its own); omp-init's solver runs here with its defaults (bf16 scoring,
Gram-screened path when it pays), ``--repeats`` times, and the speed-up is taken at the
median of those runs. Optionally (``--end-to-end``) both command lines run too.

Default pair: Qwen2.5-Coder-0.5B (base) <- SmolLM2-135M (donor), k=64; models come from the
package registry as in ``omp-init demo``. Usage::

    python -m venv mk && mk/bin/pip install torch==2.13.0 mergekit
    HF_HUB_OFFLINE=1 python scripts/bench_vs_mergekit.py --mergekit-python mk/bin/python --out bench_mk.json

Prints JSON with its own command line and the machine. Nothing imports this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# huggingface_hub reads this when it is imported, so it must be set before torch/transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

from omp_init.checkpoint import locate_embeddings  # noqa: E402
from omp_init.omp import prepare_dictionary, solve_omp  # noqa: E402
from omp_init.real_models import fetch_registry_model  # noqa: E402
from omp_init.sources import load_tokenizer, resolve_model  # noqa: E402
from omp_init.vocab import align_vocabularies, token_bytes  # noqa: E402

_MERGEKIT_RUNNER = r"""
import json, sys, time, torch
from mergekit.tokensurgeon import batch_omp
problem = torch.load(sys.argv[1])
D, Y, k = problem["dictionary"], problem["targets"], int(problem["k"])
started = time.perf_counter()
residuals = []
for start in range(0, Y.shape[0], 512):
    y = Y[start:start + 512]
    idx, coef = batch_omp(y, D, k)
    approx = torch.bmm(coef.unsqueeze(1).float(), D[idx].float()).squeeze(1)
    residuals.append((y - approx).norm(dim=1))
elapsed = time.perf_counter() - started
r = torch.cat(residuals)
print(json.dumps({"elapsed_s": elapsed, "mean_residual": r.mean().item(),
                  "mean_relative_residual": (r / Y.norm(dim=1).clamp_min(1e-12)).mean().item(),
                  "threads": torch.get_num_threads()}))
"""


def _problem(base: str, donor: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Dictionary [N, d] and targets [T, d] in donor space, fp32."""
    base_src, donor_src = resolve_model(base, role="base"), resolve_model(donor, role="donor")
    base_bytes = token_bytes(load_tokenizer(base_src.local_dir, role="base"))
    donor_bytes = token_bytes(load_tokenizer(donor_src.local_dir, role="donor"))
    alignment = align_vocabularies(base_bytes, donor_bytes, donor_bytes)
    layout = locate_embeddings(donor_src.local_dir, donor_src.config, role="donor")
    with safe_open(Path(donor_src.local_dir) / layout.embed_in_file, "pt") as handle:
        embed = handle.get_tensor(layout.embed_in_name).float()
    return embed[torch.tensor(alignment.dict_donor_ids)], embed[torch.tensor(alignment.solve_donor_ids)]


def _ours(dictionary: torch.Tensor, targets: torch.Tensor, k: int, algorithm: str, score_dtype) -> dict:
    started = time.perf_counter()
    prepared = prepare_dictionary(dictionary, score_dtype=score_dtype, algorithm=algorithm, n_targets=targets.shape[0], k=k)
    result = solve_omp(prepared, targets, k, algorithm=algorithm)
    elapsed = time.perf_counter() - started
    return {
        "elapsed_s": elapsed,
        "mean_residual": result.residual_norm.mean().item(),
        "mean_relative_residual": result.relative_residual().mean().item(),
        "algorithm": algorithm,
        "score_dtype": str(score_dtype),
    }


def _end_to_end(args, work: Path, base: str, donor: str) -> dict:
    """Wall time of the two command lines (each writes a full checkpoint)."""
    out = {}
    mk_bin = Path(args.mergekit_python).parent / "mergekit-tokensurgeon"
    for name, cmd in (
        ("mergekit", [str(mk_bin), args.base_dir or base, args.donor_dir or donor, str(work / "mk_out"), "-k", str(args.k)]),
        ("omp_init", [sys.executable, "-m", "omp_init", "transplant", "--base", base, "--donor", donor,
                      "--output", str(work / "oi_out"), "--k", str(args.k), "--overwrite", "--no-resume"]),
    ):  # fmt: skip
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        out[name] = {"elapsed_s": round(time.perf_counter() - started, 1), "returncode": proc.returncode}
        if proc.returncode:
            out[name]["stderr_tail"] = proc.stderr[-800:]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="base model (default: Qwen2.5-Coder-0.5B from the registry)")
    parser.add_argument("--donor", help="donor model (default: SmolLM2-135M from the registry)")
    parser.add_argument("--base-dir", help="HF dir of the base for mergekit's CLI (it reads no .gguf)")
    parser.add_argument("--donor-dir", help="HF dir of the donor for mergekit's CLI")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--mergekit-python", default="python", help="a Python that can import mergekit")
    parser.add_argument("--end-to-end", action="store_true", help="also time both command lines")
    parser.add_argument("--skip-exact", action="store_true", help="skip omp-init's exact fp32 reference run")
    parser.add_argument(
        "--repeats", type=int, default=3,
        help="omp-init runs (fresh prepare + solve each); the speed-up uses their median, since a "
        "15 s run on a shared VM drifts by +-15%% while mergekit's 5 min run averages that out",
    )
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    base = args.base or str(fetch_registry_model("qwen2.5-coder-0.5b"))
    donor = args.donor or str(fetch_registry_model("smollm2-135m"))
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_mk_"))
    work.mkdir(parents=True, exist_ok=True)
    dictionary, targets = _problem(base, donor)
    problem_path = work / "problem.pt"
    torch.save({"dictionary": dictionary, "targets": targets, "k": args.k}, problem_path)

    proc = subprocess.run([args.mergekit_python, "-c", _MERGEKIT_RUNNER, str(problem_path)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"mergekit run failed (is mergekit importable by {args.mergekit_python}?):\n{proc.stderr[-2000:]}")
    mergekit = json.loads(proc.stdout.strip().splitlines()[-1])
    repeats = [_ours(dictionary, targets, args.k, "auto", torch.bfloat16) for _ in range(args.repeats)]
    ours = dict(repeats[0])
    times = sorted(run["elapsed_s"] for run in repeats)
    ours["elapsed_s"] = statistics.median(times)
    ours["elapsed_s_each"] = [round(run["elapsed_s"], 2) for run in repeats]
    runs = {"mergekit_batch_omp_fp32": mergekit, "omp_init_default": ours}
    ratios = {}
    if not args.skip_exact:
        exact = runs["omp_init_exact_fp32"] = _ours(dictionary, targets, args.k, "exact", torch.float32)
        ratios["mean_residual_ratio_vs_exact_fp32"] = round(ours["mean_residual"] / exact["mean_residual"], 4)
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_avg_at_end": os.getloadavg(),
        },
        "problem": {"n_dictionary": dictionary.shape[0], "n_targets": targets.shape[0], "dim": dictionary.shape[1], "k": args.k},
        "runs": runs,
        "speedup_vs_mergekit": round(mergekit["elapsed_s"] / ours["elapsed_s"], 2),
        "speedup_range_over_repeats": [round(mergekit["elapsed_s"] / t, 2) for t in (times[-1], times[0])],
        "mean_residual_ratio_vs_mergekit": round(ours["mean_residual"] / mergekit["mean_residual"], 4),
        **ratios,
    }
    if args.end_to_end:
        report["end_to_end"] = _end_to_end(args, work, base, donor)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
