"""The command line: help texts, the one-line error contract, and a real run."""

from __future__ import annotations

import json

import pytest

from omp_init.cli import build_parser, main


def test_help_lists_subcommands_and_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["transplant", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--base", "--donor", "--output", "--k", "--method", "--special-map", "--vocab-size", "--device"):
        assert flag in out
    assert "example:" in out


def test_user_error_is_one_line_exit_2(tmp_path, capsys, sp_model_dir):
    code = main(["transplant", "--base", str(tmp_path / "missing"), "--donor", str(sp_model_dir), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("omp-init: error: ") and "--base" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "o").exists()


def test_bad_k_is_reported_before_loading(tmp_path, capsys):
    code = main(["transplant", "--base", "a", "--donor", "b", "--output", str(tmp_path / "o"), "--k", "0"])
    assert code == 2 and "--k must be a positive integer" in capsys.readouterr().err


def test_transplant_via_cli(tmp_path, capsys, byte_bpe_model_dir, sp_model_dir):
    out = tmp_path / "o"
    code = main(["transplant", "--base", str(byte_bpe_model_dir), "--donor", str(sp_model_dir), "--output", str(out), "--k", "4", "--device", "cpu"])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "built by omp" in stdout and str(out) in stdout
    assert json.loads((out / "omp_init_report.json").read_text())["config"]["k"] == 4


def test_parser_fields_match_config():
    """Every transplant flag maps to a TransplantConfig field of the same name."""
    import dataclasses

    from omp_init.config import TransplantConfig

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["transplant"]
    dests = {a.dest for a in sub._actions if a.dest != "help"}
    fields = {f.name for f in dataclasses.fields(TransplantConfig)}
    assert dests <= fields, dests - fields


def test_import_noise_of_optional_libraries_is_quiet_unless_debug():
    # torchao (from axolotl) warns about its CUDA kernels when transformers imports it.
    import logging

    from omp_init import cli

    noisy = logging.getLogger("torchao")
    try:
        cli._configure_logging("INFO")
        assert noisy.getEffectiveLevel() == logging.ERROR
        noisy.setLevel(logging.NOTSET)
        cli._configure_logging("DEBUG")
        assert noisy.level == logging.NOTSET  # DEBUG leaves them as they are
    finally:
        noisy.setLevel(logging.NOTSET)


def test_no_donor_needs_a_tokenizer(tmp_path, capsys):
    code = main(["transplant", "--base", "a", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--donor is missing" in err and "--tokenizer" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("method_args", "method"), [([], "fvt"), (["--method", "omp+fvt"], "omp+fvt")])
def test_no_donor_model_builds_from_the_base_pieces(tmp_path, capsys, byte_bpe_model_dir, sp_model_dir, method_args, method):
    """Without --donor the base stands in as the donor, and --method defaults to fvt."""
    out = tmp_path / "o"
    args = ["transplant", "--base", str(byte_bpe_model_dir), "--tokenizer", str(sp_model_dir), "--output", str(out)]
    assert main([*args, "--device", "cpu", *method_args]) == 0
    report = json.loads((out / "omp_init_report.json").read_text())
    assert report["config"]["method"] == method
    assert report["config"]["donor"] == report["config"]["base"] == str(byte_bpe_model_dir)
    assert report["vocab"]["solved"] == 0 and report["vocab"]["fallback"] > 0
    assert "no donor model (the base stands in)" in capsys.readouterr().out


def test_donor_spelled_as_the_base_is_no_donor(tmp_path, capsys, monkeypatch, byte_bpe_model_dir, sp_model_dir):
    """``--donor`` naming the base by another path is a run without a donor model, and says so."""
    monkeypatch.chdir(byte_bpe_model_dir.parent)
    out = tmp_path / "o"
    args = ["transplant", "--base", str(byte_bpe_model_dir), "--donor", f"./{byte_bpe_model_dir.name}/",
            "--tokenizer", str(sp_model_dir), "--method", "fvt", "--output", str(out), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "omp_init_report.json").read_text())
    assert report["config"]["donor"] != report["config"]["base"]
    assert report["inputs"]["donor_is_base"] is True
    assert "no donor model (the base stands in)" in capsys.readouterr().out
