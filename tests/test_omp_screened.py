"""Tests of the screened OMP path (omp_init.omp_screened) and of choosing between the paths.

The screened path must pick like exact OMP when it follows every atom, recover planted sparse
combinations while following only a few candidates, stay within 2% of the exact path's mean
residual on embedding-like rows, handle the exact path's degenerate cases, and give the same
answer for a row whichever batch it is solved in.
"""

from __future__ import annotations

import pytest
import torch
from test_omp import gaussian_problem, naive_omp, planted_problem

from omp_init import omp_exact, omp_screened
from omp_init.omp import (
    PreparedDictionary,
    choose_algorithm,
    pick_batch_size,
    prepare_dictionary,
    solve_omp,
)

FP32 = torch.float32
BF16 = torch.bfloat16


@pytest.fixture
def few_candidates(monkeypatch):
    """Follow 128 candidates (replace up to 64 per screen) so small problems really screen."""
    monkeypatch.setattr(omp_screened, "_N_CANDIDATES", 128)
    monkeypatch.setattr(omp_screened, "_N_REPLACED", 64)


def embedding_like_problem(n_atoms=8000, dim=192, n_targets=100, n_families=400, seed=0):
    """Rows like token embeddings: families of related tokens around centers that share a
    common offset and a decaying spectrum (real rows: cos to the mean 0.4-0.65, top 64 of 576
    directions hold 31% of the centered energy), with log-normal norms."""
    generator = torch.Generator().manual_seed(seed)
    rotation = torch.linalg.qr(torch.randn(dim, dim, generator=generator))[0]
    spectrum = torch.arange(1, dim + 1).float() ** -0.5
    offset = torch.randn(dim, generator=generator)
    offset *= spectrum.sum().sqrt() / offset.norm()
    centers = (torch.randn(n_families, dim, generator=generator) * spectrum.sqrt()) @ rotation
    centers = (centers + offset) * torch.exp(0.15 * torch.randn(n_families, 1, generator=generator))
    spread = 0.5 * spectrum.sum().sqrt() / dim**0.5

    def rows(n):
        family = torch.randint(0, n_families, (n,), generator=generator)
        return centers[family] + spread * torch.randn(n, dim, generator=generator)

    return rows(n_atoms), rows(n_targets)


def test_following_every_atom_matches_the_naive_reference():
    # N=300 < M: every atom is a candidate, so this is Batch-OMP on the whole dictionary.
    dictionary, targets = gaussian_problem()
    expected_indices, expected_coefficients = naive_omp(dictionary, targets, 12)
    result = solve_omp(dictionary, targets, 12, score_dtype=FP32, algorithm="screened")
    assert torch.equal(result.indices, expected_indices)
    torch.testing.assert_close(result.coefficients, expected_coefficients, atol=1e-5, rtol=1e-4)
    assert torch.equal(result.n_steps, torch.full((targets.shape[0],), 12))


@pytest.mark.parametrize("score_dtype", [FP32, BF16])
def test_planted_combinations_are_recovered_from_few_candidates(few_candidates, score_dtype):
    dictionary, targets, indices, _ = planted_problem(n_atoms=5000, dim=64, n_targets=30)
    result = solve_omp(dictionary, targets, 6, score_dtype=score_dtype, algorithm="screened")
    assert result.relative_residual().max() < 1e-5
    picked = [set(row[:4].tolist()) for row in result.indices]
    assert picked == [set(row.tolist()) for row in indices]


@pytest.mark.parametrize("score_dtype", [FP32, BF16])
def test_mean_residual_within_two_percent_of_exact(few_candidates, score_dtype):
    dictionary, targets = embedding_like_problem()
    exact = solve_omp(dictionary, targets, 16, score_dtype=FP32, algorithm="exact")
    screened = solve_omp(dictionary, targets, 16, score_dtype=score_dtype, algorithm="screened")
    ratio = screened.relative_residual().mean() / exact.relative_residual().mean()
    assert ratio <= 1.02
    # The refit is exact: the residual is the least-squares optimum on the picked atoms.
    picked = dictionary.double()[screened.indices]  # [T, k, d]
    solution = torch.linalg.lstsq(picked.mT, targets.double().unsqueeze(2)).solution
    best = (targets.double() - (picked.mT @ solution).squeeze(2)).norm(dim=1).float()
    torch.testing.assert_close(screened.residual_norm, best, atol=1e-4, rtol=1e-4)


def test_rows_do_not_depend_on_their_batch(few_candidates):
    dictionary, targets = embedding_like_problem(n_targets=24)
    prepared = prepare_dictionary(dictionary, score_dtype=BF16, algorithm="screened")
    whole = solve_omp(prepared, targets, 16, batch_size=24)
    again = solve_omp(prepared, targets, 16, batch_size=24)
    split = solve_omp(prepared, targets, 16, batch_size=5)
    assert torch.equal(whole.indices, again.indices)
    assert torch.equal(whole.coefficients, again.coefficients)
    assert torch.equal(whole.indices, split.indices)
    torch.testing.assert_close(whole.coefficients, split.coefficients, atol=1e-6, rtol=1e-5)


def _record_row_counts(monkeypatch, function_name: str) -> list[int]:
    """Wrap ``omp.<function_name>(prepared, rows, k)`` so each call appends ``len(rows)``."""
    from omp_init import omp

    counts: list[int] = []
    solve = getattr(omp, function_name)
    monkeypatch.setattr(omp, function_name, lambda p, rows, k: counts.append(len(rows)) or solve(p, rows, k))
    return counts


def test_cpu_threads_split_rows_with_the_same_result(few_candidates, monkeypatch):
    # With 2 torch threads the batch is split into 2 blocks solved on 2 Python threads; the
    # result must equal the single-block solve of the same rows.
    from omp_init import omp

    dictionary, targets = embedding_like_problem(n_targets=2 * omp._MIN_ROWS_PER_THREAD + 3)
    prepared = prepare_dictionary(dictionary, score_dtype=BF16, algorithm="screened")
    blocks = _record_row_counts(monkeypatch, "_solve_batch_screened")
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = solve_omp(prepared, targets, 16)
        torch.set_num_threads(2)
        split = solve_omp(prepared, targets, 16)
        assert torch.get_num_threads() == 2  # restored after the threaded solve
    finally:
        torch.set_num_threads(previous)
    assert blocks == [len(targets), 66, 65]
    assert torch.equal(single.indices, split.indices)
    torch.testing.assert_close(single.coefficients, split.coefficients, atol=1e-6, rtol=1e-5)


def test_cpu_batches_keep_each_threads_scores_small(few_candidates, monkeypatch):
    # Without a batch size, a CPU screened batch holds at most _CPU_THREAD_SCORE_BYTES of
    # [rows, N] scores per thread (here 100 rows' worth, one thread) whatever the memory allows,
    # and the batches are evened out (250 rows: 84 + 84 + 82, not 100 + 100 + 50).
    from omp_init import omp

    dictionary, targets = embedding_like_problem(n_targets=250)
    prepared = prepare_dictionary(dictionary, score_dtype=BF16, algorithm="screened")
    monkeypatch.setattr(omp, "_CPU_THREAD_SCORE_BYTES", 100 * len(dictionary) * 2)
    batches = _record_row_counts(monkeypatch, "_solve_rows_in_threads")
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        capped = solve_omp(prepared, targets, 16)
        uncapped = solve_omp(prepared, targets, 16, batch_size=250)  # an explicit size is kept
    finally:
        torch.set_num_threads(previous)
    assert batches == [84, 84, 82, 250]
    assert torch.equal(capped.indices, uncapped.indices)


def test_duplicate_and_dependent_atoms_stay_finite():
    base, targets = gaussian_problem(n_atoms=10, dim=16, n_targets=6)
    dictionary = torch.cat([base, base, 2 * base])  # every atom three times
    result = solve_omp(dictionary, targets, 20, score_dtype=FP32, algorithm="screened")
    assert torch.isfinite(result.coefficients).all()
    solution = torch.linalg.lstsq(base.T.double(), targets.T.double()).solution
    best = (targets.T.double() - base.T.double() @ solution).norm(dim=0).float()
    torch.testing.assert_close(result.residual_norm, best, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("score_dtype", [FP32, BF16])
def test_more_atoms_than_dimensions_reaches_zero_residual(score_dtype):
    dictionary, targets = gaussian_problem(n_atoms=40, dim=8, n_targets=5)
    result = solve_omp(dictionary, targets, 20, score_dtype=score_dtype, algorithm="screened")
    assert torch.isfinite(result.coefficients).all()
    assert result.relative_residual().max() < 1e-5
    assert all(len(set(row.tolist())) == 20 for row in result.indices)  # no atom twice


def test_zero_targets_and_zero_atoms():
    dictionary, targets = gaussian_problem(n_targets=3)
    dictionary[4] = 0.0
    targets[1] = 0.0
    result = solve_omp(dictionary, targets, 5, algorithm="screened")
    assert result.n_steps.tolist() == [5, 0, 5]
    assert torch.all(result.indices[1] == 0) and torch.all(result.coefficients[1] == 0)
    assert result.relative_residual()[1] == 0 and torch.isfinite(result.coefficients).all()


def test_k_equal_to_dictionary_size_is_full_least_squares():
    dictionary, targets = gaussian_problem(n_atoms=12, dim=20, n_targets=4)
    result = solve_omp(dictionary, targets, 12, score_dtype=FP32, algorithm="screened")
    assert sorted(result.indices[0].tolist()) == list(range(12))
    solution = torch.linalg.lstsq(dictionary.T.double(), targets.T.double()).solution.T
    torch.testing.assert_close(
        result.coefficients, solution.gather(1, result.indices).float(), atol=1e-5, rtol=1e-4
    )


def test_empty_targets():
    dictionary, _ = gaussian_problem()
    result = solve_omp(dictionary, torch.zeros(0, dictionary.shape[1]), 4, algorithm="screened")
    assert result.indices.shape == (0, 4) and result.residual_norm.shape == (0,)


def test_prepared_dictionary_is_reused_and_checked():
    dictionary, targets = gaussian_problem()
    prepared = prepare_dictionary(dictionary, score_dtype=FP32, algorithm="screened")
    assert isinstance(prepared, PreparedDictionary) and prepared.gram.shape == (300, 300)
    torch.testing.assert_close(prepared.gram, prepared.gram.T, atol=0, rtol=0)
    unit = dictionary / dictionary.norm(dim=1, keepdim=True)
    torch.testing.assert_close(prepared.gram, unit @ unit.T, atol=1e-5, rtol=1e-5)
    direct = solve_omp(dictionary, targets, 6, score_dtype=FP32, algorithm="screened")
    reused = solve_omp(prepared, targets, 6)
    assert torch.equal(direct.indices, reused.indices)
    exact = solve_omp(prepared, targets, 6, algorithm="exact")
    assert exact.indices.shape == (targets.shape[0], 6)
    with pytest.raises(ValueError, match="score_dtype"):
        solve_omp(prepared, targets, 6, score_dtype=BF16)
    plain = prepare_dictionary(dictionary, algorithm="exact")
    assert plain.gram is None
    with pytest.raises(ValueError, match="algorithm='screened'"):
        solve_omp(plain, targets, 6, algorithm="screened")
    with pytest.raises(ValueError, match="residual_tol"):
        solve_omp(prepared, targets, 6, algorithm="screened", residual_tol=0.1)
    # auto falls back to the exact path where only it supports the request
    planted, planted_targets, _, _ = planted_problem(support=3, seed=4)
    planted_prepared = prepare_dictionary(planted, score_dtype=FP32, algorithm="screened")
    stopped = solve_omp(planted_prepared, planted_targets, 8, residual_tol=1e-4)
    assert torch.equal(stopped.n_steps, torch.full((planted_targets.shape[0],), 3))


def test_auto_choice_follows_size_and_memory():
    assert choose_algorithm(39234, 9911, 64, BF16, gram_memory_bytes=8 << 30) == "screened"
    assert choose_algorithm(39234, 300, 64, BF16, gram_memory_bytes=8 << 30) == "exact"
    # A Gram too large for memory: the screened path without it, still far below k GEMM rows.
    assert choose_algorithm(39234, 9911, 64, BF16, gram_memory_bytes=1 << 30) == "screened"
    assert choose_algorithm(95968, 166061, 64, BF16, gram_memory_bytes=8 << 30) == "screened"
    assert choose_algorithm(1000, 10**6, 64, BF16, gram_memory_bytes=8 << 30) == "exact"
    small = prepare_dictionary(gaussian_problem()[0], n_targets=10**6)
    assert small.gram is None  # 300 atoms: the exact path is cheap anyway
    # no [B, k, d] fp64 atoms to hold: the screened path fits about twice the rows per batch
    exact_rows = pick_batch_size(39234, 896, 64)
    assert pick_batch_size(39234, 896, 64, algorithm="screened") > 2 * exact_rows


def test_top_groups_hand_example(monkeypatch):
    monkeypatch.setattr(omp_screened, "_GROUP_SIZE", 2)
    scores = torch.zeros(1, 16)
    scores[0, :6] = torch.tensor([5.0, -1.0, 2.0, -3.0, -9.0, 0.0])  # groups' best: 0, 3, 4
    keys = torch.empty_like(scores).view(torch.int32)
    none = torch.zeros(1, 0, dtype=torch.long)
    candidates, _ = omp_screened._top_groups(scores, keys, none, 2)
    assert sorted(candidates[0].tolist()) == [0, 4]
    before = scores.clone()
    candidates, _ = omp_screened._top_groups(scores, keys, torch.tensor([[4]]), 2)
    assert sorted(candidates[0].tolist()) == [0, 3]
    assert torch.equal(scores, before)  # taken atoms are masked for the pass only
    # only group 3 has a nonzero score: the second candidate is marked as none (key -1)
    lone = torch.zeros(1, 16)
    lone[0, 11] = -2.0  # group 3, second slice
    candidates, group_keys = omp_screened._top_groups(lone, keys, none, 2, best_first=True)
    assert candidates[0, 0].item() == 11 and group_keys[0, 1].item() == -1
    assert omp_screened._key_magnitude(group_keys, lone.dtype)[0].tolist() == pytest.approx([2.0, -1.0])


def test_refit_drops_dependent_atoms_like_the_exact_path():
    gram = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
    rhs = torch.tensor([[2.0, 2.0]], dtype=torch.float64)
    assert omp_exact._refit_dropping(gram, rhs, 1e-10).tolist() == [[2.0, 0.0]]


def test_refit_is_the_fp64_least_squares_fit_for_clean_and_nearly_dependent_rows():
    # Row 0: well-separated atoms (solved from the fp32 Gram). Row 1: atom 2 is atom 0 plus a
    # 1e-3 nudge (pivot^2 ~ 1e-6 of its norm^2, below the fp32 tier's 1e-4), so coefficients
    # are ~1e3 and an fp32 Gram would get them wrong by ~10%: it must take the fp64 Gram.
    gen = torch.Generator().manual_seed(0)
    atoms = torch.randn(8, 32, generator=gen)
    atoms[7] = atoms[0] + 1e-3 * torch.randn(32, generator=gen)
    indices = torch.tensor([[0, 1, 2], [0, 1, 7]])
    targets = torch.randn(2, 32, generator=gen).double()
    coefficients = omp_exact.refit_exact(atoms, indices, targets, torch.tensor([True, True]))
    for row in range(2):
        picked = atoms[indices[row]].double()
        expected = torch.linalg.lstsq(picked.T, targets[row]).solution
        error = (coefficients[row] - expected).norm() / expected.norm()
        assert error < (1e-5 if row == 0 else 1e-8)
    assert coefficients[1].abs().max() > 100  # the nearly dependent pair really is ill-posed


def test_screen_schedule():
    assert [s for s in range(64) if omp_screened.is_screen_step(s)] == [0, 2, 8, 16, 32, 48]
    assert omp_screened.n_screens(64) == 6 and omp_screened.n_screens(3) == 2
    # a dictionary of over 65,536 atoms screens every 8 steps
    large = [s for s in range(64) if omp_screened.is_screen_step(s, 95_968)]
    assert large == [0, 2, 4, 8, 16, 24, 32, 40, 48, 56]
    assert omp_screened.n_screens(64, 65_536) == 6 and omp_screened.n_screens(64, 65_537) == 10


def test_early_screens_through_the_gram_give_the_residuals_scores(monkeypatch):
    # U r = U x - G[:, I] c, read from Gram rows: the same scores as a GEMM on the residual,
    # here gathered in blocks of 4 rows (the last one shorter).
    monkeypatch.setattr(omp_screened, "_GRAM_SCREEN_BLOCK_BYTES", 4 * 500 * 4)
    gen = torch.Generator().manual_seed(0)
    atoms = torch.randn(500, 32, generator=gen)
    unit = atoms / atoms.norm(dim=1, keepdim=True)
    gram = omp_screened.build_gram(unit)
    targets = torch.randn(10, 32, generator=gen)
    picked = torch.randint(0, 500, (10, 3), generator=gen)
    coef = torch.randn(10, 3, generator=gen).double()
    initial = targets @ unit.T
    scores = torch.empty_like(initial)
    omp_screened._scores_through_gram(gram, initial, picked, coef, scores)
    residual = targets - torch.bmm(coef.float().unsqueeze(1), unit[picked]).squeeze(1)
    torch.testing.assert_close(scores, residual @ unit.T, atol=1e-5, rtol=1e-5)


def test_gram_screens_pick_as_well_as_gemm_screens(few_candidates, monkeypatch):
    dictionary, targets = embedding_like_problem()
    assert omp_screened._has_gram_screens(16, torch.device("cpu"))
    assert not omp_screened._has_gram_screens(2, torch.device("cpu"))  # step 2 is never reached
    through_gram = solve_omp(dictionary, targets, 16, score_dtype=BF16, algorithm="screened")
    monkeypatch.setattr(omp_screened, "_GRAM_SCREEN_MAX_STEP", 0)
    assert not omp_screened._has_gram_screens(16, torch.device("cpu"))
    through_gemm = solve_omp(dictionary, targets, 16, score_dtype=BF16, algorithm="screened")
    ratio = through_gram.relative_residual().mean() / through_gemm.relative_residual().mean()
    assert abs(ratio - 1) < 0.005
    assert (through_gram.indices[:, :2] == through_gemm.indices[:, :2]).float().mean() > 0.95


@pytest.mark.parametrize("score_dtype", [FP32, BF16])
def test_without_a_gram_picks_like_with_one(few_candidates, monkeypatch, score_dtype):
    # A dictionary whose Gram does not fit: the same selection, inner products from the rows.
    dictionary, targets = embedding_like_problem()
    without = prepare_dictionary(dictionary, score_dtype=score_dtype, n_targets=10**6, gram_memory_bytes=0)
    assert without.gram is None and without.path_name == "screened-no-gram"
    assert solve_omp(without, targets, 16, algorithm="screened").indices.shape == (100, 16)
    monkeypatch.setattr(omp_screened, "_GRAM_SCREEN_MAX_STEP", 0)  # GEMM screens on both sides
    with_gram = prepare_dictionary(dictionary, score_dtype=score_dtype, algorithm="screened")
    assert with_gram.path_name == "screened"
    expected = solve_omp(with_gram, targets, 16)
    result = solve_omp(without, targets, 16)
    # Products rounded by another kernel may break a near tie differently; nothing more.
    assert (result.indices == expected.indices).float().mean() > 0.95
    ratio = result.relative_residual().mean() / expected.relative_residual().mean()
    assert abs(ratio - 1) < 0.005
    exact = solve_omp(dictionary, targets, 16, score_dtype=FP32, algorithm="exact")
    assert result.relative_residual().mean() / exact.relative_residual().mean() <= 1.02


def test_without_a_gram_batches_keep_the_candidates_rows(few_candidates):
    # The per-batch state holds the candidates' rows, [B, M, d], and the batch pick counts them.
    plain = pick_batch_size(95968, 640, 64, algorithm="screened")
    assert pick_batch_size(95968, 640, 64, algorithm="screened", has_gram=False) < plain
    dictionary, targets = embedding_like_problem(n_targets=24)
    prepared = prepare_dictionary(dictionary, score_dtype=BF16, n_targets=10**6, gram_memory_bytes=0)
    whole = solve_omp(prepared, targets, 16, batch_size=24)
    split = solve_omp(prepared, targets, 16, batch_size=5)
    assert torch.equal(whole.indices, split.indices)
