"""Tests of omp_init.evaluate (the metric against hand computations, windowing, errors) and of
omp_init.eval_report (the report files)."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from omp_init.errors import ConfigError, SourceError
from omp_init.eval_report import REPORT_FILES, write_report
from omp_init.evaluate import ALL_TEXTS, _plan_windows, _truncate_utf8, evaluate_models

TEXT = (
    "the quick brown fox jumps over the lazy dog while a model learns new tokens.\n"
    "café naïve über 日本語 привет 2025\n"
    "def f(x):\n    return x + 1\n"
)
# fixture -> the document-start token its tokenizer implies
START_TOKEN = {"byte_bpe_model_dir": "<|endoftext|>", "sp_model_dir": "<s>"}
FAMILIES = ["byte_bpe_model_dir", "sp_model_dir"]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "sample.txt"
    path.write_bytes(TEXT.encode("utf-8"))
    return path


def _evaluate(models, texts, **kwargs):
    kwargs.setdefault("dtype", "float32")
    return evaluate_models(models, texts, progress=False, **kwargs)


def _reference_nll_bits(model_dir, start_token, text, context_tokens, stride_tokens=None):
    """Naive scorer: one forward pass per text token, with the context the windowing promises.

    Token i is scored in window k = i // stride; that window's text starts at
    max(0, k * stride - (context - stride)); the document-start token comes first.
    """
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    start_id = tokenizer.convert_tokens_to_ids(start_token)
    token_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    stride_tokens = stride_tokens or context_tokens
    total_nats = 0.0
    for i, target in enumerate(token_ids):
        window_start = i // stride_tokens * stride_tokens
        context_start = max(0, window_start - (context_tokens - stride_tokens))
        inputs = torch.tensor([[start_id, *token_ids[context_start:i]]])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(inputs).logits[0, -1].float(), dim=-1)
        total_nats -= log_probs[target].item()
    return total_nats / math.log(2), len(token_ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_bits_per_byte_matches_hand_computation(request, family, text_file):
    model_dir = request.getfixturevalue(family)
    result = _evaluate([model_dir], [text_file], max_window_tokens=128)
    entry = result["models"][model_dir.name]
    stats = entry["texts"]["sample.txt"]
    nll_bits, n_tokens = _reference_nll_bits(
        model_dir, START_TOKEN[family], TEXT, context_tokens=127
    )
    n_bytes = len(TEXT.encode("utf-8"))
    assert entry["document_start_tokens"] == [START_TOKEN[family]]
    assert (stats["n_tokens"], stats["n_bytes"]) == (n_tokens, n_bytes)
    assert stats["nll_bits"] == pytest.approx(nll_bits, rel=1e-5)
    assert stats["bits_per_byte"] == pytest.approx(nll_bits / n_bytes, rel=1e-5)
    assert stats["tokens_per_byte"] == n_tokens / n_bytes
    assert n_tokens < 127  # one window: the whole text in one forward pass


@pytest.mark.parametrize(
    "family", ["byte_bpe_model_dir", "byte_bpe_untied_model_dir", "sp_model_dir"]
)
def test_uniform_model_gives_log2_vocab_bits_per_token(request, family, text_file, tmp_path):
    model_dir = request.getfixturevalue(family)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.zero_()  # final hidden states 0 -> all logits 0 -> uniform
    uniform_dir = tmp_path / "uniform"
    model.save_pretrained(uniform_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(uniform_dir)

    result = evaluate_models(
        [uniform_dir], [text_file], max_window_tokens=16, progress=False
    )  # bf16
    stats = result["models"]["uniform"]["texts"]["sample.txt"]
    vocab_size = model.config.vocab_size
    expected = math.log2(vocab_size) * stats["n_tokens"] / stats["n_bytes"]
    assert stats["bits_per_byte"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("window", "stride"), [(8, None), (8, 3), (5, 1)])
def test_windows_score_every_token_once(request, family, text_file, window, stride):
    model_dir = request.getfixturevalue(family)
    small = _evaluate(
        [model_dir], [text_file], max_window_tokens=window, stride=stride, batch_size=3
    )
    large = _evaluate([model_dir], [text_file], max_window_tokens=200)
    small_stats = small["models"][model_dir.name]["texts"]["sample.txt"]
    large_stats = large["models"][model_dir.name]["texts"]["sample.txt"]
    assert small_stats["n_tokens"] == large_stats["n_tokens"]
    assert small_stats["n_bytes"] == large_stats["n_bytes"]
    nll_bits, _ = _reference_nll_bits(
        model_dir, START_TOKEN[family], TEXT, context_tokens=window - 1, stride_tokens=stride
    )
    assert small_stats["nll_bits"] == pytest.approx(nll_bits, rel=1e-5)


@pytest.mark.parametrize(
    ("n_tokens", "context", "stride"), [(0, 4, 4), (1, 4, 4), (17, 4, 4), (17, 5, 2), (9, 3, 1)]
)
def test_plan_windows_covers_each_token_once(n_tokens, context, stride):
    windows = _plan_windows(n_tokens, context, stride)
    scored = [i for _, start, end in windows for i in range(start, end)]
    assert scored == list(range(n_tokens))
    for context_start, start, end in windows:
        assert end - context_start <= context
        assert start - context_start == min(start, context - stride)


def test_plan_windows_example():
    assert _plan_windows(5, 3, 2) == [(0, 0, 2), (1, 2, 4), (3, 4, 5)]


def test_batch_size_does_not_change_the_result(byte_bpe_model_dir, text_file):
    one = _evaluate([byte_bpe_model_dir], [text_file], max_window_tokens=8, batch_size=1)
    many = _evaluate([byte_bpe_model_dir], [text_file], max_window_tokens=8, batch_size=3)
    bits = [
        r["models"][byte_bpe_model_dir.name]["texts"]["sample.txt"]["nll_bits"] for r in (one, many)
    ]
    assert bits[0] == pytest.approx(bits[1], rel=1e-5)


def _save_permuted_copy(model_dir, out_dir, seed=0):
    """The same model and vocabulary with non-special token ids shuffled (rows moved along)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.save_pretrained(out_dir)
    spec = json.loads((out_dir / "tokenizer.json").read_text())
    special_ids = {token["id"] for token in spec["added_tokens"]}
    movable = sorted(i for i in spec["model"]["vocab"].values() if i not in special_ids)
    order = torch.randperm(len(movable), generator=torch.Generator().manual_seed(seed)).tolist()
    new_id = {i: i for i in special_ids} | {
        old: movable[j] for old, j in zip(movable, order, strict=True)
    }
    spec["model"]["vocab"] = {token: new_id[i] for token, i in spec["model"]["vocab"].items()}
    (out_dir / "tokenizer.json").write_text(json.dumps(spec))

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    old_ids = torch.tensor(sorted(new_id))
    new_ids = torch.tensor([new_id[i] for i in sorted(new_id)])
    with torch.no_grad():
        matrices = {id(model.get_input_embeddings().weight): model.get_input_embeddings().weight}
        matrices[id(model.get_output_embeddings().weight)] = model.get_output_embeddings().weight
        for weight in matrices.values():  # one matrix when tied
            weight[new_ids] = weight[old_ids].clone()
    model.save_pretrained(out_dir)
    return new_id


@pytest.mark.parametrize(
    "family", ["byte_bpe_model_dir", "byte_bpe_untied_model_dir", "sp_model_dir"]
)
def test_permuted_vocabulary_gives_the_same_bits_per_byte(request, family, text_file, tmp_path):
    model_dir = request.getfixturevalue(family)
    permuted_dir = tmp_path / "permuted"
    new_id = _save_permuted_copy(model_dir, permuted_dir)
    old_ids = AutoTokenizer.from_pretrained(model_dir)(TEXT, add_special_tokens=False)["input_ids"]
    permuted_ids = AutoTokenizer.from_pretrained(permuted_dir)(TEXT, add_special_tokens=False)[
        "input_ids"
    ]
    assert permuted_ids == [new_id[i] for i in old_ids] != old_ids

    result = _evaluate([model_dir, permuted_dir], [text_file], max_window_tokens=16)
    original, permuted = (
        result["models"][name]["texts"]["sample.txt"] for name in (model_dir.name, "permuted")
    )
    assert permuted["n_tokens"] == original["n_tokens"]
    assert permuted["bits_per_byte"] == pytest.approx(original["bits_per_byte"], rel=1e-6)


def test_truncate_utf8_stops_at_a_character_boundary():
    assert _truncate_utf8("aé", 2) == "a"
    assert _truncate_utf8("aé", 3) == "aé"
    assert _truncate_utf8("日本", 5) == "日"
    assert _truncate_utf8("abc", None) == "abc"


def test_max_bytes_gives_every_model_the_same_bytes(byte_bpe_model_dir, sp_model_dir, tmp_path):
    path = tmp_path / "multibyte.txt"
    path.write_text("ab 日本語 café", encoding="utf-8")
    result = _evaluate(
        [byte_bpe_model_dir, sp_model_dir], [path], max_bytes=5, max_window_tokens=16
    )
    assert result["texts"]["multibyte.txt"]["n_bytes"] == 3  # "ab " + not the 3-byte 日 cut at 5
    for entry in result["models"].values():
        assert entry["texts"]["multibyte.txt"]["n_bytes"] == 3


def test_baseline_change_and_totals(
    byte_bpe_model_dir, byte_bpe_untied_model_dir, text_file, tmp_path
):
    second = tmp_path / "second.txt"
    second.write_text("print(value)\n" * 3, encoding="utf-8")
    result = _evaluate(
        [byte_bpe_model_dir, byte_bpe_untied_model_dir],
        [text_file, second],
        max_window_tokens=16,
        baseline=byte_bpe_model_dir,
    )
    json.loads(json.dumps(result))  # JSON-able
    base, other = (
        result["models"][d.name] for d in (byte_bpe_model_dir, byte_bpe_untied_model_dir)
    )
    assert result["baseline"] == byte_bpe_model_dir.name
    for text in ("sample.txt", "second.txt", ALL_TEXTS):
        assert base["bpb_change_pct"][text] == 0.0
        ratio = other["texts"][text]["bits_per_byte"] / base["texts"][text]["bits_per_byte"]
        assert other["bpb_change_pct"][text] == pytest.approx(100 * (ratio - 1))
    total = base["texts"][ALL_TEXTS]
    parts = [base["texts"][t] for t in ("sample.txt", "second.txt")]
    assert total["nll_bits"] == pytest.approx(sum(p["nll_bits"] for p in parts))
    assert total["n_tokens"] == sum(p["n_tokens"] for p in parts)
    assert total["bits_per_byte"] == pytest.approx(
        total["nll_bits"] / sum(p["n_bytes"] for p in parts)
    )


@pytest.fixture
def two_model_result(byte_bpe_model_dir, sp_model_dir, text_file):
    return _evaluate([byte_bpe_model_dir, sp_model_dir], [text_file], max_window_tokens=16)


def test_write_report_writes_three_files(
    two_model_result, byte_bpe_model_dir, sp_model_dir, tmp_path
):
    written = write_report(two_model_result, tmp_path / "report", baseline=byte_bpe_model_dir)
    assert [p.name for p in written] == list(REPORT_FILES)
    assert (tmp_path / "report" / "eval.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "report" / "eval.json").read_text())
    assert saved["baseline"] == byte_bpe_model_dir.name
    assert two_model_result["baseline"] is None  # the caller's result is left alone
    markdown = (tmp_path / "report" / "eval.md").read_text()
    for name in (byte_bpe_model_dir.name, sp_model_dir.name):
        stats = saved["models"][name]["texts"]["sample.txt"]
        assert f"{stats['bits_per_byte']:.4f}" in markdown
        assert f"{stats['tokens_per_byte']:.4f}" in markdown
    change = saved["models"][sp_model_dir.name]["bpb_change_pct"]["sample.txt"]
    assert f"({change:+.2f}%)" in markdown


def test_write_report_without_matplotlib(two_model_result, tmp_path, monkeypatch, caplog):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with caplog.at_level("WARNING", logger="omp_init.eval_report"):
        written = write_report(two_model_result, tmp_path)
    assert [p.name for p in written] == ["eval.json", "eval.md"]
    assert not (tmp_path / "eval.png").exists()
    assert "pip install matplotlib" in caplog.text


def test_missing_model_names_the_flag(text_file, tmp_path):
    with pytest.raises(SourceError, match=r"^--model .*nowhere does not exist; pass"):
        _evaluate([tmp_path / "nowhere"], [text_file])


def test_missing_text_names_the_flag(byte_bpe_model_dir, tmp_path):
    with pytest.raises(SourceError, match=r"^--text .*absent\.txt does not exist"):
        _evaluate([byte_bpe_model_dir], [tmp_path / "absent.txt"])


def test_unknown_baseline_names_the_flag(byte_bpe_model_dir, text_file, tmp_path):
    with pytest.raises(ConfigError, match=r"^--baseline other is not one of"):
        _evaluate([byte_bpe_model_dir], [text_file], baseline="other")


def test_bad_settings_are_reported_together(byte_bpe_model_dir, text_file):
    with pytest.raises(ConfigError) as error:
        _evaluate(
            [byte_bpe_model_dir],
            [text_file],
            max_window_tokens=1,
            batch_size=0,
            dtype="int8",
            max_bytes=-1,
        )
    message = str(error.value)
    for flag in ("--max-window-tokens", "--batch-size", "--dtype", "--max-bytes"):
        assert flag in message
    assert "\n" not in message


def test_stride_must_fit_in_the_window(byte_bpe_model_dir, text_file):
    with pytest.raises(
        ConfigError, match=r"^--stride must be a positive integer below --max-window-tokens"
    ):
        _evaluate([byte_bpe_model_dir], [text_file], max_window_tokens=9, stride=9)
    # The tiny models have max_position_embeddings=256: the window shrinks to 256, 255 text tokens.
    with pytest.raises(
        ConfigError, match=r"^--stride 500 does not fit: a window of 256 tokens .* holds 255"
    ):
        _evaluate([byte_bpe_model_dir], [text_file], max_window_tokens=1000, stride=500)


def test_directory_without_config_names_the_flag(text_file, tmp_path):
    with pytest.raises(SourceError, match=r"^--model .* \(no config\.json\); pass"):
        _evaluate([tmp_path], [text_file])


def test_bad_device_names_the_flag(byte_bpe_model_dir, text_file):
    with pytest.raises(ConfigError, match=r"^--device 'abacus' is unknown"):
        _evaluate([byte_bpe_model_dir], [text_file], device="abacus")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"^--device cuda:1 asks for CUDA"):
            _evaluate([byte_bpe_model_dir], [text_file], device="cuda:1")
