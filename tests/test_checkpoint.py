"""Tests of checkpoint.py: find and read the two embedding tensors, write a new checkpoint atomically."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from omp_init import checkpoint
from omp_init.checkpoint import (
    check_output_path,
    list_weight_files,
    locate_embeddings,
    read_embeddings,
    write_checkpoint,
)
from omp_init.errors import ConfigError, OutputExistsError, OutputSpaceError, SourceError

MODEL_FIXTURES = [
    "byte_bpe_model_dir",
    "byte_bpe_untied_model_dir",
    "sp_model_dir",
    "sp_tied_sharded_model_dir",
]


def _layout(model_dir: Path):
    return locate_embeddings(model_dir, AutoConfig.from_pretrained(model_dir))


def _all_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for name in list_weight_files(model_dir):
        with safe_open(model_dir / name, framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def _new_embeddings(layout, n_new: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    embed_in = torch.randn(n_new, layout.hidden_size, generator=gen).to(layout.dtype)
    lm_head = (
        None
        if layout.is_tied
        else torch.randn(n_new, layout.hidden_size, generator=gen).to(layout.dtype)
    )
    return embed_in, lm_head


def _write(base_dir, out_dir, tokenizer, *, overwrite=False, extra=None):
    layout = _layout(base_dir)
    embed_in, lm_head = _new_embeddings(layout, len(tokenizer))
    write_checkpoint(
        base_dir,
        out_dir,
        layout=layout,
        embed_in=embed_in,
        lm_head=lm_head,
        config_updates={
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        tokenizer=tokenizer,
        extra_json=extra if extra is not None else {"omp_init_report.json": {"method": "test"}},
        overwrite=overwrite,
    )
    return layout, embed_in, lm_head


@pytest.mark.parametrize(
    ("fixture", "is_tied", "n_files"),
    [
        ("byte_bpe_model_dir", True, 1),
        ("byte_bpe_untied_model_dir", False, 1),
        ("sp_model_dir", False, 1),
        ("sp_tied_sharded_model_dir", True, None),
    ],
)
def test_locate_embeddings(request, fixture, is_tied, n_files):
    model_dir = request.getfixturevalue(fixture)
    layout = _layout(model_dir)
    assert layout.embed_in_name == "model.embed_tokens.weight"
    assert layout.is_tied is is_tied
    assert layout.lm_head_name == (None if is_tied else "lm_head.weight")
    if n_files is None:
        assert layout.is_sharded and len(layout.weight_files) > 1
        assert layout.embed_in_file in layout.weight_files
    else:
        assert layout.weight_files == ("model.safetensors",)
    config = AutoConfig.from_pretrained(model_dir)
    assert (layout.vocab_rows, layout.hidden_size) == (config.vocab_size, config.hidden_size)
    assert layout.dtype == torch.float32


@pytest.mark.parametrize("fixture", MODEL_FIXTURES)
def test_read_embeddings_matches_loaded_model(request, fixture):
    model_dir = request.getfixturevalue(fixture)
    layout = _layout(model_dir)
    embed_in, lm_head = read_embeddings(model_dir, layout)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert torch.equal(embed_in, model.get_input_embeddings().weight.detach())
    if layout.is_tied:
        assert lm_head is None
    else:
        assert torch.equal(lm_head, model.get_output_embeddings().weight.detach())


def test_locate_handles_missing_prefix(tmp_path, byte_bpe_untied_model_dir):
    """A checkpoint whose keys lack the ``model.`` prefix still resolves to its own names."""
    base = tmp_path / "base"
    shutil.copytree(byte_bpe_untied_model_dir, base)
    tensors = _all_tensors(base)
    renamed = {k.removeprefix("model."): v for k, v in tensors.items()}
    checkpoint.save_file(renamed, base / "model.safetensors", metadata={"format": "pt"})
    layout = _layout(base)
    assert layout.embed_in_name == "embed_tokens.weight"
    assert layout.lm_head_name == "lm_head.weight"


def test_locate_without_embedding_names_the_flag(tmp_path, byte_bpe_model_dir):
    base = tmp_path / "base"
    shutil.copytree(byte_bpe_model_dir, base)
    tensors = {k: v for k, v in _all_tensors(base).items() if "embed_tokens" not in k}
    checkpoint.save_file(tensors, base / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SourceError) as info:
        locate_embeddings(base, AutoConfig.from_pretrained(base), role="donor")
    message = str(info.value)
    assert "has no input embedding tensor (expected 'model.embed_tokens.weight')" in message
    assert message.endswith("--donor must be a full model checkpoint.")


@pytest.mark.parametrize(
    ("fixture", "tokenizer_fixture"),
    [
        ("byte_bpe_model_dir", "sp_tokenizer"),
        ("byte_bpe_untied_model_dir", "sp_tokenizer"),
        ("sp_model_dir", "byte_bpe_tokenizer"),
        ("sp_tied_sharded_model_dir", "byte_bpe_tokenizer"),
    ],
)
def test_write_checkpoint_loads_and_keeps_other_tensors(
    request, tmp_path, fixture, tokenizer_fixture
):
    base_dir = request.getfixturevalue(fixture)
    tokenizer = request.getfixturevalue(tokenizer_fixture)
    out = tmp_path / "runs" / "out"
    layout, embed_in, lm_head = _write(base_dir, out, tokenizer)
    assert len(tokenizer) != layout.vocab_rows  # the vocabulary size really changes

    # Every other tensor is bit-identical; the two new ones are what we passed.
    before, after = _all_tensors(base_dir), _all_tensors(out)
    expected_names = set(before) - ({layout.lm_head_name} if layout.is_tied else set())
    assert set(after) == expected_names
    for name, tensor in after.items():
        if name == layout.embed_in_name:
            assert torch.equal(tensor, embed_in)
        elif name == layout.lm_head_name:
            assert torch.equal(tensor, lm_head)
        else:
            assert torch.equal(tensor, before[name]) and tensor.dtype == before[name].dtype, name

    # Shards and the index keep their names; total_size is recomputed.
    assert list_weight_files(out) == list_weight_files(base_dir)
    if layout.is_sharded:
        index = json.loads((out / "model.safetensors.index.json").read_text())
        base_index = json.loads((base_dir / "model.safetensors.index.json").read_text())
        assert index["weight_map"] == base_index["weight_map"]
        assert index["metadata"]["total_size"] == sum(
            t.numel() * t.element_size() for t in after.values()
        )

    config = json.loads((out / "config.json").read_text())
    base_config = json.loads((base_dir / "config.json").read_text())
    assert config["vocab_size"] == len(tokenizer)
    assert config["tie_word_embeddings"] == base_config["tie_word_embeddings"]
    assert config["eos_token_id"] == tokenizer.eos_token_id
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id
    assert json.loads((out / "omp_init_report.json").read_text()) == {"method": "test"}
    assert [p.name for p in out.parent.iterdir()] == ["out"]  # no temp dir left

    # The result loads and generates with the new tokenizer.
    model = AutoModelForCausalLM.from_pretrained(out)
    new_tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(new_tokenizer) == len(tokenizer) == model.get_input_embeddings().weight.shape[0]
    assert torch.equal(model.get_input_embeddings().weight.detach(), embed_in)
    if layout.is_tied:
        assert (
            model.get_output_embeddings().weight.data_ptr()
            == model.get_input_embeddings().weight.data_ptr()
        )
    else:
        assert torch.equal(model.get_output_embeddings().weight.detach(), lm_head)
    text = "the quick brown fox"
    assert new_tokenizer(text).input_ids == tokenizer(text).input_ids
    inputs = new_tokenizer(text, return_tensors="pt")
    generated = model.generate(
        **inputs, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3


def test_write_copies_other_files_but_not_base_tokenizer(
    tmp_path, byte_bpe_model_dir, sp_tokenizer
):
    base = tmp_path / "base"
    shutil.copytree(byte_bpe_model_dir, base)
    (base / "README.md").write_text("# base model\n")
    (base / "LICENSE").write_text("Apache-2.0\n")
    (base / "vocab.json").write_text("{}")
    (base / "merges.txt").write_text("#version: 0.2\n")
    (base / "training_args.bin").write_bytes(b"not copied")
    (base / "generation_config.json").write_text(
        json.dumps({"eos_token_id": 2, "max_new_tokens": 77})
    )
    out = tmp_path / "out"
    _write(base, out, sp_tokenizer)
    names = {p.name for p in out.iterdir()}
    assert {"README.md", "LICENSE"} <= names
    assert not {"vocab.json", "merges.txt", "training_args.bin"} & names
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation == {
        "eos_token_id": sp_tokenizer.eos_token_id,
        "max_new_tokens": 77,
        "bos_token_id": sp_tokenizer.bos_token_id,
        "pad_token_id": sp_tokenizer.pad_token_id,
    }
    written = json.loads((out / "tokenizer.json").read_text())
    assert (
        written["model"]["vocab"]
        == json.loads(sp_tokenizer.backend_tokenizer.to_str())["model"]["vocab"]
    )


def test_tied_base_with_redundant_lm_head_stays_tied(tmp_path, byte_bpe_model_dir, sp_tokenizer):
    """A tied checkpoint that also stores lm_head.weight gets no stale lm_head written."""
    base = tmp_path / "base"
    shutil.copytree(byte_bpe_model_dir, base)
    tensors = _all_tensors(base)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    checkpoint.save_file(tensors, base / "model.safetensors", metadata={"format": "pt"})
    layout = _layout(base)
    assert layout.is_tied and layout.lm_head_name == "lm_head.weight"
    out = tmp_path / "out"
    _write(base, out, sp_tokenizer)
    assert "lm_head.weight" not in _all_tensors(out)
    AutoModelForCausalLM.from_pretrained(out)


def test_failure_mid_write_leaves_nothing(
    tmp_path, monkeypatch, sp_tied_sharded_model_dir, byte_bpe_tokenizer
):
    calls = []
    real_save_file = checkpoint.save_file

    def failing_save_file(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (injected)")
        return real_save_file(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", failing_save_file)
    parent = tmp_path / "runs"
    parent.mkdir()
    with pytest.raises(OSError, match="injected"):
        _write(sp_tied_sharded_model_dir, parent / "out", byte_bpe_tokenizer)
    assert len(calls) == 2
    assert list(parent.iterdir()) == []


@pytest.mark.parametrize(
    "disk_full",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
    ],
    ids=["python", "safetensors"],
)
def test_disk_full_mid_write_is_a_clear_error(
    tmp_path, monkeypatch, sp_tied_sharded_model_dir, byte_bpe_tokenizer, disk_full
):
    """A full disk is the user's to fix: one-line OutputSpaceError, partial files removed."""
    real_save_file = checkpoint.save_file
    calls = []

    def filling_save_file(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise disk_full
        return real_save_file(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", filling_save_file)
    parent = tmp_path / "runs"
    parent.mkdir()
    with pytest.raises(OutputSpaceError, match=r"disk filled up.*GiB free.*another disk") as info:
        _write(sp_tied_sharded_model_dir, parent / "out", byte_bpe_tokenizer)
    assert "\n" not in str(info.value) and "--output" in str(info.value)
    assert list(parent.iterdir()) == []


@pytest.mark.parametrize("fixture", MODEL_FIXTURES)
def test_estimate_output_bytes_matches_what_is_written(request, tmp_path, fixture, byte_bpe_tokenizer):
    """The free-space check's estimate is the written weights' size (headers aside) plus slack."""
    base = request.getfixturevalue(fixture)
    layout, embed_in, _ = _write(base, tmp_path / "out", byte_bpe_tokenizer)
    written = sum((tmp_path / "out" / name).stat().st_size for name in layout.weight_files)
    estimate = checkpoint.estimate_output_bytes(base, layout, embed_in.shape[0], embed_in.dtype)
    assert abs(estimate - checkpoint._OUTPUT_SLACK_BYTES - written) < 4096 * len(layout.weight_files)


def test_check_free_space(tmp_path, monkeypatch):
    out = tmp_path / "not" / "yet" / "there"
    checkpoint.check_free_space(out, 1)
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(OutputSpaceError, match=r"^--output .*needs about .* GiB and .* free; free some space"):
        checkpoint.check_free_space(out, free + 2**40)


def test_failure_with_overwrite_keeps_old_output(
    tmp_path, monkeypatch, byte_bpe_model_dir, sp_tokenizer
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous run")

    def failing_save_pretrained(self, *args, **kwargs):
        raise RuntimeError("tokenizer failed (injected)")

    monkeypatch.setattr(type(sp_tokenizer), "save_pretrained", failing_save_pretrained)
    with pytest.raises(RuntimeError, match="injected"):
        _write(byte_bpe_model_dir, out, sp_tokenizer, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["old.txt"]


def test_existing_output_is_refused_and_untouched(tmp_path, byte_bpe_model_dir, sp_tokenizer):
    out = tmp_path / "runs" / "d"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError) as info:
        check_output_path(out, overwrite=False)
    assert (
        str(info.value)
        == f"--output {out} already exists; pass --overwrite or choose another directory."
    )
    with pytest.raises(OutputExistsError):
        _write(byte_bpe_model_dir, out, sp_tokenizer)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in out.parent.iterdir()] == ["d"]


def test_overwrite_replaces_output(tmp_path, byte_bpe_model_dir, sp_tokenizer):
    out = tmp_path / "d"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    _write(byte_bpe_model_dir, out, sp_tokenizer, overwrite=True)
    assert not (out / "stale.txt").exists()
    assert (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_check_output_path_relative_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "d").mkdir(parents=True)
    with pytest.raises(
        OutputExistsError, match=r"^--output runs/d already exists; pass --overwrite"
    ):
        check_output_path("runs/d", overwrite=False)
    assert check_output_path("runs/d", overwrite=True) == Path("runs/d")
    assert check_output_path("runs/new/deeper", overwrite=False) == Path("runs/new/deeper")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        check_output_path("file", overwrite=True)


def test_output_inside_base_is_refused(tmp_path, byte_bpe_model_dir, sp_tokenizer):
    base = tmp_path / "base"
    shutil.copytree(byte_bpe_model_dir, base)
    with pytest.raises(ConfigError, match="base model directory"):
        _write(base, base, sp_tokenizer, overwrite=True)
    assert (base / "model.safetensors").is_file()


def test_wrong_shapes_are_bugs(tmp_path, byte_bpe_model_dir, byte_bpe_untied_model_dir):
    tied = _layout(byte_bpe_model_dir)
    kwargs = {"config_updates": {}, "tokenizer": None, "extra_json": {}, "overwrite": False}
    with pytest.raises(ValueError, match="tied"):
        write_checkpoint(
            byte_bpe_model_dir,
            tmp_path / "a",
            layout=tied,
            embed_in=torch.zeros(5, 32),
            lm_head=torch.zeros(5, 32),
            **kwargs,
        )
    untied = _layout(byte_bpe_untied_model_dir)
    with pytest.raises(ValueError, match="untied"):
        write_checkpoint(
            byte_bpe_untied_model_dir,
            tmp_path / "b",
            layout=untied,
            embed_in=torch.zeros(5, 32),
            lm_head=None,
            **kwargs,
        )
    with pytest.raises(ValueError, match=r"\[n_new, 32\]"):
        write_checkpoint(
            byte_bpe_model_dir,
            tmp_path / "c",
            layout=tied,
            embed_in=torch.zeros(5, 8),
            lm_head=None,
            **kwargs,
        )
    assert list(tmp_path.iterdir()) == []


def test_dtype_is_kept(tmp_path, byte_bpe_untied_model_dir, sp_tokenizer):
    layout = _layout(byte_bpe_untied_model_dir)
    embed_in = torch.randn(len(sp_tokenizer), layout.hidden_size).to(torch.bfloat16)
    out = write_checkpoint(
        byte_bpe_untied_model_dir,
        tmp_path / "out",
        layout=layout,
        embed_in=embed_in,
        lm_head=embed_in,  # the same tensor twice must still be writable
        config_updates={},
        tokenizer=sp_tokenizer,
        extra_json={},
        overwrite=False,
    )
    tensors = _all_tensors(out)
    assert tensors["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert torch.equal(tensors["lm_head.weight"], embed_in)
    assert tensors["model.norm.weight"].dtype == torch.float32
