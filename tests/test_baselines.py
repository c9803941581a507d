"""Tests of omp_init.baselines: every method's recipe builds the right rows on a hand-made matrix."""

from __future__ import annotations

import pytest
import torch

from omp_init.baselines import (
    RowRecipe,
    build_rows,
    cap_row_norms,
    fvt_recipe,
    make_recipe,
    mean_recipe,
    omp_recipe,
    random_recipe,
    row_norm_cap,
    zero_recipe,
)
from omp_init.errors import ConfigError
from omp_init.omp import OmpResult, apply_coefficients, solve_omp

# Mean [2, 2]; unbiased std per dimension: sqrt(((0)^2 + 2^2 + 2^2) / 2) = 2 and the same.
MATRIX = torch.tensor([[2.0, 0.0], [0.0, 4.0], [4.0, 2.0]])


def hand_omp_result():
    return OmpResult(
        indices=torch.tensor([[1, 0], [2, 2]]),
        coefficients=torch.tensor([[0.5, 2.0], [1.0, 0.0]]),
        residual_norm=torch.zeros(2),
        target_norm=torch.ones(2),
        n_steps=torch.tensor([2, 1]),
    )


def test_zero_and_mean():
    assert build_rows(zero_recipe(2), MATRIX).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert build_rows(mean_recipe(2), MATRIX).tolist() == [[2.0, 2.0], [2.0, 2.0]]


def test_fvt_averages_pieces_and_falls_back_to_mean():
    recipe = fvt_recipe([[0, 2], [], [1]])
    assert recipe.n_mean_fallback == 1
    assert build_rows(recipe, MATRIX).tolist() == [[3.0, 1.0], [2.0, 2.0], [0.0, 4.0]]


def test_fvt_position_power_leans_towards_the_last_or_first_piece():
    # MATRIX rows 0 and 2 are [2, 0] and [4, 2]; weights 1:2 (power 1) and 2:1 (power -1)
    towards_last = build_rows(fvt_recipe([[0, 2], [1]], position_power=1.0), MATRIX)
    towards_first = build_rows(fvt_recipe([[0, 2], [1]], position_power=-1.0), MATRIX)
    torch.testing.assert_close(towards_last, torch.tensor([[10 / 3, 4 / 3], [0.0, 4.0]]))
    torch.testing.assert_close(towards_first, torch.tensor([[8 / 3, 2 / 3], [0.0, 4.0]]))


def test_omp_recipe_maps_dictionary_rows_to_base_ids():
    # dictionary row 0 is base row 2, row 1 is base row 0, row 2 is base row 1
    recipe = omp_recipe(hand_omp_result(), torch.tensor([2, 0, 1]))
    assert recipe.base_ids.tolist() == [[0, 2], [1, 1]]
    # 0.5 * [2, 0] + 2 * [4, 2] and 1 * [0, 4]
    assert build_rows(recipe, MATRIX).tolist() == [[9.0, 4.0], [0.0, 4.0]]


def test_omp_recipe_equals_applying_coefficients_to_base_rows_of_the_dictionary():
    generator = torch.Generator().manual_seed(0)
    donor_shared, donor_new = (
        torch.randn(50, 16, generator=generator),
        torch.randn(7, 16, generator=generator),
    )
    base = torch.randn(80, 12, generator=generator)
    dictionary_base_ids = torch.randperm(80, generator=generator)[:50]
    result = solve_omp(donor_shared, donor_new, 5, score_dtype=torch.float32)
    expected = apply_coefficients(base[dictionary_base_ids], result.indices, result.coefficients)
    torch.testing.assert_close(build_rows(omp_recipe(result, dictionary_base_ids), base), expected)


def test_random_is_seeded_and_follows_the_matrix_statistics():
    first = build_rows(random_recipe(4, seed=3), MATRIX)
    assert torch.equal(first, build_rows(random_recipe(4, seed=3), MATRIX))
    assert not torch.equal(first, build_rows(random_recipe(4, seed=4), MATRIX))
    many = build_rows(random_recipe(20000, seed=0), MATRIX)
    torch.testing.assert_close(many.mean(0), torch.tensor([2.0, 2.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(many.std(0), torch.tensor([2.0, 2.0]), atol=0.05, rtol=0)


def test_random_draws_are_the_same_for_every_matrix_of_the_same_width():
    # One recipe serves embed_in and an untied lm_head: each gets mean + std * the same eps.
    lm_head = 3.0 * MATRIX + 1.0
    embed_rows = build_rows(random_recipe(3, seed=1), MATRIX)
    head_rows = build_rows(random_recipe(3, seed=1), lm_head)
    torch.testing.assert_close(head_rows, 3.0 * embed_rows + 1.0)


def test_stat_rows_restrict_mean_and_std():
    rows = build_rows(mean_recipe(1), MATRIX, stat_rows=torch.tensor([0, 2]))
    assert rows.tolist() == [[3.0, 1.0]]


def test_bf16_matrix_gives_fp32_rows():
    rows = build_rows(fvt_recipe([[0, 1]]), MATRIX.bfloat16())
    assert rows.dtype == torch.float32 and rows.tolist() == [[1.0, 2.0]]


def test_make_recipe_dispatches_every_method():
    result, ids = hand_omp_result(), torch.tensor([2, 0, 1])
    for method in ("omp", "zero", "mean", "random", "fvt"):
        recipe = make_recipe(
            method, 2, omp_result=result, dictionary_base_ids=ids, pieces=[[0], [1]], seed=5
        )
        assert isinstance(recipe, RowRecipe) and recipe.method == method and recipe.n_rows == 2
        assert build_rows(recipe, MATRIX).shape == (2, 2)
    with pytest.raises(ConfigError, match="--method"):
        make_recipe("bogus", 2)
    with pytest.raises(ValueError, match="2 new tokens"):
        make_recipe("fvt", 2, pieces=[[0]])


def test_out_of_range_base_id_is_refused():
    with pytest.raises(ValueError, match="base row 5"):
        build_rows(fvt_recipe([[5]]), MATRIX)


def test_omp_fvt_recipe_mixes_halves_and_keeps_omp_where_fvt_has_no_pieces():
    from omp_init.baselines import RowRecipe, build_rows, fvt_recipe, omp_fvt_recipe

    matrix = torch.arange(40, dtype=torch.float32).reshape(10, 4)
    omp = RowRecipe(
        method="omp",
        base_ids=torch.tensor([[3, 1], [2, 0]]),
        weights=torch.tensor([[1.0, 0.5], [2.0, -1.0]]),
        mean_weight=torch.zeros(2),
        noise_scale=torch.zeros(2),
    )
    fvt = fvt_recipe([[5, 7], []])  # the second token has no base pieces
    mixed = omp_fvt_recipe(omp, fvt)
    omp_rows, fvt_rows = build_rows(omp, matrix), build_rows(fvt, matrix)
    torch.testing.assert_close(build_rows(mixed, matrix)[0], 0.5 * omp_rows[0] + 0.5 * fvt_rows[0])
    torch.testing.assert_close(build_rows(mixed, matrix)[1], omp_rows[1])
    assert mixed.method == "omp+fvt" and mixed.n_mean_fallback == 0


def test_row_norm_cap_and_capping():
    matrix = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 2.0], [6.0, 8.0]])  # norms 5, 1, 2, 10
    assert row_norm_cap(matrix, 0.0) == 1.0 and row_norm_cap(matrix, 1.0) == 10.0
    assert row_norm_cap(matrix, 0.5) == 5.0  # of 1, 2, 5, 10: index round(1.5) = 2
    rows = matrix.clone()
    assert cap_row_norms(rows, 4.0) == 2
    torch.testing.assert_close(rows, torch.tensor([[2.4, 3.2], [0.0, 1.0], [0.0, 2.0], [2.4, 3.2]]))
