"""Builders of tiny tokenizers and models for the tests (no network, a few seconds in all).

Two tokenizer families, trained here on a small built-in corpus:

- byte-level BPE (GPT-2 byte alphabet, ``Ġ`` for space, ``Ċ`` for newline), ChatML specials;
- SentencePiece-style BPE (``▁`` for space, ``<0xNN>`` byte-fallback pieces, ``<s>`` added at
  the start of every text), Llama-2 layout: ``<unk>``, ``<s>``, ``</s>``, then 256 byte pieces.

Models are 2-layer ``LlamaForCausalLM`` with a width of 32, tied or untied.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

_WORDS = (
    "the quick brown fox jumps over the lazy dog while a model learns new tokens "
    "embedding matrix orthogonal matching pursuit sparse combination of shared tokens "
    "def return import class for in range print value 0 1 2 3 4 5 6 7 8 9 10 100 2025 "
    "café naïve résumé über straße 日本語 中文 привет мир "
)


def training_corpus(n_lines: int = 400, seed: int = 0) -> list[str]:
    """Deterministic pseudo-sentences mixing English, code-ish words, digits and non-ASCII."""
    words = _WORDS.split()
    gen = torch.Generator().manual_seed(seed)
    lines = []
    for _ in range(n_lines):
        n = int(torch.randint(4, 14, (1,), generator=gen))
        picks = torch.randint(0, len(words), (n,), generator=gen).tolist()
        lines.append(" ".join(words[i] for i in picks))
    lines.append("def f(x):\n    return x + 1\n")
    return lines


def build_byte_bpe_tokenizer(vocab_size: int = 420, seed: int = 0) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE with ChatML specials at ids 0..2."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(seed=seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )


def build_sentencepiece_tokenizer(vocab_size: int = 360, seed: int = 1) -> PreTrainedTokenizerFast:
    """A Llama-2-style SentencePiece BPE with byte fallback; adds ``<s>`` to every text."""
    # Train the merges on ▁-marked text, then rebuild the model with the byte pieces inserted
    # at ids 3..258 the way Llama-2's tokenizer.model lays them out.
    draft = Tokenizer(models.BPE(unk_token="<unk>"))
    draft.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    draft.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    draft.train_from_iterator(training_corpus(seed=seed), trainer=trainer)
    trained = json.loads(draft.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for piece, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", add_bos_token=True
    )


def build_tiny_llama(
    tokenizer: PreTrainedTokenizerFast,
    out_dir: Path,
    *,
    tied: bool = True,
    seed: int = 0,
    hidden_size: int = 32,
    max_shard_size: str | None = None,
) -> Path:
    """Save a randomly initialized 2-layer Llama sized to ``tokenizer`` (plus the tokenizer)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    out_dir = Path(out_dir)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, **kwargs)
    tokenizer.save_pretrained(out_dir)
    return out_dir
