"""Vocabulary alignment by exact bytes: which new tokens copy a base row, which are solved, from what.

A token is identified by the bytes it stands for, never by its spelling: byte-level BPE writes a
space as ``Ġ``, SentencePiece as ``▁`` and a raw byte as ``<0x20>``; all three are the byte
``0x20``. :func:`token_bytes` turns a fast tokenizer into such bytes per id (specials get
``None`` and keep their content), :func:`align_vocabularies` splits the new vocabulary into
tokens copied from the base, tokens solved by OMP from a donor row, and the rest, and
:func:`base_pieces` splits new tokens into base tokens for the ``fvt`` baseline.

This module reads no file and loads no model: it takes tokenizer objects and plain data, and
returns plain ``list[int]`` (callers make tensors with ``torch.tensor(ids, dtype=torch.long)``).
Roles of special tokens and ``--special-map`` live in ``specials.py``.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, NamedTuple

from .errors import AlignmentError, SourceError
from .specials import ATTRIBUTE_ROLES, attribute_roles_by_id, looks_like_marker, roles_of

logger = logging.getLogger(__name__)

Family = Literal["byte_level", "sentencepiece", "plain"]
CopyHow = Literal["bytes", "special_content", "special_role", "special_map"]

SPACE_MARK = "▁"  # SentencePiece's visible space (U+2581)
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _gpt2_byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table: ``0x20 -> "Ġ"``, ``0x0A -> "Ċ"``, ``0x41 -> "A"``.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are shifted to U+0100 onwards
    in byte order (Radford et al., 2019, ``encoder.py``).
    """
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    alphabet = {b: chr(b) for b in kept}
    shifted = (b for b in range(256) if b not in alphabet)
    alphabet.update({b: chr(0x100 + i) for i, b in enumerate(shifted)})
    return alphabet


BYTE_TO_CHAR: dict[int, str] = _gpt2_byte_alphabet()
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in BYTE_TO_CHAR.items()}


@dataclass(frozen=True)
class VocabBytes:
    """What every id of one tokenizer stands for.

    Attributes:
        family: how pieces spell bytes (``byte_level``, ``sentencepiece`` or ``plain`` UTF-8).
        bytes_by_id: ``[size]``; the exact bytes, or ``None`` for specials and unused ids.
        special_content_by_id: special/control tokens' content, e.g. ``{2: "<|im_end|>"}``.
        roles: attribute roles set on the tokenizer, e.g. ``{"bos": 0, "eos": 2}``.
        size: ``len(tokenizer)``.
        byte_fallback_ids: ids of SentencePiece ``<0xNN>`` pieces.

    Several ids may stand for the same bytes (SentencePiece ``<0x20>`` and ``▁``). Lookups by
    bytes (:attr:`id_by_bytes`) then prefer the normal piece over a byte-fallback piece, then
    the lowest id.
    """

    family: Family
    bytes_by_id: list[bytes | None]
    special_content_by_id: dict[int, str]
    roles: dict[str, int]
    size: int
    byte_fallback_ids: frozenset[int] = field(default_factory=frozenset)

    @cached_property
    def id_by_bytes(self) -> dict[bytes, int]:
        """The preferred id of each distinct byte string (normal piece first, then lowest id)."""
        preferred: dict[bytes, int] = {}
        for token_id in sorted(range(self.size), key=lambda i: (i in self.byte_fallback_ids, i)):
            data = self.bytes_by_id[token_id]
            if data is not None:
                preferred.setdefault(data, token_id)
        return preferred

    @cached_property
    def byte_piece_id_by_bytes(self) -> dict[bytes, int]:
        """The lowest ``<0xNN>`` piece of each single byte (empty without byte fallback)."""
        return {self.bytes_by_id[i]: i for i in sorted(self.byte_fallback_ids, reverse=True)}

    @cached_property
    def specials_by_role(self) -> dict[str, int]:
        """Role -> special id; where several hold a role, the one it is most specific to, then lowest id."""
        attr_roles = attribute_roles_by_id(self.roles)
        ranked: dict[str, tuple[int, int]] = {}
        for token_id, content in sorted(self.special_content_by_id.items()):
            for rank, role in enumerate(roles_of(content, attr_roles.get(token_id, ()))):
                if role not in ranked or (rank, token_id) < ranked[role]:
                    ranked[role] = (rank, token_id)
        return {role: token_id for role, (_, token_id) in ranked.items()}

    @cached_property
    def special_id_by_content(self) -> dict[str, int]:
        by_content: dict[str, int] = {}
        for token_id, content in sorted(self.special_content_by_id.items()):
            by_content.setdefault(content, token_id)
        return by_content

    def special_roles(self, token_id: int) -> list[str]:
        """Roles of one special id, most specific first (see ``specials.roles_of``)."""
        content = self.special_content_by_id[token_id]
        return roles_of(content, attribute_roles_by_id(self.roles).get(token_id, ()))


def _components(node: dict[str, Any] | None):
    """Yield a normalizer/pre-tokenizer/decoder spec and, recursively, the members of a Sequence."""
    if not node:
        return
    yield node
    for key in ("normalizers", "pretokenizers", "decoders"):
        for child in node.get(key) or ():
            yield from _components(child)


def detect_family(spec: dict[str, Any]) -> Family:
    """Family of a parsed ``tokenizer.json``: ByteLevel anywhere -> byte-level; Metaspace or a
    space <-> ``▁`` Replace -> SentencePiece; otherwise plain UTF-8 pieces."""
    parts = [
        c for key in ("normalizer", "pre_tokenizer", "decoder") for c in _components(spec.get(key))
    ]
    if any(c.get("type") == "ByteLevel" for c in parts):
        return "byte_level"
    for c in parts:
        if c.get("type") == "Metaspace":
            return "sentencepiece"
        if c.get("type") == "Replace" and {
            c.get("pattern", {}).get("String"),
            c.get("content"),
        } == {" ", SPACE_MARK}:
            return "sentencepiece"
    return "plain"


def _model_pieces(model: dict[str, Any]) -> dict[int, str]:
    """id -> piece of the backend model (BPE/WordPiece/WordLevel dict, Unigram list)."""
    vocab = model.get("vocab") or {}
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        return {i: entry[0] for i, entry in enumerate(vocab)}
    return {token_id: piece for piece, token_id in vocab.items()}


def piece_to_bytes(piece: str, family: Family, byte_fallback: bool) -> bytes:
    """Bytes of one model piece: ``("Ġthe", byte_level) -> b" the"``, ``("<0x0A>", sp) -> b"\\n"``."""
    if family == "byte_level":
        if all(c in CHAR_TO_BYTE for c in piece):
            return bytes(CHAR_TO_BYTE[c] for c in piece)
        # A character outside the alphabet: the ByteLevel decoder, too, keeps its UTF-8.
        return piece.encode()
    if byte_fallback and (m := _BYTE_PIECE.fullmatch(piece)):
        return bytes([int(m.group(1), 16)])
    if family == "sentencepiece":
        piece = piece.replace(SPACE_MARK, " ")
    return piece.encode()


def token_bytes(tokenizer: Any) -> VocabBytes:
    """Map every id of a transformers fast tokenizer to the exact bytes it stands for.

    Specials get ``None`` bytes and keep their content: added tokens flagged ``special``, added
    tokens that skip normalization and are spelled like markers (Qwen's ``<tool_call>``,
    ``<|fim_prefix|>``), and the bos/eos/pad/unk and ``all_special_ids`` tokens. Other added
    tokens are text (Gemma's ``"\\n\\n"``, ``<table>``). Ids with no piece at all get ``None``.

    Raises:
        SourceError: ``tokenizer`` is not a fast (``tokenizers``-backed) tokenizer.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise SourceError(
            f"tokenizer {type(tokenizer).__name__} has no tokenizer.json backend; "
            "convert it to a fast tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True))."
        )
    spec = json.loads(backend.to_str())
    family = detect_family(spec)
    byte_fallback = bool(spec["model"].get("byte_fallback"))
    pieces = _model_pieces(spec["model"])
    added = {entry["id"]: entry for entry in spec.get("added_tokens") or ()}
    roles = {
        r: i
        for r in ATTRIBUTE_ROLES
        if (i := getattr(tokenizer, f"{r}_token_id", None)) is not None
    }
    flagged = set(roles.values()) | set(getattr(tokenizer, "all_special_ids", ()))
    size = len(tokenizer)

    bytes_by_id: list[bytes | None] = [None] * size
    special_content_by_id: dict[int, str] = {}
    byte_fallback_ids = set()
    for token_id in range(size):
        entry = added.get(token_id)
        content = entry["content"] if entry else pieces.get(token_id)
        if content is None:
            continue  # an unused id
        if _is_special(token_id, content, entry, flagged):
            special_content_by_id[token_id] = content
        elif token_id in pieces and pieces[token_id] == content:
            bytes_by_id[token_id] = piece_to_bytes(content, family, byte_fallback)
            if byte_fallback and family != "byte_level" and _BYTE_PIECE.fullmatch(content):
                byte_fallback_ids.add(token_id)
        else:  # an added token outside the model: it matches its content in the raw text
            text = content.replace(SPACE_MARK, " ") if family == "sentencepiece" else content
            bytes_by_id[token_id] = text.encode()
    return VocabBytes(
        family, bytes_by_id, special_content_by_id, roles, size, frozenset(byte_fallback_ids)
    )


def _is_special(token_id: int, content: str, entry: dict | None, flagged: set[int]) -> bool:
    if entry is not None and (
        entry.get("special") or (not entry.get("normalized", True) and looks_like_marker(content))
    ):
        return True
    # A role/special attribute names it: trust that for added tokens and marker spellings only,
    # so a pad_token set to an ordinary word does not lose the word's bytes.
    return token_id in flagged and (entry is not None or looks_like_marker(content))


@dataclass(frozen=True)
class SpecialMatch:
    """How one new special token found its row: copied from ``base`` or solved from ``donor``."""

    new_id: int
    new_content: str
    source: Literal["base", "donor"]
    source_id: int
    source_content: str
    how: str  # "special_content" | "special_role" | "special_map"
    role: str | None = None


@dataclass(frozen=True)
class VocabAlignment:
    """The fate of every new id; each appears in exactly one of copy / solve / fallback.

    Attributes:
        new_size: size of the new vocabulary.
        copy_new_ids, copy_base_ids: ``[n_copy]``; the new row is the base row, bit for bit.
        copy_how: ``[n_copy]``; ``bytes``, ``special_content``, ``special_role`` or ``special_map``.
        solve_new_ids, solve_donor_ids: ``[n_solve]``; no base counterpart; OMP reconstructs
            the donor row from the dictionary.
        fallback_new_ids: no base and no donor counterpart (only when the new tokenizer is not
            the donor's, or for unused ids); the transplant gives them a baseline init.
        dict_donor_ids, dict_base_ids: ``[n_dict]``; the OMP dictionary, one pair per byte string
            present in both donor and base (whether or not it is in the new vocabulary).
        special_matches: every new special copied or solved, for the report.
    """

    new_size: int
    copy_new_ids: list[int]
    copy_base_ids: list[int]
    copy_how: list[CopyHow]
    solve_new_ids: list[int]
    solve_donor_ids: list[int]
    fallback_new_ids: list[int]
    dict_donor_ids: list[int]
    dict_base_ids: list[int]
    special_matches: list[SpecialMatch]

    def counts(self) -> dict[str, int]:
        """Sizes for the report; the copied_*, solved and fallback counts add up to new_size."""
        how = Counter(self.copy_how)
        return {
            "new_vocab_size": self.new_size,
            "copied_bytes": how["bytes"],
            "copied_special_content": how["special_content"],
            "copied_special_role": how["special_role"],
            "copied_special_map": how["special_map"],
            "solved": len(self.solve_new_ids),
            "fallback": len(self.fallback_new_ids),
            "dictionary_size": len(self.dict_donor_ids),
        }

    def role_matches(self, source: str = "base") -> list[SpecialMatch]:
        """Specials matched by role (e.g. new ``<|im_end|>`` -> base ``</s>`` via ``eos``)."""
        return [m for m in self.special_matches if m.how == "special_role" and m.source == source]


def _lookup_bytes(vocab: VocabBytes, data: bytes, new_id: int, is_byte_piece: bool) -> int | None:
    """An id of ``vocab`` standing for ``data``: the same id if it holds the same bytes (so an
    identity transplant is exact), else a piece of the same kind (``<0xNN>`` for ``<0xNN>``),
    else the preferred id (normal piece, then lowest id)."""
    if new_id < vocab.size and vocab.bytes_by_id[new_id] == data:
        return new_id
    if is_byte_piece and data in vocab.byte_piece_id_by_bytes:
        return vocab.byte_piece_id_by_bytes[data]
    return vocab.id_by_bytes.get(data)


def _match_special(vocab: VocabBytes, content: str, roles: list[str], new_id: int):
    """(id, how, role) of the token in ``vocab`` matching a new special: a special with the same
    content, then a special with a shared role, then an ordinary token spelled like the content
    if that spelling is a marker (one side kept ``<tool_call>`` as text, e.g. a GGUF conversion
    or an added token left to normalization)."""
    if vocab.special_content_by_id.get(new_id) == content:
        return new_id, "special_content", None
    if content in vocab.special_id_by_content:
        return vocab.special_id_by_content[content], "special_content", None
    for role in roles:
        if role in vocab.specials_by_role:
            return vocab.specials_by_role[role], "special_role", role
    if looks_like_marker(content):
        if (token_id := _lookup_bytes(vocab, content.encode(), new_id, is_byte_piece=False)) is not None:
            return token_id, "special_content", None
    return None


def _special_spelled(vocab: VocabBytes, data: bytes) -> int | None:
    """The special of ``vocab`` whose content is the marker ``data`` (an ordinary token of the
    new vocabulary spelled ``<|fim_prefix|>``), or None for text such as ``<s>`` or ``\\n\\n``."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    return vocab.special_id_by_content.get(text) if looks_like_marker(text) else None


def _resolve_special_map(
    special_map: dict[str, str], base: VocabBytes, new: VocabBytes
) -> dict[int, int]:
    """new id -> base id for each ``--special-map`` entry; keys and values are special contents,
    or else the text of an ordinary token.

    Raises:
        AlignmentError: naming every key missing from the new vocabulary and value missing from
            the base one (sorted, the first 10 plus a count).
    """
    resolved: dict[int, int] = {}
    missing = []
    for new_content, base_content in special_map.items():
        new_ids = [i for i, c in new.special_content_by_id.items() if c == new_content]
        if not new_ids and new_content.encode() in new.id_by_bytes:
            new_ids = [new.id_by_bytes[new_content.encode()]]
        base_id = base.special_id_by_content.get(
            base_content, base.id_by_bytes.get(base_content.encode())
        )
        if not new_ids:
            missing.append(f"{new_content!r} (not in the new tokenizer)")
        if base_id is None:
            missing.append(f"{base_content!r} (not in the base tokenizer)")
        if new_ids and base_id is not None:
            resolved.update(dict.fromkeys(new_ids, base_id))
    if missing:
        missing.sort()
        shown = ", ".join(missing[:10]) + (
            f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""
        )
        raise AlignmentError(
            f"--special-map names unknown tokens: {shown}; map a special token's content (as in "
            'added_tokens of tokenizer.json) or an ordinary token\'s text, e.g. " the".'
        )
    return resolved


class _Placement(NamedTuple):
    outcome: Literal["copy", "solve", "fallback"]
    source_id: int | None = None  # a base id (copy) or a donor id (solve)
    how: str | None = None  # a CopyHow; "bytes" or "special_*" for a solve too
    role: str | None = None  # the role a special matched by


def _place(
    new_id: int, base: VocabBytes, donor: VocabBytes, new: VocabBytes, overrides: dict[int, int]
) -> _Placement:
    """Where one new id's row comes from (see :func:`align_vocabularies` for the order)."""
    if new_id in overrides:
        return _Placement("copy", overrides[new_id], "special_map")
    content = new.special_content_by_id.get(new_id)
    if content is not None:
        roles = new.special_roles(new_id)
        if hit := _match_special(base, content, roles, new_id):
            return _Placement("copy", *hit)
        if hit := _match_special(donor, content, roles, new_id):
            return _Placement("solve", *hit)
        return _Placement("fallback")
    data = new.bytes_by_id[new_id]
    if data is None:
        return _Placement("fallback")
    is_byte_piece = new_id in new.byte_fallback_ids
    if (base_id := _lookup_bytes(base, data, new_id, is_byte_piece)) is not None:
        return _Placement("copy", base_id, "bytes")
    if (base_id := _special_spelled(base, data)) is not None:
        return _Placement("copy", base_id, "special_content")
    if (donor_id := _lookup_bytes(donor, data, new_id, is_byte_piece)) is not None:
        return _Placement("solve", donor_id, "bytes")
    if (donor_id := _special_spelled(donor, data)) is not None:
        return _Placement("solve", donor_id, "special_content")
    return _Placement("fallback")


def _label(vocab: VocabBytes, token_id: int) -> str:
    """A special's content, or an ordinary token's text (``"<|im_end|>"``, ``" the"``)."""
    if token_id in vocab.special_content_by_id:
        return vocab.special_content_by_id[token_id]
    return (vocab.bytes_by_id[token_id] or b"").decode(errors="replace")


def align_vocabularies(
    base: VocabBytes,
    donor: VocabBytes,
    new: VocabBytes,
    *,
    special_map: dict[str, str] | None = None,
) -> VocabAlignment:
    """Decide, for each new id, whether it copies a base row, is solved from a donor row, or neither.

    Ordinary tokens match by exact bytes. A new special matches, in order: its ``special_map``
    entry (wins over everything), a base special with identical content, a base special with a
    shared role (``specials.roles_of``), a base ordinary token spelled like the special if that
    spelling is a marker; failing those, a donor token found the same way gives the row to
    solve. A marker that is an ordinary token on the new side (``<|fim_prefix|>`` as text) matches
    a special with that content after the bytes lookup. Several new tokens may copy one base row
    (a base whose bos == eos).

    Args:
        base: the model whose rows are kept.
        donor: the model whose embedding space OMP runs in; usually the new tokenizer's owner.
        new: the tokenizer being transplanted (``new is donor`` unless ``--tokenizer`` is given).
        special_map: ``specials.load_special_map`` output, new content -> base content.

    Returns:
        A :class:`VocabAlignment` of plain ``list[int]`` id lists.

    Raises:
        AlignmentError: ``special_map`` names tokens absent from the new or base vocabulary.
    """
    overrides = _resolve_special_map(special_map or {}, base, new)
    placed = [_place(new_id, base, donor, new, overrides) for new_id in range(new.size)]
    copy = [(new_id, p) for new_id, p in enumerate(placed) if p.outcome == "copy"]
    solve = [(new_id, p) for new_id, p in enumerate(placed) if p.outcome == "solve"]
    special_matches = [
        SpecialMatch(
            new_id,
            _label(new, new_id),
            "base" if p.outcome == "copy" else "donor",
            p.source_id,
            _label(base if p.outcome == "copy" else donor, p.source_id),
            p.how,
            p.role,
        )
        for new_id, p in copy + solve
        if p.how != "bytes"
    ]
    # [n_dict] (donor_id, base_id) pairs, one per byte string in both vocabularies, by donor id.
    shared = sorted(
        (donor_id, base.id_by_bytes[data])
        for data, donor_id in donor.id_by_bytes.items()
        if data in base.id_by_bytes
    )
    alignment = VocabAlignment(
        new_size=new.size,
        copy_new_ids=[new_id for new_id, _ in copy],
        copy_base_ids=[p.source_id for _, p in copy],
        copy_how=[p.how for _, p in copy],
        solve_new_ids=[new_id for new_id, _ in solve],
        solve_donor_ids=[p.source_id for _, p in solve],
        fallback_new_ids=[new_id for new_id, p in enumerate(placed) if p.outcome == "fallback"],
        dict_donor_ids=[donor_id for donor_id, _ in shared],
        dict_base_ids=[base_id for _, base_id in shared],
        special_matches=sorted(special_matches, key=lambda m: m.new_id),
    )
    logger.debug("vocabulary alignment: %s", alignment.counts())
    return alignment


def describe_overlap(alignment: VocabAlignment, limit: int = 10) -> dict[str, Any]:
    """Counts, fractions of the new vocabulary, and the first ``limit`` special matches, for the report.

    Example: ``{"copied": 39234, "copied_fraction": 0.798, ..., "special_by_role":
    ["<|im_end|> -> </s> (eos)"], "special_solved": ["<|im_start|>"]}``.
    """
    counts = alignment.counts()
    copied = sum(v for k, v in counts.items() if k.startswith("copied_"))
    total = max(alignment.new_size, 1)
    return {
        **counts,
        "copied": copied,
        "copied_fraction": round(copied / total, 4),
        "solved_fraction": round(counts["solved"] / total, 4),
        "fallback_fraction": round(counts["fallback"] / total, 4),
        "special_by_role": [
            f"{m.new_content} -> {m.source_content} ({m.role})"
            for m in alignment.role_matches()[:limit]
        ],
        "special_by_map": [
            f"{m.new_content} -> {m.source_content}"
            for m in alignment.special_matches
            if m.how == "special_map"
        ][:limit],
        "special_solved": [m.new_content for m in alignment.special_matches if m.source == "donor"][
            :limit
        ],
    }


def _text_for_model(data: bytes, family: Family) -> str | None:
    """What the backend model (not the normalizer) sees for ``data``: ``b" the"`` -> ``"Ġthe"``
    (byte-level) or ``"▁the"`` (SentencePiece); ``None`` when ``data`` is not UTF-8 text."""
    if family == "byte_level":
        return "".join(BYTE_TO_CHAR[b] for b in data)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    return text.replace(" ", SPACE_MARK) if family == "sentencepiece" else text


def _tokenize_exact(data: bytes, model: Any, base: VocabBytes) -> list[int] | None:
    """Base ids the model splits ``data`` into, if their bytes concatenate back to ``data``."""
    text = _text_for_model(data, base.family)
    if text is None:
        return None
    try:
        ids = [t.id for t in model.tokenize(text)]
    except Exception:  # a model without unk/byte fallback may refuse an unknown character
        return None
    pieces = [base.bytes_by_id[i] if i < base.size else None for i in ids]
    if any(p is None for p in pieces) or b"".join(pieces) != data:
        return None
    return ids


def _utf8_segments(data: bytes) -> list[bytes]:
    """``data`` cut into characters, invalid bytes alone: ``b"a\\xe9"`` -> ``[b"a", b"\\xe9"]``."""
    text = data.decode("utf-8", errors="surrogateescape")
    return [c.encode("utf-8", errors="surrogateescape") for c in text]


def base_pieces(
    new_bytes: list[bytes | None], base_tokenizer: Any, base: VocabBytes
) -> list[list[int]]:
    """How the base tokenizer's model splits each new token's exact bytes (for the ``fvt`` baseline).

    A new token that is a base token maps to it alone. Otherwise the backend model is called
    directly, so no normalizer or pre-tokenizer prepends ``▁`` or splits the token. Where the
    whole token does not come back byte-exact, each character is tokenized alone (SentencePiece
    models with byte fallback give ``<0xNN>`` pieces), and failing that each byte maps to the
    base token for that single byte.

    Args:
        new_bytes: ``VocabBytes.bytes_by_id`` of the new tokenizer (``None`` for specials).
        base_tokenizer: the base fast tokenizer ``base`` was built from.
        base: ``token_bytes(base_tokenizer)``.

    Returns:
        ``[len(new_bytes)]`` lists of base ids whose bytes concatenate to the new token's bytes;
        ``[]`` for specials, empty tokens, and bytes the base cannot spell at all.
    """
    model = base_tokenizer.backend_tokenizer.model
    single_byte = {data[0]: i for data, i in base.id_by_bytes.items() if len(data) == 1}
    out = []
    for data in new_bytes:
        if not data:
            out.append([])
            continue
        whole_id = base.id_by_bytes.get(data)  # a base token already: itself, not its merge path
        ids = [whole_id] if whole_id is not None else _tokenize_exact(data, model, base)
        if ids is None:
            ids = []
            for segment in _utf8_segments(data):
                piece_ids = _tokenize_exact(segment, model, base)
                if piece_ids is None:
                    piece_ids = [single_byte.get(b) for b in segment]
                if None in piece_ids:
                    ids = []
                    break
                ids += piece_ids
        out.append(ids)
    return out
