"""``axolotl omp-init CONFIG.yml``: run only the transplant a recipe's ``omp_init_*`` keys describe.

Registered in the ``axolotl.cli_commands`` entry-point group (``pyproject.toml``), which
axolotl 0.19.0's CLI scans for extra subcommands. Nothing is trained and axolotl's own config
validation is not run, so this is the way to build (or check) the checkpoint ahead of a
training job, e.g. on a machine with more memory. Reuse and rebuild follow the plugin's rules.

Several processes share the OMP work: ``accelerate launch -m omp_init.axolotl.cli CONFIG.yml``.
"""

from __future__ import annotations

import logging
import os
import sys

import click
import yaml

from omp_init import OmpInitError

from .args import transplant_config_from_cfg
from .plugin import decide, ensure_checkpoint

logger = logging.getLogger(__name__)


@click.command(
    "omp-init",
    epilog="example:\n\n  axolotl omp-init recipes/cpt_llama3.2-1b.yaml\n\n"
    "  accelerate launch --config_file accelerate_configs/gpu_1.yaml -m omp_init.axolotl.cli recipes/cpt_llama3.2-1b.yaml",
)
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option(
    "--check",
    is_flag=True,
    help="only say whether the checkpoint is current (exit 0) or would be built (exit 1)",
)
def omp_init_command(config: str, check: bool) -> None:
    """Build the transplanted checkpoint described by CONFIG's omp_init_* keys (no training)."""
    _configure_logging()
    with open(config, encoding="utf-8") as handle:
        cfg = yaml.safe_load(handle) or {}
    try:
        transplant_config = transplant_config_from_cfg(cfg)
    except ValueError as exc:  # the key checks of args.py
        _fail(exc)
    try:
        if check:
            decision = decide(transplant_config)
            click.echo(f"{transplant_config.output}: {decision.action} {decision.reason}".rstrip())
            sys.exit(0 if decision.action == "reuse" else 1)
        fingerprint = ensure_checkpoint(transplant_config)
    except OmpInitError as exc:
        _fail(exc)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"{transplant_config.output} (fingerprint {fingerprint})")


def _fail(exc: Exception) -> None:
    click.echo(f"axolotl omp-init: error: {exc}", err=True)
    sys.exit(2)


def _configure_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


if __name__ == "__main__":
    omp_init_command()
