"""Fixtures of the axolotl plugin tests (helpers live in plugin_helpers.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tiny_builders import training_corpus

# In-process axolotl (load_cfg) would otherwise try to send telemetry.
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture
def text_dataset(tmp_path) -> Path:
    """40 short lines as ``{"text": ...}`` JSONL (axolotl ``type: completion``)."""
    path = tmp_path / "data.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for line in training_corpus(40, seed=5):
            handle.write(json.dumps({"text": line}) + "\n")
    return path
