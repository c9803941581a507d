import importlib
import shutil
from pathlib import Path

import pytest
import torch

from omp_init.resume import ChunkStore


def test_save_load_roundtrip(tmp_path):
    store = ChunkStore(tmp_path / "partial", "abc")
    store.prepare()
    assert store.load("embed", 0, 4) is None
    store.save("embed", 0, 4, {"x": torch.arange(4)})
    assert torch.equal(store.load("embed", 0, 4)["x"], torch.arange(4))
    assert not list((tmp_path / "partial").glob("*.tmp-*"))


def test_other_fingerprint_discards_chunks(tmp_path, caplog):
    ChunkStore(tmp_path / "p", "old").prepare()
    ChunkStore(tmp_path / "p", "old").save("embed", 0, 4, {"x": torch.zeros(1)})
    store = ChunkStore(tmp_path / "p", "new")
    with caplog.at_level("WARNING"):
        store.prepare()
    assert "different inputs or options" in caplog.text
    assert store.load("embed", 0, 4) is None


def test_disabled_store_keeps_nothing(tmp_path):
    store = ChunkStore(tmp_path / "p", "f", enabled=False)
    store.prepare()
    store.save("embed", 0, 4, {"x": torch.zeros(1)})
    assert store.load("embed", 0, 4) is None and not (tmp_path / "p").exists()


def test_full_disk_stops_saving_but_not_the_run(tmp_path, monkeypatch, caplog):
    """torch.save's bare RuntimeError on a full disk: warn once, drop the partial file, go on."""
    resume = importlib.import_module("omp_init.resume")
    store = ChunkStore(tmp_path / "p", "f")
    store.prepare()
    store.save("embed", 0, 4, {"x": torch.zeros(4)})
    usage = shutil.disk_usage(tmp_path)

    def full_disk_save(obj, path):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(resume.torch, "save", full_disk_save)
    monkeypatch.setattr(resume.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with caplog.at_level("WARNING"):
        store.save("embed", 4, 8, {"x": torch.zeros(4)})
        store.save("embed", 8, 12, {"x": torch.zeros(4)})
    assert caplog.text.count("no longer saved") == 1 and "--no-resume" in caplog.text
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["embed-000000000-000000004.pt", "fingerprint.json"]
    assert store.load("embed", 0, 4) is not None  # what was saved before stays loadable


def test_save_error_with_free_disk_is_raised(tmp_path, monkeypatch):
    resume = importlib.import_module("omp_init.resume")
    store = ChunkStore(tmp_path / "p", "f")
    store.prepare()
    monkeypatch.setattr(resume.torch, "save", lambda obj, path: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        store.save("embed", 0, 4, {"x": torch.zeros(4)})


def test_bytes_needed_covers_what_is_saved(tmp_path):
    store = ChunkStore(tmp_path / "p", "f")
    store.prepare()
    n, k = 300, 16
    store.save("embed", 0, n, {
        "indices": torch.zeros(n, k, dtype=torch.int64),
        "coefficients": torch.zeros(n, k),
        "residual_norm": torch.zeros(n),
        "target_norm": torch.zeros(n),
    })  # fmt: skip
    written = sum(p.stat().st_size for p in (tmp_path / "p").glob("*.pt"))
    assert 0.9 * written <= ChunkStore.bytes_needed(n, k, 1) <= written
