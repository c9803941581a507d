"""Roles of special tokens, and the user's ``--special-map`` overrides.

Special tokens carry no text, so they cannot be matched by bytes the way ordinary tokens are
(``vocab.py``). A new special token is matched to a base one by, in order: identical content,
the same *role* (this module's table), or an explicit entry of ``--special-map`` (which wins over
both). Two kinds of role exist:

- attribute roles ``bos``, ``eos``, ``pad``, ``unk``: what the tokenizer's ``bos_token`` etc. are
  set to; they say how a token is *used*, but tokenizers set them inconsistently (an instruct
  tokenizer's ``eos`` is often its end-of-turn marker);
- content roles (:data:`ROLE_TABLE`): what a token *is* by its spelling across model families,
  e.g. ``<|im_end|>``, ``<end_of_turn>`` and ``<|eot_id|>`` all end a chat turn.

:func:`roles_of` lists a token's roles most specific first: its content role, then its attribute
roles, then the attribute role its content role implies (``end_of_text`` -> ``eos``). Matching
takes the first role the other vocabulary has, so ``<|im_end|>`` (turn_end; eos) finds a base's
``<end_of_turn>`` when there is one and its ``</s>`` (eos) otherwise.

Checking that the map's tokens exist in the vocabularies is left to ``vocab.align_vocabularies``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import ConfigError

ATTRIBUTE_ROLES: tuple[str, ...] = ("bos", "eos", "pad", "unk")

# Content role -> exact spellings (case-sensitive) seen in common model families.
ROLE_TABLE: dict[str, tuple[str, ...]] = {
    "begin_of_text": (
        "<|begin_of_text|>",
        "<s>",
        "<bos>",
        "<|startoftext|>",
        "<｜begin▁of▁sentence｜>",
    ),
    "end_of_text": ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<｜end▁of▁sentence｜>"),
    "turn_start": (
        "<|im_start|>",  # ChatML (Qwen, SmolLM)
        "<start_of_turn>",  # Gemma
        "<|start_header_id|>",  # Llama 3
        "[INST]",  # Mistral
        "<|user|>",  # Phi-3, Zephyr
        "<|assistant|>",
        "<|system|>",
        "<|start|>",  # harmony
    ),
    "turn_end": ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "[/INST]", "<|end|>", "<|eom_id|>"),
    "header_end": ("<|end_header_id|>", "<|message|>"),
    "fim_prefix": ("<|fim_prefix|>", "<fim_prefix>"),
    "fim_middle": ("<|fim_middle|>", "<fim_middle>"),
    "fim_suffix": ("<|fim_suffix|>", "<fim_suffix>"),
    "fim_pad": ("<|fim_pad|>", "<fim_pad>"),
    "repo_name": ("<|repo_name|>", "<repo_name>", "<reponame>"),
    "file_sep": ("<|file_sep|>", "<file_sep>", "<filename>"),
    "tool_call_start": ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>"),
    "tool_call_end": ("</tool_call>",),
    "pad": ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
    "mask": ("<mask>", "[MASK]"),
}

# A content role's fallback attribute role, for a vocabulary that sets the attribute on a token
# the table does not know (a base whose eos is "<|my_eos|>" still receives a new "</s>").
_IMPLIED_ATTRIBUTE: dict[str, str] = {"begin_of_text": "bos", "end_of_text": "eos"}

_ROLE_BY_CONTENT: dict[str, str] = {
    c: role for role, contents in ROLE_TABLE.items() for c in contents
}

# Spellings that mark a control token even when a tokenizer does not flag it special:
# "<|...|>" (OpenAI/Qwen/Llama-3 style) and DeepSeek's full-width "<｜...｜>".
_MARKER_PATTERN = re.compile(r"<\|[^\s|]+\|>|<｜[^\s｜]+｜>")

# Table spellings that are also ordinary text: Gemma keeps the HTML strikethrough tags "<s>" and
# "</s>" as unflagged added tokens, so they are markers only where a tokenizer flags them.
_ALSO_TEXT = frozenset({"<s>", "</s>"})


def content_role(content: str) -> str | None:
    """The table role of a special token's spelling, e.g. ``"<|eot_id|>"`` -> ``"turn_end"``."""
    return _ROLE_BY_CONTENT.get(content)


def looks_like_marker(content: str) -> bool:
    """Whether an added token spelled ``content`` is a control marker rather than text.

    Used for added tokens a tokenizer does not flag ``special`` (Qwen's ``<tool_call>``);
    ``"<|fim_prefix|>"`` -> True; ``"<table>"``, ``"<s>"`` or ``"\\n\\n"`` (text tokens of
    Gemma) -> False.
    """
    if content in _ALSO_TEXT:
        return False
    return content in _ROLE_BY_CONTENT or _MARKER_PATTERN.fullmatch(content) is not None


def roles_of(content: str, attribute_roles: Iterable[str] = ()) -> list[str]:
    """All roles of one special token, most specific first, without repeats.

    Args:
        content: the token's spelling, e.g. ``"<|im_end|>"``.
        attribute_roles: the tokenizer attributes (``bos``/``eos``/``pad``/``unk``) naming it.

    Returns:
        e.g. ``roles_of("<|im_end|>", ["eos", "pad"]) == ["turn_end", "eos", "pad"]``.
    """
    table_role = content_role(content)
    ordered = [table_role] if table_role else []
    ordered += [r for r in ATTRIBUTE_ROLES if r in set(attribute_roles)]
    if table_role in _IMPLIED_ATTRIBUTE:
        ordered.append(_IMPLIED_ATTRIBUTE[table_role])
    return list(dict.fromkeys(ordered))


def role_of(content: str, attribute_roles: Iterable[str] = ()) -> str | None:
    """The most specific role of a special token (first of :func:`roles_of`), or ``None``."""
    roles = roles_of(content, attribute_roles)
    return roles[0] if roles else None


def attribute_roles_by_id(roles: Mapping[str, int]) -> dict[int, list[str]]:
    """Invert ``{"bos": 0, "eos": 0, "pad": 3}`` into ``{0: ["bos", "eos"], 3: ["pad"]}``."""
    by_id: dict[int, list[str]] = {}
    for role in ATTRIBUTE_ROLES:
        if role in roles:
            by_id.setdefault(roles[role], []).append(role)
    return by_id


def load_special_map(path: str | Path) -> dict[str, str]:
    """Read a ``--special-map`` JSON file: an object mapping new-token content to base-token content.

    Example file: ``{"<|im_end|>": "</s>", "<|im_start|>": "<s>"}``.

    Raises:
        ConfigError: the file is missing or unreadable, is not JSON, is not an object, or maps
            to anything but strings.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"--special-map {str(path)!r} cannot be read ({exc.strerror or exc}); pass an existing JSON file."
        ) from None
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"--special-map {str(path)!r} is not valid JSON ({exc.msg} at line {exc.lineno}); "
            'write an object like {"<|im_end|>": "</s>"}.'
        ) from None
    if not isinstance(mapping, dict):
        raise ConfigError(
            f"--special-map {str(path)!r} holds a {type(mapping).__name__}, not an object; "
            'write an object like {"<|im_end|>": "</s>"}.'
        )
    bad = sorted(
        key for key, value in mapping.items() if not key or not isinstance(value, str) or not value
    )
    if bad:
        shown = ", ".join(repr(k) for k in bad[:10]) + (
            f" (+{len(bad) - 10} more)" if len(bad) > 10 else ""
        )
        raise ConfigError(
            f"--special-map {str(path)!r} maps {shown} to a non-string or empty value; "
            "map each non-empty new-token content to the content of a base token."
        )
    return mapping
