"""``omp-init demo`` wiring: the embedded default runs the library's default method."""

from __future__ import annotations

import importlib
from pathlib import Path

from omp_init import demo
from omp_init.config import TransplantConfig


def test_demo_transplants_with_the_default_method(monkeypatch, tmp_path):
    calls = {}

    class _Result:
        report = {"config": {}}

    def fake_transplant(**kwargs):
        calls["transplant"] = kwargs
        return _Result()

    def fake_evaluate(models, texts, **kwargs):
        calls["texts"] = texts
        stats = {Path(t).name: {"bits_per_byte": 1.0} for t in texts}
        return {"models": {label: {"texts": stats} for label in ("base", "new")}}

    class _Source:
        local_dir = tmp_path / "base"

    monkeypatch.setattr(
        demo, "fetch_registry_model", lambda name, cache_dir=None: tmp_path / f"{name}.gguf"
    )
    # the package re-exports the function under the module's name, so patch the module itself
    monkeypatch.setattr(
        importlib.import_module("omp_init.transplant"), "transplant", fake_transplant
    )
    monkeypatch.setattr("omp_init.evaluate.evaluate_models", fake_evaluate)
    monkeypatch.setattr("omp_init.sources.resolve_model", lambda *a, **k: _Source())
    summary = demo.run_demo(tmp_path / "out", k=8, max_bytes=100)
    kwargs = calls["transplant"]
    default = TransplantConfig(base="b", donor="d", output="o").method
    assert default == "omp+fvt" and kwargs.get("method", default) == default
    assert kwargs["k"] == 8 and kwargs["base"].endswith("smollm2-135m.gguf")
    assert [Path(t).name for t in calls["texts"]] == list(demo.DEMO_TEXTS)
    assert (tmp_path / "out" / "demo_summary.json").exists() and summary["bits_per_byte"]
