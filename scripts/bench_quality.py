"""Bits-per-byte of transplanted models: methods x text files, per (base, donor) pair.

For every pair, every method's transplant is written once under ``--work-dir`` (an existing
output is reused, with the time its first run took), then every model is scored with
``omp_init.evaluate.evaluate_models`` on the same byte spans (each score is cached under
``--work-dir/eval`` by model and settings). Writes one JSON file and one markdown table per run
and prints the JSON summary: the command line, the machine (CPU, threads, load, versions), per
pair and method the transplant time, and per text bpb, the change vs the base model, tokens per
byte and the "fragmented" flag (new tokens/byte over the base's > 1.15).

Methods (``--methods``, comma separated; ``-kN`` sets k, default 64):

- ``omp+fvt`` (the CLI default: half the centered OMP row, half the FVT row), ``omp``
  (centered OMP alone), ``omp-nocenter``, ``zero``, ``mean``, ``random``, ``fvt``: run through
  the ``omp-init transplant`` CLI;
- ``mergekit-omp``: ``mergekit-tokensurgeon BASE DONOR OUT -k N`` (``--mergekit-bin``, default
  ``/work/mk-venv/bin/mergekit-tokensurgeon`` when it exists; its tokenizer files are copied
  from the donor when it writes none); ``mergekit-omp-copied``: that output with every row
  omp_init copies (shared tokens, matched specials) reset to the base row, so only new rows differ;
- ``v:EMBED/HEAD``: a variant from ``omp_init/variants.py``, built in this process with the
  transplant's own loading and writing steps; EMBED (input rows) and HEAD (lm_head rows) are
  each one of ``omp`` (centered), ``omp0`` (not centered), ``fvt``, ``mean``, ``zero``,
  ``blend`` (0.5 omp + 0.5 fvt, see ``--blend``), ``prior`` (OMP on what the FVT row misses).

``--pair`` takes HF directories or ``.gguf`` files (converted once, as ``omp-init`` does)::

    python scripts/bench_quality.py --pair /work/cache/hf/qwen05 /work/cache/hf/smollm2 \\
        --methods omp+fvt,omp,mean,zero,fvt,mergekit-omp --work-dir /tmp/qbench \\
        --json docs/quality_qwen05_smollm2.json --markdown docs/quality_qwen05_smollm2.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

# huggingface_hub reads this when it is imported, so it must be set before torch/transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

# mergekit-tokensurgeon on PATH, else the separate venv these docs' numbers were made with.
DEFAULT_MERGEKIT = shutil.which("mergekit-tokensurgeon") or "/work/mk-venv/bin/mergekit-tokensurgeon"
# The dev texts beside the checkout when present, else the two texts the package ships.
REPO = Path(__file__).resolve().parent.parent
SHARED_TEXTS = REPO.parent / "shared" / "eval_text"
PACKAGED_TEXTS = REPO / "omp_init" / "data"
CLI_METHODS = {"omp+fvt", "omp", "omp-nocenter", "zero", "mean", "random", "fvt"}
ROW_RULES = ("omp", "omp0", "fvt", "mean", "zero", "blend", "prior")
FRAGMENTED_RATIO = 1.15
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)


def local_model_dir(spec: str, role: str) -> str:
    """An HF directory as given; a ``.gguf`` file (or hub id) as the directory omp-init converts
    it to (``~/.cache/omp_init/gguf/<stem>-<key>``), since mergekit and the scoring need one."""
    if Path(spec).is_dir() and (Path(spec) / "config.json").is_file():
        return spec
    from omp_init.sources import resolve_model

    return str(resolve_model(spec, role=role).local_dir)


def parse_method(spec: str) -> dict:
    """``omp-nocenter-k32`` -> {name, kind: cli, method: omp, center: False, k: 32}."""
    match = re.fullmatch(r"(.+?)(?:-k(\d+))?", spec)
    stem, k = match.group(1), int(match.group(2) or 64)
    if stem.startswith("v:"):
        embed_rule, _, head_rule = stem[2:].partition("/")
        head_rule = head_rule or embed_rule
        bad = sorted({embed_rule, head_rule} - set(ROW_RULES))
        if bad:
            raise SystemExit(
                f"--methods {spec}: unknown row rule(s) {bad}; choose from {ROW_RULES}"
            )
        return {"name": spec, "kind": "variant", "embed": embed_rule, "head": head_rule, "k": k}
    if stem in ("mergekit-omp", "mergekit-omp-copied"):
        return {"name": spec, "kind": "mergekit", "k": k, "copied_rows": stem.endswith("-copied")}
    if stem not in CLI_METHODS:
        raise SystemExit(
            f"--methods {spec}: unknown; choose from {sorted(CLI_METHODS)}, mergekit-omp, v:EMBED/HEAD"
        )
    method = "omp" if stem in ("omp", "omp-nocenter") else stem
    return {"name": spec, "kind": "cli", "method": method, "center": stem != "omp-nocenter", "k": k}


def machine_info() -> dict:
    import transformers

    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _tag(path: str) -> str:
    return Path(path.rstrip("/")).name


# ---------------------------------------------------------------- transplants


def run_cli(spec: dict, base: str, donor: str, out: Path, threads: int) -> None:
    cmd = [
        sys.executable,
        "-m",
        "omp_init",
        "--log-level",
        "WARNING",
        "transplant",
        "--base",
        base,
        "--donor",
        donor,
        "--output",
        str(out),
        "--method",
        spec["method"],
        "--k",
        str(spec["k"]),
        "--device",
        "cpu",
        "--no-resume",
    ]
    if not spec["center"]:
        cmd.append("--no-center")
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})


def run_mergekit(
    spec: dict, base: str, donor: str, out: Path, mergekit_bin: str, threads: int
) -> None:
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run(
        [mergekit_bin, base, donor, str(partial), "-k", str(spec["k"]), "-j", str(threads)],
        check=True,
    )
    for name in TOKENIZER_FILES:  # make sure the new tokenizer is there for scoring
        if not (partial / name).exists() and (Path(donor) / name).exists():
            shutil.copy2(Path(donor) / name, partial / name)
    # Scored like omp-init's outputs: AutoTokenizer must cut text as the donor's tokenizer does
    # (a qwen2 base would otherwise reload it as Qwen2Tokenizer; omp_init/saved_tokenizer.py).
    from transformers import AutoTokenizer

    from omp_init.saved_tokenizer import pin_tokenizer_class

    print("mergekit output tokenizer:", pin_tokenizer_class(partial, AutoTokenizer.from_pretrained(donor)))
    partial.rename(out)


class VariantBuilder:
    """Loads a pair once (the transplant's own step 1-3) and writes variants of its new rows.

    OMP solutions are cached per (space, k, centered, prior), so variants share the solves.
    """

    def __init__(self, base: str, donor: str, blend: float):
        import importlib

        from omp_init.config import TransplantConfig
        from omp_init.distributed import init_distributed

        tp = importlib.import_module(
            "omp_init.transplant"
        )  # the module (the package re-exports the function)
        self.tp, self.blend = tp, blend
        self.config = TransplantConfig(
            base=base, donor=donor, output="/nonexistent", device="cpu", resume=False
        )
        self.ctx = init_distributed("cpu")
        self.inputs = tp._load_inputs_here(self.config)
        self.solutions: dict = {}
        self._pieces = None

    @property
    def pieces(self) -> list[list[int]]:
        from omp_init import vocab

        if self._pieces is None:
            inputs = self.inputs
            new_bytes = [inputs.new_bytes.bytes_by_id[i] for i in inputs.alignment.solve_new_ids]
            self._pieces = vocab.base_pieces(new_bytes, inputs.base_tokenizer, inputs.base_bytes)
        return self._pieces

    def _donor_space(self, matrix_name: str) -> torch.Tensor:
        inputs = self.inputs
        if matrix_name == "lm_head" and inputs.donor_head is not None:
            return inputs.donor_head
        return inputs.donor_embed

    def _solve(self, matrix_name: str, k: int, center: bool, prior: bool):
        from omp_init.omp import resolve_score_dtype
        from omp_init.resume import ChunkStore
        from omp_init.solve import solve_pass
        from omp_init.variants import prior_targets

        donor_matrix = self._donor_space(matrix_name)
        space = "lm_head" if donor_matrix is self.inputs.donor_head else "embed"
        key = (space, k, center, prior)
        if key not in self.solutions:
            alignment = self.inputs.alignment
            dict_donor = torch.tensor(alignment.dict_donor_ids, dtype=torch.long)
            dict_base = torch.tensor(alignment.dict_base_ids, dtype=torch.long)
            dictionary = donor_matrix[dict_donor].float()
            targets = donor_matrix[
                torch.tensor(alignment.solve_donor_ids, dtype=torch.long)
            ].float()
            has_prior = None
            if center:
                mu = dictionary.mean(0)
                dictionary, targets = dictionary - mu, targets - mu
            if prior:  # target minus its FVT row (both already centered: the mu cancels)
                has_prior, prior_rows = prior_targets(
                    self.pieces, dict_base, dict_donor, donor_matrix
                )
                targets = torch.where(has_prior[:, None], targets + mu - prior_rows, targets)
            store = ChunkStore(Path("/nonexistent.partial"), "none", enabled=False)
            started = time.perf_counter()
            result = solve_pass(
                space,
                dictionary,
                targets,
                k,
                ctx=self.ctx,
                store=store,
                score_dtype=resolve_score_dtype("auto", self.ctx.device),
                show_progress=False,
            )
            self.solutions[key] = (result, has_prior, time.perf_counter() - started)
        return self.solutions[key]

    def recipe(self, rule: str, matrix_name: str, k: int):
        from omp_init import baselines, variants

        n_new = len(self.inputs.alignment.solve_new_ids)
        dict_base = torch.tensor(self.inputs.alignment.dict_base_ids, dtype=torch.long)
        if rule in ("mean", "zero"):
            return baselines.make_recipe(rule, n_new)
        if rule == "fvt":
            return baselines.fvt_recipe(self.pieces)
        if rule in ("omp", "omp0"):
            result, _, _ = self._solve(matrix_name, k, center=rule == "omp", prior=False)
            return baselines.omp_recipe(result, dict_base, centered=rule == "omp")
        if rule == "blend":
            omp = self.recipe("omp", matrix_name, k)
            return baselines.blend_recipes(
                omp, baselines.fvt_recipe(self.pieces), self.blend, method="omp+fvt"
            )
        if rule == "prior":
            result, has_prior, _ = self._solve(matrix_name, k, center=True, prior=True)
            return variants.prior_omp_recipe(
                result, dict_base, self.pieces, has_prior, method="fvt-prior-omp"
            )
        raise ValueError(rule)

    def copy_rows_into(self, source: Path, out: Path) -> None:
        """``source``'s weights with every row omp_init copies (shared tokens and matched specials)
        set to the base row, so that only the new tokens' rows differ from an omp_init output.

        mergekit copies shared tokens too but matches specials differently (e.g. SmolLM2's
        ``<|endoftext|>``, the document start when scoring, gets an OMP row instead of Qwen's).
        """
        from safetensors.torch import load_file, save_file

        alignment, inputs = self.inputs.alignment, self.inputs
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(source, partial)
        tensors = load_file(partial / "model.safetensors")
        new_ids = torch.tensor(alignment.copy_new_ids, dtype=torch.long)
        base_ids = torch.tensor(alignment.copy_base_ids, dtype=torch.long)
        for name, base_matrix in (
            ("model.embed_tokens.weight", inputs.base_embed),
            ("lm_head.weight", inputs.base_head),
        ):
            if name in tensors and base_matrix is not None:
                tensors[name][new_ids] = base_matrix[base_ids].to(tensors[name].dtype)
        save_file(tensors, partial / "model.safetensors", metadata={"format": "pt"})
        partial.rename(out)

    def write(self, spec: dict, out: Path) -> None:
        import dataclasses

        tp = self.tp
        config = dataclasses.replace(self.config, output=str(out), k=spec["k"])
        recipe_embed = self.recipe(spec["embed"], "embed", spec["k"])
        recipe_head = (
            self.recipe(spec["head"], "lm_head", spec["k"])
            if self.inputs.base_head is not None
            else None
        )
        timer = tp._Timer()
        tp._write(config, self.inputs, recipe_embed, recipe_head, {}, "variant", timer, self.ctx)
        (out / "variant.json").write_text(json.dumps(spec, indent=2) + "\n")


def build_all(pair: tuple[str, str], specs: list[dict], args) -> dict:
    """Write every method's output for one pair (skip existing); returns {name: info}."""
    base, donor = pair
    pair_dir = Path(args.work_dir) / f"{_tag(base)}__{_tag(donor)}"
    pair_dir.mkdir(parents=True, exist_ok=True)
    builder = None
    built = {}
    for spec in specs:
        out = pair_dir / re.sub(r"[^A-Za-z0-9_.+-]", "_", spec["name"])
        timing_file = pair_dir / (out.name + ".timing.json")
        if not out.exists():
            print(
                f"[bench_quality] transplant {spec['name']} -> {out}", file=sys.stderr, flush=True
            )
            load_before = os.getloadavg()
            started = time.perf_counter()
            if spec["kind"] == "cli":
                run_cli(spec, base, donor, out, args.threads)
            elif spec["kind"] == "mergekit" and spec["copied_rows"]:
                builder = builder or VariantBuilder(base, donor, args.blend)
                plain = pair_dir / re.sub(r"^mergekit-omp-copied", "mergekit-omp", spec["name"])
                if not plain.exists():
                    run_mergekit(spec, base, donor, plain, args.mergekit_bin, args.threads)
                builder.copy_rows_into(plain, out)
            elif spec["kind"] == "mergekit":
                run_mergekit(spec, base, donor, out, args.mergekit_bin, args.threads)
            else:
                builder = builder or VariantBuilder(base, donor, args.blend)
                builder.write(spec, out)
            timing = {
                "transplant_s": round(time.perf_counter() - started, 1),
                "load_before": load_before,
                "load_after": os.getloadavg(),
                "variant_shares_solves": spec["kind"] == "variant",
            }
            timing_file.write_text(json.dumps(timing) + "\n")
        timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
        built[spec["name"]] = {"path": str(out), **spec, **timing}
    return built


# ---------------------------------------------------------------- scoring


def score(model_dir: str, texts: list[str], args) -> dict:
    """One model's evaluate_models entry, cached by model path + mtime and the settings."""
    from omp_init.evaluate import evaluate_models

    settings = {
        "texts": [(t, os.path.getsize(t)) for t in texts],
        "max_bytes": args.max_bytes,
        "window": args.max_window_tokens,
        "stride": args.stride,
        "dtype": args.dtype,
        "batch": args.batch_size,
        "model": model_dir,
        "mtime": os.path.getmtime(model_dir),
    }
    key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
    cache = Path(args.work_dir) / "eval" / f"{_tag(model_dir)}.{key}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    print(f"[bench_quality] score {model_dir}", file=sys.stderr, flush=True)
    load_before = os.getloadavg()
    result = evaluate_models(
        [model_dir],
        texts,
        max_window_tokens=args.max_window_tokens,
        stride=args.stride,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device="cpu",
        max_bytes=args.max_bytes,
        progress=False,
    )
    entry = next(iter(result["models"].values()))
    entry["load_before"], entry["load_after"] = load_before, os.getloadavg()
    entry["eval_settings"] = result["settings"]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(entry, indent=2) + "\n")
    return entry


def compare(base_entry: dict, entry: dict) -> dict:
    rows = {}
    for text, stats in entry["texts"].items():
        ref = base_entry["texts"][text]
        ratio = stats["tokens_per_byte"] / ref["tokens_per_byte"]
        rows[text] = {
            "bits_per_byte": stats["bits_per_byte"],
            "bpb_change_pct": round(
                100 * (stats["bits_per_byte"] - ref["bits_per_byte"]) / ref["bits_per_byte"], 2
            ),
            "tokens_per_byte": round(stats["tokens_per_byte"], 4),
            "tokens_per_byte_ratio": round(ratio, 3),
            "fragmented": ratio > FRAGMENTED_RATIO,
        }
    return rows


def markdown(summary: dict) -> str:
    lines = []
    for pair in summary["pairs"]:
        methods = pair["methods"]
        texts = list(pair["base"]["texts"])
        short = [t.removesuffix(".txt").removeprefix("handbook-") for t in texts]
        lines += [
            f"### {pair['base_model']} ← {pair['donor_model']}",
            "",
            "bpb (Δ% vs base); lower is better. † = fragmented (new tokens/byte > 1.15 × base's).",
            "",
            "| method | transplant s | " + " | ".join(short) + " |",
            "|---|---:|" + "---:|" * len(texts),
        ]
        frag = {t: any(m["texts"][t]["fragmented"] for m in methods.values()) for t in texts}
        lines.append(
            "| base | – | "
            + " | ".join(f"{pair['base']['texts'][t]['bits_per_byte']:.4f}" for t in texts)
            + " |"
        )
        for name, m in methods.items():
            cells = [
                f"{m['texts'][t]['bits_per_byte']:.4f} ({m['texts'][t]['bpb_change_pct']:+.1f}%)"
                for t in texts
            ]
            lines.append(f"| `{name}` | {m.get('transplant_s', '–')} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "| tokens/byte | | " + " | ".join(short) + " |",
            "|---|---|" + "---:|" * len(texts),
        ]
        lines.append(
            "| base | | "
            + " | ".join(f"{pair['base']['texts'][t]['tokens_per_byte']:.4f}" for t in texts)
            + " |"
        )
        any_method = next(iter(methods.values()))
        lines.append(
            "| new | | "
            + " | ".join(
                f"{any_method['texts'][t]['tokens_per_byte']:.4f}{' †' if frag[t] else ''}"
                for t in texts
            )
            + " |"
        )
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--pair", nargs=2, action="append", metavar=("BASE", "DONOR"), required=True
    )
    parser.add_argument("--methods", default="omp+fvt,omp,mean,zero,fvt,mergekit-omp", help="comma-separated; see the module docstring (default: the default method, OMP alone, the baselines, mergekit)")
    parser.add_argument(
        "--text", action="append", help="text file (repeat); default: every *.txt of --text-dir"
    )
    parser.add_argument(
        "--text-dir",
        default=str(SHARED_TEXTS if SHARED_TEXTS.is_dir() else PACKAGED_TEXTS),
        help="default: ../shared/eval_text beside the checkout, else omp_init/data",
    )
    parser.add_argument("--work-dir", required=True)
    parser.add_argument(
        "--max-bytes",
        type=int,
        help="score only the first N bytes of each text (default: whole files)",
    )
    parser.add_argument("--max-window-tokens", type=int, default=1024)
    parser.add_argument(
        "--stride",
        type=int,
        help="tokens scored per window; the rest of the window is context "
        "(default: none, windows do not overlap and each starts without context)",
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--blend", type=float, default=0.5, help="weight of OMP in v:blend (rest FVT)"
    )
    parser.add_argument(
        "--mergekit-bin", default=DEFAULT_MERGEKIT if os.path.exists(DEFAULT_MERGEKIT) else None
    )
    parser.add_argument("--json", help="write the summary here")
    parser.add_argument("--markdown", help="write the tables here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    specs = [parse_method(s) for s in args.methods.split(",") if s]
    if not args.mergekit_bin and any(s["kind"] == "mergekit" for s in specs):
        print("mergekit-tokensurgeon not found (pass --mergekit-bin): skipping the mergekit methods", file=sys.stderr)
        specs = [s for s in specs if s["kind"] != "mergekit"]
    texts = args.text or sorted(str(p) for p in Path(args.text_dir).glob("*.txt"))
    if not texts:
        raise SystemExit(f"no *.txt files in --text-dir {args.text_dir}; pass --text-dir or --text FILE")
    summary = {
        "command": [sys.executable, *sys.argv],
        "machine": machine_info(),
        "settings": {
            "max_bytes": args.max_bytes,
            "max_window_tokens": args.max_window_tokens,
            "stride": args.stride,
            "dtype": args.dtype,
            "batch_size": args.batch_size,
            "texts": texts,
            "fragmented_ratio": FRAGMENTED_RATIO,
        },
        "pairs": [],
    }
    for base_spec, donor_spec in args.pair:
        base, donor = local_model_dir(base_spec, "base"), local_model_dir(donor_spec, "donor")
        built = build_all((base, donor), specs, args)
        base_entry = score(base, texts, args)
        pair = {"base_model": base, "donor_model": donor, "base": base_entry, "methods": {}}
        for name, info in built.items():
            entry = score(info["path"], texts, args)
            pair["methods"][name] = {
                **info,
                "eval_elapsed_s": entry["elapsed_s"],
                "eval_load": [entry["load_before"], entry["load_after"]],
                "texts": compare(base_entry, entry),
            }
        summary["pairs"].append(pair)
    summary["machine"]["load_average_end"] = os.getloadavg()
    text = json.dumps(summary, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown(summary))
    print(text)


if __name__ == "__main__":
    main()
