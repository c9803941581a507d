"""Which token the document-start policy adds (omp_init.document_start._counterpart).

A new tokenizer whose bos_token also opens every chat turn (SmolLM2-Instruct's ``<|im_start|>``)
must not get the base's document-start row on that token: the next candidate is used.
"""

from __future__ import annotations

import copy

import pytest

from omp_init import document_start

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}"
)
BOS_ONCE = "{{ bos_token }}{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}"


@pytest.fixture
def chatml_tokenizer(byte_bpe_tokenizer):
    """The tiny byte-level tokenizer with ``<|im_start|>`` declared as its bos_token."""
    tokenizer = copy.deepcopy(byte_bpe_tokenizer)
    tokenizer.bos_token = "<|im_start|>"
    return tokenizer


def test_a_bos_that_opens_every_chat_turn_is_passed_over(chatml_tokenizer):
    chatml_tokenizer.chat_template = CHATML
    token, passed_over = document_start._counterpart(chatml_tokenizer)
    assert token == "<|endoftext|>"
    assert list(passed_over) == ["<|im_start|>"]


def test_without_a_chat_template_the_bos_token_is_used(chatml_tokenizer):
    chatml_tokenizer.chat_template = None
    assert document_start._counterpart(chatml_tokenizer) == ("<|im_start|>", {})


def test_a_bos_written_once_by_the_template_is_a_document_start(chatml_tokenizer):
    chatml_tokenizer.bos_token = "<|endoftext|>"
    chatml_tokenizer.chat_template = BOS_ONCE
    assert document_start._counterpart(chatml_tokenizer) == ("<|endoftext|>", {})


def test_a_template_that_fails_to_render_marks_nothing(chatml_tokenizer):
    chatml_tokenizer.chat_template = "{{ raise_exception('system messages only') }}"
    assert document_start.chat_turn_markers(chatml_tokenizer, ["<|im_start|>"]) == set()
