"""Speed and accuracy of solve_omp's paths (exact fp32 / exact bf16 / screened) on one problem.

The problem is either synthetic embedding-like rows (a common offset, a low-rank part with a
decaying spectrum, isotropic noise, log-normal row norms) or the real one of a base/donor pair:
the donor's input-embedding rows of the shared tokens (the dictionary) and of the donor's
tokens the base lacks (the targets), from ``omp_init.vocab``'s alignment.

Every path is timed on its own number of targets (the expensive exact fp32 reference on a
subsample: ``--n-reference``); the mean relative residual of each path is compared with exact
fp32 OMP on the same reference tokens. ``--mergekit-omp PATH`` also times mergekit's
``batch_omp`` (fp32, 512 targets per batch, as ``mergekit-tokensurgeon`` calls it), loaded
from that file of a mergekit checkout. Prints one JSON object: the command line, the machine
(CPU model, threads, torch, load average before and after) and per path the time, tokens/s,
the full-T time extrapolated from it, and the residuals.

    python scripts/bench_omp.py --threads 1 --n-atoms 20000 --dim 896 --n-targets 1024
    python scripts/bench_omp.py --threads 1 --base /work/cache/hf/qwen05 \\
        --donor /work/cache/hf/smollm2 --n-reference 1024
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import types

import torch

from omp_init import omp, omp_exact, omp_screened


def make_rows(n_rows: int, dim: int, generator: torch.Generator, parts: dict) -> torch.Tensor:
    low_rank = torch.randn(n_rows, parts["basis"].shape[0], generator=generator) @ parts["basis"]
    rows = parts["offset"] + low_rank + 0.5 * torch.randn(n_rows, dim, generator=generator)
    return rows * torch.exp(0.3 * torch.randn(n_rows, 1, generator=generator))


def synthetic_problem(args) -> tuple[torch.Tensor, torch.Tensor, str]:
    generator = torch.Generator().manual_seed(args.seed)
    spectrum = 1.0 / torch.arange(1, args.rank + 1).float().sqrt()
    parts = {
        "basis": spectrum[:, None] * torch.randn(args.rank, args.dim, generator=generator),
        "offset": 1.5 * torch.randn(args.dim, generator=generator),
    }
    dictionary = make_rows(args.n_atoms, args.dim, generator, parts)
    targets = make_rows(args.n_targets, args.dim, generator, parts)
    return dictionary, targets, "synthetic"


def real_problem(base_dir: str, donor_dir: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Dictionary and targets of transplanting the donor's tokenizer into the base."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    from omp_init.vocab import align_vocabularies, token_bytes

    base = token_bytes(AutoTokenizer.from_pretrained(base_dir))
    donor = token_bytes(AutoTokenizer.from_pretrained(donor_dir))
    alignment = align_vocabularies(base, donor, donor)
    with safe_open(os.path.join(donor_dir, "model.safetensors"), "pt") as handle:
        embed = handle.get_tensor("model.embed_tokens.weight").float()
    name = f"{os.path.basename(base_dir.rstrip('/'))} <- {os.path.basename(donor_dir.rstrip('/'))}"
    return embed[alignment.dict_donor_ids], embed[alignment.solve_donor_ids], name


def machine_info(device: str) -> dict:
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if "model name" in line)
    except (OSError, StopIteration):
        pass
    info = {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "platform": platform.platform(),
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def load_mergekit_omp(path: str):
    """mergekit's ``batch_omp`` from a file of a mergekit checkout, without importing mergekit."""
    package_dir = os.path.dirname(os.path.abspath(path))
    for name in ("mergekit", "mergekit.tokensurgeon"):
        module = types.ModuleType(name)
        module.__path__ = [package_dir]
        sys.modules.setdefault(name, module)
    spec = importlib.util.spec_from_file_location("mergekit.tokensurgeon.omp", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.batch_omp


def timed(function, device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    value = function()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return value, time.perf_counter() - start_wall, time.process_time() - start_cpu


def summarize(relative: torch.Tensor, n_rows: int, elapsed_s: float, cpu_s: float, total: int):
    return {
        "n_targets": n_rows,
        "elapsed_s": round(elapsed_s, 3),
        "cpu_s": round(cpu_s, 3),
        "tokens_per_s": round(n_rows / elapsed_s, 2),
        "ms_per_token": round(1e3 * elapsed_s / n_rows, 3),
        "extrapolated_full_s": round(elapsed_s * total / n_rows, 1),
        "mean_relative_residual": round(float(relative.mean()), 6),
        "p95_relative_residual": round(float(relative.quantile(0.95)), 6),
    }


def run_mergekit(batch_omp, dictionary, targets, k, device):
    def solve():
        parts = []
        for start in range(0, targets.shape[0], 512):  # mergekit-tokensurgeon's batch size
            batch = targets[start : start + 512]
            indices, coefficients = batch_omp(batch, dictionary, k)
            fitted = torch.bmm(coefficients.unsqueeze(1), dictionary[indices]).squeeze(1)
            parts.append((batch - fitted).norm(dim=1) / batch.norm(dim=1))
        return torch.cat(parts)

    return timed(solve, device)


def time_variants(specs, rounds, prepared, targets, k, batch, device, exact_mean, n_ref) -> dict:
    """Best-of-``rounds`` time and residual ratio of each screened variant, run alternately
    (this VM's speed drifts by +-15% between runs, so variants are timed side by side)."""
    saved = (omp_screened._N_CANDIDATES, omp_screened._N_REPLACED,
             omp_screened._SCREEN_SCHEDULE, omp_screened._LARGE_SCREEN_SCHEDULE,
             omp_screened._GRAM_SCREEN_MAX_STEP)  # fmt: skip
    best: dict[str, dict] = {}
    try:
        for _ in range(rounds):
            for spec in specs:
                n_candidates, n_replaced, steps, *gram_steps = spec.split(":")
                omp_screened._N_CANDIDATES, omp_screened._N_REPLACED = int(n_candidates), int(n_replaced)
                omp_screened._GRAM_SCREEN_MAX_STEP = int(gram_steps[0]) if gram_steps else saved[4]
                # only the listed steps, whatever the dictionary's size
                schedule = (tuple(int(x) for x in steps.split(",")), 1 << 30)
                omp_screened._SCREEN_SCHEDULE = omp_screened._LARGE_SCREEN_SCHEDULE = schedule
                result, seconds, _ = timed(
                    lambda: omp.solve_omp(prepared, targets, k, batch_size=batch, algorithm="screened"),
                    device,
                )
                ratio = float(result.relative_residual()[:n_ref].mean() / exact_mean)
                if spec not in best or seconds < best[spec]["best_s"]:
                    best[spec] = {"best_s": round(seconds, 2),
                                  "ms_per_target": round(1000 * seconds / targets.shape[0], 3),
                                  "mean_residual_over_exact_fp32": round(ratio, 5)}  # fmt: skip
    finally:
        (omp_screened._N_CANDIDATES, omp_screened._N_REPLACED,
         omp_screened._SCREEN_SCHEDULE, omp_screened._LARGE_SCREEN_SCHEDULE,
         omp_screened._GRAM_SCREEN_MAX_STEP) = saved  # fmt: skip
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="base model dir (real problem; with --donor)")
    parser.add_argument("--donor", help="donor model dir (real problem; with --base)")
    parser.add_argument("--n-atoms", type=int, default=20000, help="synthetic dictionary rows")
    parser.add_argument("--dim", type=int, default=896, help="synthetic width")
    parser.add_argument("--rank", type=int, default=64, help="synthetic low-rank part")
    parser.add_argument(
        "--n-targets", type=int, default=None, help="targets timed (default: all real / 256)"
    )
    parser.add_argument(
        "--n-reference", type=int, default=256, help="targets also solved by exact fp32"
    )
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--skip-exact-bf16", action="store_true", help="skip the exact bf16 run")
    parser.add_argument("--mergekit-omp", help="path of mergekit/tokensurgeon/omp.py to time")
    parser.add_argument(
        "--no-rescore", action="store_true", help="also run exact bf16 without re-scoring"
    )
    parser.add_argument(
        "--screened-variants",
        nargs="+",
        metavar="M:R:STEPS[:G]",
        help="also time the screened path with M candidates, R replaced per screen and these "
        "comma-separated screen steps (e.g. 256:160:0,2,8,16,32,48), alternating for --rounds; "
        "G: screens up to step G score through the Gram on CPU (default: the solver's, 8)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of --screened-variants")
    parser.add_argument(
        "--no-gram",
        action="store_true",
        help="run the screened path without its Gram matrix (as for dictionaries whose Gram "
        "does not fit in memory; chosen by itself when it does not)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    if args.base and args.donor:
        dictionary, targets, name = real_problem(args.base, args.donor)
    else:
        args.n_targets = args.n_targets or 256
        dictionary, targets, name = synthetic_problem(args)
    total_targets = targets.shape[0]
    order = torch.randperm(total_targets, generator=torch.Generator().manual_seed(args.seed))
    n_timed = min(args.n_targets or total_targets, total_targets)
    targets = targets[order[:n_timed]].to(args.device)
    dictionary = dictionary.to(args.device)
    reference = targets[: min(args.n_reference, n_timed)]
    k, batch, device = args.k, args.batch_size, args.device

    results = {}
    exact, seconds, cpu_s = timed(
        lambda: omp.solve_omp(
            dictionary, reference, k, score_dtype=torch.float32, batch_size=512, algorithm="exact"
        ),
        device,
    )
    exact_mean = exact.relative_residual().mean()
    results["exact_fp32"] = summarize(
        exact.relative_residual(), reference.shape[0], seconds, cpu_s, total_targets
    )

    def add(label, relative, n_rows, seconds, cpu_s, reference_relative):
        results[label] = summarize(relative, n_rows, seconds, cpu_s, total_targets)
        ratio = reference_relative.mean() / exact_mean
        results[label]["mean_residual_over_exact_fp32"] = round(float(ratio), 5)

    n_ref = reference.shape[0]
    if not args.skip_exact_bf16:
        fast, seconds, cpu_s = timed(
            lambda: omp.solve_omp(
                dictionary, targets, k, score_dtype=torch.bfloat16, batch_size=batch,
                algorithm="exact",
            ),
            device,
        )  # fmt: skip
        add("exact_bf16", fast.relative_residual(), n_timed, seconds, cpu_s,
            fast.relative_residual()[:n_ref])  # fmt: skip
        same = (fast.indices[:n_ref] == exact.indices).all(1).float().mean()
        results["exact_bf16"]["rows_with_same_picks_as_fp32"] = round(float(same), 4)
    if args.no_rescore:
        saved, omp_exact._N_RESCORED = omp_exact._N_RESCORED, 1
        try:
            plain, seconds, cpu_s = timed(
                lambda: omp.solve_omp(
                    dictionary, reference, k, score_dtype=torch.bfloat16, batch_size=batch,
                    algorithm="exact",
                ),
                device,
            )  # fmt: skip
        finally:
            omp_exact._N_RESCORED = saved
        add("exact_bf16_no_rescore", plain.relative_residual(), n_ref, seconds, cpu_s,
            plain.relative_residual())  # fmt: skip

    # prepare_dictionary builds the Gram only where it fits the solver's budget (an 18 GB Gram
    # would not), as in a transplant; --no-gram gives it no budget at all.
    prepared, prepare_s, prepare_cpu_s = timed(
        lambda: omp.prepare_dictionary(
            dictionary, score_dtype=torch.bfloat16, algorithm="screened",
            gram_memory_bytes=0 if args.no_gram else None,
        ),
        device,
    )  # fmt: skip
    screened, seconds, cpu_s = timed(
        lambda: omp.solve_omp(prepared, targets, k, batch_size=batch, algorithm="screened"),
        device,
    )
    add("screened_bf16", screened.relative_residual(), n_timed, seconds, cpu_s,
        screened.relative_residual()[:n_ref])  # fmt: skip
    results["screened_bf16"]["path"] = prepared.path_name
    results["screened_bf16"]["prepare_gram_s"] = round(prepare_s, 3)
    results["screened_bf16"]["prepare_gram_cpu_s"] = round(prepare_cpu_s, 3)
    results["screened_bf16"]["extrapolated_full_with_gram_s"] = round(
        prepare_s + seconds * total_targets / n_timed, 1
    )
    if args.screened_variants:
        results["screened_variants"] = time_variants(
            args.screened_variants, args.rounds, prepared, targets, k, batch, device, exact_mean, n_ref
        )
    prepared = None  # free the Gram before the mergekit run

    if args.mergekit_omp:
        batch_omp = load_mergekit_omp(args.mergekit_omp)
        relative, seconds, cpu_s = run_mergekit(batch_omp, dictionary, reference, k, device)
        add("mergekit_batch_omp_fp32", relative, n_ref, seconds, cpu_s, relative)
        mergekit_full = seconds * total_targets / n_ref
        screened_full = results["screened_bf16"]["extrapolated_full_with_gram_s"]
        results["screened_speedup_over_mergekit"] = round(mergekit_full / screened_full, 2)

    print(
        json.dumps(
            {
                "command": " ".join(["python"] + sys.argv),
                "machine": machine_info(device),
                "load_average_before_after": [list(load_before), list(os.getloadavg())],
                "problem": {
                    "name": name,
                    "n_atoms": dictionary.shape[0],
                    "dim": dictionary.shape[1],
                    "n_targets_total": total_targets,
                    "n_targets_timed": n_timed,
                    "n_reference": n_ref,
                    "k": k,
                    "batch_size": batch,
                },
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
