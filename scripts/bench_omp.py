"""Speed and accuracy of solve_omp with bf16 versus fp32 scoring, on embedding-like rows.

Rows are a common mean offset plus a low-rank part with a decaying spectrum plus isotropic
noise, with log-normal row norms (frequent tokens have different norms from rare ones), like
real input embeddings. Prints one JSON object: the command line, the machine, and per score
dtype the tokens/s and the mean / p95 relative residual, plus how often the bf16 picks equal
the fp32 picks. ``--no-rescore`` also runs bf16 without the exact re-scoring of its top
candidates, to show what that step buys.

    python scripts/bench_omp.py --n-atoms 20000 --dim 896 --n-targets 256 --k 64
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from omp_init import omp


def make_rows(
    n_rows: int, dim: int, rank: int, generator: torch.Generator, parts: dict
) -> torch.Tensor:
    low_rank = torch.randn(n_rows, rank, generator=generator) @ parts["basis"]
    rows = parts["offset"] + low_rank + 0.5 * torch.randn(n_rows, dim, generator=generator)
    scale = torch.exp(0.3 * torch.randn(n_rows, 1, generator=generator))
    return rows * scale


def run_one(dictionary, targets, k, score_dtype, batch_size):
    start = time.perf_counter()
    result = omp.solve_omp(dictionary, targets, k, score_dtype=score_dtype, batch_size=batch_size)
    elapsed_s = time.perf_counter() - start
    relative = result.relative_residual()
    summary = {
        "elapsed_s": round(elapsed_s, 3),
        "tokens_per_s": round(targets.shape[0] / elapsed_s, 2),
        "mean_relative_residual": round(float(relative.mean()), 6),
        "p95_relative_residual": round(float(relative.quantile(0.95)), 6),
    }
    return result, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-atoms", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=896)
    parser.add_argument("--n-targets", type=int, default=256)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--no-rescore", action="store_true", help="also run bf16 without re-scoring"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(args.seed)
    spectrum = 1.0 / torch.arange(1, args.rank + 1).float().sqrt()
    parts = {
        "basis": spectrum[:, None] * torch.randn(args.rank, args.dim, generator=generator),
        "offset": 1.5 * torch.randn(args.dim, generator=generator),
    }
    dictionary = make_rows(args.n_atoms, args.dim, args.rank, generator, parts).to(args.device)
    targets = make_rows(args.n_targets, args.dim, args.rank, generator, parts).to(args.device)

    results = {}
    exact, results["float32"] = run_one(dictionary, targets, args.k, torch.float32, args.batch_size)
    fast, results["bfloat16"] = run_one(
        dictionary, targets, args.k, torch.bfloat16, args.batch_size
    )
    results["bfloat16"]["rows_with_same_picks_as_fp32"] = float(
        (fast.indices == exact.indices).all(1).float().mean()
    )
    if args.no_rescore:
        saved, omp._N_CANDIDATES = omp._N_CANDIDATES, 1
        try:
            plain, results["bfloat16_no_rescore"] = run_one(
                dictionary, targets, args.k, torch.bfloat16, args.batch_size
            )
        finally:
            omp._N_CANDIDATES = saved
        same = (plain.indices == exact.indices).all(1).float().mean()
        results["bfloat16_no_rescore"]["rows_with_same_picks_as_fp32"] = float(same)
    ratio = (
        results["bfloat16"]["mean_relative_residual"] / results["float32"]["mean_relative_residual"]
    )
    print(
        json.dumps(
            {
                "command": " ".join(["python"] + sys.argv),
                "machine": {
                    "platform": platform.platform(),
                    "processor": platform.processor(),
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "device": args.device,
                },
                "problem": vars(args),
                "results": results,
                "bf16_over_fp32_mean_residual": round(ratio, 5),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
