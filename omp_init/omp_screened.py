"""Gram-screened OMP: the exact path's greedy picks, following only M candidates per target.

``omp.py`` owns the public entry point (``solve_omp``), the prepared dictionary and the choice
between paths; this module owns the screened path's arithmetic on one batch of targets and the
Gram matrix it needs (the final exact refit is ``omp_exact.refit_exact``). Tensors in, tensors
out; no I/O, no ranks.

Why: the exact path scores the residual against all N atoms at every step, 2*T*N*d*k FLOPs in
all (5e14 for the SmolLM2 <- Qwen2.5-Coder pair: T=112,697, N=39,234, d=896, k=64). With the
unit atoms' Gram matrix G precomputed (N^2*d FLOPs once per dictionary), Batch-OMP
(Rubinstein, Zibulevsky & Elad 2008) updates the scores of any set of atoms in O(t) per atom
and step, without touching d. We follow M candidate atoms per target and refresh them at a
few *screen* steps:

1. at a screen step (:func:`is_screen_step`: 0, 2, 8, then every 16th; every 8th for large
   dictionaries) the residual is scored
   against all atoms, by one GEMM; on CPU the early screens (t <= 8 atoms picked) take the
   scores from the Gram matrix instead, ``U r = U x - G[:, I] c`` (t gathered Gram rows per
   target instead of N*d multiply-adds). This step's atom is picked from those scores (the
   best 4 candidates re-scored in fp32, as the exact path does), and up to R of the M
   candidates are replaced by better atoms not yet followed;
2. between screens a step costs O(t*M): the candidates' scores lose ``z_t * V[t]``, with
   ``V[t] = unit candidates . q_t`` (q_t the new Gram-Schmidt direction) built from one
   gathered Gram row, ``G[atom, C]``;
3. the fit inside the selection is the Cholesky factor of ``G[I, I]`` in fp64, one row per
   step; once all k atoms are picked, the coefficients are refit on the picked fp32 rows
   (``omp_exact.refit_exact``: their Gram in fp32 where every pivot is clean, else in fp64
   with the exact path's rule for dependent atoms), so the residual is the least-squares
   optimum on the chosen support.

Without the Gram (a dictionary whose [N, N] Gram does not fit in memory: N=95,968 shared
tokens need 18 GB in bf16) the same steps compute the inner products they need from the rows
(:class:`_AtomProducts`): each target keeps its candidates' rows and their own Gram block
``G[C, C]`` ([M, M]), updated at a screen for the replaced slots (R*M*d multiply-adds), so a
step reads ``G[atom, C]`` as a row of that block (the atom a step picks is always a
candidate); the replaced slots' ``G[I, C']`` is a small batched product, and every screen is a
GEMM. On the Qwen2.5 <- Gemma 3 rows (N=95,968, d=640), 2 threads: 3.9 ms per target with
the large-dictionary schedule below, against 15.1 ms for the exact path (one thread, old
schedule: 4.9 ms, against 7.4 ms when each step took M*d products against the candidates'
rows; docs/performance.md).

Early residuals change fast (the first atoms remove the rows' common offset), so screens are
dense early and regular late. With the default schedule and M the mean relative residual on the
real Qwen2.5 / SmolLM2 embedding rows is within 0.7% of the exact fp32 path's
(``scripts/bench_omp.py``; the schedules tried are in ``docs/performance.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .omp_exact import refit_exact

# Screens run at the early steps and then at every multiple of the interval (see
# is_screen_step): 0, 2, 8, 16, 32, 48 of k=64. On the real rows at N=39,234
# (docs/performance.md) the mean residual is then 0.4-0.6% above the exact path's (M=192);
# screening every 24 steps instead of 16 costs 0.25-0.7% more, (0, 4, 12, 32) 1-2%; screening
# at 1 and 4 too buys < 0.1%. Those are raw rows; on the centered rows a transplant solves it is
# 0.4-2.1% above exact, and screening every 8 steps (0.06-0.36%) left bits per byte no lower
# (docs/performance.md, "Centered rows").
_SCREEN_SCHEDULE = ((0, 2, 8), 16)
# A larger dictionary offers more atoms that overtake the followed ones between screens: on the
# real Qwen2.5 <- Gemma 3 rows (N=95,968, d=640) the schedule above ends 2.7% above the exact
# mean residual, M=384 1.4%, screens every 8 steps 0.3% (M=192: 2.4 -> 3.8 ms per target on 2
# threads). Dictionaries above this many atoms screen every 8 steps.
_LARGE_DICTIONARY_ATOMS = 65_536
_LARGE_SCREEN_SCHEDULE = ((0, 2, 4, 8), 8)
# Candidates followed per target between screens (M), and how many a later screen may replace
# (the rest keep their slots and V columns, so only replaced slots cost Gram gathers). On the
# real Qwen2.5 <- SmolLM2 rows (docs/performance.md): M=512/R=256 ends 0.15% above the exact
# mean residual, M=384/R=256 0.16%, M=256/R=160 0.4%, M=192/R=128 0.6-0.7% at 5-6% less time
# than 256/160 (7% on the SmolLM2 <- Qwen2.5 rows, 0.32% -> 0.39%); the steps between screens
# cost O(t*M) and are bound by memory traffic.
_N_CANDIDATES = 192
_N_REPLACED = 128
# The candidates are the best atom of each of the best groups of this many atoms: a max over
# groups plus a top-M over N/16 groups is far cheaper than a top-M over N atoms on CPU (torch's
# top-k costs ~6 ns per element here, the max ~0.1). On the real Qwen2.5 <- SmolLM2 rows,
# groups of 16 against 8: 4% less time per target, mean residual +0.01%; 32: +0.13%, no faster.
_GROUP_SIZE = 16
# Atoms re-scored exactly at a screen step (the exact path's rescoring, see omp_exact._N_RESCORED).
_N_RESCORED = 4
# Inside the selection, an atom whose squared distance to the span of the picked atoms is below
# this fraction of its squared norm gets coefficient 0: a bf16 Gram is accurate to ~2^-9, so
# smaller pivots are noise. The final refit applies the exact path's tolerance instead.
_SELECT_PIVOT_RTOL = {torch.float32: 1e-6, torch.float64: 1e-10}
_SELECT_PIVOT_RTOL_REDUCED = 1e-2
# Largest float32 temporary a per-row computation allocates at once: on CPU, blocks above
# glibc's mmap threshold (32 MiB at most) come back as fresh pages, and faulting them in cost
# as much as the arithmetic (1.2 of 5.7 ms per token at d=896, k=64, B=1024).
_TEMPORARY_BYTES = 16 << 20
# On CPU, screens at steps up to this one score through the Gram matrix (see the module
# docstring): for 427 targets at N=39,234 on one thread, 11 ms at t=2 and 42 ms at t=8 against
# 66 ms (d=576) and 96 ms (d=896) for the GEMM; at t=16 the two are even. With 2 threads on the
# real rows (docs/performance.md): 2% less time at d=576, 9% at d=896, mean residual no higher.
# On GPU the GEMM is far cheaper relative to gathers: every screen stays a GEMM (not measured).
_GRAM_SCREEN_MAX_STEP = 8
# Gathered Gram rows per block of such a screen: a few MB, so the buffer stays in cache.
_GRAM_SCREEN_BLOCK_BYTES = 4 << 20
# Rows of the Gram matrix computed per GEMM; fixed, so the Gram depends on nothing but the
# dictionary (its bits are the same in every process that builds it).
_GRAM_BLOCK_ROWS = 2048


def is_screen_step(step: int, n_atoms: int = 0) -> bool:
    """Whether ``step`` (0-based) scores all ``n_atoms`` atoms. Example: 0, 2, 8, 16, 32, 48
    of 64; with over 65,536 atoms 0, 2, 4, 8, 16, 24, 32, 40, 48, 56."""
    early, interval = (
        _LARGE_SCREEN_SCHEDULE if n_atoms > _LARGE_DICTIONARY_ATOMS else _SCREEN_SCHEDULE
    )
    return step in early or step % interval == 0


def gram_nbytes(n_atoms: int, dtype: torch.dtype) -> int:
    """Bytes of an [N, N] Gram matrix in ``dtype``. Example: 39,234 atoms, bf16 -> 3.08e9."""
    return n_atoms * n_atoms * torch.empty((), dtype=dtype).element_size()


def build_gram(score_atoms: Tensor) -> Tensor:
    """[N, N] Gram matrix ``score_atoms @ score_atoms.T`` in ``score_atoms.dtype``, symmetric.

    Computed block row by block row, lower triangle only (half the FLOPs of a full product),
    then mirrored, so ``G[i, j]`` and ``G[j, i]`` are the same number.
    Example: rows ``[[1, 0], [1, 1]]`` -> ``[[1, 1], [1, 2]]``.
    """
    n_atoms = score_atoms.shape[0]
    gram = torch.empty(n_atoms, n_atoms, dtype=score_atoms.dtype, device=score_atoms.device)
    for start in range(0, n_atoms, _GRAM_BLOCK_ROWS):
        stop = min(start + _GRAM_BLOCK_ROWS, n_atoms)
        torch.mm(score_atoms[start:stop], score_atoms[:stop].T, out=gram[start:stop, :stop])
        # Mirrored in square tiles: a transposed copy of a whole block row thrashes the cache
        # (1.8 s against 1.35 s at N=39k on one CPU core).
        for column in range(0, start, _GRAM_BLOCK_ROWS // 4):
            end = min(column + _GRAM_BLOCK_ROWS // 4, start)
            gram[column:end, start:stop] = gram[start:stop, column:end].T
    return gram


def n_screens(k: int, n_atoms: int = 0) -> int:
    """Screen steps (full GEMMs) a k-step solve over ``n_atoms`` atoms runs. Example:
    ``n_screens(64)`` -> 6; ``n_screens(64, 95_968)`` -> 10."""
    return sum(1 for step in range(k) if is_screen_step(step, n_atoms))


@dataclass
class _Selection:
    """Per-batch state of the screened selection; B rows, k slots, M candidates.

    ``q_j`` below is the j-th orthonormal direction of Gram-Schmidt on the picked unit atoms,
    never formed: only its inner products are kept.
    """

    indices: Tensor  # [B, k] int64, atoms picked so far
    chol: Tensor  # [B, k, k] float64, Cholesky factor L of G[I, I]; row j = (q_i . a_j)_i
    chol_rhs: Tensor  # [B, k] float64, z_j = q_j . target (0 for a dependent atom)
    is_usable: Tensor  # [B, k] bool, picked atom not (numerically) in the earlier ones' span
    candidates: Tensor  # [B, M] int64, atom ids
    is_taken: Tensor  # [B, M] bool, candidate already picked
    scores: Tensor  # [B, M] float32, candidates' scores against the current residual
    basis_scores: Tensor  # [B, k, M] float32, V[j] = unit candidates . q_j
    flat_index: Tensor  # [B, M] int64 scratch: positions in the flattened Gram
    gathered: Tensor  # [B, M] score dtype scratch
    candidate_rows: Tensor | None  # [B, M, d] score dtype, the candidates' unit rows (no Gram)
    candidate_gram: Tensor | None  # [B, M, M] score dtype, G[C, C] (no Gram)


class _AtomProducts:
    """Inner products of unit atoms, ``G[i, j] = score_atoms[i] . score_atoms[j]``, as the
    selection needs them: read from the precomputed Gram matrix, or, when there is none,
    computed from the rows on the spot (module docstring). Both give score-dtype numbers."""

    def __init__(self, score_atoms: Tensor, gram: Tensor | None) -> None:
        self.score_atoms = score_atoms  # [N, d] score dtype
        self.gram = gram  # [N, N] score dtype, or None

    def diagonal(self, atom: Tensor) -> Tensor:
        """[B] float64 ``G[atom, atom]``."""
        if self.gram is not None:
            return self.gram[atom, atom].double()
        rows = self.score_atoms[atom]  # [B, d]
        return torch.linalg.vecdot(rows, rows).double()

    def follow(self, state: _Selection, slots: Tensor | None, atoms: Tensor) -> None:
        """Record that candidate ``slots`` ([B, R], None: all M) now hold ``atoms`` ([B, R]).

        Without a Gram this keeps the candidates' rows and their Gram block ``G[C, C]``: every
        atom a step picks is a candidate, so its products with the candidates are then a row of
        that block (R*M*d multiply-adds per row of the batch at a screen, instead of M*d at
        every step).
        """
        if state.candidate_rows is None:
            return
        rows = self.score_atoms.index_select(0, atoms.reshape(-1)).view(*atoms.shape, -1)
        if slots is None:
            state.candidate_rows.copy_(rows)
            torch.bmm(rows, rows.mT, out=state.candidate_gram)
            return
        # index_put_: 10x faster than a scatter_ with the index expanded over d
        batch_rows = torch.arange(slots.shape[0], device=slots.device).unsqueeze(1)
        where = (batch_rows.expand_as(slots), slots)
        state.candidate_rows.index_put_(where, rows)
        block = torch.bmm(rows, state.candidate_rows.mT)  # [B, R, M]: G[new, C]
        state.candidate_gram.index_put_(where, block)
        state.candidate_gram.transpose(1, 2).index_put_(where, block)  # and G[C, new]

    def at_candidates(self, atom: Tensor, position: Tensor, state: _Selection) -> None:
        """``state.gathered[b] = G[atom[b], candidates[b]]`` ([B, M]); ``atom`` is the
        candidate at ``position`` ([B])."""
        if self.gram is not None:
            flat_index, n_atoms = state.flat_index, self.gram.shape[0]
            torch.add(state.candidates, (atom * n_atoms).unsqueeze(1), out=flat_index)
            torch.index_select(
                self.gram.view(-1), 0, flat_index.view(-1), out=state.gathered.view(-1)
            )
            return
        batch_rows = torch.arange(atom.shape[0], device=atom.device)
        state.gathered.copy_(state.candidate_gram[batch_rows, position])

    def between(self, picked: Tensor, atoms: Tensor) -> Tensor:
        """[b, t, R] float32 ``G[picked[:, j], atoms]`` for ``picked`` [b, t], ``atoms`` [b, R]."""
        if self.gram is None:
            dim = self.score_atoms.shape[1]
            left = self.score_atoms.index_select(0, picked.reshape(-1)).view(*picked.shape, dim)
            right = self.score_atoms.index_select(0, atoms.reshape(-1)).view(*atoms.shape, dim)
            return torch.bmm(left, right.mT).float()
        n_atoms = self.gram.shape[0]
        out = torch.empty(*atoms.shape[:1], picked.shape[1], atoms.shape[1], device=atoms.device)
        for j in range(picked.shape[1]):
            flat = atoms + (picked[:, j] * n_atoms).unsqueeze(1)
            out[:, j] = self.gram.view(-1).index_select(0, flat.view(-1)).view(atoms.shape)
        return out


def solve_batch_screened(
    atoms: Tensor,
    score_atoms: Tensor,
    score_scale: Tensor,
    gram: Tensor | None,
    targets: Tensor,
    k: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Screened OMP on one batch: pick k atoms per row, then refit exactly.

    Between screens a step costs O(t*M): with ``q_t`` the new orthonormal direction and
    ``z_t = q_t . target``, the residual loses ``z_t * q_t``, so the candidates' scores lose
    ``z_t * V[t]``, and ``V[t] = (G[atom, C] - w @ V[:t]) / pivot`` where ``w``, the new row
    of L, is read off ``V[:t]`` at the new atom's position (Batch-OMP's update, Rubinstein
    et al. 2008, in the candidates' coordinates).

    Args:
        atoms: [N, d] float32, the dictionary rows.
        score_atoms: [N, d] score dtype, the rows times ``score_scale``.
        score_scale: [N] float32, 1/norm (1 when atoms are not normalized, 0 for zero rows).
        gram: [N, N] score dtype, ``build_gram(score_atoms)``; None computes the inner
            products from ``score_atoms`` when needed (for dictionaries whose Gram does not
            fit in memory).
        targets: [B, d] float32 on the atoms' device.
        k: atoms per target, k <= N.

    Returns:
        indices [B, k] int64 (0 for zero targets), coefficients [B, k] float64 (exact
        least-squares fit of the targets on ``atoms[indices]``), is_active [B] bool (nonzero
        target).
    """
    n_rows, n_atoms = targets.shape[0], atoms.shape[0]
    device = targets.device
    is_active = torch.linalg.vector_norm(targets, dim=1) > 0
    products = _AtomProducts(score_atoms, gram)
    n_candidates = min(_N_CANDIDATES, n_atoms)
    row_width = None if gram is not None else score_atoms.shape[1]
    state = _new_selection(n_rows, k, n_candidates, score_atoms.dtype, device, row_width)
    full_scores = torch.empty(n_rows, n_atoms, dtype=score_atoms.dtype, device=device)
    keys = torch.empty_like(full_scores).view(_int_dtype(full_scores))  # see _top_groups
    targets64 = targets.double()
    rtol = _SELECT_PIVOT_RTOL.get(score_atoms.dtype, _SELECT_PIVOT_RTOL_REDUCED)
    rows = torch.arange(n_rows, device=device)
    # U x, kept from step 0 for the screens that score through the Gram.
    has_gram_screens = gram is not None and _has_gram_screens(k, device, n_atoms)
    initial_scores = torch.empty_like(full_scores) if has_gram_screens else None
    for step in range(k):
        if is_screen_step(step, n_atoms):
            residual, coef = _selection_residual(atoms, score_scale, targets, state, step)
            if initial_scores is not None and 0 < step <= _GRAM_SCREEN_MAX_STEP:
                picked = state.indices[:, :step]
                _scores_through_gram(gram, initial_scores, picked, coef, full_scores)
            else:
                torch.mm(residual.to(full_scores.dtype), score_atoms.T, out=full_scores)  # [B, N]
                if step == 0 and initial_scores is not None:
                    initial_scores.copy_(full_scores)
            best = _screen(products, full_scores, keys, state, step)  # [B, r] positions
            position = _rescore(atoms, score_scale, residual, state, best)
        else:
            scores = state.scores.abs().masked_fill_(state.is_taken, -1.0)
            position = scores.argmax(dim=1)
        atom = state.candidates[rows, position]  # [B]
        state.is_taken[rows, position] = True
        state.indices[:, step] = atom
        w = state.basis_scores[rows, :step, position].double()  # [B, step], q_j . atom
        # fp32 is plenty inside the selection (its Gram is bf16); the final refit is fp64.
        projection = torch.linalg.vecdot(atoms[atom], targets).double() * score_scale[atom]
        diagonal = products.diagonal(atom)
        is_usable = _extend_factor(state, w, diagonal, projection, step, is_active, rtol)
        products.at_candidates(atom, position, state)  # G[atom, C] into state.gathered
        _extend_basis_scores(state, w, is_usable, step)
    indices = torch.where(is_active[:, None], state.indices, 0)
    return indices, refit_exact(atoms, indices, targets64, is_active), is_active


def _new_selection(
    n_rows: int,
    k: int,
    n_candidates: int,
    score_dtype: torch.dtype,
    device: torch.device,
    row_width: int | None = None,
) -> _Selection:
    # Buffers are allocated once per batch and written in place: on CPU a fresh multi-MB
    # tensor per step costs page faults comparable to the step's arithmetic. Only the fit's
    # state needs zeros; the candidate buffers are always written before they are read.
    def zeros(*shape, dtype=torch.float64):
        return torch.zeros(*shape, dtype=dtype, device=device)

    def empty(*shape, dtype):
        return torch.empty(*shape, dtype=dtype, device=device)

    return _Selection(
        indices=zeros(n_rows, k, dtype=torch.long),
        chol=zeros(n_rows, k, k),
        chol_rhs=zeros(n_rows, k),
        is_usable=zeros(n_rows, k, dtype=torch.bool),
        candidates=empty(n_rows, n_candidates, dtype=torch.long),
        is_taken=empty(n_rows, n_candidates, dtype=torch.bool),
        scores=empty(n_rows, n_candidates, dtype=torch.float32),
        basis_scores=empty(n_rows, k, n_candidates, dtype=torch.float32),
        flat_index=empty(n_rows, n_candidates, dtype=torch.long),
        gathered=empty(n_rows, n_candidates, dtype=score_dtype),
        candidate_rows=(
            None if row_width is None else empty(n_rows, n_candidates, row_width, dtype=score_dtype)
        ),
        candidate_gram=(
            None if row_width is None else empty(n_rows, n_candidates, n_candidates, dtype=score_dtype)
        ),
    )


def _has_gram_screens(k: int, device: torch.device, n_atoms: int = 0) -> bool:
    """Whether a k-step solve on ``device`` runs a screen through the Gram (see
    ``_GRAM_SCREEN_MAX_STEP``). Example: k=64 on CPU -> True (steps 2 and 8); on CUDA -> False."""
    last = min(k - 1, _GRAM_SCREEN_MAX_STEP)
    return device.type == "cpu" and any(
        is_screen_step(step, n_atoms) for step in range(1, last + 1)
    )


def _int_dtype(tensor: Tensor) -> torch.dtype:
    return {2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]


def _selection_residual(
    atoms: Tensor, score_scale: Tensor, targets: Tensor, state: _Selection, step: int
) -> tuple[Tensor, Tensor | None]:
    """The selection's residual and fit: [B, d] float32 ``target - x @ unit_atoms[I]`` and
    x, [B, step] float64, the least-squares coefficients of the unit atoms (None at step 0)."""
    if step == 0:
        return targets, None
    factor = state.chol[:, :step, :step]
    rhs = state.chol_rhs[:, :step].unsqueeze(2)
    coef = torch.linalg.solve_triangular(factor.mT, rhs, upper=True).squeeze(2)  # [B, step]
    picked = state.indices[:, :step]
    weights = (coef * score_scale[picked]).float()  # [B, step], raw-atom units
    residual = torch.empty_like(targets)
    for part in _row_chunks(targets.shape[0], step * targets.shape[1], targets.device):
        ids = picked[part]
        rows = atoms.index_select(0, ids.reshape(-1)).view(*ids.shape, targets.shape[1])
        fitted = torch.bmm(weights[part].unsqueeze(1), rows).squeeze(1)  # rows: [b, step, d]
        torch.sub(targets[part], fitted, out=residual[part])
    return residual, coef


def _scores_through_gram(
    gram: Tensor, initial_scores: Tensor, picked: Tensor, coef: Tensor, out: Tensor
) -> None:
    """``out = initial_scores - coef @ G[picked, :]``: the residual's scores ``U r`` from
    ``U x`` ([B, N]), one gathered Gram row per row and picked atom.

    G is symmetric, so ``G[:, I]`` is read as rows (contiguous). The rows are gathered a block
    of rows at a time into one small buffer that stays in cache and in the heap: gathering
    each term into a fresh [B, N] tensor faulted its pages in every time, which made the
    gather 3x slower than the arithmetic. Each term is accumulated in the scores' dtype, like
    the GEMM's output it replaces; on the real rows the picks are as good
    (docs/performance.md).
    """
    n_rows, n_atoms = out.shape
    weights = coef.to(out.dtype)
    block_rows = max(1, _GRAM_SCREEN_BLOCK_BYTES // (n_atoms * out.element_size()))
    buffer = torch.empty(min(block_rows, n_rows), n_atoms, dtype=out.dtype, device=out.device)
    for start in range(0, n_rows, block_rows):
        part = slice(start, min(start + block_rows, n_rows))
        block, gathered = out[part], buffer[: part.stop - part.start]
        for j in range(picked.shape[1]):
            torch.index_select(gram, 0, picked[part, j], out=gathered)  # G[I_j, :]
            source = initial_scores[part] if j == 0 else block
            torch.addcmul(source, gathered, weights[part, j : j + 1], value=-1.0, out=block)


def _row_chunks(n_rows: int, floats_per_row: int, device: torch.device) -> list[slice]:
    """Row ranges whose [rows, floats_per_row] float32 temporaries stay under
    ``_TEMPORARY_BYTES`` on CPU (one range elsewhere: GPU allocators cache blocks).
    Example: 1024 rows of 48 x 896 floats on CPU -> 11 ranges of up to 97 rows."""
    if device.type != "cpu":
        return [slice(0, n_rows)]
    size = max(1, _TEMPORARY_BYTES // (4 * max(1, floats_per_row)))
    return [slice(start, start + size) for start in range(0, n_rows, size)]


def _screen(
    products: _AtomProducts, scores: Tensor, keys: Tensor, state: _Selection, step: int
) -> Tensor:
    """Refresh the candidates from ``scores`` ([B, N], the residual against every atom).

    At step 0 the candidates are the best M atoms (:func:`_top_groups`); later screens replace
    some (:func:`_replace_candidates`). Every candidate's score is reset from ``scores``.
    Returns [B, r] int64, the positions of the r best candidates (for :func:`_rescore`).
    """
    n_candidates = state.candidates.shape[1]
    if step == 0:
        candidates, candidate_keys = _top_groups(scores, keys, state.indices[:, :0], n_candidates)
        state.candidates.copy_(candidates)
        state.is_taken.copy_(candidate_keys < 0)
        products.follow(state, None, candidates)
    else:
        _replace_candidates(products, scores, keys, state, step)
    torch.gather(scores, 1, state.candidates, out=state.gathered)
    state.scores.copy_(state.gathered)
    magnitude = state.scores.abs().masked_fill_(state.is_taken, -1.0)
    return magnitude.topk(min(_N_RESCORED, n_candidates), dim=1).indices


def _replace_candidates(
    products: _AtomProducts, scores: Tensor, keys: Tensor, state: _Selection, step: int
) -> None:
    """Swap up to ``_N_REPLACED`` candidates per row for better atoms not yet followed.

    The weakest candidates by the new scores give way to the best newcomers where those score
    higher; the others keep their slots and ``V`` columns, so only the replaced slots need
    ``V[:t] = L^-1 G[I, C]`` (t Gram gathers each). Keeping half the candidates is also better
    than a fresh top-M: on the real rows, replacing all M raises the mean residual by 1-2%,
    as atoms that scored well a few steps ago often score well again.
    """
    n_rows, n_candidates = state.candidates.shape
    n_replaced = min(_N_REPLACED, n_candidates, scores.shape[1] - n_candidates)
    if n_replaced <= 0:
        return
    followed = torch.cat([state.indices[:, :step], state.candidates], dim=1)
    newcomers, newcomer_keys = _top_groups(scores, keys, followed, n_replaced)
    newcomer_keys, order = newcomer_keys.sort(dim=1, descending=True)  # best first
    newcomers = newcomers.gather(1, order)
    torch.gather(scores, 1, state.candidates, out=state.gathered)
    magnitude = state.gathered.float().abs_().masked_fill_(state.is_taken, -1.0)
    weakest = magnitude.topk(n_replaced, dim=1, largest=False, sorted=True)  # weakest first
    # Newcomers best-first against incumbents weakest-first: the replaced pairs are a prefix.
    is_replaced = _key_magnitude(newcomer_keys, scores.dtype) > weakest.values  # [B, R]
    slots = weakest.indices
    atoms = torch.where(is_replaced, newcomers, state.candidates.gather(1, slots))
    state.candidates.scatter_(1, slots, atoms)
    state.is_taken.scatter_(1, slots, state.is_taken.gather(1, slots) & ~is_replaced)
    products.follow(state, slots, atoms)
    # Without a Gram the products gather t + R rows of d numbers per row of the batch.
    gathered = 0 if products.gram is not None else (step + n_replaced) * products.score_atoms.shape[1]
    for part in _row_chunks(n_rows, step * n_replaced + gathered, scores.device):
        _rebuild_basis_scores(products, state, atoms[part], slots[part], part, step)


def _rebuild_basis_scores(
    products: _AtomProducts,
    state: _Selection,
    atoms: Tensor,
    slots: Tensor,
    part: slice,
    step: int,
) -> None:
    """``V[:t, slots] = L^-1 G[I, atoms]`` for rows ``part``; ``atoms``/``slots`` [b, R]."""
    basis = products.between(state.indices[part, :step], atoms)  # [b, t, R] float32
    basis.mul_(state.is_usable[part, :step, None])  # a dependent atom adds no direction
    # L^-1 once ([b, t, t], small) then a product: on CPU a batched triangular solve with
    # R right-hand sides is several times slower than the equivalent bmm.
    factor = state.chol[part, :step, :step]
    identity = torch.eye(step, dtype=factor.dtype, device=factor.device).expand_as(factor)
    inverse = torch.linalg.solve_triangular(factor, identity, upper=False).float()
    basis = torch.bmm(inverse, basis)  # [b, t, R], V of the replaced slots
    target = state.basis_scores[part, :step]
    target.scatter_(2, slots.unsqueeze(1).expand_as(basis), basis)


def _key_magnitude(keys: Tensor, score_dtype: torch.dtype) -> Tensor:
    """float32 |score| from ``_top_groups`` keys (low bits aside); -1 for taken (key < 0)."""
    magnitude = keys.clamp_min(0).view(score_dtype).float()
    return magnitude.masked_fill_(keys < 0, -1.0)


def _top_groups(
    scores: Tensor, keys: Tensor, taken: Tensor, n_candidates: int, best_first: bool = False
) -> tuple[Tensor, Tensor]:
    """The best untaken atom of each of the M best groups of ``_GROUP_SIZE`` atoms.

    Group j holds atoms ``j, j + S, j + 2S, ...`` (S = ceil(N / g)), so its maximum is an
    elementwise maximum of g contiguous [B, S] slices (3x faster than a max over a trailing
    dimension of 8 on CPU). ``keys`` ([B, N], the integer dtype of the scores' width)
    receives |score| as an integer (the float's bits without the sign, which order like the
    value) with its lowest bits replaced by the atom's slice, so the maximum gives both the
    group's best magnitude and which atom holds it. Magnitudes compare to within those
    log2(g) low bits (4 bits, 2^-3 relative in bf16, for g = 16): fine for choosing
    candidates; the pick at a screen is re-scored exactly (:func:`_rescore`). With fewer atoms
    than ``4 * g * M`` every atom is its own group (a plain top-M). Taken atoms get key -1,
    and so does a group (not a plain top-M) whose atoms all score exactly 0.
    Example, groups of 2 over 16 atoms (S=8), M=2, scores ``[5, -1, 2, -3, -9, 0, 0, ...]``:
    groups' best atoms ``0, 1, 2, 3, 4, ...`` -> candidates ``{0, 4}``.

    Returns:
        candidates [B, M] int64 atom ids, and their keys [B, M] (negative: taken).
    """
    n_atoms = scores.shape[1]
    group = _GROUP_SIZE if n_atoms >= 4 * _GROUP_SIZE * n_candidates else 1
    low_bits = group - 1
    magnitude_mask = torch.iinfo(keys.dtype).max & ~low_bits
    bits = scores.view(keys.dtype)
    if group == 1:
        torch.bitwise_and(bits, magnitude_mask, out=keys)
        if taken.shape[1]:
            keys.scatter_(1, taken, -1)
        best = keys.topk(n_candidates, dim=1, sorted=best_first)
        return best.indices, best.values
    # One pass over the [B, N] scores, a slice at a time: each slice's keys are built in a
    # cache-sized buffer and folded into the running maximum at once (building all N keys
    # first, then reducing, moved five times the bytes). Keys are stored less one group
    # quantum (|score| bits - g + slice), so an atom scored exactly 0 has a negative key and
    # a group with no nonzero score offers no candidate; taken atoms are zeroed in the scores
    # for the pass and put back after. The g is added back to the M keys returned.
    if taken.shape[1]:  # through the integer view: a bf16 scatter_ converts the whole tensor
        taken_bits = bits.gather(1, taken)
        bits.scatter_(1, taken, 0)
    span = -(-n_atoms // group)  # S, the number of groups
    group_keys = torch.bitwise_and(bits[:, :span], magnitude_mask).sub_(group)  # [B, S], slice 0
    slice_keys = keys.view(-1)[: keys.shape[0] * span].view(keys.shape[0], span)  # scratch
    for place, start in enumerate(range(span, n_atoms, span), start=1):
        width = min(span, n_atoms - start)
        part = slice_keys[:, :width]
        torch.bitwise_and(bits[:, start : start + width], magnitude_mask, out=part)
        part.add_(place - group)
        torch.maximum(group_keys[:, :width], part, out=group_keys[:, :width])
    if taken.shape[1]:
        bits.scatter_(1, taken, taken_bits)
    best = group_keys.topk(n_candidates, dim=1, sorted=best_first)
    place = best.values.bitwise_and(low_bits).long()
    # A group without a candidate names no atom; clamp keeps its index valid, is_taken masks it.
    candidates = (best.indices + place * span).clamp_(max=n_atoms - 1)
    return candidates, torch.where(best.values >= 0, best.values + group, -1)


def _rescore(
    atoms: Tensor, score_scale: Tensor, residual: Tensor, state: _Selection, best: Tensor
) -> Tensor:
    """[B] int64: the position among ``best`` ([B, r]) with the largest exact fp32 |score|."""
    ids = state.candidates.gather(1, best)  # [B, r]
    rows = atoms.index_select(0, ids.reshape(-1)).view(*ids.shape, atoms.shape[1])  # [B, r, d]
    exact = torch.bmm(rows, residual.unsqueeze(2)).squeeze(2).abs() * score_scale[ids]
    exact.masked_fill_(state.is_taken.gather(1, best), -1.0)
    return best.gather(1, exact.argmax(dim=1, keepdim=True)).squeeze(1)


def _extend_factor(
    state: _Selection,
    w: Tensor,
    diagonal: Tensor,
    projection: Tensor,
    step: int,
    is_active: Tensor,
    rtol: float,
) -> Tensor:
    """Append row ``[w, pivot]`` to L and ``z_step`` to z; returns [B] bool, atom usable.

    ``w`` [B, step] = q_j . atom, ``diagonal`` [B] = G[atom, atom], ``projection`` [B] =
    unit atom . target, all float64. An atom with ``pivot^2 <= rtol * diagonal`` (inside
    the span of the earlier ones, to the Gram's precision), or any atom of an inactive row,
    gets row ``[0, 1]`` and z = 0, as in ``omp_exact._extend_fit``.
    """
    pivot_sq = diagonal - (w * w).sum(dim=1)
    is_usable = is_active & (pivot_sq > rtol * diagonal)
    pivot = torch.where(is_usable, pivot_sq.clamp_min(1e-300).sqrt(), 1.0)
    w = w * is_usable[:, None]
    state.chol[:, step, :step] = w
    state.chol[:, step, step] = pivot
    rhs = (projection - (w * state.chol_rhs[:, :step]).sum(dim=1)) / pivot
    state.chol_rhs[:, step] = torch.where(is_usable, rhs, 0.0)
    state.is_usable[:, step] = is_usable
    return is_usable


def _extend_basis_scores(state: _Selection, w: Tensor, is_usable: Tensor, step: int) -> None:
    """Add ``V[step] = (G[atom, C] - w @ V[:step]) / pivot`` and take ``z * V[step]`` off the
    candidates' scores. ``state.gathered`` holds ``G[atom, C]``; unusable atoms get V = 0."""
    new = state.basis_scores[:, step]  # [B, M]
    if step:
        weights = (w * is_usable[:, None]).float().unsqueeze(1)  # [B, 1, step]
        gram_row = state.gathered.float().unsqueeze(1)  # [B, 1, M]
        # Out of place: an in-place baddbmm_ on this strided view runs one addmm per row.
        new.copy_(torch.baddbmm(gram_row, weights, state.basis_scores[:, :step], alpha=-1.0)[:, 0])
    else:
        new.copy_(state.gathered)
    scale = torch.where(is_usable, 1.0 / state.chol[:, step, step], 0.0).float()
    new.mul_(scale[:, None])
    state.scores.addcmul_(new, state.chol_rhs[:, step, None].float(), value=-1.0)
