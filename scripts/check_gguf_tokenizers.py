"""Check omp-init's GGUF tokenizers against llama.cpp's reference tokenizations.

llama.cpp ships vocabulary-only GGUF files with test inputs and the token ids its own tokenizer
gives them (``ggml-vocab-NAME.gguf``, ``.gguf.inp``, ``.gguf.out``; they are in the
llama-cpp-python sdist: ``pip download --no-deps --no-binary :all: llama-cpp-python``, then
``vendor/llama.cpp/models/``). For each file this script builds the tokenizer the way
``omp-init`` does for a ``.gguf`` base or donor (transformers' conversion plus
``omp_init.gguf_convert``'s fixes), encodes every input without special tokens and counts the
inputs whose ids equal llama.cpp's.

Usage::

    HF_HUB_OFFLINE=1 python scripts/check_gguf_tokenizers.py VOCAB_DIR [--only llama-spm phi-3] \\
        [--out results.json]

Prints one line per vocabulary and writes JSON with its command line. Nothing imports this file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omp_init.errors import OmpInitError
from omp_init.gguf_convert import _build_gguf_tokenizer

_SEPARATOR = "\n__ggml_vocab_test__\n"


def check_vocabulary(gguf_path: Path) -> dict:
    """``{"matched": 47, "inputs": 47, "fixes": [...], "adds_bos": True, "first_mismatch": None}``."""
    try:
        tokenizer, fixes = _build_gguf_tokenizer(gguf_path, "--base")
    except OmpInitError as exc:  # transformers cannot convert some files
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    inputs = Path(f"{gguf_path}.inp").read_text(encoding="utf-8").split(_SEPARATOR)
    expected = Path(f"{gguf_path}.out").read_text(encoding="utf-8").split("\n")
    matched, first_mismatch = 0, None
    for text, line in zip(inputs, expected, strict=False):
        want = [int(token) for token in line.split()]
        got = tokenizer(text, add_special_tokens=False).input_ids
        if got == want:
            matched += 1
        elif first_mismatch is None:
            first_mismatch = {"input": text[:40], "omp_init": got[:10], "llama.cpp": want[:10]}
    adds_bos = tokenizer.bos_token_id is not None and tokenizer("a").input_ids[:1] == [
        tokenizer.bos_token_id
    ]
    return {
        "matched": matched,
        "inputs": len(inputs),
        "fixes": fixes,
        "adds_bos": adds_bos,
        "first_mismatch": first_mismatch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vocab_dir", type=Path, help="llama.cpp's models/ directory")
    parser.add_argument("--only", nargs="*", help="vocabulary names, e.g. llama-spm phi-3")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    files = sorted(args.vocab_dir.glob("ggml-vocab-*.gguf"))
    files = [f for f in files if Path(f"{f}.inp").is_file() and Path(f"{f}.out").is_file()]
    names = {f.name[len("ggml-vocab-") : -len(".gguf")]: f for f in files}
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            sys.exit(f"no reference files for {unknown} in {args.vocab_dir}; have {sorted(names)}")
        names = {name: names[name] for name in args.only}
    if not names:
        sys.exit(f"no ggml-vocab-*.gguf with .inp/.out files in {args.vocab_dir}")
    results = {}
    for name, path in names.items():
        results[name] = result = check_vocabulary(path)
        if "error" in result:
            print(f"{name:16s} not converted: {result['error']}", flush=True)
        else:
            print(
                f"{name:16s} {result['matched']}/{result['inputs']} as llama.cpp  "
                f"fixes={','.join(result['fixes']) or '-'}  adds_bos={result['adds_bos']}",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps({"command": sys.argv, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
