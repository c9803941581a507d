"""Cross-tokenizer distillation: the student receives the teacher's tokenizer, then axolotl's KD plugin.

The teacher's top-k logprobs index the teacher's vocabulary; after the transplant the student
has that very vocabulary, so axolotl 0.19.0's KD loss (``axolotl.integrations.kd``, dataset
type ``axolotl.integrations.kd.chat_template``: ``messages``, ``target_token_ids``,
``logprobs`` per position) applies unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from plugin_helpers import REPO, run, run_axolotl, tiny_config, write_config
from safetensors.torch import load_file

pytest.importorskip("axolotl")
pytestmark = [pytest.mark.axolotl, pytest.mark.slow]

from transformers import AutoTokenizer  # noqa: E402

_CHATS = [
    ("what is a sparse combination", "a few shared tokens with weights"),
    ("print the value", "def f(x): return x + 1"),
    ("translate café", "café naïve résumé über straße"),
    ("count to five", "1 2 3 4 5"),
]
TOOL = REPO / "recipes" / "tools" / "teacher_logprobs.py"


def write_teacher_logprobs(teacher_dir: Path, tmp_path: Path, chat_template: str) -> Path:
    """recipes/tools/teacher_logprobs.py on 16 chats; the tiny tokenizer gets axolotl's chatml."""
    chats = tmp_path / "chats.jsonl"
    with open(chats, "w", encoding="utf-8") as handle:
        for user, assistant in _CHATS * 4:
            messages = [
                {"role": "user", "content": user},
                {"role": "assistant", "content": assistant},
            ]
            handle.write(json.dumps({"messages": messages}) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(tmp_path / "teacher_tokenizer")
    output = tmp_path / "kd.jsonl"
    args = [
        "--teacher",
        str(teacher_dir),
        "--tokenizer",
        str(tmp_path / "teacher_tokenizer"),
        "--input",
        str(chats),
    ]
    proc = run(
        [
            sys.executable,
            str(TOOL),
            *args,
            "--output",
            str(output),
            "--top-k",
            "4",
            "--dtype",
            "float32",
        ],
        tmp_path,
    )
    assert proc.returncode == 0
    assert json.loads(proc.stdout.strip().splitlines()[-1])["rows"] == 16
    return output


def test_kd_student_gets_the_teacher_tokenizer(
    tmp_path, byte_bpe_model_dir, sp_model_dir, text_dataset
):
    from axolotl.utils.chat_templates import get_chat_template

    data = write_teacher_logprobs(sp_model_dir, tmp_path, get_chat_template("chatml"))
    cfg = tiny_config(
        tmp_path,
        byte_bpe_model_dir,  # student
        sp_model_dir,  # teacher: the donor of the tokenizer
        text_dataset,
        plugins=["omp_init.axolotl.OmpInitPlugin", "axolotl.integrations.kd.KDPlugin"],
        datasets=[
            {
                "path": str(data),
                "ds_type": "json",
                "type": "axolotl.integrations.kd.chat_template",
                "field_messages": "messages",
                "logprobs_field": "logprobs",
            }
        ],
        chat_template="chatml",
        kd_trainer=True,
        kd_ce_alpha=0.1,
        kd_alpha=0.9,
        kd_temperature=1.0,
        sequence_len=256,  # chatml markers are byte pieces in the tiny SentencePiece vocabulary
    )
    proc = run_axolotl("train", write_config(tmp_path / "kd.yml", cfg), tmp_path)
    assert proc.returncode == 0
    log = proc.stderr + proc.stdout
    assert "omp_init: rank 0 of 1 wrote it" in log and "'loss'" in log
    # The KD strategy produced the teacher targets, and every teacher token id is a row of
    # the student's (transplanted) embedding.
    from datasets import load_from_disk

    (info,) = Path(cfg["dataset_prepared_path"]).rglob("dataset_info.json")
    prepared = load_from_disk(str(info.parent))
    assert {"target_token_ids", "target_logprobs", "target_mask"} <= set(prepared.column_names)
    max_teacher_id = max(
        max(max(position) for position in row) for row in prepared["target_token_ids"]
    )
    embed = load_file(Path(cfg["output_dir"]) / "model.safetensors")["model.embed_tokens.weight"]
    assert max_teacher_id < embed.shape[0]
    assert embed.shape[0] >= len(AutoTokenizer.from_pretrained(sp_model_dir))
