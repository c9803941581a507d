"""Make the output directory's tokenizer load, with ``AutoTokenizer``, as the tokenizer saved.

Why: transformers 5 picks a tokenizer class from the *model* type for some model types
(``qwen2``, ``phi3``, ``deepseek_v3``, ... in its ``MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS``),
whatever ``tokenizer_config.json`` says, and those classes rebuild their own pre-tokenizer and
normalizer around the saved vocabulary. A Qwen2.5 base given SmolLM2's tokenizer then reloads
as ``Qwen2Tokenizer`` with Qwen's split regex and NFC: 834 tokens instead of 830 on 3,000
bytes of English. Training data, distillation targets and draft tokens would all be cut
differently from the tokenizer the user asked for.

The fix is applied only when a reload differs: the directory gets a four-line module with a
plain ``TokenizersBackend`` subclass and ``tokenizer_config.json`` an ``auto_map`` naming it.
transformers 5 then loads ``tokenizer.json`` as saved, with or without ``trust_remote_code``
(without it, for these model types it skips the remote class and uses ``TokenizersBackend``).
The reload is checked again; the outcome goes into the transplant report.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

logger = logging.getLogger(__name__)

MODULE_NAME = "tokenization_omp_init"
CLASS_NAME = "TransplantedTokenizer"
_MODULE_CODE = '''"""Written by omp-init: load tokenizer.json exactly as saved (see omp_init/saved_tokenizer.py)."""

from transformers import TokenizersBackend


class TransplantedTokenizer(TokenizersBackend):
    """The saved tokenizer.json, not the pipeline of the model type's own tokenizer class."""
'''
# Text the reloaded tokenizer must cut exactly as the saved one: whitespace runs and newlines,
# contractions, digits, code, accents in both Unicode forms (NFC normalizers merge them), and
# several scripts.
PROBE_TEXT = (
    "It's 10:45 -- the 3rd of 12,500 trials.\n\n  def f(x):\n\treturn x**2  # done\n"
    "Caf\u00e9 vs Cafe\u0301; na\u00efve \u00fcber.  \u041f\u0440\u0438\u0432\u0435\u0442, "
    "\u043c\u0438\u0440! \u65e5\u672c\u8a9e\u306e\u6587\u3002 \u0645\u0631\u062d\u0628\u0627 "
    "\U0001f600\r\n\u00a0end"
)


def pin_tokenizer_class(directory: str | Path, tokenizer: Any) -> dict[str, Any]:
    """Check that ``AutoTokenizer.from_pretrained(directory)`` cuts text like ``tokenizer``;
    pin the class through ``auto_map`` when it does not.

    Call after ``tokenizer.save_pretrained(directory)`` and after ``config.json`` is written
    (the model type decides the class). Returns the report entry: the class AutoTokenizer
    gave first, whether the fix was applied, and whether the final reload matches.
    """
    directory = Path(directory)
    expected = tokenizer(PROBE_TEXT)["input_ids"]
    try:
        loaded = AutoTokenizer.from_pretrained(directory)
    except (ValueError, OSError) as exc:
        logger.warning("AutoTokenizer cannot load the output's tokenizer: %s", exc)
        return {"auto_tokenizer_class": None, "pinned": False, "matches_saved_tokenizer": False}
    entry: dict[str, Any] = {"auto_tokenizer_class": type(loaded).__name__, "pinned": False}
    if loaded(PROBE_TEXT)["input_ids"] == expected:
        entry["matches_saved_tokenizer"] = True
        return entry
    logger.info(
        "AutoTokenizer reloads the new tokenizer as %s (from the base's model type), which cuts "
        "text differently; pinning the saved pipeline with %s.%s",
        type(loaded).__name__, MODULE_NAME, CLASS_NAME,
    )  # fmt: skip
    original_config = _write_auto_map(directory)
    entry["pinned"] = True
    try:
        reloaded = AutoTokenizer.from_pretrained(directory)
        entry["matches_saved_tokenizer"] = reloaded(PROBE_TEXT)["input_ids"] == expected
    except (ValueError, OSError) as exc:  # e.g. a model type that would want trust_remote_code
        logger.debug("pinned tokenizer does not load: %s", exc)
        entry["matches_saved_tokenizer"] = False
    if not entry["matches_saved_tokenizer"]:
        _remove_auto_map(directory, original_config)
        entry["pinned"] = False
        logger.warning(
            "AutoTokenizer on the output directory gives %s, which cuts text differently from "
            "the new tokenizer; load it with transformers.TokenizersBackend.from_pretrained.",
            type(loaded).__name__,
        )
    return entry


def _write_auto_map(directory: Path) -> str | None:
    """Write the module and the ``auto_map``; returns the previous tokenizer_config.json text."""
    (directory / f"{MODULE_NAME}.py").write_text(_MODULE_CODE)
    config_path = directory / "tokenizer_config.json"
    original = config_path.read_text() if config_path.is_file() else None
    config = json.loads(original) if original else {}
    config["auto_map"] = {"AutoTokenizer": [None, f"{MODULE_NAME}.{CLASS_NAME}"]}
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return original


def _remove_auto_map(directory: Path, original_config: str | None) -> None:
    (directory / f"{MODULE_NAME}.py").unlink(missing_ok=True)
    config_path = directory / "tokenizer_config.json"
    if original_config is None:
        config_path.unlink(missing_ok=True)
    else:
        config_path.write_text(original_config)
