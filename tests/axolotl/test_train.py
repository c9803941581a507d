"""``axolotl preprocess`` / ``train`` through the plugin, in real axolotl processes (CPU, tiny models).

Each test is one or two axolotl processes (~10-25 s each on 2 cores). Base: the tied byte-level
BPE tiny Llama; donor: the SentencePiece tiny Llama, whose tokenizer the base receives.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from plugin_helpers import REPO, RUNNER, free_port, run, run_axolotl, tiny_config, write_config
from safetensors.torch import load_file

pytest.importorskip("axolotl")
pytestmark = [pytest.mark.axolotl, pytest.mark.slow]

from transformers import AutoTokenizer  # noqa: E402

from omp_init import TransplantConfig, transplant  # noqa: E402


def _report(output: str) -> dict:
    return json.loads((Path(output) / "omp_init_report.json").read_text())


def _prepared_rows(prepared_root: Path) -> list[list[int]]:
    from datasets import load_from_disk

    (dataset_dir,) = [p for p in prepared_root.rglob("dataset_info.json")]
    return load_from_disk(str(dataset_dir.parent))["input_ids"]


def test_preprocess_then_train_with_the_new_tokenizer(
    tmp_path, byte_bpe_model_dir, sp_model_dir, text_dataset
):
    cfg = tiny_config(tmp_path, byte_bpe_model_dir, sp_model_dir, text_dataset)
    config_path = write_config(tmp_path / "cfg.yml", cfg)

    pre = run_axolotl("preprocess", config_path, tmp_path)
    assert pre.returncode == 0
    assert "omp_init: rank 0 of 1 wrote it" in pre.stderr + pre.stdout
    report = _report(cfg["omp_init_output"])
    # Prepared data lives under a folder keyed by the transplant's fingerprint.
    prepared = Path(cfg["dataset_prepared_path"]) / f"omp_init-{report['fingerprint']}"
    rows = _prepared_rows(prepared)
    new_tok = AutoTokenizer.from_pretrained(cfg["omp_init_output"])
    donor_tok = AutoTokenizer.from_pretrained(sp_model_dir)
    texts = {json.loads(line)["text"] for line in text_dataset.read_text().splitlines()}
    for ids in rows[:5]:
        text = new_tok.decode(ids, skip_special_tokens=True)
        assert text in texts
        # Tokenized by the new (donor's) tokenizer, not the base's byte-level BPE.
        assert ids[:-1] == donor_tok(text).input_ids and ids[-1] == new_tok.eos_token_id

    train = run_axolotl("train", config_path, tmp_path)
    assert train.returncode == 0
    log = train.stderr + train.stdout
    assert "omp_init: reusing" in log and "wrote it" not in log  # second run skips the work
    trained = Path(cfg["output_dir"])
    config = json.loads((trained / "config.json").read_text())
    assert config["vocab_size"] == report["vocab"]["rows_written"] >= len(new_tok)
    embed = load_file(trained / "model.safetensors")["model.embed_tokens.weight"]
    assert embed.shape[0] == report["vocab"]["rows_written"]
    assert AutoTokenizer.from_pretrained(trained).get_vocab() == new_tok.get_vocab()


def test_two_ranks_share_the_omp_work(tmp_path, byte_bpe_model_dir, sp_model_dir, text_dataset):
    """accelerate_configs/cpu_2proc.yaml: both ranks solve a shard, rank 0 alone writes.

    ``preprocess``, not ``train``: axolotl 0.19.0 sets ``device_map={"": LOCAL_RANK}`` when
    WORLD_SIZE > 1 (normalize_config), which transformers cannot place on a CPU-only machine.
    """
    cfg = tiny_config(tmp_path, byte_bpe_model_dir, sp_model_dir, text_dataset)
    config_path = write_config(tmp_path / "cfg.yml", cfg)
    launch = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "accelerate_configs" / "cpu_2proc.yaml"),
        "--main_process_port", str(free_port()),
        str(RUNNER), "preprocess", str(config_path),
    ]  # fmt: skip
    proc = run(launch, tmp_path, timeout_s=300)
    assert proc.returncode == 0
    log = proc.stderr + proc.stdout
    assert log.count("omp_init: rank 0 of 2 wrote it") == 1
    assert log.count("omp_init: rank 1 of 2 solved its shard; rank 0 wrote it") == 1
    report = _report(cfg["omp_init_output"])
    assert report["world_size"] == 2
    assert not list(tmp_path.glob("*.omp_init-partial")) and not list(tmp_path.glob(".*tmp*"))

    # Same rows as one process solving everything.
    single = transplant(
        TransplantConfig(
            base=str(byte_bpe_model_dir),
            donor=str(sp_model_dir),
            output=str(tmp_path / "one"),
            k=8,
            device="cpu",
        )
    )
    assert single.report["fingerprint"] == report["fingerprint"]
    two = load_file(Path(cfg["omp_init_output"]) / "model.safetensors")["model.embed_tokens.weight"]
    one = load_file(tmp_path / "one" / "model.safetensors")["model.embed_tokens.weight"]
    torch.testing.assert_close(two, one, rtol=1e-4, atol=1e-5)


def test_train_new_rows_only_keeps_the_copied_rows(tmp_path, byte_bpe_model_dir, sp_model_dir, text_dataset):
    """omp_init_train_new_rows_only: an embeddings-only stage moves the built rows only."""
    cfg = tiny_config(
        tmp_path, byte_bpe_model_dir, sp_model_dir, text_dataset,
        omp_init_train_new_rows_only=True,
        unfrozen_parameters=["^model.embed_tokens.weight$"],
        weight_decay=0.0,
        save_strategy="steps", save_steps=2,
    )  # fmt: skip
    train = run_axolotl("train", write_config(tmp_path / "cfg.yml", cfg), tmp_path)
    assert train.returncode == 0
    assert "omp_init: training only the rows the transplant built" in train.stderr + train.stdout
    rows = json.loads((Path(cfg["omp_init_output"]) / "omp_init_rows.json").read_text())
    copied = torch.tensor(rows["copied_ids"])
    before = load_file(Path(cfg["omp_init_output"]) / "model.safetensors")["model.embed_tokens.weight"]
    after = load_file(Path(cfg["output_dir"]) / "model.safetensors")["model.embed_tokens.weight"]
    assert torch.equal(after[copied], before[copied])
    assert not torch.equal(after, before)
