"""Training only the built rows (omp_init.train_rows): copied rows must come out bit-exact.

The transplant lists the rows it copied (omp_init_rows.json); the gradient masks keep those rows
the base model's through AdamW steps while the built rows move, for tied and untied models.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from omp_init import ConfigError, freeze_copied_rows, transplant
from omp_init.report import ROWS_NAME


def _transplanted(tmp_path, base_dir, donor_dir):
    out = tmp_path / "out"
    result = transplant(base=str(base_dir), donor=str(donor_dir), output=str(out), k=8, device="cpu")
    return out, result.report


def _train_steps(model, tokenizer, n_steps=3):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    ids = tokenizer(["the quick brown fox jumps over the lazy dog " * 4] * 2, return_tensors="pt").input_ids
    for _ in range(n_steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("base_fixture", ["byte_bpe_model_dir", "byte_bpe_untied_model_dir"])
def test_copied_rows_stay_exact_while_built_rows_train(request, tmp_path, base_fixture, sp_model_dir):
    out, report = _transplanted(tmp_path, request.getfixturevalue(base_fixture), sp_model_dir)
    rows = json.loads((out / ROWS_NAME).read_text())
    assert rows["rows"] == report["vocab"]["rows_written"] and len(rows["copied_ids"]) == report["vocab"]["copied"] > 0
    copied = torch.tensor(rows["copied_ids"])
    tokenizer = AutoTokenizer.from_pretrained(out)
    results = {}
    for masked in (True, False):
        model = AutoModelForCausalLM.from_pretrained(out)
        matrices = [model.get_input_embeddings().weight]
        if not model.config.tie_word_embeddings:
            matrices.append(model.get_output_embeddings().weight)
        before = [m.detach().clone() for m in matrices]
        if masked:
            assert len(freeze_copied_rows(model, out)) == len(matrices)
        _train_steps(model, tokenizer)
        results[masked] = [(b[copied], m.detach()[copied], b, m.detach()) for b, m in zip(before, matrices, strict=True)]
    for before_copied, after_copied, before, after in results[True]:
        assert torch.equal(before_copied, after_copied)  # the base's rows, bit for bit
        assert not torch.equal(before, after)  # the built rows did train
    # Without the mask the same steps move copied rows (so the check above can fail).
    assert any(not torch.equal(b, a) for b, a, _, _ in results[False])


def test_missing_rows_file_and_wrong_model_are_clear_errors(tmp_path, byte_bpe_model_dir, sp_model_dir):
    out, _ = _transplanted(tmp_path, byte_bpe_model_dir, sp_model_dir)
    model = AutoModelForCausalLM.from_pretrained(byte_bpe_model_dir)  # the base: other row count
    with pytest.raises(ConfigError, match="rows"):
        freeze_copied_rows(model, out)
    (out / ROWS_NAME).unlink()
    with pytest.raises(ConfigError, match="rebuild the checkpoint"):
        freeze_copied_rows(AutoModelForCausalLM.from_pretrained(out), out)
