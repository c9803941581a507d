"""axolotl integration: list ``omp_init.axolotl.OmpInitPlugin`` under ``plugins:`` (see README.md)."""

from .args import OmpInitArgs, transplant_config_from_cfg
from .plugin import OmpInitPlugin

__all__ = ["OmpInitPlugin", "OmpInitArgs", "transplant_config_from_cfg"]
