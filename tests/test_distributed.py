import torch

from omp_init.distributed import DistContext, gather_to_main, init_distributed, shard_range


def test_shard_range_covers_everything_once():
    for n in (0, 1, 7, 10, 101):
        for world in (1, 2, 3, 8):
            ranges = [shard_range(n, r, world) for r in range(world)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges[:-1], ranges[1:], strict=True))
            sizes = [stop - start for start, stop in ranges]
            assert max(sizes) - min(sizes) <= 1


def test_single_process_context(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.is_distributed) == (0, 1, True, False)
    assert ctx.prefix() == ""
    rows = torch.arange(6).reshape(3, 2)
    assert gather_to_main(rows, [3], ctx) is rows


def test_prefix_names_rank():
    ctx = DistContext(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"))
    assert ctx.prefix() == "[rank 1] " and not ctx.is_main
