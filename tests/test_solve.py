"""A failed OMP solve stops every rank with a readable message instead of a hang or a torch traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import omp_init.solve as solve_module
from omp_init.cli import main
from omp_init.distributed import DistContext
from omp_init.errors import SolveMemoryError
from omp_init.resume import ChunkStore

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _solve(tmp_path: Path, ctx: DistContext = CPU):
    generator = torch.Generator().manual_seed(0)
    dictionary = torch.randn(300, 16, generator=generator)
    targets = torch.randn(40, 16, generator=generator)
    store = ChunkStore(tmp_path / "chunks", "fp", enabled=False)
    return solve_module.solve_pass(
        "embed", dictionary, targets, 4, ctx=ctx, store=store, score_dtype=torch.float32, show_progress=False
    )


def _failing_solver(exc: BaseException):
    def solve_omp(*args, **kwargs):
        raise exc

    return solve_omp


@pytest.mark.parametrize(
    ("exc", "size"),
    [
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                "you tried to allocate 3221225472 bytes. Error code 12 (Cannot allocate memory)"
            ),
            "3.00 GiB",
        ),
        (MemoryError(), None),
    ],
)
def test_out_of_memory_names_the_fix(tmp_path, monkeypatch, exc, size):
    monkeypatch.setattr(solve_module, "solve_omp", _failing_solver(exc))
    with pytest.raises(SolveMemoryError) as info:
        _solve(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "out of memory on cpu during the OMP embed pass (40 new tokens, a 300 x 16 dictionary" in message
    assert "--max-batch-tokens 64" in message  # a quarter of the chunk, at least 64
    assert "--device cpu" not in message
    assert ("tried to allocate" in message) == (size is not None)
    if size:
        assert f"tried to allocate {size}" in message


def test_cuda_out_of_memory_suggests_the_cpu():
    exc = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has 1.2 GiB free.")
    ctx = DistContext(rank=1, world_size=2, local_rank=1, device=torch.device("cuda", 1))
    error = solve_module._readable_solve_error(exc, "lm_head", torch.zeros(5000, 64), 9000, 1024, ctx)
    assert isinstance(error, SolveMemoryError)
    assert str(error).startswith("[rank 1] out of memory on cuda:1 during the OMP lm_head pass (9,000 new tokens")
    assert "tried to allocate 2.00 GiB" in str(error)
    assert "--max-batch-tokens 256 (this pass used 1024 rows per chunk)" in str(error)
    assert "--device cpu" in str(error)


def test_other_solver_errors_are_not_disguised(tmp_path, monkeypatch):
    bug = RuntimeError("shape mismatch in a kernel")
    monkeypatch.setattr(solve_module, "solve_omp", _failing_solver(bug))
    with pytest.raises(RuntimeError) as info:
        _solve(tmp_path)
    assert info.value is bug


def test_cli_out_of_memory_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, byte_bpe_untied_model_dir, sp_model_dir):
    oom = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1073741824 bytes.")
    monkeypatch.setattr(solve_module, "solve_omp", _failing_solver(oom))
    out = tmp_path / "out"
    argv = ["transplant", "--base", str(byte_bpe_untied_model_dir), "--donor", str(sp_model_dir), "--output", str(out),
            "--k", "8", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("OMP embed")]  # bars
    assert len(err) == 1 and err[0].startswith("omp-init: error: out of memory on cpu during the OMP embed pass")
    assert "tried to allocate 1.00 GiB" in err[0]
    assert not out.exists()


_RANK_SCRIPT = """
import sys, datetime
import torch, torch.distributed as dist
import omp_init.solve as solve_module
from omp_init.distributed import DistContext
from omp_init.resume import ChunkStore

dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
rank = dist.get_rank()
if rank == 1:
    def solve_omp(*args, **kwargs):
        raise RuntimeError("kernel bug on rank 1")
    solve_module.solve_omp = solve_omp
ctx = DistContext(rank, 2, rank, torch.device("cpu"))
dictionary, targets = torch.randn(300, 16), torch.randn(40, 16)
store = ChunkStore(sys.argv[1] + "/chunks", "fp", enabled=False)
try:
    solve_module.solve_pass("embed", dictionary, targets, 4, ctx=ctx, store=store,
                            score_dtype=torch.float32, max_batch_tokens=8, show_progress=False)
    outcome = "ok"
except Exception as exc:
    outcome = f"{type(exc).__name__}: {exc}"
with open(f"{sys.argv[1]}/rank{rank}.txt", "w") as f:
    f.write(outcome)
"""


@pytest.mark.slow
def test_one_failed_rank_stops_the_others(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent(_RANK_SCRIPT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29519",
           str(script), str(tmp_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "rank1.txt").read_text() == "RuntimeError: kernel bug on rank 1"
    # rank 0 solved its own chunks, then heard of rank 1's failure before the gather
    assert (tmp_path / "rank0.txt").read_text().startswith("DistributedError: rank(s) 1 failed")
