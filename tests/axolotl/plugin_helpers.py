"""Helpers of the axolotl plugin tests: a config writer and subprocess runners.

Nothing here imports axolotl, so collection works (and the tests skip) without it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("axolotl_main.py")
PLUGIN = "omp_init.axolotl.OmpInitPlugin"


def axolotl_env() -> dict[str, str]:
    """Offline, no telemetry, one thread per process (2 shared cores)."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        AXOLOTL_DO_NOT_TRACK="1",
        DO_NOT_TRACK="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )
    # omp_init comes from its installation (pip install -e .), whose metadata carries the
    # entry points; a checkout on PYTHONPATH could shadow it with a stale egg-info.
    env.pop("PYTHONPATH", None)
    return env


def run(args: list[str], cwd: Path, timeout_s: int = 240) -> subprocess.CompletedProcess:
    """Run a command, returning its output; the output is printed on failure for the report."""
    proc = subprocess.run(
        args, cwd=cwd, env=axolotl_env(), capture_output=True, text=True, timeout=timeout_s
    )
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-8000:], sep="\n")
    return proc


def run_axolotl(command: str, config: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``axolotl.cli.<command>`` on ``config`` in one process (see axolotl_main.py)."""
    return run([sys.executable, str(RUNNER), command, str(config)], cwd)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_config(
    tmp_path: Path, base: Path, donor: Path, data: Path, **overrides: Any
) -> dict[str, Any]:
    """A recipe-shaped config (everything axolotl reads points at the transplant output)."""
    output = str(tmp_path / "transplanted")
    cfg: dict[str, Any] = {
        "base_model": output,
        "base_model_config": output,
        "tokenizer_config": output,
        "plugins": [PLUGIN],
        "omp_init_base": str(base),
        "omp_init_donor": str(donor),
        "omp_init_output": output,
        "omp_init_k": 8,
        "omp_init_device": "cpu",
        "datasets": [{"path": str(data), "ds_type": "json", "type": "completion"}],
        "dataset_prepared_path": str(tmp_path / "prepared"),
        "dataset_num_proc": 1,
        "sequence_len": 64,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_steps": 2,
        "learning_rate": 1.0e-3,
        "optimizer": "adamw_torch",
        "lr_scheduler": "constant",
        "bf16": False,
        "fp16": False,
        "val_set_size": 0,
        "save_strategy": "no",
        "output_dir": str(tmp_path / "trained"),
    }
    cfg.update(overrides)
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
