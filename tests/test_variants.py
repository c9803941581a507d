"""Measured-but-not-default variants (docs/quality.md) still compute what they claim."""

import pytest
import torch

from omp_init.baselines import RowRecipe, blend_recipes, build_rows, fvt_recipe


def _omp_like(base_ids, weights):
    n = len(base_ids)
    return RowRecipe(
        method="omp",
        base_ids=torch.tensor(base_ids),
        weights=torch.tensor(weights),
        mean_weight=torch.zeros(n),
        noise_scale=torch.zeros(n),
    )


def test_blend_is_the_weighted_average_of_the_two_rows():
    matrix = torch.arange(40, dtype=torch.float32).reshape(10, 4)
    first = _omp_like([[3, 1], [2, 0]], [[1.0, 0.5], [2.0, -1.0]])
    second = fvt_recipe([[5, 7], [9]])
    blended = blend_recipes(first, second, 0.25, method="omp+fvt")
    expected = 0.25 * build_rows(first, matrix) + 0.75 * build_rows(second, matrix)
    torch.testing.assert_close(build_rows(blended, matrix), expected)


def test_blend_refuses_mismatched_or_noisy_recipes():
    first = _omp_like([[1]], [[1.0]])
    with pytest.raises(ValueError, match="rows"):
        blend_recipes(first, fvt_recipe([[1], [2]]), 0.5, method="x")
    noisy = RowRecipe("random", torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0), torch.zeros(1), torch.ones(1))
    with pytest.raises(ValueError, match="noise"):
        blend_recipes(first, noisy, 0.5, method="x")
