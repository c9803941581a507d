"""Tests of vocab.py: exact bytes per family, alignment by bytes and by special role, fvt pieces."""

from __future__ import annotations

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from omp_init.errors import AlignmentError, SourceError
from omp_init.vocab import (
    BYTE_TO_CHAR,
    VocabBytes,
    align_vocabularies,
    base_pieces,
    describe_overlap,
    token_bytes,
)


@pytest.fixture(scope="module")
def bbpe(byte_bpe_tokenizer):
    return token_bytes(byte_bpe_tokenizer)


@pytest.fixture(scope="module")
def sp(sp_tokenizer):
    return token_bytes(sp_tokenizer)


def _id(tokenizer, piece: str) -> int:
    return tokenizer.get_vocab()[piece]


def _vocab(
    pieces: list[bytes | str], roles: dict[str, int] | None = None, family="plain"
) -> VocabBytes:
    """Hand-made VocabBytes: bytes are ordinary tokens, str are specials with that content."""
    return VocabBytes(
        family=family,
        bytes_by_id=[p if isinstance(p, bytes) else None for p in pieces],
        special_content_by_id={i: p for i, p in enumerate(pieces) if isinstance(p, str)},
        roles=roles or {},
        size=len(pieces),
    )


def _byte_level_tokenizer(extra_pieces: list[str]) -> PreTrainedTokenizerFast:
    """A merge-less byte-level BPE: the 256 alphabet characters plus ``extra_pieces``."""
    vocab = {c: i for i, c in enumerate(BYTE_TO_CHAR.values())}
    vocab.update({p: len(vocab) + i for i, p in enumerate(extra_pieces)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def _unigram_tokenizer(pieces: list[str]) -> PreTrainedTokenizerFast:
    """A T5-style Unigram with a Metaspace pre-tokenizer (no byte fallback)."""
    tok = Tokenizer(models.Unigram([("<unk>", 0.0)] + [(p, -1.0) for p in pieces], unk_id=0))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


# --- token_bytes -------------------------------------------------------------------------------


def test_families_are_detected(bbpe, sp):
    plain = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")]))
    assert bbpe.family == "byte_level"
    assert sp.family == "sentencepiece"
    vb_plain = token_bytes(PreTrainedTokenizerFast(tokenizer_object=plain))
    assert (vb_plain.family, vb_plain.bytes_by_id) == ("plain", [b"a", b"b", b"ab"])
    assert token_bytes(_unigram_tokenizer(["▁x"])).family == "sentencepiece"


def test_byte_level_pieces_invert_the_gpt2_alphabet(byte_bpe_tokenizer, bbpe):
    assert bbpe.bytes_by_id[_id(byte_bpe_tokenizer, "Ġthe")] == b" the"
    assert bbpe.bytes_by_id[_id(byte_bpe_tokenizer, "Ċ")] == b"\n"
    assert bbpe.bytes_by_id[_id(byte_bpe_tokenizer, "Ã")] == b"\xc3"  # half of a UTF-8 character
    assert bbpe.size == len(byte_bpe_tokenizer) == len(bbpe.bytes_by_id)


def test_sentencepiece_pieces_decode_space_marks_and_byte_fallback(sp_tokenizer, sp):
    assert sp.bytes_by_id[_id(sp_tokenizer, "▁the")] == b" the"
    assert sp.bytes_by_id[_id(sp_tokenizer, "<0x0A>")] == b"\n"
    assert sp.bytes_by_id[_id(sp_tokenizer, "<0xE9>")] == b"\xe9"
    assert len(sp.byte_fallback_ids) == 256


def test_duplicate_bytes_prefer_the_normal_piece(sp_tokenizer, sp):
    # "<0x20>" and "▁" are both a space, "<0x0A>" and "\n" both a newline.
    assert sp.id_by_bytes[b" "] == _id(sp_tokenizer, "▁")
    assert sp.id_by_bytes[b"\n"] == _id(sp_tokenizer, "\n")
    assert sp.byte_piece_id_by_bytes[b"\n"] == _id(sp_tokenizer, "<0x0A>")


def test_specials_get_no_bytes_and_keep_content_and_roles(bbpe, sp):
    assert bbpe.special_content_by_id == {0: "<|endoftext|>", 1: "<|im_start|>", 2: "<|im_end|>"}
    assert bbpe.roles == {"bos": 0, "eos": 2, "pad": 0}
    assert sp.special_content_by_id == {0: "<unk>", 1: "<s>", 2: "</s>"}
    assert sp.roles == {"bos": 1, "eos": 2, "unk": 0}
    assert all(bbpe.bytes_by_id[i] is None for i in bbpe.special_content_by_id)


def test_added_tokens_are_text_unless_special_or_marker():
    tokenizer = _byte_level_tokenizer([])
    tokenizer.add_tokens(["hello world", "日本"])  # normalized, not special: text
    tokenizer.backend_tokenizer.add_tokens(
        [
            AddedToken("<|tool|>", special=False, normalized=False),  # a marker spelling
            AddedToken("<s>", special=False, normalized=False),  # Gemma's HTML strikethrough tag
            AddedToken("<ctrl>", special=True, normalized=False),
        ]
    )
    vb = token_bytes(tokenizer)
    by_content = {tokenizer.convert_ids_to_tokens(i): i for i in range(vb.size)}
    assert vb.bytes_by_id[by_content["hello world"]] == b"hello world"
    assert vb.bytes_by_id[by_content["日本"]] == "日本".encode()
    assert vb.bytes_by_id[by_content["<s>"]] == b"<s>"
    assert set(vb.special_content_by_id.values()) == {"<|tool|>", "<ctrl>"}


def test_slow_tokenizer_is_refused():
    with pytest.raises(SourceError, match="fast tokenizer"):
        token_bytes(object())


@pytest.mark.parametrize("family", ["byte_level", "sentencepiece"])
def test_each_token_decodes_alone_to_its_bytes(family, byte_bpe_tokenizer, sp_tokenizer):
    tokenizer = byte_bpe_tokenizer if family == "byte_level" else sp_tokenizer
    vb = token_bytes(tokenizer)
    # The SentencePiece decoder strips one leading space of a whole text: put "a" first.
    anchor = [vb.id_by_bytes[b"a"]] if family == "sentencepiece" else []
    prefix = "a" if family == "sentencepiece" else ""
    checked = 0
    for token_id, data in enumerate(vb.bytes_by_id):
        if data is None:
            continue
        try:
            text = data.decode()
        except UnicodeDecodeError:
            continue  # a lone partial character; the decoder would print U+FFFD
        decoded = tokenizer.backend_tokenizer.decode(anchor + [token_id], skip_special_tokens=False)
        assert decoded == prefix + text, (token_id, tokenizer.convert_ids_to_tokens(token_id))
        checked += 1
    assert checked > 200


# --- align_vocabularies: bytes -----------------------------------------------------------------


def test_cross_family_tokens_match_by_bytes(byte_bpe_tokenizer, sp_tokenizer, bbpe, sp):
    alignment = align_vocabularies(bbpe, sp, sp)
    copied = dict(zip(alignment.copy_new_ids, alignment.copy_base_ids, strict=True))
    assert copied[_id(sp_tokenizer, "▁the")] == _id(byte_bpe_tokenizer, "Ġthe")
    assert copied[_id(sp_tokenizer, "<0x0A>")] == _id(byte_bpe_tokenizer, "Ċ")
    assert copied[_id(sp_tokenizer, "\n")] == _id(byte_bpe_tokenizer, "Ċ")
    assert copied[_id(sp_tokenizer, "<0xE9>")] == _id(byte_bpe_tokenizer, "é")  # byte 0xE9


def test_lookalike_spellings_never_match():
    # A byte-level vocabulary holding the literal string "▁x" and the UTF-8 of "▁x" spelled in
    # its alphabet; neither is SentencePiece's "▁x" (b" x"); "Ġx" is.
    byte_level = _byte_level_tokenizer(["▁x", "âĸģx", "Ġx"])
    vb_byte = token_bytes(byte_level)
    vb_sp = token_bytes(_unigram_tokenizer(["▁x", "x", "▁"]))
    alignment = align_vocabularies(vb_byte, vb_sp, vb_sp)
    sp_id = vb_sp.id_by_bytes[b" x"]
    copied = dict(zip(alignment.copy_new_ids, alignment.copy_base_ids, strict=True))
    assert copied[sp_id] == byte_level.get_vocab()["Ġx"]
    assert vb_byte.bytes_by_id[byte_level.get_vocab()["▁x"]] == "▁x".encode()
    assert vb_byte.bytes_by_id[byte_level.get_vocab()["âĸģx"]] == "▁x".encode()


def test_counts_add_up_and_dictionary_is_both_vocabularies(bbpe, sp):
    alignment = align_vocabularies(bbpe, sp, sp)
    counts = alignment.counts()
    copied = sum(v for k, v in counts.items() if k.startswith("copied_"))
    assert copied + counts["solved"] + counts["fallback"] == sp.size
    assert counts["fallback"] == 0  # the new tokenizer is the donor's
    assert alignment.solve_new_ids == alignment.solve_donor_ids
    shared = set(bbpe.id_by_bytes) & set(sp.id_by_bytes)
    assert counts["dictionary_size"] == len(shared)
    for donor_id, base_id in zip(alignment.dict_donor_ids, alignment.dict_base_ids, strict=True):
        assert sp.bytes_by_id[donor_id] == bbpe.bytes_by_id[base_id]


def test_new_tokenizer_other_than_donor():
    base = _vocab([b"a", b"b", "<eos>"], {"eos": 2})
    donor = _vocab([b"a", b"c", b"d", "<eos>"], {"eos": 3})
    new = _vocab([b"c", b"a", b"zz", "</s>", "<tool>"], {"eos": 3})
    alignment = align_vocabularies(base, donor, new)
    assert list(
        zip(alignment.copy_new_ids, alignment.copy_base_ids, alignment.copy_how, strict=True)
    ) == [
        (1, 0, "bytes"),
        (3, 2, "special_role"),
    ]
    assert (alignment.solve_new_ids, alignment.solve_donor_ids) == ([0], [1])
    assert alignment.fallback_new_ids == [2, 4]
    # The dictionary is donor ∩ base, including tokens the new vocabulary lacks.
    assert (alignment.dict_donor_ids, alignment.dict_base_ids) == ([0], [0])


def test_identity_alignment_copies_every_row_in_place(bbpe):
    alignment = align_vocabularies(bbpe, bbpe, bbpe)
    assert alignment.copy_new_ids == alignment.copy_base_ids == list(range(bbpe.size))
    assert not alignment.solve_new_ids and not alignment.fallback_new_ids


def test_byte_fallback_piece_prefers_a_byte_fallback_piece(sp_tokenizer, sp):
    # The same vocabulary shifted by one id, so that matching cannot just keep the id.
    shifted = VocabBytes(
        "sentencepiece",
        [None] + sp.bytes_by_id,
        {},
        {},
        sp.size + 1,
        frozenset(i + 1 for i in sp.byte_fallback_ids),
    )
    alignment = align_vocabularies(sp, shifted, shifted)
    copied = dict(zip(alignment.copy_new_ids, alignment.copy_base_ids, strict=True))
    assert copied[_id(sp_tokenizer, "<0x0A>") + 1] == _id(sp_tokenizer, "<0x0A>")
    assert copied[_id(sp_tokenizer, "\n") + 1] == _id(sp_tokenizer, "\n")


# --- align_vocabularies: specials --------------------------------------------------------------


def test_specials_match_by_content_then_role(bbpe, sp):
    # New byte-level ChatML specials into a SentencePiece base: no content in common.
    alignment = align_vocabularies(sp, bbpe, bbpe)
    how = {
        m.new_content: (m.source, m.source_content, m.how, m.role)
        for m in alignment.special_matches
    }
    assert how["<|im_end|>"] == ("base", "</s>", "special_role", "eos")
    assert how["<|endoftext|>"] == ("base", "</s>", "special_role", "end_of_text")
    assert how["<|im_start|>"] == ("donor", "<|im_start|>", "special_content", None)
    assert [m.new_content for m in alignment.role_matches()] == ["<|endoftext|>", "<|im_end|>"]


def test_a_marker_kept_as_text_on_one_side_matches_the_special_on_the_other():
    # A GGUF conversion or an added token left to normalization keeps a marker as text.
    base = _vocab([b"a", b"<tool_call>", "<|fim_prefix|>", b"<s>"])
    new = _vocab([b"a", "<tool_call>", b"<|fim_prefix|>", "<s>"], {"bos": 3})
    alignment = align_vocabularies(base, new, new)
    assert list(zip(alignment.copy_new_ids, alignment.copy_base_ids, alignment.copy_how, strict=True)) == [
        (0, 0, "bytes"),
        (1, 1, "special_content"),
        (2, 2, "special_content"),
    ]
    # "<s>" is also HTML text (Gemma's strikethrough tag): a BOS never takes a text row.
    assert (alignment.solve_new_ids, alignment.solve_donor_ids) == ([3], [3])


def test_base_with_bos_equal_to_eos_serves_both(sp):
    gpt2_like = _vocab([b"a", "<|endoftext|>", b" x"], {"bos": 1, "eos": 1, "unk": 1})
    alignment = align_vocabularies(gpt2_like, sp, sp)
    copied = dict(zip(alignment.copy_new_ids, alignment.copy_base_ids, strict=True))
    assert copied[1] == copied[2] == 1  # <s> and </s>
    assert copied[0] == 1  # <unk>


def test_special_map_wins_over_content_and_role(bbpe, sp):
    alignment = align_vocabularies(
        sp, bbpe, bbpe, special_map={"<|im_end|>": "<s>", "<|im_start|>": "<unk>"}
    )
    copied = {
        n: (b, h)
        for n, b, h in zip(
            alignment.copy_new_ids, alignment.copy_base_ids, alignment.copy_how, strict=True
        )
    }
    assert copied[2] == (1, "special_map")
    assert copied[1] == (0, "special_map")
    assert alignment.counts()["copied_special_map"] == 2
    assert describe_overlap(alignment)["special_by_map"] == [
        "<|im_start|> -> <unk>",
        "<|im_end|> -> <s>",
    ]


def test_special_map_key_or_value_may_be_ordinary_text(bbpe, sp):
    alignment = align_vocabularies(
        sp, bbpe, bbpe, special_map={" the": "<unk>", "<|im_start|>": " the"}
    )
    copied = dict(zip(alignment.copy_new_ids, alignment.copy_base_ids, strict=True))
    assert copied[bbpe.id_by_bytes[b" the"]] == 0
    assert copied[1] == sp.id_by_bytes[b" the"]


def test_special_map_with_unknown_tokens_names_them_sorted(bbpe, sp):
    special_map = {f"<new{i:02d}>": "</s>" for i in range(12)} | {"<|im_end|>": "<nope>"}
    with pytest.raises(AlignmentError) as info:
        align_vocabularies(sp, bbpe, bbpe, special_map=special_map)
    message = str(info.value)
    assert message.startswith(
        "--special-map names unknown tokens: '<new00>' (not in the new tokenizer)"
    )
    assert "'<nope>' (not in the base tokenizer)" not in message  # 11th of 13, sorted after <new..>
    assert "(+3 more)" in message and "\n" not in message


def test_describe_overlap_reports_counts_and_examples(bbpe, sp):
    report = describe_overlap(align_vocabularies(sp, bbpe, bbpe))
    assert report["copied"] + report["solved"] + report["fallback"] == report["new_vocab_size"]
    assert report["special_by_role"] == [
        "<|endoftext|> -> </s> (end_of_text)",
        "<|im_end|> -> </s> (eos)",
    ]
    assert report["special_solved"] == ["<|im_start|>"]
    assert 0 < report["copied_fraction"] < 1


# --- base_pieces -------------------------------------------------------------------------------

_AWKWARD = [
    b"\xe9",
    b"\xe6\x97",
    "日本語 über".encode(),
    b" \n\t",
    "▁x".encode(),
    b"zzzq",
    b"\x00\xff",
]


@pytest.mark.parametrize("base_family", ["byte_level", "sentencepiece"])
def test_base_pieces_rebuild_the_exact_bytes(
    base_family, byte_bpe_tokenizer, sp_tokenizer, bbpe, sp
):
    base_tokenizer, base, new = (
        (byte_bpe_tokenizer, bbpe, sp) if base_family == "byte_level" else (sp_tokenizer, sp, bbpe)
    )
    new_bytes = new.bytes_by_id + _AWKWARD
    pieces = base_pieces(new_bytes, base_tokenizer, base)
    assert len(pieces) == len(new_bytes)
    for data, ids in zip(new_bytes, pieces, strict=True):
        if data is None:
            assert ids == []
        else:
            assert b"".join(base.bytes_by_id[i] for i in ids) == data, (data, ids)


def test_base_pieces_bypass_the_normalizer(sp_tokenizer, sp):
    # The SentencePiece normalizer would make "the" into "▁the"; the model alone must not.
    (ids,) = base_pieces([b"the"], sp_tokenizer, sp)
    assert b"".join(sp.bytes_by_id[i] for i in ids) == b"the"
    (ids,) = base_pieces([b" the"], sp_tokenizer, sp)
    assert ids == [_id(sp_tokenizer, "▁the")]


def test_base_pieces_give_up_only_on_unspellable_bytes():
    base_tokenizer = _unigram_tokenizer(["▁x", "x", "▁"])  # no byte fallback
    base = token_bytes(base_tokenizer)
    assert base_pieces([b" xx", b"xy", None, b""], base_tokenizer, base) == [
        [base.id_by_bytes[b" x"], base.id_by_bytes[b"x"]],
        [],
        [],
        [],
    ]
