"""Tests of sources.py: resolving BASE/DONOR/--tokenizer specs, refusals, pickle conversion."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, BertConfig, BertForMaskedLM

from omp_init import sources
from omp_init.errors import SourceError
from omp_init.gguf_convert import gguf_hash_key
from omp_init.sources import load_tokenizer, resolve_model


def _listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


# --- HF directories ---------------------------------------------------------------------------


def test_resolve_hf_dir(tmp_path, byte_bpe_model_dir):
    source = resolve_model(str(byte_bpe_model_dir), role="base", cache_dir=tmp_path / "cache")
    assert source.kind == "hf_dir"
    assert source.local_dir == byte_bpe_model_dir
    assert source.config.model_type == "llama"
    stat = (byte_bpe_model_dir / "model.safetensors").stat()
    assert source.identity["files"]["model.safetensors"] == {
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }
    assert not (tmp_path / "cache").exists()  # nothing converted


def test_resolve_sharded_identity_lists_every_shard(tmp_path, sp_tied_sharded_model_dir):
    source = resolve_model(str(sp_tied_sharded_model_dir), role="donor", cache_dir=tmp_path)
    shards = sorted(p.name for p in sp_tied_sharded_model_dir.glob("*.safetensors"))
    assert len(shards) > 1
    assert sorted(n for n in source.identity["files"] if n.endswith(".safetensors")) == shards


def test_identity_changes_when_weights_change(tmp_path, byte_bpe_model_dir):
    base = tmp_path / "base"
    shutil.copytree(byte_bpe_model_dir, base)
    before = resolve_model(str(base), role="base").identity
    os.utime(base / "model.safetensors", ns=(1, 1))
    assert resolve_model(str(base), role="base").identity != before


def test_path_identity(tmp_path, byte_bpe_model_dir):
    identity = sources.path_identity(byte_bpe_model_dir)
    assert identity["path"] == str(byte_bpe_model_dir)
    assert "tokenizer.json" in identity["files"] and "model.safetensors" not in identity["files"]
    file_identity = sources.path_identity(byte_bpe_model_dir / "tokenizer.json")
    assert list(file_identity["files"]) == ["tokenizer.json"]
    assert sources.path_identity(tmp_path / "nope") == {"path": str(tmp_path / "nope")}
    gguf_file = tmp_path / "t.gguf"
    gguf_file.write_bytes(b"GGUF" * 10)
    assert sources.path_identity(gguf_file)["gguf"]["hash_key"] == gguf_hash_key(gguf_file)


def test_missing_path(tmp_path):
    with pytest.raises(SourceError) as info:
        resolve_model(str(tmp_path / "nope"), role="base")
    assert str(info.value).startswith(f"--base {str(tmp_path / 'nope')!r} does not exist; pass")


def test_directory_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(
        SourceError, match=r"^--donor .* has no config.json; pass a Hugging Face model directory"
    ):
        resolve_model(str(tmp_path), role="donor")


def test_directory_without_weights(tmp_path, byte_bpe_model_dir):
    shutil.copy(byte_bpe_model_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(
        SourceError, match=r"has no model.safetensors or model.safetensors.index.json"
    ):
        resolve_model(str(tmp_path), role="base")


def test_other_file_is_refused(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"x")
    with pytest.raises(SourceError, match="is a file but not a .gguf"):
        resolve_model(str(path), role="base")


def _pickled_copy(model_dir: Path, out: Path) -> Path:
    """The model saved the old way: config + tokenizer + pytorch_model.bin (tied weights shared)."""
    out.mkdir()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    for item in model_dir.iterdir():
        if not item.name.endswith(".safetensors"):
            shutil.copy(item, out / item.name)
    return out


def test_pickled_weights_refused_without_allow_pickle(tmp_path, byte_bpe_model_dir):
    pickled = _pickled_copy(byte_bpe_model_dir, tmp_path / "pickled")
    cache = tmp_path / "cache"
    with pytest.raises(SourceError) as info:
        resolve_model(str(pickled), role="base", cache_dir=cache)
    message = str(info.value)
    assert "has only pickled weights (pytorch_model.bin)" in message
    assert "pass --allow-pickle" in message
    assert not cache.exists()


def test_pickled_weights_converted_with_allow_pickle(tmp_path, byte_bpe_model_dir):
    pickled = _pickled_copy(byte_bpe_model_dir, tmp_path / "pickled")
    cache = tmp_path / "cache"
    source = resolve_model(str(pickled), role="base", allow_pickle=True, cache_dir=cache)
    assert source.local_dir.parent == cache / "pickle"
    assert (source.local_dir / "model.safetensors").is_file()
    assert not (source.local_dir / "pytorch_model.bin").exists()
    original = AutoModelForCausalLM.from_pretrained(byte_bpe_model_dir).state_dict()
    with safe_open(source.local_dir / "model.safetensors", framework="pt") as f:
        for name in f.keys():
            assert torch.equal(f.get_tensor(name), original[name]), name
    AutoModelForCausalLM.from_pretrained(source.local_dir)
    again = resolve_model(str(pickled), role="base", allow_pickle=True, cache_dir=cache)
    assert again.local_dir == source.local_dir
    assert [p.name for p in (cache / "pickle").iterdir()] == [
        source.local_dir.name
    ]  # no temp dir left


def test_bert_is_not_a_causal_lm(tmp_path):
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    BertForMaskedLM(config).save_pretrained(tmp_path / "bert")
    with pytest.raises(SourceError) as info:
        resolve_model(str(tmp_path / "bert"), role="donor")
    assert str(info.value) == (
        f"--donor {str(tmp_path / 'bert')!r} is a bert model, not a causal LM; "
        "omp-init needs a model AutoModelForCausalLM can load."
    )


def test_remote_code_needs_flag(tmp_path):
    config = {
        "model_type": "omp_init_custom_test",
        "architectures": ["CustomForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_custom.CustomConfig",
            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        SourceError,
        match=r"needs its own model code to load; pass --trust-remote-code if you trust it\.$",
    ):
        resolve_model(str(tmp_path), role="base")


# --- the hub ----------------------------------------------------------------------------------


def test_hub_id_offline_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceError) as info:
        resolve_model("some-org/some-model", role="base")
    assert str(info.value) == (
        "--base 'some-org/some-model' is not a local path and the Hugging Face hub is not reachable "
        "(HF_HUB_OFFLINE=1); download it first or pass a local directory or .gguf file."
    )


@pytest.mark.parametrize(
    ("spec", "is_hub_id"),
    [
        ("org/name", True),
        ("Org-1/na.me_2", True),
        ("./x", False),
        ("a/b/c", False),
        ("x.gguf", False),
        ("org/x.gguf", False),
        ("../x", False),
    ],
)
def test_looks_like_hub_id(spec, is_hub_id):
    assert sources._looks_like_hub_id(spec) is is_hub_id


# --- tokenizers -------------------------------------------------------------------------------


def test_load_tokenizer_dir_and_file(byte_bpe_model_dir, byte_bpe_tokenizer):
    text = "def f(x): return café 2025"
    from_dir = load_tokenizer(byte_bpe_model_dir, role="tokenizer")
    from_file = load_tokenizer(byte_bpe_model_dir / "tokenizer.json", role="tokenizer")
    assert (
        from_dir(text).input_ids == from_file(text).input_ids == byte_bpe_tokenizer(text).input_ids
    )
    assert from_dir.eos_token == byte_bpe_tokenizer.eos_token


def test_load_tokenizer_renamed_json_file(tmp_path, sp_model_dir, sp_tokenizer):
    shutil.copy(sp_model_dir / "tokenizer.json", tmp_path / "donor-tok.json")
    tokenizer = load_tokenizer(tmp_path / "donor-tok.json", role="tokenizer")
    assert tokenizer.get_vocab() == sp_tokenizer.get_vocab()


def test_load_tokenizer_refuses_slow_only(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "ByT5Tokenizer"})
    )
    with pytest.raises(
        SourceError,
        match=r"^--tokenizer .* loads only as a slow tokenizer \(ByT5Tokenizer\); omp-init needs a fast one",
    ):
        load_tokenizer(tmp_path, role="tokenizer")


def test_load_tokenizer_missing(tmp_path):
    with pytest.raises(SourceError, match="has no tokenizer"):
        load_tokenizer(tmp_path, role="tokenizer")
    with pytest.raises(SourceError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.json", role="tokenizer")


# --- GGUF specs (the conversion is tested in test_gguf_convert.py) ----------------------------


def test_gguf_dir_with_several_files(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(
        SourceError, match=r"holds 2 .gguf files \(a.gguf, b.gguf\); pass the one you mean"
    ):
        resolve_model(str(tmp_path), role="base")
