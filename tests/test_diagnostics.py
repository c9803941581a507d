"""``omp-init inspect`` and the digit-split check, on tokenizers whose digit schemes are built in-test
(one digit per token, fixed groups of 2 or 3 from either side) and on the tiny model fixtures."""

from __future__ import annotations

import itertools
import json
import logging

import pytest
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from omp_init.cli import main
from omp_init.diagnostics import inspect_transplant
from omp_init.digits import (
    PROBES,
    classify_digit_runs,
    detect_digit_scheme,
    digit_runs,
    digit_split_report,
    render_digit_runs,
)
from omp_init.vocab import align_vocabularies, token_bytes

_DIGITS = "0123456789"


def _digit_tokenizer(group: int, direction: str = "left_to_right", extra: tuple[str, ...] = ()):
    """Plain-UTF-8 BPE over printable ASCII whose pre-tokenizer cuts digit runs into groups of
    ``group`` (from the left or the right); every digit string up to ``group`` long is one token.
    ``extra`` adds two-digit tokens the pre-tokenizer may make unreachable (``"42"`` with group 1).
    """
    vocab = {chr(c): i for i, c in enumerate(range(0x20, 0x7F))}
    merges = []
    numbers = [
        "".join(p) for n in range(2, group + 1) for p in itertools.product(_DIGITS, repeat=n)
    ]
    for number in [*numbers, *extra]:
        if number not in vocab:
            vocab[number] = len(vocab)
            merges.append((number[:-1], number[-1]))
    # ignore_merges: a whole pre-token in the vocabulary is one token (as in Llama 3), whatever
    # order the merges would take ("876" would otherwise end as "8" + "76").
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    pattern = f"[0-9]{{1,{group}}}"
    if direction == "right_to_left":
        pattern += f"(?=(?:[0-9]{{{group}}})*(?![0-9]))"
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.add_special_tokens(["<eos>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


@pytest.fixture(scope="module")
def single_digits():
    return _digit_tokenizer(1, extra=("42",))  # "42" is in the vocabulary but never produced


@pytest.fixture(scope="module")
def digit_pairs():
    return _digit_tokenizer(2)


def test_digit_runs_worked_example():
    assert digit_runs([b" 1", b"2", b"345", b".", b"5"]) == [[1, 1, 3], [1]]
    assert digit_runs([b"12", None, b"3", b"a4b"]) == [[2], [1], [1]]  # a special ends a run
    assert digit_runs([b"abc", b" "]) == []


@pytest.mark.parametrize(
    ("runs", "expected"),
    [
        ([[1, 1, 1, 1], [1]], ("single_digits", 1, None)),
        ([[3, 1], [3, 3, 2], [2]], ("fixed_groups", 3, "left_to_right")),
        ([[1, 3], [2, 3, 3]], ("fixed_groups", 3, "right_to_left")),
        ([[4], [1, 1, 1]], ("bpe_merges", 4, None)),
        ([], ("unknown", 0, None)),
    ],
)
def test_classify_digit_runs(runs, expected):
    assert classify_digit_runs(runs) == expected


def test_render_digit_runs():
    assert render_digit_runs("2025", [[3, 1]]) == "202|5"
    assert render_digit_runs("in 1999, 2", [[1, 1, 2], [1]]) == "in 1|9|99, 2"
    assert render_digit_runs("2025", [[1, 1]]) == "?"  # two digits went missing (an <unk>)


@pytest.mark.parametrize(
    ("group", "direction", "kind", "rendered_1234567"),
    [
        (1, "left_to_right", "single_digits", "1|2|3|4|5|6|7"),
        (2, "left_to_right", "fixed_groups", "12|34|56|7"),
        (3, "right_to_left", "fixed_groups", "1|234|567"),
    ],
)
def test_scheme_detected_on_constructed_tokenizers(group, direction, kind, rendered_1234567):
    scheme = detect_digit_scheme(_digit_tokenizer(group, direction))
    assert (scheme.kind, scheme.max_digits_per_token) == (kind, group)
    assert scheme.direction == (direction if kind == "fixed_groups" else None)
    assert scheme.to_dict()["probes"]["1234567"] == rendered_1234567
    assert set(scheme.runs_by_probe) == set(PROBES)


@pytest.mark.parametrize("fixture", ["byte_bpe_tokenizer", "sp_tokenizer"])
def test_learned_digit_merges_are_bpe_merges(request, fixture):
    """The tiny tokenizers learn "2025" and "100" from their corpus but split other numbers."""
    scheme = detect_digit_scheme(request.getfixturevalue(fixture))
    assert scheme.kind == "bpe_merges"
    assert scheme.max_digits_per_token >= 3


def test_counts_and_warning_when_new_merges_pairs(caplog, single_digits, digit_pairs):
    """Base: one digit per token ("42" in its vocabulary, unreachable). New: every pair "00".."99"
    is one token. All 100 pairs are produced and split by the base; 99 are new to it ("42" is not).
    """
    with caplog.at_level(logging.WARNING, logger="omp_init.digits"):
        report = digit_split_report(single_digits, digit_pairs)
    assert report["base"]["scheme"] == "single_digits"
    assert (report["new"]["scheme"], report["new"]["max_digits_per_token"]) == ("fixed_groups", 2)
    assert (report["base"]["number_tokens_in_vocab"], report["base"]["number_tokens_produced"]) == (
        1,
        0,
    )
    assert (report["new"]["number_tokens_in_vocab"], report["new"]["number_tokens_produced"]) == (
        100,
        100,
    )
    assert report["new_number_tokens_new_to_base"] == 99
    assert report["new_number_tokens_split_by_base"] == 100
    assert report["base_number_tokens_split_by_new"] == 0
    assert report["base_number_tokens_missing_from_new"] == 0
    assert report["affected_tokens"] == 100
    assert report["examples"]["new_number_tokens_new_to_base"][:3] == ["00", "01", "02"]
    assert "42" not in report["examples"]["new_number_tokens_new_to_base"]
    assert report["schemes_differ"] and report["probes_split_differently"] > 0
    warning = report["warning"]
    assert (
        "merges up to 2 digits per token" in warning
        and "the base splits digits one by one" in warning
    )
    assert "99 number tokens are new" in warning and "arithmetic" in warning
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    json.dumps(report)  # JSON-ready for omp_init_report.json


def test_counts_when_new_splits_what_the_base_merged(single_digits, digit_pairs):
    report = digit_split_report(digit_pairs, single_digits)
    assert report["base_number_tokens_split_by_new"] == 100
    assert report["base_number_tokens_missing_from_new"] == 99  # the new vocabulary holds "42"
    assert report["new_number_tokens_new_to_base"] == 0
    assert "the new tokenizer splits digits one by one while the base merges" in report["warning"]
    assert "100 of the base's number tokens are cut differently" in report["warning"]


@pytest.mark.parametrize("same", ["constructed", "byte_bpe_tokenizer", "sp_tokenizer"])
def test_no_warning_when_schemes_agree(request, caplog, single_digits, same):
    if same == "constructed":
        base, new = single_digits, _digit_tokenizer(1)
    else:
        base = new = request.getfixturevalue(same)
    with caplog.at_level(logging.WARNING, logger="omp_init.digits"):
        report = digit_split_report(base, new)
    assert not report["schemes_differ"] and report["warning"] is None
    assert report["affected_tokens"] == 0
    assert not caplog.records


def test_inspect_overlap_matches_alignment(
    byte_bpe_model_dir, sp_model_dir, byte_bpe_tokenizer, sp_tokenizer
):
    result = inspect_transplant(str(byte_bpe_model_dir), str(sp_model_dir), top=5)
    donor_bytes = token_bytes(sp_tokenizer)
    counts = align_vocabularies(token_bytes(byte_bpe_tokenizer), donor_bytes, donor_bytes).counts()
    overlap = result["overlap"]
    assert {name: overlap[name] for name in counts} == counts
    assert overlap["sizes"] == {
        "base": len(byte_bpe_tokenizer),
        "donor": len(sp_tokenizer),
        "new": len(sp_tokenizer),
    }
    assert overlap["families"]["new"] == "sentencepiece"
    assert 0 < len(overlap["examples"]["solved"]) <= 5
    assert "skipped" in result["residuals"]
    assert result["digits"]["base"]["scheme"] == "bpe_merges"


def test_cli_inspect_writes_json(tmp_path, capsys, byte_bpe_model_dir, sp_model_dir):
    out = tmp_path / "inspect.json"
    argv = [
        "inspect",
        str(byte_bpe_model_dir),
        str(sp_model_dir),
        "--k",
        "4",
        "--sample",
        "10",
        "--top",
        "3",
    ]
    assert main([*argv, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for heading in ("Tokenizers", "New vocabulary", "Digit splitting", "Reconstruction residuals"):
        assert heading in printed
    result = json.loads(out.read_text(encoding="utf-8"))
    assert set(result) == {"inputs", "overlap", "digits", "residuals"}
    assert set(result["residuals"]) == {"embed", "lm_head"}  # the sp donor is untied
    embed = result["residuals"]["embed"]
    assert (embed["count"], embed["sample"], embed["k"]) == (10, 10, 4)
    assert len(embed["worst_tokens"]) == 3
    assert 0.0 <= embed["median_relative"] <= embed["max_relative"] <= 1.0 + 1e-6


def test_cli_inspect_tokenizer_only_donor_skips_residuals(
    tmp_path, capsys, byte_bpe_model_dir, sp_tokenizer
):
    tokenizer_file = tmp_path / "tok" / "tokenizer.json"
    tokenizer_file.parent.mkdir()
    sp_tokenizer.backend_tokenizer.save(str(tokenizer_file))
    out = tmp_path / "inspect.json"
    assert (
        main(
            [
                "inspect",
                str(byte_bpe_model_dir),
                str(tokenizer_file),
                "--k",
                "4",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert "skipped: the donor's embeddings cannot be read" in capsys.readouterr().out
    assert "skipped" in json.loads(out.read_text(encoding="utf-8"))["residuals"]


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["{missing}", "{donor}"], "--base"),
        (["{base}", "{missing}"], "--donor"),
        (["{base}", "{donor}", "--tokenizer", "{missing}"], "--tokenizer"),
        (["{base}", "{donor}", "--k", "0"], "--k"),
        (["{base}", "{donor}", "--k", "100000"], "--k"),  # more than the shared tokens
        (["{base}", "{donor}", "--sample", "-1"], "--sample"),
    ],
)
def test_cli_inspect_errors_print_one_line(
    tmp_path, capsys, byte_bpe_model_dir, sp_model_dir, args, flag
):
    paths = {"base": byte_bpe_model_dir, "donor": sp_model_dir, "missing": tmp_path / "nope"}
    out = tmp_path / "inspect.json"
    assert main(["inspect", *(a.format(**paths) for a in args), "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"omp-init: error: {flag} ")
    assert not out.exists()


def test_cli_inspect_json_directory_must_exist(tmp_path, capsys, byte_bpe_model_dir, sp_model_dir):
    out = tmp_path / "no_dir" / "inspect.json"
    assert main(["inspect", str(byte_bpe_model_dir), str(sp_model_dir), "--json", str(out)]) == 2
    assert capsys.readouterr().err.startswith("omp-init: error: --json ")
    assert not out.parent.exists()


def test_transplant_report_has_digit_diagnostics(
    tmp_path, caplog, byte_bpe_model_dir, sp_model_dir
):
    from omp_init.transplant import transplant

    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="omp_init.digits"):
        result = transplant(
            base=str(byte_bpe_model_dir),
            donor=str(sp_model_dir),
            output=str(out),
            k=4,
            device="cpu",
        )
    written = json.loads((out / "omp_init_report.json").read_text())
    digits = written["diagnostics"]["digits"]
    assert digits == result.report["diagnostics"]["digits"]
    assert digits["schemes_differ"] and digits["warning"]
    assert any("digit splitting differs" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("with_k", [False, True])
def test_cli_inspect_without_a_donor_model(tmp_path, capsys, byte_bpe_model_dir, sp_model_dir, with_k):
    """No DONOR, only --tokenizer: the base stands in (as in transplant); --k has nothing to solve."""
    out = tmp_path / "inspect.json"
    argv = ["inspect", str(byte_bpe_model_dir), "--tokenizer", str(sp_model_dir), "--json", str(out)]
    assert main([*argv, *(["--k", "4"] if with_k else [])]) == 0
    assert "no donor model: transplant without --donor" in capsys.readouterr().out
    result = json.loads(out.read_text(encoding="utf-8"))
    overlap = result["overlap"]
    assert overlap["solved"] == 0 and overlap["fallback"] > 0
    assert result["inputs"]["donor"] == result["inputs"]["base"]
    assert result["inputs"]["donor_is_base"] is True


def test_cli_inspect_donor_spelled_as_the_base(tmp_path, capsys, monkeypatch, byte_bpe_model_dir, sp_model_dir):
    monkeypatch.chdir(byte_bpe_model_dir.parent)
    argv = ["inspect", str(byte_bpe_model_dir), f"./{byte_bpe_model_dir.name}", "--tokenizer", str(sp_model_dir)]
    assert main(argv) == 0
    assert "no donor model: transplant without --donor" in capsys.readouterr().out


def test_cli_inspect_needs_donor_or_tokenizer(capsys, byte_bpe_model_dir):
    assert main(["inspect", str(byte_bpe_model_dir)]) == 2
    assert "DONOR is missing" in capsys.readouterr().err
