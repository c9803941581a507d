"""One OMP pass over all new tokens: chunked, sharded across ranks, resumable, with progress.

``omp.py`` knows the math on tensors; ``distributed.py`` knows ranks; ``resume.py`` knows files.
This module puts them together for one embedding space (donor input embeddings, or donor
lm_head when the donor is untied):

1. the rows to solve are cut into chunks on a grid fixed by the problem size (never by the
   number of ranks, so results are identical for any world size, and a restart may change it);
2. each rank takes a contiguous run of chunks, skips chunks already saved, solves the rest on
   its device with the dictionary resident there, and saves each finished chunk;
3. the per-token results (atom indices, coefficients, residual norms) are gathered on rank 0.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .distributed import DistContext, check_all_ranks, gather_to_main, shard_range
from .errors import SolveMemoryError, gib, is_out_of_memory
from .omp import prepare_dictionary, solve_omp
from .resume import ChunkStore

logger = logging.getLogger(__name__)

# Bytes one chunk's [rows, N] score matrix may take; with _MIN_CHUNKS it fixes the chunk grid
# from the problem alone (N and T), never from the world size.
_SCORE_BUDGET_BYTES = 256 << 20
# Fewest chunks a pass is cut into when it has enough rows (see chunk_rows_for): ranks then
# split the work evenly, and a resumed run redoes at most one small chunk per rank.
_MIN_CHUNKS = 32


@dataclass(frozen=True)
class PassResult:
    """Gathered result of one pass (on rank 0; ``None`` fields elsewhere).

    Attributes:
        indices: [T, k] int64, rows of the dictionary.
        coefficients: [T, k] float32.
        residual_norm: [T] float32, ||target - combination|| in donor space.
        target_norm: [T] float32, ||target||.
        elapsed_s: wall time of this rank's solve.
        algorithm: ``screened`` (Gram-screened candidates), ``screened-no-gram`` (the same with
            the inner products computed from the rows, when the Gram does not fit) or ``exact``.
    """

    indices: torch.Tensor | None
    coefficients: torch.Tensor | None
    residual_norm: torch.Tensor | None
    target_norm: torch.Tensor | None
    elapsed_s: float
    algorithm: str = "exact"


def chunk_rows_for(n_dictionary: int, max_batch_tokens: int | None, n_rows: int | None = None) -> int:
    """Rows per chunk: the user's ``--max-batch-tokens`` or what fits the score budget, and
    small enough that the pass has at least ``_MIN_CHUNKS`` chunks.

    The grid depends only on the problem (never on the world size), so saved chunks resume
    under any number of ranks; enough chunks keep ranks balanced (7 chunks split 4:3 over two
    ranks, 20 split 10:10). Rounded to a multiple of 256 for matmul-friendly shapes.
    Example: N = 39,234 atoms, bf16 scores -> 256 MiB / (39,234 * 4 B) ~ 1,710 -> 1,536 rows;
    with T = 9,911 rows to solve, 9,911 / 32 -> 512 rows.
    """
    if max_batch_tokens:
        return max_batch_tokens
    rows = _SCORE_BUDGET_BYTES // max(1, n_dictionary * 4)
    if n_rows:
        rows = min(rows, -(-math.ceil(n_rows / _MIN_CHUNKS) // 256) * 256)
    return int(max(256, min(8192, rows // 256 * 256)))


def solve_pass(
    name: str,
    dictionary: torch.Tensor,
    targets: torch.Tensor,
    k: int,
    *,
    ctx: DistContext,
    store: ChunkStore,
    score_dtype: torch.dtype,
    max_batch_tokens: int | None = None,
    show_progress: bool = True,
) -> PassResult:
    """Solve OMP for every row of ``targets`` across all ranks; gather on rank 0.

    Args:
        name: pass name used for saved chunks and the progress bar (``embed`` / ``lm_head``).
        dictionary: [N, d] float, donor rows of the shared tokens (any device; moved to ctx.device).
        targets: [T, d] float, donor rows of the tokens to build.
        k: atoms per token.
        ctx: this rank's place in the job.
        store: saved-chunk store (resume).
        score_dtype: precision of candidate scoring (the refit is fp32 or better).
        max_batch_tokens: rows per chunk; None picks from the dictionary size and T (chunk_rows_for).
    """
    n_rows = targets.shape[0]
    chunk = chunk_rows_for(dictionary.shape[0], max_batch_tokens, n_rows)
    n_chunks = math.ceil(n_rows / chunk) if n_rows else 0
    first, last = shard_range(n_chunks, ctx.rank, ctx.world_size)
    my_start, my_stop = first * chunk, min(last * chunk, n_rows)
    counts = []  # rows held by each rank, for the gather
    for rank in range(ctx.world_size):
        r_first, r_last = shard_range(n_chunks, rank, ctx.world_size)
        counts.append(max(0, min(r_last * chunk, n_rows) - r_first * chunk))
    started = time.perf_counter()
    error: BaseException | None = None
    try:
        parts, path_name = _solve_my_chunks(
            name, dictionary, targets, k, ctx=ctx, store=store, score_dtype=score_dtype,
            chunks=(chunk, first, last), show_progress=show_progress,
        )  # fmt: skip
    except Exception as exc:  # raised after every rank has heard of it (check_all_ranks)
        error = _readable_solve_error(exc, name, dictionary, n_rows, chunk, ctx)
        parts, path_name = [], ""
    elapsed_s = time.perf_counter() - started  # this rank's own work, not its wait for the others
    # A rank that failed alone would leave the others waiting at the gather below forever
    # (NCCL) or until the launcher kills them; this way every rank stops with a message.
    check_all_ranks(ctx, error)
    logger.info("%sOMP %s: %d rows in %.1f s", ctx.prefix(), name, my_stop - my_start, elapsed_s)

    def stacked(key: str, dtype: torch.dtype, width: tuple[int, ...]) -> torch.Tensor:
        if parts:
            return torch.cat([p[key] for p in parts])
        return torch.empty((0, *width), dtype=dtype)

    gathered = {
        key: gather_to_main(stacked(key, dtype, width), counts, ctx)
        for key, dtype, width in (
            ("indices", torch.int64, (k,)),
            ("coefficients", torch.float32, (k,)),
            ("residual_norm", torch.float32, ()),
            ("target_norm", torch.float32, ()),
        )
    }
    return PassResult(elapsed_s=elapsed_s, algorithm=path_name, **gathered)


def _solve_my_chunks(name, dictionary, targets, k, *, ctx, store, score_dtype, chunks, show_progress):
    """Solve (or load from the store) this rank's chunks; arguments as in :func:`solve_pass`,
    with ``chunks = (rows per chunk, first, last)``: this rank's chunks are ``[first, last)``.
    Returns their results in order and the path the solver took."""
    n_rows = targets.shape[0]
    chunk, first, last = chunks
    started = time.perf_counter()
    # Converted once per pass (and its Gram matrix built once, when the screened path pays);
    # the algorithm is chosen from the whole pass's size, so every rank chooses alike.
    prepared = prepare_dictionary(dictionary.to(ctx.device, torch.float32), score_dtype=score_dtype, n_targets=n_rows, k=k)
    logger.debug("%sOMP %s: dictionary prepared in %.1f s", ctx.prefix(), name, time.perf_counter() - started)
    parts: list[dict[str, torch.Tensor]] = []
    bar = tqdm(
        total=n_rows,
        desc=f"OMP {name}",
        unit="tok",
        disable=not (show_progress and ctx.is_main),
        dynamic_ncols=True,
    )
    with bar:
        for c in range(first, last):
            start, stop = c * chunk, min((c + 1) * chunk, n_rows)
            saved = store.load(name, start, stop)
            if saved is None:
                result = solve_omp(prepared, targets[start:stop].to(ctx.device, torch.float32), k)
                saved = {
                    "indices": result.indices.cpu(),
                    "coefficients": result.coefficients.cpu(),
                    "residual_norm": result.residual_norm.cpu(),
                    "target_norm": result.target_norm.cpu(),
                }
                store.save(name, start, stop, saved)
            parts.append(saved)
            # Rank 0 sees only its own shard; scale so the bar and ETA reflect the whole job.
            bar.update((stop - start) * ctx.world_size if c < last - 1 else n_rows - bar.n)
    return parts, prepared.path_name


def _readable_solve_error(
    exc: Exception, name: str, dictionary: torch.Tensor, n_rows: int, chunk: int, ctx: DistContext
) -> BaseException:
    """Out of memory becomes a one-line :class:`SolveMemoryError` naming the fix; a user error
    stays as it is; anything else (a bug) is returned unchanged, traceback and all."""
    if not is_out_of_memory(exc):
        return exc
    n_atoms, dim = dictionary.shape
    fixes = f"pass --max-batch-tokens {max(64, chunk // 4)} (this pass used {chunk} rows per chunk)"
    if ctx.device.type == "cuda":
        fixes += ", free the GPU memory other processes hold, or solve on the CPU with --device cpu"
    else:
        fixes += ", or run where more memory is free (a GPU: --device cuda)"
    return SolveMemoryError(
        f"{ctx.prefix()}out of memory on {ctx.device} during the OMP {name} pass ({n_rows:,} new tokens, "
        f"a {n_atoms:,} x {dim} dictionary{_allocation(exc)}); {fixes}."
    )


def _allocation(exc: BaseException) -> str:
    """``", it tried to allocate 2.00 GiB"`` from torch's message, or ``""``."""
    found = re.search(r"tried to allocate (\d+(?:\.\d+)? [KMGT]iB|\d+ bytes)", str(exc), re.IGNORECASE)
    if found is None:
        return ""
    size = found.group(1)
    if size.endswith(" bytes"):
        size = gib(int(size.split()[0]))
    return f", it tried to allocate {size}"
