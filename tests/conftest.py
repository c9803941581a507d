"""Session-wide fixtures: tiny tokenizers of two families and tiny models built from them."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from tiny_builders import (  # noqa: E402
    build_byte_bpe_tokenizer,
    build_sentencepiece_tokenizer,
    build_tiny_llama,
)


@pytest.fixture(scope="session")
def byte_bpe_tokenizer():
    return build_byte_bpe_tokenizer()


@pytest.fixture(scope="session")
def sp_tokenizer():
    return build_sentencepiece_tokenizer()


@pytest.fixture(scope="session")
def byte_bpe_model_dir(tmp_path_factory, byte_bpe_tokenizer):
    """Tied tiny Llama with the byte-level BPE tokenizer (a typical BASE)."""
    return build_tiny_llama(byte_bpe_tokenizer, tmp_path_factory.mktemp("bbpe_tied"), tied=True, seed=0)


@pytest.fixture(scope="session")
def byte_bpe_untied_model_dir(tmp_path_factory, byte_bpe_tokenizer):
    return build_tiny_llama(byte_bpe_tokenizer, tmp_path_factory.mktemp("bbpe_untied"), tied=False, seed=2)


@pytest.fixture(scope="session")
def sp_model_dir(tmp_path_factory, sp_tokenizer):
    """Untied tiny Llama with the SentencePiece tokenizer (a typical DONOR), width 48."""
    return build_tiny_llama(sp_tokenizer, tmp_path_factory.mktemp("sp_untied"), tied=False, seed=1, hidden_size=48)


@pytest.fixture(scope="session")
def sp_tied_sharded_model_dir(tmp_path_factory, sp_tokenizer):
    """Tied tiny Llama with the SentencePiece tokenizer, saved in several safetensors shards."""
    return build_tiny_llama(
        sp_tokenizer, tmp_path_factory.mktemp("sp_sharded"), tied=True, seed=3, max_shard_size="40KB"
    )
