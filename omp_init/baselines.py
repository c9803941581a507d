"""How each new token's row is built from BASE rows: one representation for every method.

A :class:`RowRecipe` says, per new token, which base rows to sum with which weights, and how
much of the base matrix's row mean and of a seeded random draw to add. Every method (OMP and
the baselines ``zero``, ``mean``, ``random``, ``fvt``) produces a recipe, and the transplant
applies it with :func:`build_rows` once per base matrix (input embeddings, and ``lm_head`` when
the base is untied): the same recipe serves both, each matrix contributing its own rows,
mean and spread. Solving OMP lives in ``omp.py``; choosing the method, aligning vocabularies
and tokenizing new tokens into base pieces live in the transplant.

Worked example (a 3-row base matrix, one new token per method)::

    matrix = [[2, 0], [0, 4], [4, 2]]           mean = [2, 2]
    zero                -> [0, 0]
    mean                -> [2, 2]
    fvt, pieces [0, 2]  -> ([2, 0] + [4, 2]) / 2 = [3, 1]
    omp, ids [1], [0.5] -> [0, 2]
    random              -> mean + std * eps, eps ~ N(0, I) from the seed
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import METHODS
from .errors import ConfigError
from .omp import OmpResult, apply_coefficients

logger = logging.getLogger(__name__)

# Rows per chunk when drawing noise and reading statistics. Fixed (not memory-derived) so the
# random draws depend only on the seed and the shape.
_CHUNK_ROWS = 4096


@dataclass(frozen=True)
class RowRecipe:
    """Per new token: ``row[t] = sum_j weights[t, j] * M[base_ids[t, j]]
    + mean_weight[t] * mean(M) + noise_scale[t] * std(M) * eps[t]``.

    ``M`` is the base matrix the recipe is applied to, ``mean``/``std`` are per dimension over
    its rows, and ``eps`` ([T, d] standard normal) is drawn on the CPU from ``seed`` in fixed
    chunks, so every matrix of the same width gets the same draws.

    Attributes:
        method: the method that made the recipe (``omp``, ``zero``, ``mean``, ``random``, ``fvt``).
        base_ids: [T, m] int64, base row ids; unused slots hold id 0 with weight 0.
        weights: [T, m] float32, weight of each base row.
        mean_weight: [T] float32, weight of the matrix's row mean.
        noise_scale: [T] float32, weight of the per-dimension std times the random draw.
        seed: seed of the random draw (only read when some ``noise_scale`` is non-zero).
        n_mean_fallback: rows that fell back to the mean (fvt: no base pieces).
        stat_rows: [n] int64 rows ``mean``/``std`` are taken over by default (centered OMP:
            the dictionary's base rows); None means all rows.
    """

    method: str
    base_ids: Tensor
    weights: Tensor
    mean_weight: Tensor
    noise_scale: Tensor
    seed: int = 0
    n_mean_fallback: int = 0
    stat_rows: Tensor | None = None

    @property
    def n_rows(self) -> int:
        return self.base_ids.shape[0]


def zero_recipe(n_new: int) -> RowRecipe:
    """Every new row is zero."""
    return _recipe("zero", n_new)


def mean_recipe(n_new: int) -> RowRecipe:
    """Every new row is the mean of the base matrix's rows."""
    return _recipe("mean", n_new, mean_weight=1.0)


def random_recipe(n_new: int, seed: int = 0) -> RowRecipe:
    """Every new row is drawn from N(mean, diag(std^2)) of the base matrix's rows, seeded."""
    return _recipe("random", n_new, mean_weight=1.0, noise_scale=1.0, seed=seed)


def fvt_recipe(pieces: list[list[int]], position_power: float = 0.0) -> RowRecipe:
    """Fast Vocabulary Transfer: the mean of the base rows of each new token's pieces.

    Args:
        pieces: per new token, the base ids the base tokenizer splits it into. An empty list
            falls back to the matrix mean and is counted in ``n_mean_fallback``.
        position_power: piece j (1-based) of m gets weight ``j ** position_power`` (then
            normalized): 0 is the plain mean, 1 leans towards the last piece, -1 towards the
            first (see :data:`FVT_POSITION_POWER`).

    Example: pieces ``[[5, 7], []]`` -> row 0 = (M[5] + M[7]) / 2, row 1 = mean(M); with
    ``position_power=1`` row 0 = (M[5] + 2 M[7]) / 3.
    """
    n_new = len(pieces)
    width = max((len(ids) for ids in pieces), default=0)
    base_ids = torch.zeros(n_new, width, dtype=torch.long)
    weights = torch.zeros(n_new, width, dtype=torch.float32)
    for row, ids in enumerate(pieces):
        if ids:
            base_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            position_weights = torch.arange(1, len(ids) + 1, dtype=torch.float32) ** position_power
            weights[row, : len(ids)] = position_weights / position_weights.sum()
    is_empty = torch.tensor([not ids for ids in pieces], dtype=torch.bool)
    n_empty = int(is_empty.sum())
    if n_empty:
        logger.info(
            "fvt: %d of %d new tokens have no base pieces; using the mean row", n_empty, n_new
        )
    return RowRecipe(
        method="fvt",
        base_ids=base_ids,
        weights=weights,
        mean_weight=is_empty.float(),
        noise_scale=torch.zeros(n_new),
        n_mean_fallback=n_empty,
    )


def omp_recipe(result: OmpResult, dictionary_base_ids: Tensor, *, centered: bool = False) -> RowRecipe:
    """Turn an OMP solution into base-row weights.

    Args:
        result: from :func:`omp_init.omp.solve_omp`; ``result.indices`` are dictionary rows.
        dictionary_base_ids: [N] int64, the base id of each dictionary row (shared token).
        centered: OMP ran on rows minus the dictionary's mean (in donor space), so the new
            row is the base dictionary mean plus the same combination of centered base rows:
            ``mu + sum_j c_j (M[b_j] - mu) = sum_j c_j M[b_j] + (1 - sum_j c_j) mu``.

    Example: indices ``[[1, 0]]``, coefficients ``[[0.5, 2.0]]``, dictionary_base_ids
    ``[40, 17]`` -> base_ids ``[[17, 40]]``, weights ``[[0.5, 2.0]]`` (centered: plus
    mean_weight ``[-1.5]`` over the dictionary rows).
    """
    mapping = dictionary_base_ids.to(result.indices.device, torch.long)
    n_new = result.indices.shape[0]
    weights = result.coefficients.float()
    return RowRecipe(
        method="omp",
        base_ids=mapping[result.indices],
        weights=weights,
        mean_weight=(1.0 - weights.sum(1)).cpu() if centered else torch.zeros(n_new),
        noise_scale=torch.zeros(n_new),
        stat_rows=mapping.cpu() if centered else None,
    )


# Weight of the OMP row in the default ``omp+fvt`` method (the FVT row gets the rest). Measured
# on two pairs, ten texts each (docs/quality.md): on SmolLM2 <- Qwen2.5 all texts +52.2% bpb
# over the base against +72.2% for OMP alone and +64.9% for FVT alone; on Qwen2.5 <- SmolLM2
# +131.1% against +132.5% and +132.9%. Of the weights 0, 0.25, 0.5, 0.75 and 1, 0.5 scored
# lowest on both pairs.
OMP_FVT_WEIGHT = 0.5
# ``position_power`` of the FVT half of ``omp+fvt`` where the base has separate input and
# output matrices. An input row stands for having read the token, which the base knows best
# from its last piece; an output row predicts the token, which starts with its first piece. So
# on an untied base the input rows' FVT half leans towards the last piece (w_j ∝ j) and the
# lm_head rows' towards the first (w_j ∝ 1/j). On Qwen2.5 <- Gemma 3 (docs/quality.md) all ten
# texts 1.1% lower bits-per-byte than the plain mean, lower on every text; on Qwen2.5 <- SmolLM2
# 0.02% lower (code 1.9% lower); on the tied SmolLM2 <- Qwen2.5 untied for the test, 1.1%
# lower (powers 0.5 and 2 were worse there). A tied base has one row for both roles and keeps
# the plain mean (one lean helped English, the other code).
FVT_POSITION_POWER = {"embed": 1.0, "lm_head": -1.0, "tied": 0.0}


# Rows built by ``omp+fvt`` / ``omp`` longer than this quantile of the base matrix's own row
# norms are scaled down to it. The least-squares fit of an odd donor row (an under-trained
# token such as Qwen2.5's " YYSTACK") can come out ten times longer than any real row; in a
# tied model such a row takes probability at every position. Gemma 3 270M <- Qwen2.5's
# tokenizer: 33 of 55,964 rows capped, all ten texts 3.16 -> 1.50 bits per byte (docs/quality.md).
ROW_NORM_CAP_QUANTILE = 0.999


def row_norm_cap(matrix: Tensor, quantile: float = ROW_NORM_CAP_QUANTILE) -> float:
    """The ``quantile`` of ``matrix``'s row norms (rows taken in chunks, fp32), e.g. 1.034 at
    0.999 for Gemma 3 270M's embedding, whose rows all have norm ~1.03."""
    norms = torch.cat(
        [matrix[s : s + _CHUNK_ROWS].float().norm(dim=1) for s in range(0, matrix.shape[0], _CHUNK_ROWS)]
    )
    return float(norms.sort().values[round(quantile * (norms.numel() - 1))])


def cap_row_norms(rows: Tensor, cap: float) -> int:
    """Scale, in place, every row of ``rows`` [T, d] longer than ``cap`` down to norm ``cap``;
    returns how many were scaled."""
    norms = rows.norm(dim=1)
    over = norms > cap
    rows[over] *= (cap / norms[over])[:, None]
    return int(over.sum())


def blend_recipes(first: RowRecipe, second: RowRecipe, first_weight: float | Tensor, *, method: str) -> RowRecipe:
    """``row = w * first_row + (1 - w) * second_row``, as one recipe (w one number or [T]).

    The union of both supports with scaled weights, and the mixed mean weight. Both recipes
    must leave noise out. The mean is taken over ``first.stat_rows`` (e.g. the OMP
    dictionary's base rows); ``second`` should use the mean only as a fallback.

    Example: OMP ids ``[[3]]`` weights ``[[1.0]]`` blended 0.5 with FVT ids ``[[5, 7]]``
    weights ``[[0.5, 0.5]]`` -> ids ``[[3, 5, 7]]``, weights ``[[0.5, 0.25, 0.25]]``.
    """
    if first.n_rows != second.n_rows:
        raise ValueError(f"recipes have {first.n_rows} and {second.n_rows} rows")
    if bool(first.noise_scale.any()) or bool(second.noise_scale.any()):
        raise ValueError("blend_recipes does not mix noise")
    first_weight = torch.as_tensor(first_weight, dtype=torch.float32).expand(first.n_rows)
    second_weight = 1.0 - first_weight
    return RowRecipe(
        method=method,
        base_ids=torch.cat([first.base_ids.cpu(), second.base_ids.cpu()], dim=1),  # [T, m1 + m2]
        weights=torch.cat(
            [first.weights.cpu() * first_weight[:, None], second.weights.cpu() * second_weight[:, None]],
            dim=1,
        ),
        mean_weight=first.mean_weight.cpu() * first_weight + second.mean_weight.cpu() * second_weight,
        noise_scale=torch.zeros(first.n_rows),
        n_mean_fallback=int(((second.mean_weight.cpu() > 0) & (second_weight > 0)).sum()),
        stat_rows=first.stat_rows,
    )


def omp_fvt_recipe(omp: RowRecipe, fvt: RowRecipe, omp_weight: float = OMP_FVT_WEIGHT) -> RowRecipe:
    """The default method, ``omp+fvt``: ``omp_weight`` of the OMP row plus the rest of the FVT
    row (the mean of the base rows of the pieces the base tokenizer cuts the token into).

    Why both: OMP reconstructs the token from what the *donor* knows about it, FVT from what the
    *base* model knows about its pieces; their errors differ, and the mix scored lower
    bits-per-byte than either on both measured pairs (docs/quality.md). A token FVT cannot
    cut into base pieces (its row would be the matrix mean) takes the OMP row alone.
    """
    has_pieces = fvt.mean_weight.cpu() == 0
    weight = torch.where(has_pieces, torch.tensor(omp_weight), torch.tensor(1.0))
    return blend_recipes(omp, fvt, weight, method="omp+fvt")


def no_donor_row_recipe(fvt: RowRecipe, omp_weight: float = OMP_FVT_WEIGHT) -> RowRecipe:
    """``omp+fvt`` for tokens OMP has no target for (no donor row: a ``--tokenizer`` that is not
    the donor's): the matrix's mean row takes the OMP half, the FVT row the rest.

    Why not FVT alone: the other built rows are half OMP, and a full FVT row predicts its token
    about as strongly as its pieces, so it takes probability wherever those pieces are likely
    (SmolLM2 <- Llama 3's tokenizer, 18,342 such rows: code 1.4175 bits per byte with FVT alone,
    1.1610 with the mean row, 1.1497 with the half of each; all ten texts 2.4302 / 2.3711 /
    2.2934, docs/quality.md "Tokens no donor has").
    """
    return omp_fvt_recipe(mean_recipe(fvt.n_rows), fvt, omp_weight)


def make_recipe(
    method: str,
    n_new: int,
    *,
    omp_result: OmpResult | None = None,
    dictionary_base_ids: Tensor | None = None,
    pieces: list[list[int]] | None = None,
    seed: int = 0,
) -> RowRecipe:
    """One entry point for every ``--method``; each reads only the arguments it needs.

    ``omp`` needs ``omp_result`` and ``dictionary_base_ids``, ``fvt`` needs ``pieces``,
    ``random`` reads ``seed``.
    """
    if method == "omp":
        if omp_result is None or dictionary_base_ids is None:
            raise ValueError("method 'omp' needs omp_result and dictionary_base_ids")
        recipe = omp_recipe(omp_result, dictionary_base_ids)
    elif method == "fvt":
        if pieces is None:
            raise ValueError("method 'fvt' needs pieces")
        recipe = fvt_recipe(pieces)
    elif method == "zero":
        recipe = zero_recipe(n_new)
    elif method == "mean":
        recipe = mean_recipe(n_new)
    elif method == "random":
        recipe = random_recipe(n_new, seed)
    else:
        raise ConfigError(f"--method {method!r} is unknown; choose one of {', '.join(METHODS)}.")
    if recipe.n_rows != n_new:
        raise ValueError(f"method {method!r} built {recipe.n_rows} rows for {n_new} new tokens")
    return recipe


def build_rows(recipe: RowRecipe, matrix: Tensor, *, stat_rows: Tensor | None = None) -> Tensor:
    """Apply a recipe to one base matrix.

    Args:
        recipe: from one of the ``*_recipe`` functions.
        matrix: [V, d] any float dtype, a base embedding or lm_head matrix (any device).
        stat_rows: [n] int64 rows the mean and std are taken over (e.g. to leave out padding
            rows); None takes all V rows.

    Returns:
        [T, d] float32 on ``matrix.device``; the caller casts to the output dtype.
    """
    if recipe.base_ids.numel() and int(recipe.base_ids.max()) >= matrix.shape[0]:
        raise ValueError(
            f"recipe refers to base row {int(recipe.base_ids.max())} of a {matrix.shape[0]}-row matrix"
        )
    rows = apply_coefficients(matrix, recipe.base_ids, recipe.weights)
    mean_weight = recipe.mean_weight.to(matrix.device, torch.float32)
    noise_scale = recipe.noise_scale.to(matrix.device, torch.float32)
    has_mean, has_noise = bool(mean_weight.any()), bool(noise_scale.any())
    if not (has_mean or has_noise):
        return rows
    stat_rows = recipe.stat_rows if stat_rows is None else stat_rows
    stats = matrix if stat_rows is None else matrix.index_select(0, stat_rows.to(matrix.device))
    mean, std = _row_statistics(stats)
    rows += mean_weight[:, None] * mean
    if has_noise:
        generator = torch.Generator().manual_seed(recipe.seed)
        for start in range(0, recipe.n_rows, _CHUNK_ROWS):
            stop = min(start + _CHUNK_ROWS, recipe.n_rows)
            eps = torch.randn(stop - start, matrix.shape[1], generator=generator).to(matrix.device)
            rows[start:stop] += noise_scale[start:stop, None] * std * eps
    return rows


def _row_statistics(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and (unbiased) std of the rows, [d] float32 each, accumulated in fp64
    over row chunks so a bf16 matrix is never copied whole to a wider dtype."""
    total = torch.zeros(matrix.shape[1], dtype=torch.float64, device=matrix.device)
    total_sq = torch.zeros_like(total)
    for start in range(0, matrix.shape[0], _CHUNK_ROWS):
        chunk = matrix[start : start + _CHUNK_ROWS].double()
        total += chunk.sum(dim=0)
        total_sq += (chunk * chunk).sum(dim=0)
    n_rows = matrix.shape[0]
    mean = total / max(n_rows, 1)
    variance = (total_sq - n_rows * mean * mean) / max(n_rows - 1, 1)
    return mean.float(), variance.clamp_min(0).sqrt().float()


def _recipe(
    method: str, n_new: int, *, mean_weight: float = 0.0, noise_scale: float = 0.0, seed: int = 0
) -> RowRecipe:
    return RowRecipe(
        method=method,
        base_ids=torch.zeros(n_new, 0, dtype=torch.long),
        weights=torch.zeros(n_new, 0),
        mean_weight=torch.full((n_new,), mean_weight),
        noise_scale=torch.full((n_new,), noise_scale),
        seed=seed,
    )
