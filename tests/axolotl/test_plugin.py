"""The plugin's hooks, keys and ``axolotl omp-init``, in this process (a few seconds in all)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest
from plugin_helpers import PLUGIN, run, tiny_config, write_config

pytest.importorskip("axolotl")
pytestmark = pytest.mark.axolotl

from axolotl.utils.dict import DictDefault  # noqa: E402

from omp_init import OutputExistsError, TransplantConfig  # noqa: E402
from omp_init.axolotl import OmpInitArgs, OmpInitPlugin, transplant_config_from_cfg  # noqa: E402
from omp_init.axolotl import plugin as plugin_module  # noqa: E402


@pytest.fixture
def no_process_group(monkeypatch):
    """The hooks in this process stay single-rank (no accelerate state left behind)."""
    monkeypatch.setattr(plugin_module, "_init_axolotl_distributed", lambda: None)


@pytest.fixture
def cfg(tmp_path, byte_bpe_model_dir, sp_model_dir, text_dataset):
    return DictDefault(tiny_config(tmp_path, byte_bpe_model_dir, sp_model_dir, text_dataset))


def _report_mtime(output: str) -> int:
    return (Path(output) / "omp_init_report.json").stat().st_mtime_ns


def test_every_transplant_field_has_one_key():
    fields = {f.name for f in dataclasses.fields(TransplantConfig)}
    keys = {name.removeprefix("omp_init_") for name in OmpInitArgs.model_fields}
    assert keys == fields | {"train_new_rows_only"}


def test_keys_convert_to_transplant_config(cfg):
    config = transplant_config_from_cfg(
        {**cfg, "omp_init_pad_to_multiple_of": 64, "trust_remote_code": True}
    )
    assert config.base == cfg["omp_init_base"] and config.donor == cfg["omp_init_donor"]
    assert (config.k, config.pad_to_multiple_of, config.trust_remote_code) == (8, 64, True)
    # Without omp_init_base the transplant reads base_model (the minimal layout).
    minimal = {"base_model": "org/base", "omp_init_donor": "org/donor", "omp_init_output": "out"}
    assert transplant_config_from_cfg(minimal).base == "org/base"
    # Without a donor model, a tokenizer: the base stands in and the method defaults to fvt.
    no_donor = {"base_model": "org/base", "omp_init_tokenizer": "tok.json", "omp_init_output": "out"}
    config = transplant_config_from_cfg(no_donor)
    assert (config.donor, config.method) == ("org/base", "fvt")
    assert transplant_config_from_cfg({**no_donor, "omp_init_method": "omp+fvt"}).method == "omp+fvt"


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"omp_init_k": 0}, ["omp_init_k must be a positive integer"]),
        ({"omp_init_method": "pca"}, ["omp_init_method 'pca' is unknown"]),
        (
            {"omp_init_donor": None, "omp_init_output": None},
            ["omp_init_donor is required", "omp_init_output is required"],
        ),
        ({"omp_init_base": None}, ["set omp_init_base to the original model"]),
    ],
)
def test_key_errors_name_the_key(cfg, change, names):
    with pytest.raises(ValueError) as info:
        transplant_config_from_cfg({**cfg, **change})
    for name in names:
        assert name in str(info.value)
    assert "--" not in str(info.value)  # the core's flags are renamed to keys


def test_core_flags_become_keys():
    from omp_init.axolotl.args import flags_to_keys

    message = "--k 0 is bad; pass --no-center or --pad-to-multiple-of 64, not --frobnicate"
    assert flags_to_keys(message) == (
        "omp_init_k 0 is bad; pass omp_init_center: false or omp_init_pad_to_multiple_of 64, not --frobnicate"
    )


def test_axolotl_validation_reports_bad_keys(cfg):
    from axolotl.integrations.base import PluginManager
    from axolotl.utils.config import validate_config

    PluginManager.get_instance().register(PLUGIN)
    with pytest.raises(ValueError, match="omp_init_k must be a positive integer"):
        validate_config(DictDefault({**cfg, "omp_init_k": -3}))
    validated = validate_config(DictDefault(cfg))
    assert validated["omp_init_donor"] == cfg["omp_init_donor"]  # kept, not dropped as unknown


def test_reuse_then_rebuild_on_a_changed_input(cfg, no_process_group, caplog):
    caplog.set_level("INFO", logger="axolotl.integrations.omp_init")
    plugin = OmpInitPlugin()
    output = cfg["omp_init_output"]
    plugin.register(cfg)  # nothing built yet: axolotl reads the base's config meanwhile
    assert cfg["base_model_config"] == cfg["omp_init_base"] and not Path(output).exists()

    plugin.load_datasets(cfg)
    built = _report_mtime(output)
    fingerprint = json.loads((Path(output) / "omp_init_report.json").read_text())["fingerprint"]
    assert (cfg["base_model"], cfg["base_model_config"], cfg["tokenizer_config"]) == (
        output,
        output,
        output,
    )
    assert cfg["dataset_prepared_path"].endswith(f"prepared{os.sep}omp_init-{fingerprint}")

    # A new process (e.g. axolotl evaluate) adopts the checkpoint already at register().
    again = DictDefault(
        {
            **cfg,
            "base_model_config": output,
            "dataset_prepared_path": str(Path(output).parent / "prepared"),
        }
    )
    plugin.register(again)
    assert again["base_model_config"] == output
    assert again["dataset_prepared_path"] == cfg["dataset_prepared_path"]
    plugin.load_datasets(again)
    assert _report_mtime(output) == built
    assert "reusing" in caplog.text

    changed = DictDefault({**again, "omp_init_k": 4})
    assert plugin_module.decide(transplant_config_from_cfg(changed)).action == "rebuild"
    plugin.load_datasets(changed)
    report = json.loads((Path(output) / "omp_init_report.json").read_text())
    assert report["config"]["k"] == 4 and report["fingerprint"] != fingerprint
    assert changed["dataset_prepared_path"].endswith(f"omp_init-{report['fingerprint']}")


def test_foreign_output_is_never_overwritten(cfg, no_process_group):
    output = Path(cfg["omp_init_output"])
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="omp_init_overwrite: true"):
        OmpInitPlugin().load_datasets(cfg)
    assert (output / "keep.txt").read_text() == "mine"


def test_omp_init_subcommand_is_registered_with_axolotl(tmp_path):
    # axolotl 0.19.0 finds extra subcommands with entry_points(group="axolotl.cli_commands")
    # (axolotl/cli/plugins.py). Run from tmp_path: a stale omp_init.egg-info in the checkout,
    # on sys.path under `python -m pytest`, would hide the installed metadata.
    code = "from importlib.metadata import entry_points as e; print([p.value for p in e(group='axolotl.cli_commands') if p.name == 'omp-init'])"
    proc = run([sys.executable, "-c", code], tmp_path, timeout_s=60)
    assert proc.stdout.strip() == "['omp_init.axolotl.cli:omp_init_command']"


def test_axolotl_omp_init_subcommand(tmp_path, cfg):
    from click.testing import CliRunner

    from omp_init.axolotl.cli import omp_init_command

    config_path = write_config(tmp_path / "cfg.yml", cfg.to_dict())
    runner = CliRunner()
    check = runner.invoke(omp_init_command, [str(config_path), "--check"])
    assert check.exit_code == 1, check.output
    result = runner.invoke(omp_init_command, [str(config_path)])
    assert result.exit_code == 0, result.output
    assert (Path(cfg["omp_init_output"]) / "omp_init_report.json").is_file()
    assert runner.invoke(omp_init_command, [str(config_path), "--check"]).exit_code == 0

    bad = write_config(
        tmp_path / "bad.yml",
        {**cfg.to_dict(), "omp_init_donor": None, "omp_init_output": str(tmp_path / "x")},
    )
    result = runner.invoke(omp_init_command, [str(bad)])
    assert result.exit_code == 2 and "omp_init_donor is required" in result.output
    assert not (tmp_path / "x").exists()


def test_missing_plugin_fails_loudly(tmp_path, cfg):
    """A plugin axolotl cannot import is only logged; the recipe layout must still fail."""
    from axolotl.cli.config import load_cfg

    broken = {**cfg.to_dict(), "plugins": ["omp_init.axolotl_misspelled.OmpInitPlugin"]}
    config_path = write_config(tmp_path / "cfg.yml", broken)
    saved_env = dict(os.environ)
    try:
        with pytest.raises((OSError, ValueError)):
            load_cfg(str(config_path))
    finally:  # load_cfg exports accelerate settings into os.environ
        os.environ.clear()
        os.environ.update(saved_env)
