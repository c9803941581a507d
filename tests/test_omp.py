"""Tests of omp_init.omp against a plain per-row OMP and planted sparse combinations."""

from __future__ import annotations

import pytest
import torch

from omp_init.errors import AlignmentError, ConfigError, SourceError
from omp_init.omp import (
    OmpResult,
    apply_coefficients,
    pick_batch_size,
    resolve_score_dtype,
    solve_omp,
)

FP32 = torch.float32


def naive_omp(dictionary, targets, k, normalize_atoms=True):
    """Textbook OMP, one row at a time, fp64, refit with torch.linalg.lstsq."""
    atoms = dictionary.double()
    norms = (
        atoms.norm(dim=1) if normalize_atoms else torch.ones(atoms.shape[0], dtype=torch.float64)
    )
    all_indices, all_coefficients = [], []
    for target in targets.double():
        residual, chosen, coefficients = target.clone(), [], torch.zeros(0, dtype=torch.float64)
        for _ in range(k):
            scores = (atoms @ residual).abs() / norms
            scores[chosen] = -1.0
            chosen.append(int(scores.argmax()))
            basis = atoms[chosen].T  # [d, s]
            coefficients = torch.linalg.lstsq(basis, target.unsqueeze(1)).solution.squeeze(1)
            residual = target - basis @ coefficients
        all_indices.append(chosen)
        all_coefficients.append(coefficients)
    return torch.tensor(all_indices), torch.stack(all_coefficients).float()


def gaussian_problem(n_atoms=300, dim=48, n_targets=20, seed=0):
    generator = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(n_atoms, dim, generator=generator)
    targets = torch.randn(n_targets, dim, generator=generator)
    return dictionary, targets


def anisotropic_problem(n_atoms=3000, dim=128, n_targets=200, rank=16, seed=0):
    """Rows like real embeddings: a common mean offset, a few strong directions, small noise."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, dim, generator=generator)
    offset = 2.0 * torch.randn(dim, generator=generator)

    def rows(n):
        low_rank = torch.randn(n, rank, generator=generator) @ basis
        return offset + low_rank + 0.3 * torch.randn(n, dim, generator=generator)

    return rows(n_atoms), rows(n_targets)


def planted_problem(n_atoms=300, dim=64, n_targets=25, support=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(n_atoms, dim, generator=generator)
    indices = torch.stack(
        [torch.randperm(n_atoms, generator=generator)[:support] for _ in range(n_targets)]
    )
    signs = torch.where(torch.rand(n_targets, support, generator=generator) < 0.5, -1.0, 1.0)
    coefficients = signs * (0.5 + torch.rand(n_targets, support, generator=generator))
    targets = torch.einsum("ts,tsd->td", coefficients, dictionary[indices])
    return dictionary, targets, indices, coefficients


@pytest.mark.parametrize("normalize_atoms", [True, False])
def test_fp32_scoring_matches_naive_reference(normalize_atoms):
    dictionary, targets = gaussian_problem()
    dictionary = dictionary * (
        0.5 + torch.rand(dictionary.shape[0], 1, generator=torch.Generator().manual_seed(3))
    )
    expected_indices, expected_coefficients = naive_omp(dictionary, targets, 12, normalize_atoms)
    result = solve_omp(dictionary, targets, 12, score_dtype=FP32, normalize_atoms=normalize_atoms)
    assert torch.equal(result.indices, expected_indices)
    torch.testing.assert_close(result.coefficients, expected_coefficients, atol=1e-5, rtol=1e-4)
    fitted = torch.einsum(
        "tk,tkd->td", expected_coefficients.double(), dictionary.double()[expected_indices]
    )
    torch.testing.assert_close(
        result.residual_norm, (targets.double() - fitted).norm(dim=1).float(), atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(result.target_norm, targets.norm(dim=1))
    assert result.indices.dtype == torch.int64 and result.coefficients.dtype == FP32
    assert torch.equal(result.n_steps, torch.full((targets.shape[0],), 12))


def test_bf16_scoring_matches_reference_on_well_separated_problem():
    dictionary, targets = gaussian_problem(seed=5)
    expected_indices, expected_coefficients = naive_omp(dictionary, targets, 8)
    result = solve_omp(dictionary, targets, 8, score_dtype=torch.bfloat16)
    # The exact re-scoring of the bf16 top candidates makes the picks agree almost everywhere.
    agreement = (result.indices == expected_indices).all(dim=1).float().mean()
    assert agreement >= 0.9


def test_planted_combinations_are_recovered():
    dictionary, targets, indices, coefficients = planted_problem()
    for score_dtype in (FP32, torch.bfloat16):
        result = solve_omp(dictionary, targets, 6, score_dtype=score_dtype)
        assert result.relative_residual().max() < 1e-5
        picked = [set(row[:4].tolist()) for row in result.indices]
        assert picked == [set(row.tolist()) for row in indices]


def test_planted_coefficients_transfer_to_second_matrix():
    dictionary, targets, indices, coefficients = planted_problem(seed=2)
    base_rows = torch.randn(dictionary.shape[0], 40, generator=torch.Generator().manual_seed(9))
    result = solve_omp(dictionary, targets, 4, score_dtype=FP32)
    expected = torch.einsum("ts,tsd->td", coefficients, base_rows[indices])
    torch.testing.assert_close(
        apply_coefficients(base_rows, result.indices, result.coefficients),
        expected,
        atol=1e-4,
        rtol=1e-4,
    )


def test_residual_tol_stops_rows_and_pads_with_zero():
    dictionary, targets, indices, _ = planted_problem(support=3, seed=4)
    result = solve_omp(dictionary, targets, 8, score_dtype=FP32, residual_tol=1e-4)
    assert torch.equal(result.n_steps, torch.full((targets.shape[0],), 3))
    assert torch.all(result.indices[:, 3:] == 0) and torch.all(result.coefficients[:, 3:] == 0)
    assert result.relative_residual().max() < 1e-4


def test_bf16_mean_residual_within_two_percent_of_fp32_on_anisotropic_rows():
    dictionary, targets = anisotropic_problem()
    exact = solve_omp(dictionary, targets, 16, score_dtype=FP32, algorithm="exact")
    fast = solve_omp(dictionary, targets, 16, score_dtype=torch.bfloat16, algorithm="exact")
    assert fast.relative_residual().mean() <= 1.02 * exact.relative_residual().mean()


def test_duplicate_and_dependent_atoms_stay_finite():
    base, targets = gaussian_problem(n_atoms=10, dim=16, n_targets=6)
    dictionary = torch.cat([base, base, 2 * base])  # every atom three times
    result = solve_omp(dictionary, targets, 20, score_dtype=FP32)
    assert torch.isfinite(result.coefficients).all() and torch.isfinite(result.residual_norm).all()
    # The best fit uses the span of the 10 distinct rows, as a least-squares fit on them does.
    solution = torch.linalg.lstsq(base.T.double(), targets.T.double()).solution
    best = (targets.T.double() - base.T.double() @ solution).norm(dim=0).float()
    torch.testing.assert_close(result.residual_norm, best, atol=1e-4, rtol=1e-4)


def test_more_atoms_than_dimensions_reaches_zero_residual():
    dictionary, targets = gaussian_problem(n_atoms=40, dim=8, n_targets=5)
    result = solve_omp(dictionary, targets, 20, score_dtype=FP32)
    assert torch.isfinite(result.coefficients).all()
    assert result.relative_residual().max() < 1e-5


def test_zero_targets():
    dictionary, targets = gaussian_problem(n_targets=3)
    targets[1] = 0.0
    result = solve_omp(dictionary, targets, 5)
    assert result.n_steps.tolist() == [5, 0, 5]
    assert torch.all(result.indices[1] == 0) and torch.all(result.coefficients[1] == 0)
    assert result.residual_norm[1] == 0 and result.relative_residual()[1] == 0


def test_k_equal_to_dictionary_size_is_full_least_squares():
    dictionary, targets = gaussian_problem(n_atoms=12, dim=20, n_targets=4)
    result = solve_omp(dictionary, targets, 12, score_dtype=FP32)
    assert sorted(result.indices[0].tolist()) == list(range(12))
    solution = torch.linalg.lstsq(dictionary.T.double(), targets.T.double()).solution.T  # [T, N]
    torch.testing.assert_close(
        result.coefficients, solution.gather(1, result.indices).float(), atol=1e-5, rtol=1e-4
    )


def test_k_larger_than_dictionary_names_the_flag():
    dictionary, targets = gaussian_problem(n_atoms=5, dim=8)
    with pytest.raises(AlignmentError, match=r"--k 6 .* 5 shared tokens"):
        solve_omp(dictionary, targets, 6)
    with pytest.raises(ConfigError, match="--k"):
        solve_omp(dictionary, targets, 0)


def test_non_finite_rows_are_refused():
    dictionary, targets = gaussian_problem()
    dictionary[7, 3] = float("nan")
    with pytest.raises(SourceError, match=r"1 shared-token rows .*rows 7\).*--donor"):
        solve_omp(dictionary, targets, 4)
    dictionary[7, 3] = 0.0
    targets[[2, 5], 0] = float("inf")
    with pytest.raises(SourceError, match=r"2 new-token rows .*rows 2, 5\)"):
        solve_omp(dictionary, targets, 4)


def test_bad_batch_size_names_the_flag():
    dictionary, targets = gaussian_problem()
    with pytest.raises(ConfigError, match="--max-batch-tokens"):
        solve_omp(dictionary, targets, 4, batch_size=0)


def test_batch_size_does_not_change_the_result_and_progress_counts_rows():
    dictionary, targets = gaussian_problem(n_targets=13)
    seen = []
    single = solve_omp(dictionary, targets, 6, score_dtype=FP32, batch_size=1, progress=seen.append)
    whole = solve_omp(dictionary, targets, 6, score_dtype=FP32, batch_size=64)
    assert seen == [1] * 13
    assert torch.equal(single.indices, whole.indices)
    torch.testing.assert_close(single.coefficients, whole.coefficients, atol=1e-6, rtol=1e-5)


def test_empty_targets():
    dictionary, _ = gaussian_problem()
    result = solve_omp(dictionary, torch.zeros(0, dictionary.shape[1]), 4)
    assert result.indices.shape == (0, 4) and result.coefficients.shape == (0, 4)
    assert result.residual_norm.shape == (0,)


def test_bf16_dictionary_input_is_accepted():
    dictionary, targets = gaussian_problem()
    result = solve_omp(dictionary.bfloat16(), targets.bfloat16(), 4)
    assert result.coefficients.dtype == FP32 and torch.isfinite(result.coefficients).all()


def test_apply_coefficients_hand_example():
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.bfloat16)
    out = apply_coefficients(
        rows, torch.tensor([[0, 1], [2, 2]]), torch.tensor([[2.0, 3.0], [0.5, 0.25]])
    )
    assert out.dtype == FP32
    assert out.tolist() == [[2.0, 3.0], [0.75, 0.75]]


def test_relative_residual_and_helpers():
    result = OmpResult(
        indices=torch.zeros(2, 1, dtype=torch.long),
        coefficients=torch.zeros(2, 1),
        residual_norm=torch.tensor([1.0, 0.0]),
        target_norm=torch.tensor([4.0, 0.0]),
        n_steps=torch.ones(2, dtype=torch.long),
    )
    assert result.relative_residual().tolist() == [0.25, 0.0]
    assert resolve_score_dtype("float32", "cpu") == FP32
    assert resolve_score_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_score_dtype("auto", "cpu") in (FP32, torch.bfloat16)
    with pytest.raises(ConfigError, match="--score-dtype"):
        resolve_score_dtype("fp8", "cpu")
    assert 1 <= pick_batch_size(20000, 896, 64) < pick_batch_size(20000, 896, 8)
