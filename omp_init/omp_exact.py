"""The exact OMP path: every step scores the residual against every atom.

``omp.py`` owns the public entry point and chooses between this path and ``omp_screened``;
this module owns the arithmetic of one batch, and the exact least-squares refit with its rule
for dependent atoms (:func:`refit_exact`), which ``omp_screened`` applies to its selection too.
Tensors in, tensors out.

How one greedy step works, for a batch of B targets at once:

1. score every atom against the residual, ``residual @ atoms.T`` ([B, N]); this is the
   FLOP-dominant part (2*T*N*d*k in total), done in ``score_dtype`` (bf16 by default);
2. take the best ``_N_RESCORED`` not-yet-selected atoms by |score| and re-score only those
   in fp32, so reduced-precision scoring changes a pick only when the exact winner is not
   among the reduced-precision top few (measured in ``scripts/bench_omp.py``);
3. extend the Cholesky factor L of the selected atoms' Gram matrix (L @ L.T = A @ A.T) by one
   row, in fp64: an atom (numerically) inside the span of those already selected gets a unit
   pivot and coefficient 0 instead of a NaN;
4. refit all selected coefficients by least squares (two triangular solves with L) and
   recompute the residual ``target - coef @ A`` from the refit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Atoms re-scored exactly per step after reduced-precision scoring (B*4*d per step against
# B*N*d for the scoring). On embedding-like rows (N=20k, d=896, k=64) bf16 without it picks
# the fp32 atoms in 48% of slots, with 2 candidates 97.5%, with 4 99.8% (8 or 16: the same).
_N_RESCORED = 4
# An atom whose squared distance to the span of the selected atoms is below this fraction of
# its squared norm is treated as linearly dependent (sin(angle) < 1e-5): an exact duplicate,
# a zero row or an fp32-rounded combination of selected atoms. omp_screened's final refit
# applies the same rule.
PIVOT_RTOL = 1e-10
# Rows refit at once by refit_exact: their atoms take rows * k * d * 4 bytes.
_REFIT_CHUNK_ROWS = 64
# refit_exact solves a row from its fp32 Gram when every pivot^2 exceeds this fraction of its
# diagonal (sin(angle to the earlier atoms' span) > 0.01): fp32 rounding of the Gram (~1e-6
# relative) is then far below the pivots. The rest take the fp64 Gram and PIVOT_RTOL.
_FP32_PIVOT_RTOL = 1e-4


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


def solve_batch_exact(
    atoms: Tensor,
    score_atoms: Tensor,
    score_scale: Tensor,
    targets: Tensor,
    k: int,
    residual_tol: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run k OMP steps on one batch, scoring every atom at every step.

    Args:
        atoms: [N, d] float32, the dictionary rows.
        score_atoms: [N, d] score dtype, the rows times ``score_scale``.
        score_scale: [N] float32, 1/norm (1 when atoms are not normalized, 0 for zero rows).
        targets: [B, d] float32 on the atoms' device.
        k: atoms per target, k <= N.
        residual_tol: a row stops once ``||residual|| <= residual_tol * ||target||``.

    Returns:
        indices [B, k] int64, coefficients [B, k] float32, target_norm [B] float32,
        n_steps [B] int64.
    """
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
    # [B, N] scores, written in place each step: a fresh multi-MB tensor per step costs page
    # faults on CPU.
    scores = torch.empty(n_rows, atoms.shape[0], dtype=score_atoms.dtype, device=device)
    for step in range(k):
        if not bool(state.is_active.any()):
            break
        torch.mm(residual.to(scores.dtype), score_atoms.T, out=scores)
        picks = _select_atoms(atoms, score_scale, scores, residual, state.indices[:, :step])
        picks = torch.where(state.is_active, picks, 0)
        _extend_fit(state, atoms.index_select(0, picks).double(), step)
        state.indices[:, step] = picks
        state.n_steps += state.is_active
        coefficients = _refit(state, step + 1)
        fitted = torch.bmm(coefficients.unsqueeze(1), state.picked[:, : step + 1]).squeeze(1)
        residual = (state.targets - fitted).float()
        residual_norm = torch.linalg.vector_norm(residual, dim=1)
        state.is_active &= residual_norm > residual_tol * target_norm
    coefficients32 = torch.zeros(n_rows, k, dtype=torch.float32, device=device)
    coefficients32[:, : coefficients.shape[1]] = coefficients.float()
    return state.indices, coefficients32, target_norm, state.n_steps


def _select_atoms(
    atoms: Tensor, score_scale: Tensor, scores: Tensor, residual: Tensor, taken: Tensor
) -> Tensor:
    """[B] int64: the not-yet-taken atom with the largest normalized |correlation|.

    ``scores`` is [B, N] ``residual @ score_atoms.T`` (overwritten), ``taken`` [B, s] int64.
    Non-negative floats order like their bit patterns read as integers, so clearing the sign
    bit and taking an integer max gives |score| order without a float abs/argmax pass (slow
    for bf16 on CPU); -1 marks taken atoms.
    """
    int_dtype = {2: torch.int16, 4: torch.int32, 8: torch.int64}[scores.element_size()]
    bits = scores.view(int_dtype).bitwise_and_(torch.iinfo(int_dtype).max)
    if taken.shape[1]:
        bits.scatter_(1, taken, -1)
    if scores.dtype in (torch.float32, torch.float64):
        return bits.argmax(dim=1)
    n_candidates = min(_N_RESCORED, bits.shape[1] - taken.shape[1])
    candidates = bits.topk(n_candidates, dim=1).indices  # [B, c], best first
    flat = candidates.reshape(-1)
    candidate_atoms = atoms.index_select(0, flat).view(*candidates.shape, -1)  # [B, c, d]
    exact = torch.bmm(candidate_atoms, residual.unsqueeze(2)).squeeze(2).abs()
    exact *= score_scale[candidates]
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
    is_usable = state.is_active & (pivot_sq > PIVOT_RTOL * atom_sq)
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


def refit_exact(atoms: Tensor, indices: Tensor, targets64: Tensor, is_active: Tensor) -> Tensor:
    """[B, k] float64 least-squares coefficients of ``targets64`` on ``atoms[indices]``.

    Each row's Gram of its picked rows is first formed in fp32 (2.5x cheaper than fp64 on
    CPU) and factored in fp64. A row whose every pivot clears ``_FP32_PIVOT_RTOL`` is solved
    from it: its atoms are far from dependent, so the fp32 rounding (~1e-6 of each entry)
    moves the coefficients by ~1e-6 relative and the residual, which is at its minimum, by
    far less. The other rows (an atom close to the span of the earlier ones) get the fp64
    Gram and the exact path's dependent-atom rule: a pivot below ``PIVOT_RTOL`` gives that
    atom coefficient 0, exactly as :func:`_extend_fit` does. Inactive rows get 0. Used by
    ``omp_screened`` once its selection is done.

    Args:
        atoms: [N, d] float32, the dictionary rows.
        indices: [B, k] int64, the picked rows, in pick order.
        targets64: [B, d] float64.
        is_active: [B] bool, rows to fit (False: zero target).
    """
    n_rows, k = indices.shape
    coefficients = torch.zeros(n_rows, k, dtype=torch.float64, device=indices.device)
    for start in range(0, n_rows, _REFIT_CHUNK_ROWS):
        part = slice(start, start + _REFIT_CHUNK_ROWS)
        ids = indices[part]
        picked = atoms.index_select(0, ids.reshape(-1)).view(*ids.shape, atoms.shape[1])
        targets = targets64[part]
        gram = torch.bmm(picked, picked.mT).double()  # [b, k, k]
        rhs = torch.bmm(picked, targets.float().unsqueeze(2)).squeeze(2).double()  # [b, k]
        solved, is_clean = _solve_clean(gram, rhs, _FP32_PIVOT_RTOL)
        rough = (~is_clean & is_active[part]).nonzero().squeeze(1)
        if rough.numel():
            solved[rough] = _refit_fp64(picked[rough].double(), targets[rough])
        coefficients[part] = torch.where(is_active[part, None], solved, 0.0)
    return coefficients


def _solve_clean(gram: Tensor, rhs: Tensor, rtol: float) -> tuple[Tensor, Tensor]:
    """Cholesky solve of ``gram @ c = rhs`` ([b, k, k], [b, k] float64) for the rows whose
    pivots all exceed ``rtol`` times their diagonal; returns (c with 0 elsewhere, [b] bool)."""
    factor, info = torch.linalg.cholesky_ex(gram)
    diagonal = gram.diagonal(dim1=1, dim2=2)
    pivot_sq = factor.diagonal(dim1=1, dim2=2).square()
    is_clean = (info == 0) & (pivot_sq > rtol * diagonal).all(dim=1)
    solved = torch.cholesky_solve(rhs.unsqueeze(2), factor).squeeze(2)
    return torch.where(is_clean[:, None], solved, 0.0), is_clean


def _refit_fp64(picked64: Tensor, targets64: Tensor) -> Tensor:
    """Least-squares coefficients from the fp64 Gram of ``picked64`` ([b, k, d]) with the
    exact path's tolerance; rows meeting a dependent atom go through :func:`_refit_dropping`."""
    gram = torch.bmm(picked64, picked64.mT)
    rhs = torch.bmm(picked64, targets64.unsqueeze(2)).squeeze(2)
    solved, is_clean = _solve_clean(gram, rhs, PIVOT_RTOL)
    dirty = (~is_clean).nonzero().squeeze(1)
    if dirty.numel():
        solved[dirty] = _refit_dropping(gram[dirty], rhs[dirty], PIVOT_RTOL)
    return solved


def _refit_dropping(gram: Tensor, rhs: Tensor, rtol: float) -> Tensor:
    """Least squares from a Gram matrix, atom by atom, giving dependent atoms coefficient 0.

    ``gram`` [b, k, k] and ``rhs`` [b, k] float64. Example: gram ``[[1, 1], [1, 1]]`` (the
    same atom twice), rhs ``[2, 2]`` -> ``[2, 0]``.
    """
    n_rows, k = rhs.shape
    chol = torch.zeros_like(gram)
    z = torch.zeros_like(rhs)
    is_kept = torch.zeros(n_rows, k, dtype=torch.bool, device=gram.device)
    for step in range(k):
        # Inner products with dropped atoms are zeroed, as _extend_fit zeroes their rows.
        column = gram[:, :step, step] * is_kept[:, :step]
        if step:
            w = torch.linalg.solve_triangular(
                chol[:, :step, :step], column.unsqueeze(2), upper=False
            ).squeeze(2)
        else:
            w = column
        pivot_sq = gram[:, step, step] - (w * w).sum(dim=1)
        is_usable = pivot_sq > rtol * gram[:, step, step]
        pivot = torch.where(is_usable, pivot_sq.clamp_min(1e-300).sqrt(), 1.0)
        w = w * is_usable[:, None]
        chol[:, step, :step] = w
        chol[:, step, step] = pivot
        value = (rhs[:, step] - (w * z[:, :step]).sum(dim=1)) / pivot
        z[:, step] = torch.where(is_usable, value, 0.0)
        is_kept[:, step] = is_usable
    return torch.linalg.solve_triangular(chol.mT, z.unsqueeze(2), upper=True).squeeze(2)
