"""Process-group handling: who am I, which new tokens are mine, and how results meet on rank 0.

The OMP work is split across every rank of a ``torch.distributed`` job (``torchrun``,
``accelerate launch``, or a process group an integration such as axolotl/DeepSpeed already
initialized). Each rank solves a contiguous shard of the new tokens on its own device; the
small per-token results (atom indices, coefficients, residuals) are gathered on rank 0, which
alone writes the checkpoint while the others wait at a barrier.

A plain ``python -m omp_init`` run is a world of one and never touches ``torch.distributed``.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import DistributedError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job.

    Attributes:
        rank: global rank (0 in a single-process run).
        world_size: number of ranks.
        local_rank: rank on this node; picks the CUDA device.
        device: where this rank solves its shard.
        initialized_here: True when this module created the process group (and so destroys it).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def prefix(self) -> str:
        """Log prefix for messages every rank emits, e.g. ``[rank 1] ``."""
        return f"[rank {self.rank}] " if self.is_distributed else ""


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N`` into a device; ``auto`` prefers this rank's GPU."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
        if preference == "cpu":
            return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DistributedError(f"--device {preference} was asked for but no CUDA device is visible; pass --device cpu.")
    if preference == "cuda":
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(preference)


def init_distributed(device_preference: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Join the live process group, start one from launcher variables, or run alone.

    A group that already exists (axolotl and DeepSpeed initialize one before plugins run) is
    reused as is. Otherwise ``WORLD_SIZE``/``RANK`` from torchrun or accelerate start one: NCCL
    when this rank runs on CUDA, gloo on CPU.
    """
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device)
    if env_world <= 1:
        return DistContext(0, 1, 0, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, initialized_here=True)
    logger.info("%sjoined a %d-rank %s group", ctx.prefix(), ctx.world_size, backend)
    return ctx


def shutdown(ctx: DistContext) -> None:
    """Destroy the process group only if this module created it."""
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def shard_range(n_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous, balanced ``[start, stop)`` of ``n_items`` for ``rank``.

    Example: ``shard_range(10, r, 3)`` gives (0, 4), (4, 7), (7, 10) for r = 0, 1, 2.
    """
    base, extra = divmod(n_items, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _collective_device(ctx: DistContext) -> torch.device:
    return ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_to_main(local: torch.Tensor, counts: list[int], ctx: DistContext) -> torch.Tensor | None:
    """Concatenate every rank's rows (in rank order) on rank 0; other ranks get ``None``.

    Args:
        local: ``[counts[ctx.rank], ...]`` this rank's rows.
        counts: rows held by each rank, known to every rank (shards are deterministic), so
            no extra collective is needed to size the buffers. Shards are padded to the
            longest for the collective and trimmed after.
    """
    if not ctx.is_distributed:
        return local
    device = _collective_device(ctx)
    padded = torch.zeros((max(counts), *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local.to(device)
    # all_gather works on every backend (gather is missing on NCCL in older torch); non-main
    # ranks drop the result right away.
    gathered = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, padded)
    if not ctx.is_main:
        return None
    return torch.cat([part[:count] for part, count in zip(gathered, counts, strict=True)]).to(local.device)


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


def check_all_ranks(ctx: DistContext, error: BaseException | None) -> None:
    """Collective success check: every rank learns whether any rank failed, and which.

    Call it after work that can fail on one rank alone (loading, solving): it keeps the other
    ranks from hanging at the next collective, and names the failed ranks in the error.
    """
    if not ctx.is_distributed:
        if error is not None:
            raise error
        return
    flags = torch.zeros(ctx.world_size, dtype=torch.int32, device=_collective_device(ctx))
    flags[ctx.rank] = 0 if error is None else 1
    dist.all_reduce(flags)
    failed = [r for r in range(ctx.world_size) if flags[r].item()]
    if error is not None:
        raise error
    if failed:
        raise DistributedError(f"rank(s) {', '.join(map(str, failed))} failed (see their log above); fix that error and relaunch.")
