"""Batched Orthogonal Matching Pursuit on tensors (Goddard & Fernandes Neto 2025, section 3).

Owns the solve: given a dictionary (the donor's rows of the shared tokens) and targets (the
donor's rows of the new tokens), find for each target ``k`` dictionary rows and coefficients
whose combination approximates it, then apply those coefficients to another matrix (the base's
rows of the same shared tokens). It takes and returns tensors only: reading checkpoints,
choosing the device, sharding rows over ranks and drawing progress bars belong to the callers.

Two paths solve the same problem. ``omp_exact`` scores the residual against every atom at
every step (2*T*N*d*k FLOPs). ``omp_screened`` precomputes the atoms' Gram matrix once per
dictionary and follows a couple of hundred candidate atoms per target between six full
re-scorings (k=64; on CPU two of them through the Gram matrix): on the real SmolLM2 / Qwen2.5
embeddings 3-5x faster than the exact bf16 path on CPU, within 0.7% of exact fp32 OMP's mean
residual (``docs/performance.md``).
:func:`prepare_dictionary` converts a dictionary once (and decides whether the Gram matrix
pays); :func:`solve_omp` solves targets with it, chunk after chunk.

Example (one target, three atoms)::

    >>> atoms = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> result = solve_omp(atoms, torch.tensor([[3.0, 0.0]]), k=1, score_dtype=torch.float32)
    >>> result.indices.tolist(), result.coefficients.tolist()
    ([[0]], [[3.0]])
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from . import omp_exact, omp_screened
from .errors import AlignmentError, ConfigError, SourceError

logger = logging.getLogger(__name__)

# Memory the per-batch working set may take when batch_size is None (see pick_batch_size).
BATCH_MEMORY_BYTES = 1 << 30
# Memory a chunk of apply_coefficients may take for its gathered rows: small enough to be
# reused from the heap (glibc maps larger blocks afresh, and faulting their pages in costs
# more than the product).
_APPLY_CHUNK_BYTES = 16 << 20
# Largest Gram matrix the screened path builds by default: a quarter of the machine's RAM (a
# fixed fraction of a fixed total, so every rank of a job makes the same choice), at most 8 GiB;
# 40% of the device's memory on CUDA.
_GRAM_MAX_BYTES = 8 << 30
# Work of one screened step between screens (candidate scores, Gram gathers, refit share), in
# units of one full scoring GEMM row (N*d multiply-adds): on CPU with the real Qwen2.5 <-
# SmolLM2 rows (d=576) 64 steps cost about as much as 16 GEMM rows at M=512, less at the default
# M=192 (docs/performance.md); the estimate stays conservative.
_SCREENED_STEP_COST = 0.25
# Fewest rows a thread of the CPU row-parallel screened solve gets (see _solve_rows_in_threads):
# below this the per-step Python overhead outweighs the second core.
_MIN_ROWS_PER_THREAD = 64
# On CPU, the screened path's batch is cut so that each thread's [rows, N] score matrix stays
# within this: glibc hands larger blocks out as fresh pages (faulted in again every batch), and
# smaller blocks stay warmer in cache. On the real Qwen2.5 <- SmolLM2 rows (N=39,234, 2 threads)
# batches of 384-1,024 rows took 1.01-1.06 ms per target, 3,072 rows 1.16 ms (best of several
# passes); a first pass in a fresh process, as a CLI run makes, over all 9,911 rows took
# 9.6-11.2 s at 32 MiB (427 rows per thread), 9.0-10.3 s at 16 MiB (213), 9.4-10.6 s at 8 MiB;
# page faults during the pass 375-463 thousand at 32 MiB, 184-288 thousand at 8 MiB
# (docs/performance.md).
_CPU_THREAD_SCORE_BYTES = 16 << 20

Algorithm = Literal["auto", "exact", "screened"]
ALGORITHMS = ("auto", "exact", "screened")


@dataclass(frozen=True)
class OmpResult:
    """What :func:`solve_omp` found for each target row.

    Rows that stopped early (residual within ``residual_tol``, or a zero target) and atoms found
    linearly dependent keep coefficient exactly 0; slots after an early stop also hold index 0.

    Attributes:
        indices: [T, k] int64, rows of the dictionary, in the order OMP picked them.
        coefficients: [T, k] float32, weight of each picked row.
        residual_norm: [T] float32, ``||target - coefficients @ dictionary[indices]||``
            recomputed in fp32 after the solve.
        target_norm: [T] float32, ``||target||``.
        n_steps: [T] int64, greedy steps run per row (k unless the row stopped early).
    """

    indices: Tensor
    coefficients: Tensor
    residual_norm: Tensor
    target_norm: Tensor
    n_steps: Tensor

    def relative_residual(self) -> Tensor:
        """[T] float32, ``residual_norm / target_norm``; 0 for zero targets."""
        safe_norm = torch.where(self.target_norm > 0, self.target_norm, 1.0)
        return torch.where(self.target_norm > 0, self.residual_norm / safe_norm, 0.0)


@dataclass(frozen=True)
class PreparedDictionary:
    """A dictionary converted once for :func:`solve_omp`, resident on its device.

    Build it with :func:`prepare_dictionary` and pass it to every :func:`solve_omp` call of a
    pass (one per chunk), so the conversions and the Gram matrix are paid once.

    Attributes:
        atoms: [N, d] float32, the dictionary rows.
        score_atoms: [N, d] score dtype, rows scaled to unit norm when ``normalize_atoms``.
        score_scale: [N] float32, what exact scores are multiplied by (1/norm, 0, or 1).
        gram: [N, N] score dtype, ``score_atoms @ score_atoms.T``; None on the exact path,
            and on the screened path when the Gram does not fit in memory (the screened
            selection then computes the inner products it needs from the rows).
        normalize_atoms: whether atoms are picked by |correlation| / norm.
        algorithm: the path :func:`solve_omp` takes with this dictionary by default.
    """

    atoms: Tensor
    score_atoms: Tensor
    score_scale: Tensor
    gram: Tensor | None
    normalize_atoms: bool
    algorithm: Literal["exact", "screened"] = "exact"

    @property
    def path_name(self) -> str:
        """``exact``, ``screened``, or ``screened-no-gram`` (for logs and reports)."""
        if self.algorithm == "screened" and self.gram is None:
            return "screened-no-gram"
        return self.algorithm

    @property
    def score_dtype(self) -> torch.dtype:
        return self.score_atoms.dtype


def resolve_score_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """Map the ``--score-dtype`` value to a dtype for ``device``.

    ``auto`` is bf16 on CUDA devices that support it and on CPUs where oneDNN runs bf16
    matmuls (AVX512/AMX), else float32.

    Example: ``resolve_score_dtype("auto", "cpu")`` -> ``torch.bfloat16`` on an AVX512 CPU.
    """
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    if name != "auto":
        raise ConfigError(
            f"--score-dtype {name!r} is unknown; choose one of auto, bfloat16, float32."
        )
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    try:
        has_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        has_bf16 = False
    return torch.bfloat16 if device.type == "cpu" and has_bf16 else torch.float32


def pick_batch_size(
    n_atoms: int,
    dim: int,
    k: int,
    score_dtype: torch.dtype = torch.bfloat16,
    memory_bytes: int = BATCH_MEMORY_BYTES,
    algorithm: Literal["exact", "screened"] = "exact",
    has_gram: bool = True,
) -> int:
    """Rows per batch so that one batch's working set stays within ``memory_bytes``.

    Exact path, per row: the score row (N values in ``score_dtype`` plus its integer view),
    the picked atoms (k*d fp64) and their fp32 copy for the final residual, the Cholesky
    factor (k*k fp64) and a few d-vectors. Screened path: the score row, its keys and the
    step-0 scores (for the screens through the Gram), the candidates' basis scores (k*M fp32)
    and per-candidate state, the factor, a few d-vectors; without a Gram (``has_gram``
    False) also the candidates' rows and their Gram block (M*d + M*M in ``score_dtype``).
    Example: N=20000, d=896, k=64, bf16 -> about 1300 exact rows per GiB.
    """
    score_bytes = torch.empty((), dtype=score_dtype).element_size()
    if algorithm == "screened":
        n_candidates = min(omp_screened._N_CANDIDATES, n_atoms)
        per_row = 3 * n_atoms * score_bytes + n_candidates * (4 * k + 21 + score_bytes)
        if not has_gram:
            per_row += n_candidates * (dim + n_candidates) * score_bytes
    else:
        per_row = n_atoms * score_bytes + k * dim * (8 + 4)
    per_row += k * k * 8 + 8 * dim * 8
    return max(1, memory_bytes // per_row)


def prepare_dictionary(
    dictionary: Tensor,
    *,
    score_dtype: torch.dtype = torch.bfloat16,
    normalize_atoms: bool = True,
    algorithm: Algorithm = "auto",
    n_targets: int | None = None,
    k: int | None = None,
    gram_memory_bytes: int | None = None,
) -> PreparedDictionary:
    """Convert the dictionary once, and build the Gram matrix when the screened path pays.

    Args:
        dictionary: [N, d] float, the donor's rows of the shared tokens, on the device to solve on.
        score_dtype: dtype of the scoring GEMMs and of the Gram matrix.
        normalize_atoms: see :func:`solve_omp`.
        algorithm: ``exact`` builds no Gram; ``screened`` takes the screened path; ``auto``
            takes it when :func:`choose_algorithm` says it is cheaper for ``n_targets`` rows
            (the whole pass, not one rank's or one chunk's share, so every rank chooses
            alike). The screened path builds the Gram when it fits ``gram_memory_bytes`` and
            else runs without it (inner products from the rows).
        n_targets: rows the prepared dictionary will solve in all; None means few (``auto``
            then builds no Gram).
        k: atoms per target (for ``auto``'s cost estimate); None means 64.
        gram_memory_bytes: largest Gram to build; None: a quarter of the RAM, at most 8 GiB
            (40% of the device's memory on CUDA).

    Returns:
        A :class:`PreparedDictionary` on ``dictionary.device``.

    Raises:
        SourceError: the dictionary holds NaN or inf.
    """
    _check_dictionary(dictionary)
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    atoms = dictionary.float()
    if normalize_atoms:
        norms = torch.linalg.vector_norm(atoms, dim=1)
        scale = torch.where(norms > 0, 1.0 / norms.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    else:
        scale = torch.ones(atoms.shape[0], device=atoms.device)
    # Scaling the rows once makes the scores already normalized: no [B, N] multiply per step.
    score_atoms = (atoms * scale[:, None]).to(score_dtype)
    budget = _default_gram_budget(atoms.device) if gram_memory_bytes is None else gram_memory_bytes
    has_gram = omp_screened.gram_nbytes(atoms.shape[0], score_dtype) <= budget
    if algorithm == "auto":
        algorithm = choose_algorithm(
            atoms.shape[0], n_targets or 0, 64 if k is None else k, score_dtype,
            atoms.device, gram_memory_bytes,
        )  # fmt: skip
    gram = omp_screened.build_gram(score_atoms) if algorithm == "screened" and has_gram else None
    prepared = PreparedDictionary(atoms, score_atoms, scale, gram, normalize_atoms, algorithm)
    logger.debug(
        "OMP dictionary N=%d, d=%d, %s scoring, %s path", *atoms.shape, score_dtype, prepared.path_name
    )
    return prepared


def choose_algorithm(
    n_atoms: int,
    n_targets: int,
    k: int,
    score_dtype: torch.dtype,
    device: torch.device | str = "cpu",
    gram_memory_bytes: int | None = None,
) -> Literal["exact", "screened"]:
    """Pick the cheaper path for a pass of ``n_targets`` rows against ``n_atoms`` atoms.

    In units of one scoring GEMM row (N*d multiply-adds) per target, the exact path costs k;
    the screened path ``n_screens(k) + k * _SCREENED_STEP_COST``, plus N/2 per pass for the
    Gram matrix. When the [N, N] Gram exceeds ``gram_memory_bytes`` the screened path runs
    without it: no N/2, but the candidates' own Gram block and the rows gathered for it cost
    about M*d multiply-adds per step on average (counted twice, 2*M/N rows). The screened path
    also needs more atoms than 16x its candidates (below, the exact path is cheap anyway).
    Example: N=39,234, k=64, bf16 on a 23 GiB CPU: T=9,911 -> ``screened``; T=300 -> ``exact``;
    N=95,968 (an 18 GB Gram): T=166,061 -> ``screened`` (without the Gram).
    """
    budget = _default_gram_budget(device) if gram_memory_bytes is None else gram_memory_bytes
    n_candidates = omp_screened._N_CANDIDATES
    if n_atoms < 16 * n_candidates:
        return "exact"
    per_target = omp_screened.n_screens(k, n_atoms) + k * _SCREENED_STEP_COST
    if omp_screened.gram_nbytes(n_atoms, score_dtype) > budget:
        per_target += k * 2 * n_candidates / n_atoms
        is_cheaper = n_targets * per_target < n_targets * k
    else:
        is_cheaper = n_atoms / 2 + n_targets * per_target < n_targets * k
    return "screened" if is_cheaper else "exact"


def solve_omp(
    dictionary: Tensor | PreparedDictionary,
    targets: Tensor,
    k: int,
    *,
    score_dtype: torch.dtype | None = None,
    batch_size: int | None = None,
    normalize_atoms: bool | None = None,
    residual_tol: float = 0.0,
    progress: Callable[[int], None] | None = None,
    algorithm: Algorithm = "auto",
) -> OmpResult:
    """Approximate each target by ``k`` dictionary rows with Orthogonal Matching Pursuit.

    Args:
        dictionary: [N, d] float, the donor's rows of the shared tokens, solved on its device;
            or a :class:`PreparedDictionary` from :func:`prepare_dictionary` (pass one when
            calling chunk after chunk: its conversions and Gram matrix are then paid once).
        targets: [T, d] float, the donor's rows of the new tokens; any device, moved over
            batch by batch.
        k: atoms per target, 1 <= k <= N.
        score_dtype: dtype of the ``residual @ dictionary.T`` scoring (default bf16; with a
            prepared dictionary, its own). ``torch.float32`` gives exact OMP; bf16 is 4-6x
            faster on AVX512-BF16/AMX CPUs and tensor-core GPUs (on CUDA keep TF32 off for
            exact fp32). The fit itself is always fp64.
        batch_size: targets per batch; None picks :func:`pick_batch_size` (1 GiB budget; on
            CPU the screened path's cap per thread), then evens the batches out.
        normalize_atoms: pick by |correlation| / atom norm (standard OMP, the default); False
            picks by raw |correlation|, favouring long rows.
        residual_tol: a row stops once ``||residual|| <= residual_tol * ||target||``; with 0,
            only rows whose residual is exactly zero (e.g. zero targets) stop. Only the exact
            path supports a positive value.
        progress: called after each batch with the number of rows it finished (so
            ``tqdm.update`` can be passed directly).
        algorithm: ``exact`` scores every atom at every step; ``screened`` follows candidates
            through the Gram matrix (``omp_screened``); ``auto`` takes ``screened`` when the
            prepared dictionary has a Gram and ``residual_tol`` is 0 (a plain tensor is
            prepared with ``n_targets=T``, see :func:`choose_algorithm`).

    Returns:
        :class:`OmpResult` with tensors on ``targets.device``.

    Raises:
        AlignmentError: k exceeds the number of dictionary rows.
        SourceError: the dictionary or the targets hold NaN or inf.
    """
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size <= 0):
        raise ConfigError(
            f"--max-batch-tokens must be a positive integer (got {batch_size!r}); "
            "leave it unset to pick from memory."
        )
    prepared = _prepared_for(
        dictionary, targets.shape[0], k, score_dtype, normalize_atoms, algorithm
    )
    _check_targets(prepared.atoms, targets, k)
    is_screened = _resolve_algorithm(prepared, algorithm, residual_tol) == "screened"
    n_targets, (n_atoms, dim) = targets.shape[0], prepared.atoms.shape
    if batch_size is None:
        path = "screened" if is_screened else "exact"
        batch_size = pick_batch_size(
            n_atoms, dim, k, prepared.score_dtype, algorithm=path, has_gram=prepared.gram is not None
        )
        if is_screened and prepared.atoms.device.type == "cpu":
            batch_size = min(batch_size, _cpu_screened_batch(n_atoms, prepared.score_dtype))
        batch_size = _even_batches(n_targets, batch_size)
        logger.debug("OMP batch size %d for N=%d, d=%d, k=%d", batch_size, n_atoms, dim, k)
    parts = []
    for start in range(0, max(n_targets, 1), batch_size):
        batch = targets[start : start + batch_size].to(prepared.atoms.device, torch.float32)
        if is_screened:
            parts.append(_solve_rows_in_threads(prepared, batch, k))
        else:
            parts.append(_solve_batch_exact(prepared, batch, k, residual_tol))
        if progress is not None and batch.shape[0]:
            progress(batch.shape[0])
    fields = [torch.cat(column).to(targets.device) for column in zip(*parts, strict=True)]
    return OmpResult(*fields)


def _even_batches(n_targets: int, batch_size: int) -> int:
    """The smallest batch size that cuts ``n_targets`` into as few batches as ``batch_size``
    allows, so the batches are even (the last at most a few rows shorter) and no small
    remainder batch runs on one thread. Example: 512 rows, at most 426 -> 256 (two batches)."""
    if n_targets <= 0:
        return batch_size
    n_batches = -(-n_targets // batch_size)
    return -(-n_targets // n_batches)


def _cpu_screened_batch(n_atoms: int, score_dtype: torch.dtype) -> int:
    """Rows per screened batch on CPU: one block of at most ``_CPU_THREAD_SCORE_BYTES`` of
    scores per thread. Example: N=39,234, bf16, 2 threads -> 2 * 213 = 426 rows."""
    score_bytes = torch.empty((), dtype=score_dtype).element_size()
    rows_per_thread = max(_MIN_ROWS_PER_THREAD, _CPU_THREAD_SCORE_BYTES // (n_atoms * score_bytes))
    return torch.get_num_threads() * rows_per_thread


def apply_coefficients(rows: Tensor, indices: Tensor, coefficients: Tensor) -> Tensor:
    """Combine rows of a matrix with OMP's coefficients, in fp32, in row chunks.

    Args:
        rows: [N, d_out] any float dtype, e.g. the base's embedding rows of the shared tokens
            in dictionary order (or a whole base matrix when ``indices`` are base ids).
        indices: [T, k] int64 rows of ``rows``.
        coefficients: [T, k] float weights.

    Returns:
        [T, d_out] float32 on ``rows.device``: ``out[t] = sum_j coefficients[t, j] *
        rows[indices[t, j]]``. Example: rows ``[[1, 0], [0, 1]]``, indices ``[[0, 1]]``,
        coefficients ``[[2, 3]]`` -> ``[[2, 3]]``.
    """
    n_rows, k = indices.shape
    dim = rows.shape[1]
    out = torch.empty(n_rows, dim, dtype=torch.float32, device=rows.device)
    chunk = max(1, _APPLY_CHUNK_BYTES // max(1, k * dim * 4))
    for start in range(0, n_rows, chunk):
        ids = indices[start : start + chunk].to(rows.device)
        weights = coefficients[start : start + chunk].to(rows.device, torch.float32)
        gathered = rows.index_select(0, ids.reshape(-1)).view(*ids.shape, dim).float()
        out[start : start + chunk] = torch.bmm(weights.unsqueeze(1), gathered).squeeze(1)
    return out


def _prepared_for(
    dictionary: Tensor | PreparedDictionary,
    n_targets: int,
    k: int,
    score_dtype: torch.dtype | None,
    normalize_atoms: bool | None,
    algorithm: Algorithm,
) -> PreparedDictionary:
    if not isinstance(dictionary, PreparedDictionary):
        _check_k(k, dictionary.shape[0])
        return prepare_dictionary(
            dictionary,
            score_dtype=torch.bfloat16 if score_dtype is None else score_dtype,
            normalize_atoms=True if normalize_atoms is None else normalize_atoms,
            algorithm=algorithm,
            n_targets=n_targets,
            k=k,
        )
    if score_dtype not in (None, dictionary.score_dtype):
        raise ValueError(f"score_dtype {score_dtype} differs from the prepared dictionary's")
    if normalize_atoms not in (None, dictionary.normalize_atoms):
        raise ValueError("normalize_atoms differs from the prepared dictionary's")
    return dictionary


def _resolve_algorithm(
    prepared: PreparedDictionary, algorithm: Algorithm, residual_tol: float
) -> Literal["exact", "screened"]:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm == "screened" and (prepared.algorithm != "screened" or residual_tol > 0):
        raise ValueError(
            "algorithm='screened' needs a dictionary prepared with algorithm='screened' "
            "(or 'auto' that chose it) and residual_tol=0"
        )
    if algorithm == "exact" or prepared.algorithm != "screened" or residual_tol > 0:
        return "exact"
    return "screened"


def _default_gram_budget(device: torch.device | str) -> int:
    device = torch.device(device)
    if device.type == "cuda":
        return int(0.4 * torch.cuda.get_device_properties(device).total_memory)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        total = 16 << 30
    return min(_GRAM_MAX_BYTES, total // 4)


def _check_k(k: int, n_atoms: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise ConfigError(f"--k must be a positive integer (got {k!r}); 64 is the default.")
    if k > n_atoms:
        raise AlignmentError(
            f"--k {k} is larger than the {n_atoms} shared tokens OMP can combine; "
            f"pass --k {n_atoms} or less."
        )


def _check_dictionary(dictionary: Tensor) -> None:
    if dictionary.ndim != 2:
        raise ValueError(f"dictionary must be [N, d]; got {tuple(dictionary.shape)}")
    _check_finite(dictionary, "shared-token")


def _check_targets(atoms: Tensor, targets: Tensor, k: int) -> None:
    if targets.ndim != 2 or atoms.shape[1] != targets.shape[1]:
        raise ValueError(
            f"dictionary [N, d] and targets [T, d] must share d; got {tuple(atoms.shape)} "
            f"and {tuple(targets.shape)}"
        )
    _check_k(k, atoms.shape[0])
    _check_finite(targets, "new-token")


def _check_finite(matrix: Tensor, name: str) -> None:
    # A row sum is NaN/inf iff the row holds one (barring fp32 overflow, itself unusable);
    # unlike isfinite(matrix) it needs no [N, d] temporary.
    row_sums = matrix.sum(dim=1, dtype=torch.float32)
    bad_rows = (~torch.isfinite(row_sums)).nonzero().flatten()
    if bad_rows.numel():
        shown = ", ".join(str(i) for i in bad_rows[:10].tolist())
        raise SourceError(
            f"{bad_rows.numel()} {name} rows of the donor embedding hold NaN or inf "
            f"(rows {shown}); check the --donor checkpoint."
        )


def _solve_batch_exact(prepared: PreparedDictionary, targets: Tensor, k: int, residual_tol: float):
    """``omp_exact.solve_batch_exact`` plus the residual, as the OmpResult fields."""
    indices, coefficients, target_norm, n_steps = omp_exact.solve_batch_exact(
        prepared.atoms, prepared.score_atoms, prepared.score_scale, targets, k, residual_tol
    )
    fitted = apply_coefficients(prepared.atoms, indices, coefficients)
    residual_norm = torch.linalg.vector_norm(targets - fitted, dim=1)
    return indices, coefficients, residual_norm, target_norm, n_steps


def _solve_rows_in_threads(prepared: PreparedDictionary, targets: Tensor, k: int):
    """The screened batch split into one block of rows per CPU thread, solved side by side.

    Why: between screens the screened path runs dozens of small ops per step (gathers, [B, M]
    updates) that torch's intra-op threads barely speed up (1.4x on 2 cores). Each row's
    result does not depend on the other rows of its batch, so the rows are split into blocks,
    and each block runs on its own Python thread with intra-op threading off (torch ops release
    the GIL): 1.6x on 2 cores (docs/performance.md). Same output as one block; on GPU, or with
    one thread or few rows, it is one block.
    """
    n_threads = torch.get_num_threads()
    n_blocks = min(n_threads, targets.shape[0] // _MIN_ROWS_PER_THREAD)
    if targets.device.type != "cpu" or n_blocks < 2:
        return _solve_batch_screened(prepared, targets, k)
    blocks = targets.tensor_split(n_blocks)
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(n_blocks, thread_name_prefix="omp-rows") as pool:
            parts = list(pool.map(lambda block: _solve_batch_screened(prepared, block, k), blocks))
    finally:
        torch.set_num_threads(n_threads)
    return tuple(torch.cat(column) for column in zip(*parts, strict=True))


def _solve_batch_screened(prepared: PreparedDictionary, targets: Tensor, k: int):
    """``omp_screened.solve_batch_screened`` plus the residual, as the OmpResult fields."""
    indices, coefficients, is_active = omp_screened.solve_batch_screened(
        prepared.atoms,
        prepared.score_atoms,
        prepared.score_scale,
        prepared.gram,
        targets,
        k,
    )
    coefficients32 = coefficients.float()
    fitted = apply_coefficients(prepared.atoms, indices, coefficients32)
    residual_norm = torch.linalg.vector_norm(targets - fitted, dim=1)
    target_norm = torch.linalg.vector_norm(targets, dim=1)
    n_steps = torch.where(is_active, k, 0)
    return indices, coefficients32, residual_norm, target_norm, n_steps
