"""The output's tokenizer must reload with AutoTokenizer exactly as saved (saved_tokenizer.py).

transformers 5 gives some model types (qwen2 among them) their own tokenizer class whatever
tokenizer_config.json says, and that class rebuilds its pre-tokenizer and normalizer: a
transplanted Qwen base would cut text with Qwen's rules around another vocabulary.
"""

from __future__ import annotations

import json

import pytest
from tiny_builders import build_byte_bpe_tokenizer
from transformers import AutoTokenizer

from omp_init.saved_tokenizer import CLASS_NAME, MODULE_NAME, PROBE_TEXT, pin_tokenizer_class


def _saved(tmp_path, model_type):
    tokenizer = build_byte_bpe_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    return tokenizer


def test_qwen2_base_gets_the_saved_pipeline_pinned(tmp_path):
    tokenizer = _saved(tmp_path, "qwen2")
    expected = tokenizer(PROBE_TEXT)["input_ids"]
    entry = pin_tokenizer_class(tmp_path, tokenizer)
    assert entry == {"auto_tokenizer_class": "Qwen2Tokenizer", "pinned": True, "matches_saved_tokenizer": True}
    assert (tmp_path / f"{MODULE_NAME}.py").is_file()
    for trust in (False, True):
        loaded = AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=trust)
        assert loaded(PROBE_TEXT)["input_ids"] == expected, trust
        assert type(loaded).__name__ == (CLASS_NAME if trust else "TokenizersBackend")


def test_without_the_pin_qwen2_would_cut_differently(tmp_path):
    # What the pin is for (and why the test above can fail): the plain save reloads wrongly.
    tokenizer = _saved(tmp_path, "qwen2")
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "Qwen2Tokenizer"
    assert loaded(PROBE_TEXT)["input_ids"] != tokenizer(PROBE_TEXT)["input_ids"]


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_other_model_types_are_left_alone(tmp_path, model_type):
    tokenizer = _saved(tmp_path, model_type)
    before = (tmp_path / "tokenizer_config.json").read_text()
    entry = pin_tokenizer_class(tmp_path, tokenizer)
    assert entry["pinned"] is False and entry["matches_saved_tokenizer"] is True
    assert (tmp_path / "tokenizer_config.json").read_text() == before
    assert not (tmp_path / f"{MODULE_NAME}.py").exists()
