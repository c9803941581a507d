"""``transplant(config)``: the one place that knows the order of the steps.

1. validate the options and the output path (cheap, before anything is loaded);
2. resolve BASE, DONOR and the new tokenizer; align the vocabularies by exact bytes;
3. read only the embedding / lm_head tensors of both models;
4. solve OMP for the new tokens, sharded across ranks (one pass per donor space);
5. on rank 0: assemble the new matrices, write the checkpoint atomically, write the report;
   the other ranks wait.

Each step's details live in its own module; this file only sequences them and carries timing.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import baselines, checkpoint, digits, document_start, sources, vocab
from .config import OMP_METHODS, TransplantConfig
from .distributed import DistContext, barrier, check_all_ranks, init_distributed, shutdown
from .errors import AlignmentError, OmpInitError
from .omp import resolve_score_dtype
from .report import (
    REPORT_NAME,
    ROWS_NAME,
    build_report,
    residual_statistics,
    rounded_timings,
    rows_record,
    summarize,
)
from .resume import ChunkStore
from .solve import solve_pass
from .specials import load_special_map

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransplantResult:
    """What a finished transplant returns (on every rank; ``report`` is rank 0's)."""

    output: Path
    report: dict[str, Any] | None

    def summary(self) -> str:
        return summarize(self.report) if self.report else ""


@dataclass
class _Inputs:
    """Everything loaded in steps 2-3; lives only inside :func:`transplant`."""

    base: sources.ModelSource
    donor: sources.ModelSource
    base_tokenizer: Any
    new_tokenizer: Any
    alignment: vocab.VocabAlignment
    new_bytes: vocab.VocabBytes
    base_bytes: vocab.VocabBytes
    base_layout: checkpoint.EmbeddingLayout
    base_embed: torch.Tensor
    base_head: torch.Tensor | None
    donor_embed: torch.Tensor
    donor_head: torch.Tensor | None
    doc_start: dict[str, Any]
    tokenizer_identity: dict[str, Any]


class _Timer:
    """Wall seconds per step, and in total since the transplant was called.

    A step still running counts up to now, so the report (written inside the ``write`` step)
    includes writing the checkpoint in ``write`` and ``total``.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._running: dict[str, float] = {}  # step name -> perf_counter at its start
        self._start = time.perf_counter()

    @contextmanager
    def step(self, name: str):
        self._running[name] = started = time.perf_counter()
        try:
            yield
        finally:
            del self._running[name]
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def total(self) -> dict[str, float]:
        now = time.perf_counter()
        seconds = dict(self.seconds)
        for name, started in self._running.items():
            seconds[name] = seconds.get(name, 0.0) + now - started
        return {**seconds, "total": now - self._start}


def transplant(config: TransplantConfig | None = None, **kwargs: Any) -> TransplantResult:
    """Transplant the donor's (or ``tokenizer``'s) tokenizer into the base model.

    Args:
        config: a :class:`TransplantConfig`; or pass its fields as keyword arguments
            (``transplant(base=..., donor=..., output=..., k=64, method="omp")``).

    Returns:
        :class:`TransplantResult` with the output directory and the report.

    Raises:
        OmpInitError: for anything the user can fix (the message names the flag); nothing is
            written to ``output`` then.
    """
    if config is None:
        config = TransplantConfig.from_kwargs(**kwargs)
    elif kwargs:
        raise TypeError("pass either a TransplantConfig or keyword arguments, not both")
    timer = _Timer()
    ctx = init_distributed(config.device)
    try:
        if ctx.is_main:
            logger.info("omp-init transplant: %s", config.to_dict())
        with timer.step("load"):
            inputs = _load_inputs(config, ctx)
        fingerprint = _fingerprint(config, inputs.base.identity, inputs.donor.identity, inputs.tokenizer_identity)
        store = ChunkStore(_partial_dir(config.output), fingerprint, enabled=config.resume and config.method in OMP_METHODS)
        if ctx.is_main:
            store.prepare()
        barrier(ctx)
        with timer.step("solve"):
            row_plans, residuals = _plan_rows(config, inputs, ctx, store)
        report = None
        error: BaseException | None = None
        if ctx.is_main:
            try:
                with timer.step("write"):
                    report = _write(config, inputs, row_plans, residuals, fingerprint, timer, ctx)
                store.remove()
            except BaseException as exc:  # re-raised below, after the other ranks hear of it
                error = exc
        check_all_ranks(ctx, error)
        return TransplantResult(Path(config.output), report)
    finally:
        shutdown(ctx)


def _fingerprint(config: TransplantConfig, base: dict, donor: dict, tokenizer: dict) -> str:
    return config.fingerprint({"base": base, "donor": donor, "tokenizer": tokenizer})


def _tokenizer_identity(config: TransplantConfig) -> dict[str, Any]:
    return sources.path_identity(config.tokenizer) if config.tokenizer else {"from": "donor"}


def expected_fingerprint(config: TransplantConfig) -> str | None:
    """The fingerprint :func:`transplant` would store for ``config``, without loading anything.

    Compare it with ``omp_init_report.json``'s ``fingerprint`` to decide whether an existing
    output is current (the axolotl plugin reuses it then). ``None`` when an input is a hub id,
    whose identity is known only after the download.
    """
    base, donor = sources.source_identity(config.base), sources.source_identity(config.donor)
    if base is None or donor is None:
        return None
    return _fingerprint(config, base, donor, _tokenizer_identity(config))


def _partial_dir(output: str) -> Path:
    """Where finished chunks wait for a restart: ``OUT.omp_init-partial`` next to OUT."""
    out = Path(output)
    return out.with_name(out.name + ".omp_init-partial")


def _load_inputs(config: TransplantConfig, ctx: DistContext) -> _Inputs:
    """Steps 1-3. Rank 0 goes first so a ``.gguf`` is converted once, then the others read it."""
    def attempt() -> tuple[_Inputs | None, OmpInitError | None]:
        try:
            return _load_inputs_here(config, writes=ctx.is_main), None
        except OmpInitError as exc:
            return None, exc

    inputs, error = attempt() if ctx.is_main else (None, None)
    check_all_ranks(ctx, error)  # rank 0's failure stops every rank here
    if not ctx.is_main:
        inputs, error = attempt()
    check_all_ranks(ctx, error)
    assert inputs is not None
    return inputs


def _load_inputs_here(config: TransplantConfig, writes: bool = True) -> _Inputs:
    """Resolve, align and read everything the solve needs; ``writes``: this rank writes the
    output, so it also checks the disk has room for it (before the OMP work, not after)."""
    checkpoint.check_output_path(config.output, config.overwrite)
    special_map = load_special_map(config.special_map) if config.special_map else None
    common = {"allow_pickle": config.allow_pickle, "trust_remote_code": config.trust_remote_code, "cache_dir": config.cache_dir}
    base = sources.resolve_model(config.base, role="base", **common)
    donor = sources.resolve_model(config.donor, role="donor", **common)
    base_tokenizer = sources.load_tokenizer(base.local_dir, role="base", trust_remote_code=config.trust_remote_code)
    donor_tokenizer = sources.load_tokenizer(donor.local_dir, role="donor", trust_remote_code=config.trust_remote_code)
    new_tokenizer = donor_tokenizer
    if config.tokenizer:
        new_tokenizer = sources.load_tokenizer(config.tokenizer, role="tokenizer", trust_remote_code=config.trust_remote_code)

    base_bytes = vocab.token_bytes(base_tokenizer)
    donor_bytes = vocab.token_bytes(donor_tokenizer)
    new_bytes = donor_bytes if new_tokenizer is donor_tokenizer else vocab.token_bytes(new_tokenizer)
    alignment = vocab.align_vocabularies(base_bytes, donor_bytes, new_bytes, special_map=special_map)
    new_tokenizer, alignment, doc_start = document_start.apply_policy(
        config.document_start, base_tokenizer, new_tokenizer, alignment
    )
    _check_alignment(config, alignment, len(new_tokenizer))

    base_layout = checkpoint.locate_embeddings(base.local_dir, base.config, role="base")
    donor_layout = checkpoint.locate_embeddings(donor.local_dir, donor.config, role="donor")
    if writes:
        n_rows = _target_rows(config, len(new_tokenizer))
        out_dtype = _output_dtype(config, base_layout.dtype)
        needed = checkpoint.estimate_output_bytes(base.local_dir, base_layout, n_rows, out_dtype)
        if config.resume and config.method in OMP_METHODS:  # the chunk store sits beside --output
            n_passes = len(_omp_passes(base_layout.is_tied, donor_layout.is_tied))
            needed += ChunkStore.bytes_needed(len(alignment.solve_new_ids), config.k, n_passes)
        checkpoint.check_free_space(config.output, needed)
    base_embed, base_head = checkpoint.read_embeddings(base.local_dir, base_layout)
    if _same_model(base, donor):
        donor_embed, donor_head = base_embed, base_head  # no donor model: read the base once
    else:
        donor_embed, donor_head = checkpoint.read_embeddings(donor.local_dir, donor_layout)
    _check_rows(config.base, "base", base_embed, alignment.copy_base_ids + alignment.dict_base_ids)
    _check_rows(config.donor, "donor", donor_embed, alignment.solve_donor_ids + alignment.dict_donor_ids)
    return _Inputs(
        base=base,
        donor=donor,
        base_tokenizer=base_tokenizer,
        new_tokenizer=new_tokenizer,
        alignment=alignment,
        new_bytes=new_bytes,
        base_bytes=base_bytes,
        base_layout=base_layout,
        base_embed=base_embed,
        base_head=base_head,
        donor_embed=donor_embed,
        donor_head=donor_head,
        doc_start=doc_start,
        tokenizer_identity=_tokenizer_identity(config),
    )


def _same_model(base: sources.ModelSource, donor: sources.ModelSource) -> bool:
    """True when ``--donor`` names the base itself (left out, or another spelling of its path)."""
    return Path(donor.local_dir).resolve() == Path(base.local_dir).resolve()


def _check_alignment(config: TransplantConfig, alignment: vocab.VocabAlignment, new_size: int) -> None:
    """Data checks straight after alignment, before any tensor is read."""
    n_dict = len(alignment.dict_base_ids)
    if n_dict == 0:
        raise AlignmentError(
            f"--base {config.base} and --donor {config.donor} share no token by bytes, so there is nothing "
            "to build new tokens from; check that the two tokenizers cover the same language/script."
        )
    if config.method in OMP_METHODS and alignment.solve_new_ids and config.k > n_dict:
        raise AlignmentError(
            f"--k {config.k} is larger than the {n_dict:,} tokens the two vocabularies share; pass --k {min(64, n_dict)} or less."
        )
    if config.vocab_size is not None and config.vocab_size < new_size:
        raise AlignmentError(
            f"--vocab-size {config.vocab_size:,} is smaller than the new tokenizer's {new_size:,} tokens; "
            f"pass --vocab-size {new_size:,} or more (or leave it unset)."
        )


def _check_rows(spec: str, role: str, matrix: torch.Tensor, ids: list[int]) -> None:
    """Every id the tokenizer uses must have a row in the embedding matrix."""
    if ids and max(ids) >= matrix.shape[0]:
        raise AlignmentError(
            f"--{role} {spec}: its tokenizer uses id {max(ids):,} but its embedding has only {matrix.shape[0]:,} rows; "
            "the tokenizer and the weights do not belong together."
        )


def _plan_rows(config, inputs: _Inputs, ctx: DistContext, store: ChunkStore) -> tuple[list[_RowPlan] | None, dict]:
    """Step 4: how each new row is built. Returns (row plans, residual stats); rank 0 only
    gets the plans (the other ranks only help solve).

    Which donor space serves which base matrix:
    - base tied: only the input embedding is written -> OMP in the donor's input space;
    - base untied, donor tied: one pass serves both base matrices;
    - base untied, donor untied: input rows from the donor's input space, lm_head rows from
      the donor's lm_head space (two passes).
    """
    alignment = inputs.alignment
    if config.method not in OMP_METHODS:
        # A baseline reads no donor row, so it builds the tokens without one too.
        new_ids = alignment.solve_new_ids + _without_donor_row(inputs)
        pieces = _base_pieces(inputs, new_ids) if config.method == "fvt" else None
        recipe = baselines.make_recipe(config.method, len(new_ids), pieces=pieces, seed=config.seed)
        return [_RowPlan(new_ids, recipe, recipe)], {}
    if not alignment.solve_new_ids:
        # No new token has a donor row (same vocabulary): no dictionary to prepare, no pass to run.
        logger.info("no new token for OMP to build")
        return (_fallback_plans(config, inputs) if ctx.is_main else None), {}
    dict_donor = torch.tensor(alignment.dict_donor_ids, dtype=torch.long)
    solve_donor = torch.tensor(alignment.solve_donor_ids, dtype=torch.long)
    dict_base = torch.tensor(alignment.dict_base_ids, dtype=torch.long)
    labels = [_label(inputs.new_bytes, i) for i in alignment.solve_new_ids]
    spaces = {"embed": inputs.donor_embed, "lm_head": inputs.donor_head}
    recipes, residuals = {}, {}
    for name in _omp_passes(inputs.base_head is None, inputs.donor_head is None):
        donor_matrix = spaces[name]
        dictionary, targets = donor_matrix[dict_donor].float(), donor_matrix[solve_donor].float()
        if config.center:
            # Rows share a large common component; hidden states see it in every logit. An
            # affine combination (centered OMP) carries it over exactly; a plain one scales it
            # by sum(c), which measured +37 nats on single tokens (docs/quality.md).
            center = dictionary.mean(0)
            dictionary, targets = dictionary - center, targets - center
        result = solve_pass(
            name,
            dictionary,
            targets,
            config.k,
            ctx=ctx,
            store=store,
            score_dtype=resolve_score_dtype(config.score_dtype, ctx.device),
            max_batch_tokens=config.max_batch_tokens,
        )
        if ctx.is_main:
            recipes[name] = baselines.omp_recipe(result, dict_base, centered=config.center)
            residuals[name] = {
                "algorithm": result.algorithm,
                "solve_s": round(result.elapsed_s, 2),
                **residual_statistics(result.residual_norm, result.target_norm, labels),
            }
    barrier(ctx)
    if not ctx.is_main:
        return None, residuals
    if config.method == "omp+fvt":
        solved = _RowPlan(alignment.solve_new_ids, *_omp_fvt_recipes(inputs, recipes))
    else:
        solved = _RowPlan(alignment.solve_new_ids, recipes["embed"], recipes.get("lm_head", recipes["embed"]))
    return [solved, *_fallback_plans(config, inputs)], residuals


def _omp_passes(base_is_tied: bool, donor_is_tied: bool) -> tuple[str, ...]:
    """The donor spaces OMP runs in (see :func:`_plan_rows`): the lm_head space only when both
    models are untied; the free-space check counts resume chunks with the same rule."""
    return ("embed",) if base_is_tied or donor_is_tied else ("embed", "lm_head")


def _fallback_plans(config, inputs: _Inputs) -> list[_RowPlan]:
    """Rows of the new tokens without a donor row (:func:`_without_donor_row`) under an OMP
    method, as a plan list (empty: they keep the mean row): ``omp+fvt`` gives them half the mean row and half its FVT row (weighted per matrix as
    in :func:`_omp_fvt_recipes`; ``baselines.no_donor_row_recipe``), which measured 3-11% lower
    bits per byte than the mean row alone on two real pairs (docs/quality.md, "Tokens no donor
    has"); ``omp``, the paper's method, leaves them the mean row."""
    new_ids = _without_donor_row(inputs)
    if config.method != "omp+fvt" or not new_ids:
        return []
    fvt_embed, fvt_head = _fvt_recipes(inputs, _base_pieces(inputs, new_ids))
    embed = baselines.no_donor_row_recipe(fvt_embed)
    head = embed if fvt_head is fvt_embed else baselines.no_donor_row_recipe(fvt_head)
    return [_RowPlan(new_ids, embed, head)]


def _fvt_weightings(inputs: _Inputs) -> tuple[str, str]:
    """Keys of ``baselines.FVT_POSITION_POWER`` for the (embed, lm_head) rows: a tied base has
    one row for both roles (``tied``), an untied one weights each matrix its own way."""
    return ("tied", "tied") if inputs.base_head is None else ("embed", "lm_head")


def _fvt_recipes(inputs: _Inputs, pieces: list[list[int]]) -> tuple[baselines.RowRecipe, baselines.RowRecipe]:
    """(embed, lm_head) FVT recipes of ``pieces``, weighted by piece position per matrix
    (:func:`_fvt_weightings`); a tied base gets one recipe for both."""
    fvt = {
        name: baselines.fvt_recipe(pieces, baselines.FVT_POSITION_POWER[name])
        for name in set(_fvt_weightings(inputs))
    }
    embed_weighting, head_weighting = _fvt_weightings(inputs)
    return fvt[embed_weighting], fvt[head_weighting]


def _omp_fvt_recipes(inputs: _Inputs, omp_recipes: dict) -> tuple:
    """(embed, lm_head) recipes of ``omp+fvt``: half OMP, half FVT (:func:`_fvt_recipes`)."""
    fvt_embed, fvt_head = _fvt_recipes(inputs, _base_pieces(inputs))
    omp_embed = omp_recipes["embed"]
    omp_head = omp_recipes.get("lm_head", omp_embed)
    return baselines.omp_fvt_recipe(omp_embed, fvt_embed), baselines.omp_fvt_recipe(omp_head, fvt_head)


def _base_pieces(inputs: _Inputs, new_ids: list[int] | None = None) -> list[list[int]]:
    """Per new token (default: those OMP solves), the base ids the base tokenizer cuts its
    bytes into (for FVT)."""
    ids = inputs.alignment.solve_new_ids if new_ids is None else new_ids
    new_bytes = [inputs.new_bytes.bytes_by_id[i] for i in ids]
    return vocab.base_pieces(new_bytes, inputs.base_tokenizer, inputs.base_bytes)


def _without_donor_row(inputs: _Inputs) -> list[int]:
    """New tokens with bytes that neither the base nor the donor has (only when ``--tokenizer``
    is not the donor's): OMP has no target for them, but the base can still spell them, so
    ``omp+fvt`` and ``fvt`` build them from the base's pieces (:func:`_fallback_plans`). Specials
    without a counterpart have no bytes and keep the mean row."""
    bytes_by_id = inputs.new_bytes.bytes_by_id
    return [i for i in inputs.alignment.fallback_new_ids if bytes_by_id[i]]


@dataclass(frozen=True)
class _RowPlan:
    """Rows built by one pair of recipes: ``new_ids[t]`` gets row t of ``embed`` (input
    embedding) and of ``head`` (lm_head, when the base has one)."""

    new_ids: list[int]
    embed: baselines.RowRecipe
    head: baselines.RowRecipe


def _label(new_bytes: vocab.VocabBytes, new_id: int) -> str:
    """Printable form of a new token for reports: its text, or its special content."""
    raw = new_bytes.bytes_by_id[new_id]
    if raw is None:
        return new_bytes.special_content_by_id.get(new_id, f"<id {new_id}>")
    return raw.decode("utf-8", errors="backslashreplace")


def _target_rows(config: TransplantConfig, new_size: int) -> int:
    rows = max(new_size, config.vocab_size or 0)
    if config.pad_to_multiple_of:
        rows = -(-rows // config.pad_to_multiple_of) * config.pad_to_multiple_of
    return rows


def _output_dtype(config: TransplantConfig, base_dtype: torch.dtype) -> torch.dtype:
    """dtype of the written embeddings: ``--dtype``, or the base's with ``auto``."""
    return base_dtype if config.dtype == "auto" else getattr(torch, config.dtype)


def _assemble(
    base_matrix: torch.Tensor,
    builds: list[tuple[list[int], baselines.RowRecipe]],
    alignment: vocab.VocabAlignment,
    n_rows: int,
    dtype: torch.dtype,
    *,
    cap_norms: bool,
) -> tuple[torch.Tensor, dict | None]:
    """New matrix [n_rows, d_base]: copied rows bit-exact, each ``(new_ids, recipe)`` of
    ``builds`` applied to this matrix, the rest (padding, specials without a counterpart) the mean.

    With ``cap_norms`` (OMP methods) no built row is longer than the base's
    ``baselines.ROW_NORM_CAP_QUANTILE`` row norm; the second value says what was capped.
    """
    mean_row = base_matrix.float().mean(0)
    # [n_rows, d_base]; padding rows (beyond the tokenizer) and fallback rows start as the mean
    new = mean_row.to(dtype).expand(n_rows, -1).clone()
    if alignment.copy_new_ids:
        new[torch.tensor(alignment.copy_new_ids)] = base_matrix[torch.tensor(alignment.copy_base_ids)].to(dtype)
    capped = None
    if builds and cap_norms:
        quantile = baselines.ROW_NORM_CAP_QUANTILE
        capped = {"quantile": quantile, "cap": round(baselines.row_norm_cap(base_matrix, quantile), 6), "capped": 0}
    for new_ids, recipe in builds:
        built = baselines.build_rows(recipe, base_matrix)
        if capped is not None:
            capped["capped"] += baselines.cap_row_norms(built, capped["cap"])
        new[torch.tensor(new_ids)] = built.to(dtype)
    return new, capped


def _count_built(new_ids: list[int], plans: list[_RowPlan]) -> int:
    """How many of ``new_ids`` a plan builds (the rest keep the mean row)."""
    built = set().union(*(plan.new_ids for plan in plans))
    return sum(1 for i in new_ids if i in built)


def _log_norm_caps(norm_caps: dict) -> None:
    """One INFO line per matrix whose built rows the norm cap scaled (the report keeps the counts)."""
    for name, capped in norm_caps.items():
        if capped and capped["capped"]:
            logger.info(
                "%s: %d built rows were longer than the base's %g quantile row norm (%.4g); scaled down to it",
                name, capped["capped"], capped["quantile"], capped["cap"],
            )  # fmt: skip


def _write(config, inputs: _Inputs, row_plans: list[_RowPlan], residuals, fingerprint, timer: _Timer, ctx) -> dict:
    """Step 5 (rank 0): assemble matrices, write the checkpoint and the report atomically."""
    alignment = inputs.alignment
    new_size = len(inputs.new_tokenizer)
    n_rows = _target_rows(config, new_size)
    dtype = _output_dtype(config, inputs.base_embed.dtype)
    cap_norms = config.norm_cap and config.method in OMP_METHODS
    plans = [plan for plan in row_plans if plan.new_ids]
    embed_builds = [(plan.new_ids, plan.embed) for plan in plans]
    embed, capped_embed = _assemble(inputs.base_embed, embed_builds, alignment, n_rows, dtype, cap_norms=cap_norms)
    head, norm_caps = None, {"embed": capped_embed}
    if inputs.base_head is not None:
        head_builds = [(plan.new_ids, plan.head) for plan in plans]
        head, norm_caps["lm_head"] = _assemble(inputs.base_head, head_builds, alignment, n_rows, dtype, cap_norms=cap_norms)
    _log_norm_caps(norm_caps)
    tok = inputs.new_tokenizer
    special_ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    counts = alignment.counts()
    vocab_report = {
        "base_size": len(inputs.base_tokenizer),
        "new_size": new_size,
        "rows_written": n_rows,
        "copied": len(alignment.copy_new_ids),
        "solved": len(alignment.solve_new_ids),
        "fallback": len(alignment.fallback_new_ids),
        "fallback_built": _count_built(alignment.fallback_new_ids, plans),
        "padding": n_rows - new_size,
        "dictionary": len(alignment.dict_base_ids),
        "base_tied": inputs.base_head is None,
        "details": counts,
    }
    report = build_report(
        fingerprint=fingerprint,
        config=config.to_dict(),
        inputs={
            "base": {"kind": inputs.base.kind, "path": str(inputs.base.local_dir), "identity": inputs.base.identity},
            "donor": {"kind": inputs.donor.kind, "path": str(inputs.donor.local_dir), "identity": inputs.donor.identity},
            "tokenizer": inputs.tokenizer_identity,
            "donor_is_base": _same_model(inputs.base, inputs.donor),
        },
        vocab=vocab_report,
        residuals=residuals,
        document_start=inputs.doc_start,
        timings_s=timer.total(),
        world_size=ctx.world_size,
        device=str(ctx.device),
    )
    if any(norm_caps.values()):
        report["row_norm_cap"] = {name: capped for name, capped in norm_caps.items() if capped}
    if config.method == "omp+fvt":
        report["omp_fvt"] = {
            "omp_weight": baselines.OMP_FVT_WEIGHT,
            "fvt_position_power": {
                name: baselines.FVT_POSITION_POWER[name] for name in dict.fromkeys(_fvt_weightings(inputs))
            },
        }
    # digits.py: the digit-split check (paper: GSM8K collapses when base and new tokenizer
    # cut numbers differently); logs a warning when they do.
    report["diagnostics"] = {
        "digits": digits.digit_split_report(
            inputs.base_tokenizer, tok, base_bytes=inputs.base_bytes, new_bytes=inputs.new_bytes
        )
    }
    checkpoint.write_checkpoint(
        inputs.base.local_dir,
        config.output,
        layout=inputs.base_layout,
        embed_in=embed,
        lm_head=head,
        config_updates={"vocab_size": n_rows, **special_ids},
        generation_config_updates={k: v for k, v in special_ids.items() if v is not None},
        tokenizer=tok,
        extra_json={REPORT_NAME: report, ROWS_NAME: rows_record(n_rows, alignment.copy_new_ids)},
        overwrite=config.overwrite,
        report_name=REPORT_NAME,
        # After the weights, just before the JSON files: the timings then include the write.
        before_json=lambda: report.update(timings_s=rounded_timings(timer.total())),
    )
    logger.info("wrote %s", config.output)
    return report
