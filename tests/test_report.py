"""The end-of-run summary lines that depend on the numbers (the report itself is tested with the transplant)."""

import pytest

from omp_init.report import HIGH_RESIDUAL, summarize


def _report(mean_relative: float, k: int = 64) -> dict:
    stats = {"count": 10, "mean_relative": mean_relative, "median_relative": mean_relative, "p90_relative": mean_relative}
    return {
        "vocab": {"new_size": 20, "rows_written": 20, "copied": 10, "solved": 10, "fallback": 0, "padding": 0},
        "config": {"method": "omp+fvt", "k": k, "base": "b", "donor": "d"},
        "inputs": {"donor_is_base": False},
        "residuals": {"embed": stats},
        "timings_s": {"total": 1.0},
        "world_size": 1,
        "device": "cpu",
    }


@pytest.mark.parametrize(
    ("mean_relative", "k", "hinted"),
    [(0.48, 64, True), (HIGH_RESIDUAL, 64, True), (0.33, 64, False), (0.48, 128, False)],
)
def test_high_residual_suggests_k128(mean_relative, k, hinted):
    summary = summarize(_report(mean_relative, k))
    assert ("--k 128" in summary) is hinted
    assert "no donor model" not in summary


def test_no_donor_line():
    report = _report(0.3)
    report["inputs"]["donor_is_base"] = True  # set from the resolved paths, not the spellings
    report["vocab"]["fallback"] = 10
    assert "no donor model (the base stands in)" in summarize(report)
