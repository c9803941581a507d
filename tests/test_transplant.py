"""End-to-end transplants on tiny models of two tokenizer families (byte-level BPE base,
SentencePiece donor), checked by construction: planted sparse combinations, bit-exact shared
rows, tied/untied layouts, loadability, and every user error leaving nothing behind."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_builders import build_byte_bpe_tokenizer, build_tiny_llama
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from omp_init import (
    AlignmentError,
    OmpInitError,
    OutputExistsError,
    OutputSpaceError,
    SourceError,
    transplant,
)
from omp_init.resume import ChunkStore
from omp_init.vocab import align_vocabularies, token_bytes

EMBED = "model.embed_tokens.weight"
HEAD = "lm_head.weight"


def _tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def _alignment(base_dir, donor_dir):
    base_tok, donor_tok = AutoTokenizer.from_pretrained(base_dir), AutoTokenizer.from_pretrained(donor_dir)
    donor_bytes = token_bytes(donor_tok)
    return align_vocabularies(token_bytes(base_tok), donor_bytes, donor_bytes)


def _run(base, donor, out, **kwargs):
    kwargs.setdefault("k", 8)
    kwargs.setdefault("device", "cpu")
    return transplant(base=str(base), donor=str(donor), output=str(out), **kwargs)


def _plant(tmp_path_factory, base_dir, donor_dir, *, centered: bool):
    """A donor whose first new tokens are exact 3-atom combinations of shared tokens.

    Plain: ``t = sum c_j d_j``, so the base row must be ``sum c_j b_j``. Centered: ``t = mu_d +
    sum c_j (d_j - mu_d)`` with mu the dictionary mean, so the base row must be ``mu_b + sum
    c_j (b_j - mu_b)``.
    """
    donor = tmp_path_factory.mktemp("planted") / "donor"
    shutil.copytree(donor_dir, donor)
    alignment = _alignment(base_dir, donor)
    weights = _tensors(donor)
    base_embed = _tensors(base_dir)[EMBED]
    dict_donor, dict_base = torch.tensor(alignment.dict_donor_ids), torch.tensor(alignment.dict_base_ids)
    mu_donor = weights[EMBED][dict_donor].mean(0) if centered else 0.0
    mu_base = base_embed[dict_base].mean(0) if centered else 0.0
    gen = torch.Generator().manual_seed(0)
    plans = []
    for row in range(6):
        atoms = torch.randperm(len(dict_donor), generator=gen)[:3]
        coefs = torch.randn(3, generator=gen)
        target_id = alignment.solve_donor_ids[row]
        weights[EMBED][target_id] = mu_donor + coefs @ (weights[EMBED][dict_donor[atoms]] - mu_donor)
        expected = mu_base + coefs @ (base_embed[dict_base[atoms]] - mu_base)
        plans.append((alignment.solve_new_ids[row], expected))
    for path in donor.glob("*.safetensors"):
        path.unlink()
    save_file(weights, donor / "model.safetensors", metadata={"format": "pt"})
    return donor, plans


@pytest.mark.parametrize("centered", [True, False], ids=["centered", "plain"])
def test_planted_combinations_carry_over_to_base(tmp_path, tmp_path_factory, byte_bpe_model_dir, sp_model_dir, centered):
    donor, plans = _plant(tmp_path_factory, byte_bpe_model_dir, sp_model_dir, centered=centered)
    out = tmp_path / "out"
    result = _run(byte_bpe_model_dir, donor, out, score_dtype="float32", center=centered, method="omp", norm_cap=False)
    new_embed = _tensors(out)[EMBED]
    for new_id, expected in plans:
        torch.testing.assert_close(new_embed[new_id], expected, atol=1e-4, rtol=1e-4)
    assert result.report["residuals"]["embed"]["count"] > len(plans)


@pytest.mark.parametrize("base_fixture", ["byte_bpe_model_dir", "byte_bpe_untied_model_dir"])
def test_default_method_is_half_omp_half_fvt(request, tmp_path, base_fixture, sp_model_dir):
    # omp+fvt: each built row is the mean of the OMP row and the FVT row (the base rows of the
    # token's base pieces; a tied base: their mean; an untied one: input rows weighted towards
    # the last piece, lm_head rows towards the first); a token without pieces keeps OMP alone.
    from omp_init.config import TransplantConfig

    # the module, not the function omp_init re-exports under the same name
    transplant_module = importlib.import_module("omp_init.transplant")
    base_dir = request.getfixturevalue(base_fixture)
    rows = {}
    for method in ("omp+fvt", "omp", "fvt"):
        _run(base_dir, sp_model_dir, tmp_path / method, method=method, score_dtype="float32", norm_cap=False)
        rows[method] = _tensors(tmp_path / method)
    config = TransplantConfig(base=str(base_dir), donor=str(sp_model_dir), output=str(tmp_path / "x"))
    inputs = transplant_module._load_inputs_here(config)
    built = torch.tensor(inputs.alignment.solve_new_ids)
    pieces = transplant_module._base_pieces(inputs)
    has_pieces = torch.tensor([bool(p) for p in pieces])
    assert has_pieces.any() and len(built) > 10 and max(map(len, pieces)) > 1
    base = _tensors(base_dir)
    is_tied = HEAD not in rows["omp"]
    powers = {EMBED: 0.0} if is_tied else {EMBED: 1.0, HEAD: -1.0}
    assert json.loads((tmp_path / "omp+fvt" / "omp_init_report.json").read_text())["omp_fvt"] == {
        "omp_weight": 0.5,
        "fvt_position_power": {"tied": 0.0} if is_tied else {"embed": 1.0, "lm_head": -1.0},
    }
    for name, power in powers.items():
        omp, fvt, blend = (rows[m][name][built] for m in ("omp", "fvt", "omp+fvt"))
        weighted = torch.zeros_like(omp)  # the FVT half, by hand
        for row, ids in enumerate(pieces):
            if ids:
                w = torch.arange(1, len(ids) + 1, dtype=torch.float32) ** power
                weighted[row] = (w[:, None] * base[name][ids].float()).sum(0) / w.sum()
        if power == 0.0:
            torch.testing.assert_close(weighted[has_pieces], fvt[has_pieces], atol=1e-5, rtol=1e-4)
        expected = torch.where(has_pieces[:, None], 0.5 * omp + 0.5 * weighted, omp)
        torch.testing.assert_close(blend, expected, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(blend[has_pieces], omp[has_pieces])  # really a mix


@pytest.fixture(scope="module")
def third_tokenizer_dir(tmp_path_factory):
    """A byte-level BPE with more (and other) merges than the base's: many of its tokens are in
    neither the base's nor the SentencePiece donor's vocabulary."""
    path = tmp_path_factory.mktemp("third_tokenizer")
    build_byte_bpe_tokenizer(vocab_size=700, seed=5).save_pretrained(path)
    return path


@pytest.mark.parametrize("base_fixture", ["byte_bpe_model_dir", "byte_bpe_untied_model_dir"])
def test_tokens_no_donor_has_are_built_from_base_pieces(request, tmp_path, base_fixture, sp_model_dir, third_tokenizer_dir):
    # --tokenizer that is not the donor's: a new token neither base nor donor has gives OMP no
    # target. omp+fvt makes it half the mean row, half the FVT row (weighted per matrix as for
    # solved tokens); fvt the FVT row; zero zeroes it; omp (the paper's) leaves the mean row.
    from omp_init.config import TransplantConfig

    transplant_module = importlib.import_module("omp_init.transplant")
    base_dir = request.getfixturevalue(base_fixture)
    rows, reports = {}, {}
    for method in ("omp+fvt", "omp", "fvt", "zero"):
        result = _run(base_dir, sp_model_dir, tmp_path / method, method=method, tokenizer=str(third_tokenizer_dir))
        rows[method], reports[method] = _tensors(tmp_path / method), result.report
    config = TransplantConfig(
        base=str(base_dir), donor=str(sp_model_dir), output=str(tmp_path / "x"), tokenizer=str(third_tokenizer_dir)
    )
    inputs = transplant_module._load_inputs_here(config)
    ids = transplant_module._without_donor_row(inputs)
    assert len(ids) > 20 and set(ids) <= set(inputs.alignment.fallback_new_ids)
    assert inputs.alignment.solve_new_ids  # and OMP still builds the tokens the donor has
    pieces = transplant_module._base_pieces(inputs, ids)
    assert all(pieces) and max(map(len, pieces)) > 1
    base = _tensors(base_dir)
    is_tied = HEAD not in base
    powers = {EMBED: 0.0} if is_tied else {EMBED: 1.0, HEAD: -1.0}
    index = torch.tensor(ids)
    for name, power in powers.items():
        expected = torch.stack([
            (w[:, None] * base[name][p].float()).sum(0) / w.sum()
            for p in pieces
            for w in [torch.arange(1, len(p) + 1, dtype=torch.float32) ** power]
        ])
        mean_row = base[name].float().mean(0).expand(len(ids), -1)
        torch.testing.assert_close(rows["omp+fvt"][name][index], 0.5 * mean_row + 0.5 * expected, atol=1e-5, rtol=1e-4)
        if power == 0.0:
            torch.testing.assert_close(rows["fvt"][name][index], expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(rows["omp"][name][index], mean_row, atol=1e-5, rtol=1e-4)
        assert torch.count_nonzero(rows["zero"][name][index]) == 0
    assert reports["omp+fvt"]["vocab"]["fallback_built"] == reports["fvt"]["vocab"]["fallback_built"] == len(ids)
    assert reports["omp"]["vocab"]["fallback_built"] == 0
    summary = transplant_module.summarize(reports["omp+fvt"])
    assert f"{len(ids):,} fallback tokens (no base or donor row) built as half FVT" in summary


def test_shared_rows_bit_exact_and_tied_stays_tied(tmp_path, byte_bpe_model_dir, sp_model_dir):
    out = tmp_path / "out"
    _run(byte_bpe_model_dir, sp_model_dir, out)
    alignment = _alignment(byte_bpe_model_dir, sp_model_dir)
    new, base = _tensors(out), _tensors(byte_bpe_model_dir)
    assert HEAD not in new  # tied base stays tied
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    copied_new = torch.tensor(alignment.copy_new_ids)
    copied_base = torch.tensor(alignment.copy_base_ids)
    assert torch.equal(new[EMBED][copied_new], base[EMBED][copied_base])
    for name, tensor in base.items():
        if name != EMBED:
            assert torch.equal(new[name], tensor), name


def test_untied_base_gets_both_matrices(tmp_path, byte_bpe_untied_model_dir, sp_model_dir):
    out = tmp_path / "out"
    result = _run(byte_bpe_untied_model_dir, sp_model_dir, out)
    new = _tensors(out)
    tokenizer = AutoTokenizer.from_pretrained(sp_model_dir)
    assert new[EMBED].shape[0] == new[HEAD].shape[0] == len(tokenizer)
    assert not torch.equal(new[EMBED], new[HEAD])
    # untied donor: each base matrix got its own OMP pass in the matching donor space
    assert set(result.report["residuals"]) == {"embed", "lm_head"}


def test_built_rows_are_capped_at_the_base_norm_quantile(tmp_path, monkeypatch, byte_bpe_untied_model_dir, sp_model_dir):
    # The default quantile (0.999) rarely bites on random tiny models; the median surely does.
    from omp_init import baselines

    monkeypatch.setattr(baselines, "ROW_NORM_CAP_QUANTILE", 0.5)
    out = tmp_path / "out"
    result = _run(byte_bpe_untied_model_dir, sp_model_dir, out)
    built = torch.tensor(_alignment(byte_bpe_untied_model_dir, sp_model_dir).solve_new_ids)
    new, base = _tensors(out), _tensors(byte_bpe_untied_model_dir)
    caps = result.report["row_norm_cap"]
    assert set(caps) == {"embed", "lm_head"}
    for key, name in ((EMBED, "embed"), (HEAD, "lm_head")):
        norms = base[key].float().norm(dim=1).sort().values
        assert caps[name]["quantile"] == 0.5
        assert caps[name]["cap"] == pytest.approx(float(norms[round(0.5 * (len(norms) - 1))]), rel=1e-5)
        built_norms = new[key][built].float().norm(dim=1)
        assert 0 < caps[name]["capped"] < len(built)
        assert int((built_norms > caps[name]["cap"] * (1 - 1e-5)).sum()) >= caps[name]["capped"]
        assert float(built_norms.max()) <= caps[name]["cap"] * (1 + 1e-5)
    assert "scaled down to the norm cap" in result.summary()


def test_output_loads_and_generates(tmp_path, byte_bpe_model_dir, sp_model_dir):
    out = tmp_path / "out"
    _run(byte_bpe_model_dir, sp_model_dir, out)
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tokenizer) == len(AutoTokenizer.from_pretrained(sp_model_dir))
    ids = tokenizer("the quick brown fox", return_tensors="pt").input_ids
    generated = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 4
    report = json.loads((out / "omp_init_report.json").read_text())
    assert report["vocab"]["copied"] + report["vocab"]["solved"] + report["vocab"]["fallback"] == len(tokenizer)
    # AutoTokenizer on the output cuts text like the new tokenizer (llama: nothing to pin).
    assert report["saved_tokenizer"] == {
        "auto_tokenizer_class": "TokenizersBackend", "pinned": False, "matches_saved_tokenizer": True
    }
    # Timings are stamped after the weights are written: the write is in them, and in the total.
    timings = report["timings_s"]
    assert set(timings) == {"load", "solve", "write", "total"}
    assert timings["write"] > 0
    assert timings["total"] >= timings["load"] + timings["solve"] + timings["write"] - 0.01


def test_same_tokenizer_changes_no_weight(tmp_path, byte_bpe_model_dir, byte_bpe_untied_model_dir):
    out = tmp_path / "out"
    result = _run(byte_bpe_model_dir, byte_bpe_untied_model_dir, out)
    assert result.report["vocab"]["solved"] == 0
    assert result.report["residuals"] == {}  # no OMP pass ran
    new, base = _tensors(out), _tensors(byte_bpe_model_dir)
    assert new.keys() == base.keys()
    for name in base:
        assert torch.equal(new[name], base[name]), name


@pytest.mark.parametrize("method", ["zero", "mean", "random", "fvt"])
def test_baselines_share_the_code_path(tmp_path, byte_bpe_model_dir, sp_model_dir, method):
    out = tmp_path / method
    result = _run(byte_bpe_model_dir, sp_model_dir, out, method=method)
    assert result.report["config"]["method"] == method
    new = _tensors(out)[EMBED]
    alignment = _alignment(byte_bpe_model_dir, sp_model_dir)
    solved = new[torch.tensor(alignment.solve_new_ids)]
    if method == "zero":
        assert torch.count_nonzero(solved) == 0
    else:
        assert torch.isfinite(solved).all() and torch.count_nonzero(solved) > 0


def test_vocab_size_and_pad_to_multiple(tmp_path, byte_bpe_untied_model_dir, sp_model_dir):
    out = tmp_path / "padded"
    result = _run(byte_bpe_untied_model_dir, sp_model_dir, out, vocab_size=600, pad_to_multiple_of=64)
    new = _tensors(out)
    assert new[EMBED].shape[0] == new[HEAD].shape[0] == 640
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 640
    assert result.report["vocab"]["padding"] == 640 - len(AutoTokenizer.from_pretrained(sp_model_dir))


# --- errors: one line naming the flag, nothing written ---------------------------------


def _assert_nothing_written(out: Path):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_missing_path(tmp_path, sp_model_dir):
    out = tmp_path / "out"
    with pytest.raises(SourceError, match="--base"):
        _run(tmp_path / "nope", sp_model_dir, out)
    _assert_nothing_written(out)


def test_k_larger_than_shared_vocabulary(tmp_path, byte_bpe_model_dir, sp_model_dir):
    out = tmp_path / "out"
    with pytest.raises(AlignmentError, match="--k"):
        _run(byte_bpe_model_dir, sp_model_dir, out, k=100_000)
    _assert_nothing_written(out)


def test_existing_output_needs_overwrite(tmp_path, byte_bpe_model_dir, sp_model_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        _run(byte_bpe_model_dir, sp_model_dir, out)
    assert (out / "keep.txt").read_text() == "mine"
    _run(byte_bpe_model_dir, sp_model_dir, out, overwrite=True)
    assert (out / "config.json").is_file() and not (out / "keep.txt").exists()


def test_too_little_disk_space_fails_before_the_solve(tmp_path, monkeypatch, byte_bpe_model_dir, sp_model_dir):
    """The free-space check runs before any OMP work and leaves nothing behind."""
    checkpoint = importlib.import_module("omp_init.checkpoint")
    solve = importlib.import_module("omp_init.transplant")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    monkeypatch.setattr(solve, "_plan_rows", lambda *a, **k: pytest.fail("solved before the space check"))
    with pytest.raises(OutputSpaceError, match=r"--output .*needs about 0\.\d\d GiB and .* has 0\.00 GiB free"):
        _run(byte_bpe_model_dir, sp_model_dir, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_base_as_donor_reads_the_embeddings_once(tmp_path, monkeypatch, byte_bpe_model_dir, sp_model_dir):
    """No donor model (the base stands in): one read of the base's embedding tensors, not two."""
    checkpoint = importlib.import_module("omp_init.checkpoint")
    read = checkpoint.read_embeddings
    calls = []
    monkeypatch.setattr(checkpoint, "read_embeddings", lambda *a: calls.append(a) or read(*a))
    _run(byte_bpe_model_dir, byte_bpe_model_dir, tmp_path / "out", tokenizer=str(sp_model_dir), method="fvt")
    assert len(calls) == 1
    _run(byte_bpe_model_dir, sp_model_dir, tmp_path / "out2")
    assert len(calls) == 3


def test_free_space_check_counts_the_resume_chunks(tmp_path, monkeypatch, byte_bpe_model_dir, sp_model_dir):
    """Finished chunks are written beside --output, so the check asks room for them too."""
    checkpoint = importlib.import_module("omp_init.checkpoint")
    solve = importlib.import_module("omp_init.transplant")
    asked = []
    monkeypatch.setattr(checkpoint, "check_free_space", lambda out, needed: asked.append(needed))

    def stop(config, inputs, *args):
        asked.append(len(inputs.alignment.solve_new_ids))
        raise KeyboardInterrupt

    monkeypatch.setattr(solve, "_plan_rows", stop)
    for resume in (True, False):
        with pytest.raises(KeyboardInterrupt):
            _run(byte_bpe_model_dir, sp_model_dir, tmp_path / "out", resume=resume)
    with_chunks, n_solved, without_chunks, _ = asked
    assert n_solved > 0
    assert with_chunks - without_chunks == ChunkStore.bytes_needed(n_solved, 8, 1)


def _word_level_model(tmp_path, words, name):
    vocab = {"<unk>": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<unk>")
    return build_tiny_llama(fast, tmp_path / name)


def test_zero_shared_tokens(tmp_path):
    base = _word_level_model(tmp_path, ["alpha", "beta"], "base")
    donor = _word_level_model(tmp_path, ["gamma", "delta"], "donor")
    out = tmp_path / "out"
    with pytest.raises(AlignmentError, match="share no token"):
        _run(base, donor, out, k=1)
    _assert_nothing_written(out)


def test_pickled_weights_refused(tmp_path, byte_bpe_tokenizer, sp_model_dir):
    model_dir = tmp_path / "pickled"
    build_tiny_llama(byte_bpe_tokenizer, model_dir)
    state = _tensors(model_dir)
    for path in model_dir.glob("*.safetensors"):
        path.unlink()
    torch.save(state, model_dir / "pytorch_model.bin")
    out = tmp_path / "out"
    with pytest.raises(SourceError, match="--allow-pickle"):
        _run(model_dir, sp_model_dir, out)
    _assert_nothing_written(out)


def test_non_causal_model_refused(tmp_path, byte_bpe_model_dir, sp_model_dir):
    bert = tmp_path / "bert"
    shutil.copytree(sp_model_dir, bert)
    config = json.loads((bert / "config.json").read_text())
    config.update(model_type="bert", architectures=["BertModel"])
    (bert / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    with pytest.raises(SourceError, match="causal"):
        _run(byte_bpe_model_dir, bert, out)
    _assert_nothing_written(out)


def test_donor_without_embeddings(tmp_path, byte_bpe_model_dir, sp_model_dir):
    donor = tmp_path / "headless"
    shutil.copytree(sp_model_dir, donor)
    weights = _tensors(donor)
    del weights[EMBED]
    for path in donor.glob("*.safetensors"):
        path.unlink()
    save_file(weights, donor / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    with pytest.raises(SourceError, match="--donor"):
        _run(byte_bpe_model_dir, donor, out)
    _assert_nothing_written(out)


def test_errors_are_one_line(tmp_path, sp_model_dir):
    with pytest.raises(OmpInitError) as info:
        _run(tmp_path / "missing", sp_model_dir, tmp_path / "out")
    assert "\n" not in str(info.value)


def test_output_is_only_safetensors(tmp_path, byte_bpe_model_dir, sp_model_dir):
    out = tmp_path / "out"
    _run(byte_bpe_model_dir, sp_model_dir, out)
    assert not list(out.glob("*.bin"))
    with safe_open(out / "model.safetensors", "pt") as handle:
        assert EMBED in handle.keys()


def test_expected_fingerprint_matches_the_report(tmp_path, byte_bpe_model_dir, sp_model_dir):
    from omp_init import TransplantConfig, expected_fingerprint

    config = TransplantConfig(base=str(byte_bpe_model_dir), donor=str(sp_model_dir), output=str(tmp_path / "o"), k=4, device="cpu")
    result = transplant(config)
    assert expected_fingerprint(config) == result.report["fingerprint"]
    assert expected_fingerprint(TransplantConfig(**{**config.to_dict(), "k": 5})) != result.report["fingerprint"]
    assert expected_fingerprint(TransplantConfig(**{**config.to_dict(), "base": "org/hub-model"})) is None


def test_document_start_added_when_base_has_one(tmp_path, sp_model_dir, byte_bpe_untied_model_dir):
    """SP base adds <s> to every text; the byte-level tokenizer adds nothing: auto adds its bos."""
    out = tmp_path / "auto"
    result = _run(sp_model_dir, byte_bpe_untied_model_dir, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    start_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tokenizer("the fox").input_ids[0] == start_id
    assert result.report["document_start"]["added"] == "<|endoftext|>"
    base_tok = AutoTokenizer.from_pretrained(sp_model_dir)
    new, base = _tensors(out), _tensors(sp_model_dir)
    for name in (EMBED, HEAD):
        assert torch.equal(new[name][start_id], base[name][base_tok.bos_token_id]), name

    kept = tmp_path / "never"
    result = _run(sp_model_dir, byte_bpe_untied_model_dir, kept, document_start="never")
    assert AutoTokenizer.from_pretrained(kept)("the fox").input_ids[0] != start_id
    assert result.report["document_start"]["added"] is None
