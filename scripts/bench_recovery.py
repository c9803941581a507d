"""Recovery with a little training: bits-per-byte against training tokens, OMP vs mean init.

Runs the continued-pretraining recipe (``recipes/cpt_smollm2-135m_cpu.yaml``: stage 1, only
``embed_tokens``/``lm_head`` train) through axolotl once per initialization, saves the model
every ``--eval-every`` steps, and scores every saved model with ``omp_init.evaluate`` on
held-out text. The question it answers: does OMP's head start over mean init persist, and how
many training tokens until a text's bpb rise (over the base model with its own tokenizer)
halves?

Text: every ``*.txt`` of ``--texts`` (default ``../shared/eval_text`` when it exists, else the
demo texts packaged in ``omp_init/data``) is cut at a line boundary: the first
``1 - --held-out`` of its bytes go into the training file (consecutive paragraphs packed into
rows of at most the recipe's ``sequence_len`` tokens), the rest is scored. The scored bytes are
never trained on.

Models (default, as ``omp-init demo``): SmolLM2-135M-Instruct receives Qwen2.5-Coder-0.5B's
tokenizer; ``--omp-checkpoint`` reuses an existing omp-init output (e.g. the demo's) for the
``omp`` run. Methods (``--methods``): ``omp``, ``mean`` (any ``omp-init --method``), and
``omp-newrows``: the OMP transplant trained with ``omp_init_train_new_rows_only: true`` and
``weight_decay: 0`` (the copied rows stay the base's). ``--previous`` adds the curves of an
earlier run's JSON to the PNG. Usage::

    HF_HUB_OFFLINE=1 python scripts/bench_recovery.py --steps 200 --eval-every 25 \\
        --work-dir /tmp/recovery --out docs/recovery.json --png docs/recovery.png

Prints JSON with its own command line and the machine. Nothing imports this file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

# huggingface_hub reads this when it is imported, so it must be set before torch/transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import yaml  # noqa: E402

from omp_init import transplant  # noqa: E402
from omp_init.evaluate import evaluate_models  # noqa: E402
from omp_init.real_models import fetch_registry_model  # noqa: E402
from omp_init.sources import resolve_model  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "cpt_smollm2-135m_cpu.yaml"
SHARED_TEXTS = REPO.parent / "shared" / "eval_text"
PACKAGED_TEXTS = REPO / "omp_init" / "data"
# Files the evaluation needs from the transplant when a checkpoint lacks them.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
# Loads datasets worker processes can re-import cheaply (see tests/axolotl/axolotl_main.py).
AXOLOTL_MAIN = "import importlib, sys; importlib.import_module('axolotl.cli.train').do_cli(config=sys.argv[1])"


def split_texts(text_dir: Path, held_out: float, work: Path) -> tuple[Path, list[Path]]:
    """Training file (one paragraph per line) and the held-out files, one per text.

    Each text is cut at the first line boundary after ``(1 - held_out)`` of its bytes.
    """
    train_lines, held_out_paths = [], []
    (work / "held_out").mkdir(parents=True, exist_ok=True)
    for path in sorted(text_dir.glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        cut = text.find("\n", int(len(text) * (1 - held_out)))
        cut = len(text) if cut < 0 else cut + 1
        train_lines += [line for line in text[:cut].splitlines() if line.strip()]
        target = work / "held_out" / path.name
        target.write_text(text[cut:], encoding="utf-8")
        held_out_paths.append(target)
    if not held_out_paths:
        raise SystemExit(f"--texts {text_dir}: no *.txt files there")
    train = work / "train.txt"
    train.write_text("\n".join(train_lines) + "\n", encoding="utf-8")
    return train, held_out_paths


def pack_rows(train: Path, model_dir: Path, sequence_len: int, work: Path) -> tuple[Path, float]:
    """Join consecutive paragraphs into rows of at most ``sequence_len - 8`` new-tokenizer tokens.

    Why: one paragraph per row trains on ~130 tokens per step of 4 rows, and axolotl drops
    rows longer than ``sequence_len``. Returns the JSON-lines file and its mean row length.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    budget = sequence_len - 8
    rows, current, current_len = [], [], 0
    for line in train.read_text(encoding="utf-8").splitlines():
        n_tokens = len(tokenizer(line + "\n").input_ids)
        if n_tokens > budget:
            continue  # a paragraph longer than a row is left out, as axolotl would drop it
        if current and current_len + n_tokens > budget:
            rows.append("\n".join(current))
            current, current_len = [], 0
        current.append(line)
        current_len += n_tokens
    if current:
        rows.append("\n".join(current))
    packed = work / "train.jsonl"
    packed.write_text("".join(json.dumps({"text": row}, ensure_ascii=False) + "\n" for row in rows))
    lengths = [len(tokenizer(row).input_ids) + 1 for row in rows]
    return packed, sum(lengths) / len(lengths)


# Runs that train an existing transplant differently: run name -> (transplant method, extra keys).
TRAINING_VARIANTS = {"omp-newrows": ("omp", {"omp_init_train_new_rows_only": True, "weight_decay": 0.0})}


def make_transplant(method: str, args, base: str, donor: str, work: Path) -> Path:
    method = TRAINING_VARIANTS.get(method, (method, {}))[0]
    if method == "omp" and args.omp_checkpoint:
        return Path(args.omp_checkpoint)
    out = work / f"transplant-{method}"
    if not (out / "config.json").is_file():
        transplant(base=base, donor=donor, output=str(out), k=args.k, method=method)
    return out


def write_config(method: str, init_dir: Path, base: str, donor: str, train: Path, args, work: Path) -> Path:
    """The CPT recipe with this run's data, steps, checkpoints and initialization."""
    cfg = yaml.safe_load(RECIPE.read_text())
    run_dir = work / f"run-{method}"
    init_method, extra_keys = TRAINING_VARIANTS.get(method, (method, {}))
    cfg.update(
        base_model=str(init_dir),
        base_model_config=str(init_dir),
        tokenizer_config=str(init_dir),
        omp_init_base=base,
        omp_init_donor=donor,
        omp_init_output=str(init_dir),
        omp_init_k=args.k,
        omp_init_method=init_method,
        datasets=[{"path": str(train), "ds_type": "json", "type": "completion"}],
        dataset_prepared_path=str(work / f"prepared-{method}"),
        max_steps=args.steps,
        save_steps=args.eval_every,
        save_only_model=True,
        save_total_limit=args.steps // args.eval_every + 1,  # keep every checkpoint
        learning_rate=args.learning_rate,
        seed=args.seed,
        output_dir=str(run_dir),
        logging_steps=5,
        **extra_keys,
    )
    path = work / f"cpt-{method}.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def train(config: Path, log: Path) -> float:
    started = time.perf_counter()
    # axolotl sends telemetry unless told not to; offline, each attempt only logs a DNS error.
    env = {"AXOLOTL_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1", **os.environ}
    with log.open("w") as handle:
        proc = subprocess.run(
            [sys.executable, "-c", AXOLOTL_MAIN, str(config)], cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT
        )
    if proc.returncode:
        raise SystemExit(f"axolotl train failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - started


def checkpoints(run_dir: Path, init_dir: Path) -> dict[int, Path]:
    """Step -> model dir: 0 is the transplant itself, then every saved checkpoint."""
    found = {0: init_dir}
    for ckpt in run_dir.glob("checkpoint-*"):
        for name in TOKENIZER_FILES:  # scored with the tokenizer it was trained with
            if (init_dir / name).is_file() and not (ckpt / name).is_file():
                shutil.copy(init_dir / name, ckpt / name)
        found[int(ckpt.name.split("-")[1])] = ckpt
    return dict(sorted(found.items()))


def score(models: dict[str, Path], texts: list[Path], args) -> dict[str, dict[str, float]]:
    """bpb per model label and text, cached under ``--work-dir/scores`` by model path (not
    inside the model dir: a transplant copies the base dir's extra files)."""
    out = {}
    (args.work_dir / "scores").mkdir(parents=True, exist_ok=True)
    for label, path in models.items():
        key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]
        cache = args.work_dir / "scores" / f"{key}.json"
        if cache.is_file():
            out[label] = json.loads(cache.read_text())
            continue
        result = evaluate_models([path], texts, batch_size=args.eval_batch_size, progress=False)
        (model,) = result["models"].values()
        bpb = {name: v["bits_per_byte"] for name, v in model["texts"].items()}
        cache.write_text(json.dumps(bpb))
        out[label] = bpb
    return out


def halving_step(rises: dict[int, float]) -> int | None:
    """First step whose rise is at most half the step-0 rise (None: never in this run)."""
    start = rises[0]
    if start <= 0:
        return 0
    return next((step for step, rise in rises.items() if rise <= start / 2), None)


def write_png(curves: dict, tokens_per_step_by_method: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({name for method in curves.values() for name in method})
    n_cols = min(4, len(groups))
    n_rows = -(-len(groups) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.2 * n_cols, 2.8 * n_rows), squeeze=False)
    for ax in axes.flat[len(groups) :]:
        ax.axis("off")
    for ax, text in zip(axes.flat, groups, strict=False):  # spare axes are switched off above
        for method in curves:
            style = {"omp": "-o", "mean": "--s", "omp-newrows": ":^"}.get(method.split(" ")[0], "-.")
            if text not in curves[method]:
                continue
            rises = curves[method][text]
            tokens = [step * tokens_per_step_by_method[method] / 1e3 for step in rises]
            ax.plot(tokens, list(rises.values()), style, label=method, markersize=3)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_title(text.removesuffix(".txt"), fontsize=9)
        ax.set_xlabel("training tokens (k)", fontsize=8)
        ax.tick_params(labelsize=7)
    for row in axes:
        row[0].set_ylabel("bpb rise over the base (%)", fontsize=8)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="base model (default: SmolLM2-135M-Instruct from the registry)")
    parser.add_argument("--donor", help="donor model (default: Qwen2.5-Coder-0.5B-Instruct from the registry)")
    parser.add_argument("--texts", type=Path, default=SHARED_TEXTS if SHARED_TEXTS.is_dir() else PACKAGED_TEXTS)
    parser.add_argument("--held-out", type=float, default=0.3, help="fraction of each text scored, never trained on")
    parser.add_argument("--methods", default="omp+fvt,mean", help="comma-separated: transplant methods (omp+fvt, omp, mean, ...) or omp-newrows")
    parser.add_argument("--omp-checkpoint", help="reuse this omp-init output for the omp run")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--learning-rate", type=float, default=5e-4, help="the recipe's")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--eval-batch-size", type=int, default=4)
    parser.add_argument("--work-dir", type=Path, default=Path("recovery_bench"))
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--png", help="write the curves here")
    parser.add_argument("--previous", type=Path, help="an earlier run's JSON whose curves the PNG also shows")
    args = parser.parse_args(argv)
    if not 0 < args.held_out < 1:
        raise SystemExit("--held-out must be between 0 and 1 (the fraction of each text scored)")
    work = args.work_dir = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    base = args.base or str(fetch_registry_model("smollm2-135m"))
    donor = args.donor or str(fetch_registry_model("qwen2.5-coder-0.5b"))
    train_file, held_out = split_texts(args.texts, args.held_out, work)
    recipe = yaml.safe_load(RECIPE.read_text())
    base_dir = resolve_model(base, role="base").local_dir
    base_bpb = score({"base": Path(base_dir)}, held_out, args)["base"]

    runs, curves, step_tokens = {}, {}, {}
    for method in args.methods.split(","):
        init_dir = make_transplant(method, args, base, donor, work)
        packed, row_tokens = pack_rows(train_file, init_dir, recipe["sequence_len"], work)
        config = write_config(method, init_dir, base, donor, packed, args, work)
        elapsed = train(config, work / f"train-{method}.log")
        models = checkpoints(work / f"run-{method}", init_dir)
        bpb = score({str(step): path for step, path in models.items()}, held_out, args)
        step_tokens[method] = row_tokens * recipe["micro_batch_size"]
        rises = {
            text: {int(step): round(100 * (v[text] / base_bpb[text] - 1), 2) for step, v in bpb.items()}
            for text in base_bpb
        }
        curves[method] = rises
        runs[method] = {
            "init": str(init_dir),
            "train_s": round(elapsed, 1),
            "tokens_per_step": round(step_tokens[method], 1),
            "bpb": bpb,
            "rise_pct": rises,
            "halving_step": {text: halving_step(r) for text, r in rises.items()},
        }
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "recipe": str(RECIPE.relative_to(REPO)),
        "texts": str(args.texts),
        "held_out_fraction": args.held_out,
        "train_file_bytes": train_file.stat().st_size,
        "train_rows": sum(1 for _ in (work / "train.jsonl").open()),
        "steps": args.steps,
        "base_bpb": base_bpb,
        "runs": runs,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    if args.png:
        if args.previous:  # earlier curves, labelled with their file name
            previous = json.loads(args.previous.read_text())
            for method, run in previous["runs"].items():
                label = f"{method} ({args.previous.name})"
                curves[label] = {t: {int(k): v for k, v in r.items()} for t, r in run["rise_pct"].items()}
                step_tokens[label] = run["tokens_per_step"]
        write_png(curves, step_tokens, Path(args.png))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
