"""Batched Orthogonal Matching Pursuit on tensors (Goddard & Fernandes Neto 2025, section 3).

Owns the solve: given a dictionary (the donor's rows of the shared tokens) and targets (the
donor's rows of the new tokens), find for each target ``k`` dictionary rows and coefficients
whose combination approximates it, then apply those coefficients to another matrix (the base's
rows of the same shared tokens). It takes and returns tensors only: reading checkpoints,
choosing the device, sharding rows over ranks and drawing progress bars belong to the callers.

How one greedy step works, for a batch of B targets at once:

1. score every atom against the residual, ``residual @ atoms.T`` ([B, N]); this is the
   FLOP-dominant part (2*T*N*d*k in total), done in ``score_dtype`` (bf16 by default);
2. take the best ``_N_CANDIDATES`` not-yet-selected atoms by |score| and re-score only those
   in fp32, so reduced-precision scoring changes a pick only when the exact winner is not
   among the reduced-precision top few (measured in ``scripts/bench_omp.py``);
3. extend the Cholesky factor L of the selected atoms' Gram matrix (L @ L.T = A @ A.T) by one
   row, in fp64: an atom (numerically) inside the span of those already selected gets a unit
   pivot and coefficient 0 instead of a NaN;
4. refit all selected coefficients by least squares (two triangular solves with L) and
   recompute the residual ``target - coef @ A`` from the refit.

Example (one target, three atoms)::

    >>> atoms = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> result = solve_omp(atoms, torch.tensor([[3.0, 0.0]]), k=1, score_dtype=torch.float32)
    >>> result.indices.tolist(), result.coefficients.tolist()
    ([[0]], [[3.0]])
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import AlignmentError, ConfigError, SourceError

logger = logging.getLogger(__name__)

# Memory the per-batch working set may take when batch_size is None (see pick_batch_size).
BATCH_MEMORY_BYTES = 1 << 30
# Atoms re-scored exactly per step after reduced-precision scoring (B*4*d per step against
# B*N*d for the scoring). On embedding-like rows (N=20k, d=896, k=64) bf16 without it picks
# the fp32 atoms in 48% of slots, with 2 candidates 97.5%, with 4 99.8% (8 or 16: the same).
_N_CANDIDATES = 4
# An atom whose squared distance to the span of the selected atoms is below this fraction of
# its squared norm is treated as linearly dependent (sin(angle) < 1e-5): an exact duplicate,
# a zero row or an fp32-rounded combination of selected atoms.
_PIVOT_RTOL = 1e-10
# Memory a chunk of apply_coefficients may take for its gathered rows.
_APPLY_CHUNK_BYTES = 256 << 20


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
class _Dictionary:
    """The dictionary prepared once, resident on its device."""

    atoms: Tensor  # [N, d] float32, the dictionary rows
    score_atoms: Tensor  # [N, d] score_dtype, rows scaled to unit norm when normalize_atoms
    score_scale: Tensor  # [N] float32, what exact scores are multiplied by (1/norm, 0, or 1)


@dataclass
class _BatchState:
    """Per-batch buffers of the incremental least-squares fit; B rows, k slots."""

    targets: Tensor  # [B, d] float64
    indices: Tensor  # [B, k] int64, dictionary rows picked so far
    picked: Tensor  # [B, k, d] float64, the picked atoms (zeroed where dependent)
    chol: Tensor  # [B, k, k] float64, lower Cholesky factor of the picked atoms' Gram
    chol_rhs: Tensor  # [B, k] float64, solution z of chol @ z = picked @ target
    is_active: Tensor  # [B] bool, rows still above residual_tol
    n_steps: Tensor  # [B] int64


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
) -> int:
    """Rows per batch so that one batch's working set stays within ``memory_bytes``.

    Per row: the score row (N values in ``score_dtype`` plus its integer view), the picked
    atoms (k*d fp64) and their fp32 copy for the final residual, the Cholesky factor (k*k
    fp64) and a few d-vectors. Example: N=20000, d=896, k=64, bf16 -> about 1300 rows per GiB.
    """
    score_bytes = torch.empty((), dtype=score_dtype).element_size()
    per_row = n_atoms * score_bytes + k * dim * (8 + 4) + k * k * 8 + 8 * dim * 8
    return max(1, memory_bytes // per_row)


def solve_omp(
    dictionary: Tensor,
    targets: Tensor,
    k: int,
    *,
    score_dtype: torch.dtype = torch.bfloat16,
    batch_size: int | None = None,
    normalize_atoms: bool = True,
    residual_tol: float = 0.0,
    progress: Callable[[int], None] | None = None,
) -> OmpResult:
    """Approximate each target by ``k`` dictionary rows with Orthogonal Matching Pursuit.

    Args:
        dictionary: [N, d] float, the donor's rows of the shared tokens. Solved on its device;
            converted to float32 once (and to ``score_dtype`` once) and kept there.
        targets: [T, d] float, the donor's rows of the new tokens; any device, moved over
            batch by batch.
        k: atoms per target, 1 <= k <= N.
        score_dtype: dtype of the ``residual @ dictionary.T`` scoring. ``torch.float32`` gives
            exact OMP; bf16 is 4-6x faster on AVX512-BF16/AMX CPUs and tensor-core GPUs (on
            CUDA keep TF32 off for exact fp32). The fit itself is always fp64.
        batch_size: targets per batch; None picks :func:`pick_batch_size` (1 GiB budget).
        normalize_atoms: pick by |correlation| / atom norm (standard OMP); False picks by raw
            |correlation|, favouring long rows.
        residual_tol: a row stops once ``||residual|| <= residual_tol * ||target||``; with 0,
            only rows whose residual is exactly zero (e.g. zero targets) stop.
        progress: called after each batch with the number of rows it finished (so
            ``tqdm.update`` can be passed directly).

    Returns:
        :class:`OmpResult` with tensors on ``targets.device``.

    Raises:
        AlignmentError: k exceeds the number of dictionary rows.
        SourceError: the dictionary or the targets hold NaN or inf.
    """
    _check_inputs(dictionary, targets, k)
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size <= 0):
        raise ConfigError(
            f"--max-batch-tokens must be a positive integer (got {batch_size!r}); "
            "leave it unset to pick from memory."
        )
    n_targets, n_atoms = targets.shape[0], dictionary.shape[0]
    if batch_size is None:
        batch_size = pick_batch_size(n_atoms, dictionary.shape[1], k, score_dtype)
        logger.debug(
            "OMP batch size %d for N=%d, d=%d, k=%d", batch_size, n_atoms, dictionary.shape[1], k
        )
    prepared = _prepare_dictionary(dictionary, score_dtype, normalize_atoms)
    parts = []
    for start in range(0, n_targets, batch_size):
        batch = targets[start : start + batch_size].to(prepared.atoms.device, torch.float32)
        parts.append(_solve_batch(prepared, batch, k, residual_tol))
        if progress is not None:
            progress(batch.shape[0])
    if not parts:
        empty = prepared.atoms.new_zeros(0, prepared.atoms.shape[1])
        parts.append(_solve_batch(prepared, empty, k, residual_tol))
    fields = [torch.cat(column).to(targets.device) for column in zip(*parts, strict=True)]
    return OmpResult(*fields)


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


def _check_inputs(dictionary: Tensor, targets: Tensor, k: int) -> None:
    if dictionary.ndim != 2 or targets.ndim != 2 or dictionary.shape[1] != targets.shape[1]:
        raise ValueError(
            f"dictionary [N, d] and targets [T, d] must share d; got {tuple(dictionary.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise ConfigError(f"--k must be a positive integer (got {k!r}); 64 is the default.")
    if k > dictionary.shape[0]:
        raise AlignmentError(
            f"--k {k} is larger than the {dictionary.shape[0]} shared tokens OMP can combine; "
            f"pass --k {dictionary.shape[0]} or less."
        )
    for name, matrix in (("shared-token", dictionary), ("new-token", targets)):
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


def _prepare_dictionary(
    dictionary: Tensor, score_dtype: torch.dtype, normalize: bool
) -> _Dictionary:
    atoms = dictionary.float()
    if normalize:
        norms = torch.linalg.vector_norm(atoms, dim=1)
        scale = torch.where(norms > 0, 1.0 / norms.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    else:
        scale = torch.ones(atoms.shape[0], device=atoms.device)
    # Scaling the rows once makes the scores already normalized: no [B, N] multiply per step.
    score_atoms = (atoms * scale[:, None]).to(score_dtype)
    return _Dictionary(atoms=atoms, score_atoms=score_atoms, score_scale=scale)


def _solve_batch(prepared: _Dictionary, targets: Tensor, k: int, residual_tol: float):
    """Run k OMP steps on one batch; returns the OmpResult fields for its rows."""
    n_rows, dim = targets.shape
    device = targets.device
    target_norm = torch.linalg.vector_norm(targets, dim=1)
    state = _BatchState(
        targets=targets.double(),
        indices=torch.zeros(n_rows, k, dtype=torch.long, device=device),
        picked=torch.zeros(n_rows, k, dim, dtype=torch.float64, device=device),
        chol=torch.zeros(n_rows, k, k, dtype=torch.float64, device=device),
        chol_rhs=torch.zeros(n_rows, k, dtype=torch.float64, device=device),
        is_active=target_norm > residual_tol * target_norm,
        n_steps=torch.zeros(n_rows, dtype=torch.long, device=device),
    )
    residual = targets
    coefficients = torch.zeros(n_rows, k, dtype=torch.float64, device=device)
    for step in range(k):
        if not bool(state.is_active.any()):
            break
        picks = _select_atoms(prepared, residual, state.indices[:, :step])
        picks = torch.where(state.is_active, picks, 0)
        _extend_fit(state, prepared.atoms.index_select(0, picks).double(), step)
        state.indices[:, step] = picks
        state.n_steps += state.is_active
        coefficients = _refit(state, step + 1)
        fitted = torch.bmm(coefficients.unsqueeze(1), state.picked[:, : step + 1]).squeeze(1)
        residual = (state.targets - fitted).float()
        residual_norm = torch.linalg.vector_norm(residual, dim=1)
        state.is_active &= residual_norm > residual_tol * target_norm
    coefficients32 = torch.zeros(n_rows, k, dtype=torch.float32, device=device)
    coefficients32[:, : coefficients.shape[1]] = coefficients.float()
    fitted = apply_coefficients(prepared.atoms, state.indices, coefficients32)
    residual_norm = torch.linalg.vector_norm(targets - fitted, dim=1)
    return state.indices, coefficients32, residual_norm, target_norm, state.n_steps


def _select_atoms(prepared: _Dictionary, residual: Tensor, taken: Tensor) -> Tensor:
    """[B] int64: the not-yet-taken atom with the largest normalized |correlation|.

    ``taken`` is [B, s] int64. Non-negative floats order like their bit patterns read as
    integers, so clearing the sign bit and taking an integer max gives |score| order without
    a float abs/argmax pass (slow for bf16 on CPU); -1 marks taken atoms.
    """
    scores = residual.to(prepared.score_atoms.dtype) @ prepared.score_atoms.T  # [B, N]
    int_dtype = {2: torch.int16, 4: torch.int32, 8: torch.int64}[scores.element_size()]
    bits = scores.view(int_dtype).bitwise_and_(torch.iinfo(int_dtype).max)
    if taken.shape[1]:
        bits.scatter_(1, taken, -1)
    if prepared.score_atoms.dtype in (torch.float32, torch.float64):
        return bits.argmax(dim=1)
    n_candidates = min(_N_CANDIDATES, bits.shape[1] - taken.shape[1])
    candidates = bits.topk(n_candidates, dim=1).indices  # [B, c], best first
    flat = candidates.reshape(-1)
    candidate_atoms = prepared.atoms.index_select(0, flat).view(*candidates.shape, -1)  # [B, c, d]
    exact = torch.bmm(candidate_atoms, residual.unsqueeze(2)).squeeze(2).abs()
    exact *= prepared.score_scale[candidates]
    return candidates.gather(1, exact.argmax(dim=1, keepdim=True)).squeeze(1)


def _extend_fit(state: _BatchState, atoms: Tensor, step: int) -> None:
    """Append ``atoms`` ([B, d] float64, one per row) to the Cholesky factor, in place.

    With L the factor of the Gram of the picked atoms, the new row is ``[w, p]`` with
    ``L w = g`` (g: the new atom's inner products with the picked ones) and
    ``p = sqrt(||atom||^2 - ||w||^2)``, its distance to their span. A (nearly) dependent atom,
    or any atom of an inactive row, gets the row ``[0, 1]`` and rhs 0: its coefficient is 0
    and the other coefficients are those of the fit without it.
    """
    previous = state.picked[:, :step]  # [B, s, d]
    if step:
        gram_column = torch.bmm(previous, atoms.unsqueeze(2))  # [B, s, 1]
        w = torch.linalg.solve_triangular(state.chol[:, :step, :step], gram_column, upper=False)
        w = w.squeeze(2)
    else:
        w = atoms.new_zeros(atoms.shape[0], 0)
    atom_sq = (atoms * atoms).sum(dim=1)
    pivot_sq = atom_sq - (w * w).sum(dim=1)
    is_usable = state.is_active & (pivot_sq > _PIVOT_RTOL * atom_sq)
    pivot = torch.where(is_usable, pivot_sq.clamp_min(1e-300).sqrt(), 1.0)
    w = w * is_usable[:, None]
    state.chol[:, step, :step] = w
    state.chol[:, step, step] = pivot
    projection = (atoms * state.targets).sum(dim=1)
    rhs = (projection - (w * state.chol_rhs[:, :step]).sum(dim=1)) / pivot
    state.chol_rhs[:, step] = torch.where(is_usable, rhs, 0.0)
    state.picked[:, step] = atoms * is_usable[:, None]


def _refit(state: _BatchState, n_picked: int) -> Tensor:
    """[B, n_picked] float64 least-squares coefficients: solve ``L.T c = z``."""
    chol = state.chol[:, :n_picked, :n_picked]
    rhs = state.chol_rhs[:, :n_picked].unsqueeze(2)
    return torch.linalg.solve_triangular(chol.mT, rhs, upper=True).squeeze(2)
