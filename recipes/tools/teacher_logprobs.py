"""Write a teacher's top-k next-token logprobs for chat data, in axolotl 0.19.0's KD format.

Used by the kd_* recipes (dataset ``type: axolotl.integrations.kd.chat_template``). Each output
row is the input row plus, for every position of the tokenized conversation:
``target_token_ids`` [T][top_k] (teacher vocabulary ids) and ``logprobs`` [T][top_k]; position
i holds the teacher's distribution of token i+1, which is how axolotl's KD loss aligns it with
the student's hidden state at i.

Tokenize with the student's transplanted tokenizer (``--tokenizer runs/...``, built first with
``axolotl omp-init RECIPE``): it is the teacher's vocabulary, and it is what axolotl will
tokenize the rows with, so positions line up. For large runs, produce the same file with vLLM
(``prompt_logprobs``) or use axolotl's online KD (``kd_online_server_base_url``) instead.

    python recipes/tools/teacher_logprobs.py --teacher Qwen/Qwen2.5-7B-Instruct \\
        --tokenizer runs/llama3.2-1b-instruct-qwen2.5-tok --input chats.jsonl --output kd.jsonl

Prints one JSON line (command, rows written, seconds) on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def load_teacher(spec: str, dtype: torch.dtype, device: str):
    """HF directory or hub id; a ``.gguf`` file is dequantized by transformers."""
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=dtype
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype)
    return model.to(device).eval()


def teacher_row(row: dict, tokenizer, teacher, top_k: int, field: str, device: str) -> dict:
    input_ids = tokenizer.apply_chat_template(
        row[field], tokenize=True, return_dict=True, return_tensors="pt"
    )["input_ids"]
    with torch.no_grad():
        logits = teacher(input_ids.to(device)).logits[0].float()  # [T, vocab]
    top = torch.log_softmax(logits, dim=-1).topk(top_k, dim=-1)  # values, indices: [T, top_k]
    return {**row, "target_token_ids": top.indices.tolist(), "logprobs": top.values.tolist()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--teacher", required=True, help="teacher model: HF directory, hub id or .gguf file"
    )
    parser.add_argument(
        "--tokenizer", required=True, help="the student's transplanted tokenizer (omp_init_output)"
    )
    parser.add_argument(
        "--input", required=True, help="JSONL with a list of {role, content} per row"
    )
    parser.add_argument("--output", required=True, help="JSONL to write")
    parser.add_argument(
        "--field-messages",
        default="messages",
        help="the rows' messages field (default %(default)s)",
    )
    parser.add_argument(
        "--top-k", type=int, default=8, help="logprobs kept per position (default %(default)s)"
    )
    parser.add_argument("--max-rows", type=int, help="stop after this many rows")
    parser.add_argument(
        "--dtype",
        default="bfloat16",
        choices=["bfloat16", "float32"],
        help="teacher dtype (default %(default)s)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    teacher = load_teacher(args.teacher, getattr(torch, args.dtype), args.device)
    if teacher.get_input_embeddings().num_embeddings < len(tokenizer):
        print(
            f"error: --tokenizer has {len(tokenizer)} tokens but the teacher only {teacher.get_input_embeddings().num_embeddings} rows; "
            "pass the tokenizer of the checkpoint transplanted with this teacher as donor.",
            file=sys.stderr,
        )
        return 2
    rows = 0
    with (
        open(args.input, encoding="utf-8") as source,
        open(args.output, "w", encoding="utf-8") as sink,
    ):
        for line in source:
            if args.max_rows is not None and rows >= args.max_rows:
                break
            row = teacher_row(
                json.loads(line), tokenizer, teacher, args.top_k, args.field_messages, args.device
            )
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            rows += 1
    print(
        json.dumps(
            {
                "command": sys.argv,
                "rows": rows,
                "elapsed_s": round(time.perf_counter() - started, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
