"""Every recipes/*.yaml and accelerate_configs/*.yaml loads and validates.

Recipes are checked as YAML with the keys this project relies on everywhere, and, where axolotl
is installed, by axolotl's own config validation with the recipe's plugins merged in.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
LAUNCH_CONFIGS = sorted((REPO / "accelerate_configs").glob("*.yaml"))
PLUGIN = "omp_init.axolotl.OmpInitPlugin"
TASKS = ("cpt", "sft", "kd", "draft")
NAME = re.compile(
    rf"^(?P<task>{'|'.join(TASKS)})_(?P<model>[a-z0-9.\-]+?)(?P<stage>_stage2)?(?P<cpu>_cpu)?$"
)


def _load(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _header(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    return "\n".join(
        line
        for line in lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))]
    )


def test_there_are_recipes_and_launch_configs():
    assert len(RECIPES) >= 8 and len(LAUNCH_CONFIGS) >= 7


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_name_header_and_twin(path):
    match = NAME.match(path.stem)
    assert match, f"{path.name}: name it <task>_<model>[_stage2][_cpu].yaml, task one of {TASKS}"
    header = _header(path)
    assert header.startswith(f"# {path.stem}: "), "first line: '# <file stem>: what it is for'"
    assert f"recipes/{path.name}" in header, "the header gives the exact command"
    assert "Hardware:" in header and "Change first:" in header
    if not match["cpu"]:
        assert "accelerate launch --config_file accelerate_configs/" in header
        twins = [
            p
            for p in RECIPES
            if (m := NAME.match(p.stem))
            and m["cpu"]
            and m["task"] == match["task"]
            and m["stage"] == match["stage"]
        ]
        assert twins, f"{path.name} has no _cpu twin"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_keys(path):
    cfg = _load(path)
    for key in ("base_model", "tokenizer_config", "output_dir", "learning_rate", "sequence_len"):
        assert cfg.get(key) is not None, f"{path.name}: {key} is missing"
    assert cfg.get("datasets") or cfg.get("pretraining_dataset")
    if PLUGIN in (cfg.get("plugins") or []):
        assert cfg.get("omp_init_donor") and cfg.get("omp_init_output") and cfg.get("omp_init_base")
        # A plugin that fails to import must not leave a runnable config behind: everything
        # axolotl loads is the transplant output, which only the plugin creates.
        for key in ("base_model", "base_model_config", "tokenizer_config"):
            assert cfg[key] == cfg["omp_init_output"], f"{path.name}: set {key} to omp_init_output"
    for dataset in cfg.get("datasets") or []:
        local = dataset["path"]
        if local.startswith(("omp_init/", "recipes/")):
            assert (REPO / local).is_file(), f"{path.name}: {local} does not exist"


@pytest.mark.axolotl
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates_as_axolotl_config(path):
    pytest.importorskip("axolotl")
    from axolotl.integrations.base import PluginManager
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    cfg = _load(path)
    for plugin in cfg.get("plugins") or []:
        PluginManager.get_instance().register(plugin)  # loads the class only; no hook runs
    validated = validate_config(DictDefault(cfg))
    assert validated["base_model"] == cfg["base_model"]
    if PLUGIN in (cfg.get("plugins") or []):
        from omp_init.axolotl import transplant_config_from_cfg

        config = transplant_config_from_cfg(cfg)
        assert config.output == cfg["omp_init_output"] and config.method == "omp+fvt"  # the default


@pytest.mark.parametrize("path", LAUNCH_CONFIGS, ids=lambda p: p.name)
def test_launch_config_loads(path):
    from accelerate.commands.config.config_args import ClusterConfig

    assert _header(path).startswith(f"# {path.stem}"), "first line: '# <file stem>: topology'"
    config = ClusterConfig.from_yaml_file(str(path))  # rejects unknown keys
    assert config.num_processes >= 1 and config.num_machines >= 1
    raw = _load(path)
    if raw["distributed_type"] == "DEEPSPEED":
        json_path = REPO / raw["deepspeed_config"]["deepspeed_config_file"]
        stage = json.loads(json_path.read_text())["zero_optimization"]["stage"]
        assert f"zero{stage}" == path.stem


def test_launch_configs_readme_lists_every_file():
    readme = (REPO / "accelerate_configs" / "README.md").read_text()
    for path in LAUNCH_CONFIGS:
        assert f"`{path.name}`" in readme
