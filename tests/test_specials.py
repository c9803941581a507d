"""Tests of specials.py: the role table and reading --special-map files."""

from __future__ import annotations

import json

import pytest

from omp_init.errors import ConfigError
from omp_init.specials import (
    ROLE_TABLE,
    attribute_roles_by_id,
    content_role,
    load_special_map,
    looks_like_marker,
    role_of,
    roles_of,
)


@pytest.mark.parametrize(
    ("content", "role"),
    [
        ("<|im_start|>", "turn_start"),
        ("<start_of_turn>", "turn_start"),
        ("<|im_end|>", "turn_end"),
        ("<end_of_turn>", "turn_end"),
        ("<|eot_id|>", "turn_end"),
        ("<|endoftext|>", "end_of_text"),
        ("</s>", "end_of_text"),
        ("<bos>", "begin_of_text"),
        ("<|fim_prefix|>", "fim_prefix"),
        ("<fim_prefix>", "fim_prefix"),
        ("<my_marker>", None),
    ],
)
def test_content_roles(content, role):
    assert content_role(content) == role


def test_each_spelling_has_one_role():
    spellings = [c for contents in ROLE_TABLE.values() for c in contents]
    assert len(spellings) == len(set(spellings))


def test_roles_are_listed_most_specific_first():
    assert roles_of("<|im_end|>", ["pad", "eos"]) == ["turn_end", "eos", "pad"]
    assert roles_of("<|endoftext|>", ["bos", "eos"]) == ["end_of_text", "bos", "eos"]
    assert roles_of("</s>") == ["end_of_text", "eos"]  # implied by the content role
    assert roles_of("<|my_eos|>", ["eos"]) == ["eos"]
    assert role_of("<|im_end|>", ["eos"]) == "turn_end"
    assert role_of("<|my_marker|>") is None


def test_attribute_roles_by_id_keeps_shared_ids():
    assert attribute_roles_by_id({"bos": 0, "eos": 0, "pad": 3}) == {0: ["bos", "eos"], 3: ["pad"]}


@pytest.mark.parametrize(
    ("content", "is_marker"),
    [
        ("<|fim_prefix|>", True),
        ("<|reserved_special_token_7|>", True),
        ("<｜begin▁of▁sentence｜>", True),
        ("<tool_call>", True),
        ("[INST]", True),
        ("<s>", False),  # also an HTML tag: text unless a tokenizer flags it special
        ("<table>", False),
        ("\n\n", False),
        ("<| not a marker |>", False),
    ],
)
def test_marker_spellings(content, is_marker):
    assert looks_like_marker(content) is is_marker


def test_load_special_map_reads_an_object(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"<|im_end|>": "</s>", "<|im_start|>": "<s>"}), encoding="utf-8")
    assert load_special_map(path) == {"<|im_end|>": "</s>", "<|im_start|>": "<s>"}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (None, "cannot be read"),
        ("{not json", "is not valid JSON"),
        ('["<|im_end|>", "</s>"]', "holds a list, not an object"),
        (
            '{"<|im_end|>": 2, "<a>": "x", "<b>": null, "": "x"}',
            "maps '', '<b>', '<|im_end|>' to a non-string",
        ),
    ],
)
def test_load_special_map_errors_name_the_flag_and_file(tmp_path, text, fragment):
    path = tmp_path / "map.json"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_special_map(path)
    message = str(info.value)
    assert message.startswith(f"--special-map {str(path)!r}")
    assert fragment in message
    assert "\n" not in message
