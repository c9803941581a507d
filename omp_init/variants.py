"""Experimental ways to build new rows, measured in docs/quality.md before any joins the core.

Everything here works on :class:`~omp_init.baselines.RowRecipe` objects and tensors, so a
variant that wins folds into ``transplant._plan_rows`` as a few lines (docs/quality.md gives
the patch). Nothing here loads files; ``scripts/bench_quality.py`` drives these functions.

Variants:

- (``blend_recipes``, measured here first, is now ``baselines.blend_recipes``: the default
  ``omp+fvt`` method is built on it.)
- :func:`prior_targets` + :func:`prior_omp_recipe`: OMP explains only what a prior misses.
  The prior of a new token is its FVT row (mean of the rows of the pieces the base tokenizer
  cuts it into), available in *both* spaces when every piece is a shared token; OMP then runs
  on ``donor_target - donor_prior`` over centered dictionary rows, and the base row is
  ``base_prior + sum_j c_j (base_j - mu_base)``. Tokens whose pieces are not all shared keep
  the usual prior ``mu`` (plain centered OMP), so the result is never worse-defined than it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .baselines import RowRecipe
from .omp import OmpResult


def prior_targets(
    pieces: list[list[int]], dict_base_ids: Tensor, dict_donor_ids: Tensor, donor_matrix: Tensor
) -> tuple[Tensor, Tensor]:
    """Donor-space FVT prior of every new token whose base pieces are all shared tokens.

    Args:
        pieces: per new token, the base ids the base tokenizer splits it into.
        dict_base_ids / dict_donor_ids: [N] int64, the shared tokens' ids in each space.
        donor_matrix: [V_donor, d_donor] the donor matrix OMP runs in.

    Returns:
        ``(has_prior [T] bool, prior [T, d_donor] float32)``; rows without a prior are zero.

    Example: pieces ``[[17, 40], [99]]`` where 17, 40 are shared and 99 is not ->
    has_prior ``[True, False]``, prior row 0 = mean of the donor rows of 17 and 40.
    """
    donor_of_base = {
        int(b): int(d) for b, d in zip(dict_base_ids.tolist(), dict_donor_ids.tolist(), strict=True)
    }
    has_prior = torch.tensor([bool(ids) and all(i in donor_of_base for i in ids) for ids in pieces])
    prior = torch.zeros(len(pieces), donor_matrix.shape[1])
    for row, ids in enumerate(pieces):
        if has_prior[row]:
            prior[row] = donor_matrix[[donor_of_base[i] for i in ids]].float().mean(0)
    return has_prior, prior


def prior_omp_recipe(
    result: OmpResult,
    dict_base_ids: Tensor,
    pieces: list[list[int]],
    has_prior: Tensor,
    *,
    method: str,
) -> RowRecipe:
    """Base rows ``prior + sum_j c_j (M[b_j] - mu)`` from an OMP solved on ``target - prior``.

    ``prior`` is the FVT row where ``has_prior`` (else ``mu``, which makes the row plain centered
    OMP); ``mu`` is the mean over the dictionary's base rows. As a recipe: the pieces with weight
    ``1/len`` (where has_prior), the atoms with their coefficients, and
    ``mean_weight = [not has_prior] - sum_j c_j``.
    """
    mapping = dict_base_ids.cpu().long()
    atom_ids = mapping[result.indices.cpu()]  # [T, k]
    coefficients = result.coefficients.cpu().float()  # [T, k]
    width = max(
        (len(ids) for ids, ok in zip(pieces, has_prior.tolist(), strict=True) if ok), default=0
    )
    piece_ids = torch.zeros(len(pieces), width, dtype=torch.long)
    piece_weights = torch.zeros(len(pieces), width)
    for row, ids in enumerate(pieces):
        if has_prior[row]:
            piece_ids[row, : len(ids)] = torch.tensor(ids)
            piece_weights[row, : len(ids)] = 1.0 / len(ids)
    return RowRecipe(
        method=method,
        base_ids=torch.cat([piece_ids, atom_ids], dim=1),
        weights=torch.cat([piece_weights, coefficients], dim=1),
        mean_weight=(~has_prior).float() - coefficients.sum(1),
        noise_scale=torch.zeros(len(pieces)),
        stat_rows=mapping,
    )
