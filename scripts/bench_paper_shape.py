"""Throughput of solve_omp on a synthetic problem of the paper's shape (T=41k, N=110k, d=3584).

Goddard & Fernandes Neto (2025) transplant a 151k-token vocabulary into 3584-wide models:
about 110k shared tokens (the dictionary), 41k new ones (the targets), k=64. This script builds
embedding-like rows of that shape on ``--device`` (a common offset, a decaying spectrum,
log-normal norms), prepares the dictionary as ``solve.py`` would (``algorithm`` auto: the
screened path, with its [N, N] Gram where that fits the device's budget and without it where
not; the exact path where that is cheaper), solves a sample of ``--sample`` targets and
extrapolates to all T, stating that it did. Where the Gram does not fit, it also times one
block of Gram rows and extrapolates the time the whole Gram would take. Prints one JSON object
with its command line and the machine.

    python scripts/bench_paper_shape.py --threads 2 --sample 32              # CPU
    python scripts/bench_paper_shape.py --device cuda --sample 4096          # one GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from omp_init import omp, omp_screened

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_omp import machine_info  # noqa: E402  (scripts/ is not a package)


def embedding_like_rows(n_rows, dim, parts, generator, device, chunk=8192):
    """[n_rows, dim] float32 rows on ``device``, built chunk by chunk (bounded temporaries)."""
    out = torch.empty(n_rows, dim, device=device)
    for start in range(0, n_rows, chunk):
        n = min(chunk, n_rows - start)
        # The spectrum along the axes: a rotation would not change what OMP sees.
        rows = torch.randn(n, dim, generator=generator, device=device) * parts["spectrum"]
        rows += parts["offset"]
        out[start : start + n] = rows * torch.exp(
            0.15 * torch.randn(n, 1, generator=generator, device=device)
        )
    return out


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gram_block_estimate(prepared_atoms: torch.Tensor, device: str) -> dict:
    """Time one block of Gram rows and extrapolate the whole (half-product) Gram."""
    n_atoms = prepared_atoms.shape[0]
    block = prepared_atoms[: omp_screened._GRAM_BLOCK_ROWS]
    synchronize(device)
    start = time.perf_counter()
    torch.mm(block, prepared_atoms.T)
    synchronize(device)
    block_s = time.perf_counter() - start
    n_blocks = n_atoms / block.shape[0]
    return {
        "block_rows": block.shape[0],
        "block_s": round(block_s, 3),
        "estimated_gram_s": round(block_s * n_blocks / 2, 1),  # lower triangle only
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-atoms", type=int, default=110_000)
    parser.add_argument("--dim", type=int, default=3584)
    parser.add_argument("--n-targets", type=int, default=41_000, help="T the time is scaled to")
    parser.add_argument("--sample", type=int, default=32, help="targets actually solved")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--algorithm", choices=omp.ALGORITHMS, default="auto")
    parser.add_argument("--score-dtype", default="auto", help="auto, bfloat16 or float32")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--gram-memory-gib", type=float, default=None, help="Gram budget")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    load_before = os.getloadavg()
    score_dtype = omp.resolve_score_dtype(args.score_dtype, device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    dim = args.dim
    spectrum = torch.arange(1, dim + 1, device=device).float() ** -0.25
    offset = torch.randn(dim, generator=generator, device=device)
    parts = {
        "spectrum": spectrum,
        "offset": offset * (spectrum.square().sum().sqrt() / offset.norm()),
    }
    dictionary = embedding_like_rows(args.n_atoms, dim, parts, generator, device)
    targets = embedding_like_rows(args.sample, dim, parts, generator, device)
    budget = None if args.gram_memory_gib is None else int(args.gram_memory_gib * 2**30)
    budget_used = budget if budget is not None else omp._default_gram_budget(device)
    gram_bytes = omp_screened.gram_nbytes(args.n_atoms, score_dtype)

    synchronize(device)
    start = time.perf_counter()
    prepared = omp.prepare_dictionary(
        dictionary,
        score_dtype=score_dtype,
        algorithm=args.algorithm,
        n_targets=args.n_targets,
        k=args.k,
        gram_memory_bytes=budget,
    )
    synchronize(device)
    prepare_s = time.perf_counter() - start
    start = time.perf_counter()
    result = omp.solve_omp(prepared, targets, args.k, batch_size=args.batch_size)
    synchronize(device)
    solve_s = time.perf_counter() - start
    report = {
        "command": " ".join(["python"] + sys.argv),
        "machine": machine_info(device),
        "load_average_before_after": [list(load_before), list(os.getloadavg())],
        "problem": {
            "n_atoms": args.n_atoms,
            "dim": dim,
            "n_targets": args.n_targets,
            "k": args.k,
            "score_dtype": str(score_dtype),
        },
        "algorithm": prepared.path_name,
        "gram_bytes": gram_bytes,
        "gram_budget_bytes": budget_used,
        "prepare_s": round(prepare_s, 2),
        "sample_targets": args.sample,
        "sample_solve_s": round(solve_s, 2),
        "tokens_per_s": round(args.sample / solve_s, 3),
        "extrapolated_full_s": round(prepare_s + solve_s * args.n_targets / args.sample, 1),
        "extrapolated": f"from {args.sample} of {args.n_targets} targets, linear in T",
        "sample_mean_relative_residual": round(float(result.relative_residual().mean()), 5),
    }
    if prepared.gram is None and gram_bytes > budget_used:
        report["gram_if_it_fit"] = gram_block_estimate(prepared.score_atoms, device)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
