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
