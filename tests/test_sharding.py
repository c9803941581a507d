"""Sharded and resumed runs give the same checkpoint as one uninterrupted single-process run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import omp_init.solve as solve_module
from omp_init import transplant

EMBED = "model.embed_tokens.weight"
HEAD = "lm_head.weight"


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model.safetensors")


def _args(base, donor, out):
    # A small chunk size so the work really is split into several chunks.
    return dict(base=str(base), donor=str(donor), output=str(out), k=8, device="cpu", max_batch_tokens=16)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, byte_bpe_untied_model_dir, sp_model_dir):
    out = tmp_path_factory.mktemp("ref") / "out"
    transplant(**_args(byte_bpe_untied_model_dir, sp_model_dir, out))
    return _weights(out)


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path, byte_bpe_untied_model_dir, sp_model_dir, reference):
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
        "-m", "omp_init", "--log-level", "WARNING", "transplant",
        "--base", str(byte_bpe_untied_model_dir), "--donor", str(sp_model_dir), "--output", str(out),
        "--k", "8", "--device", "cpu", "--max-batch-tokens", "16",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = _weights(out)
    for name in (EMBED, HEAD):
        assert (sharded[name] - reference[name]).abs().max() <= 1e-6
    # only rank 0 wrote: one report, no leftovers of the other rank
    assert (out / "omp_init_report.json").is_file()
    assert '"world_size": 2' in (out / "omp_init_report.json").read_text()
    assert not list(out.parent.glob(".out*"))


def test_killed_run_resumes_to_same_output(tmp_path, monkeypatch, byte_bpe_untied_model_dir, sp_model_dir, reference):
    out = tmp_path / "out"
    real_solve = solve_module.solve_omp
    calls = {"n": 0}

    def dying_solve(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return real_solve(*args, **kwargs)

    monkeypatch.setattr(solve_module, "solve_omp", dying_solve)
    with pytest.raises(KeyboardInterrupt):
        transplant(**_args(byte_bpe_untied_model_dir, sp_model_dir, out))
    assert not out.exists()
    partial = out.with_name("out.omp_init-partial")
    assert len(list(partial.glob("embed-*.pt"))) == 2

    calls["n"] = -1000  # no more deaths; count the chunks actually solved on restart
    transplant(**_args(byte_bpe_untied_model_dir, sp_model_dir, out))
    solved_on_restart = calls["n"] + 1000
    report = json.loads((out / "omp_init_report.json").read_text())
    chunks_per_pass = math.ceil(report["vocab"]["solved"] / 16)
    assert chunks_per_pass > 2
    # two passes (embed, lm_head); the 2 chunks saved before the kill were not solved again
    assert solved_on_restart == 2 * chunks_per_pass - 2
    resumed = _weights(out)
    for name in (EMBED, HEAD):
        assert torch.equal(resumed[name], reference[name])
    assert not partial.exists()  # removed once the checkpoint is written


def test_changed_arguments_discard_saved_chunks(tmp_path, monkeypatch, caplog, byte_bpe_untied_model_dir, sp_model_dir):
    out = tmp_path / "out"
    real_solve = solve_module.solve_omp
    calls = {"n": 0}

    def dying_solve(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        return real_solve(*args, **kwargs)

    monkeypatch.setattr(solve_module, "solve_omp", dying_solve)
    with pytest.raises(KeyboardInterrupt):
        transplant(**_args(byte_bpe_untied_model_dir, sp_model_dir, out))
    monkeypatch.setattr(solve_module, "solve_omp", real_solve)
    with caplog.at_level("WARNING"):
        transplant(**{**_args(byte_bpe_untied_model_dir, sp_model_dir, out), "k": 4})
    assert "different inputs or options" in caplog.text


def test_chunk_grid_depends_on_the_problem_and_keeps_ranks_balanced():
    from omp_init.solve import chunk_rows_for

    # Score budget alone: 256 MiB of [rows, N] fp32 scores, a multiple of 256.
    assert chunk_rows_for(39_234, None) == 1536
    # Enough rows: at least 32 chunks, so two ranks get 10 and 10 of 20 instead of 4 and 3 of 7.
    assert chunk_rows_for(39_234, None, n_rows=9_911) == 512
    assert -(-9_911 // 512) == 20
    # Few rows: never below 256; many rows: the budget caps it.
    assert chunk_rows_for(39_234, None, n_rows=1_000) == 256
    assert chunk_rows_for(39_234, None, n_rows=112_697) == 1536
    # --max-batch-tokens wins.
    assert chunk_rows_for(39_234, 100, n_rows=9_911) == 100
