"""Data parallelism for the trainer: one process, or ranks of a torch.distributed group.

`Parallel` is what the trainer asks of its ranks: which shard of a step is
this rank's, the sum of every rank's gradients and statistics, and whether
any rank wants to stop. `Single` is one process (nothing to exchange);
`Distributed` runs over the default torch.distributed process group — gloo on
CPU, NCCL on CUDA — set up by `init_group` with the ranks' shared address.

Every rank holds the same LoRA weights and optimizer state: gradients are
all-reduced (one flat buffer per step) before clipping, so each rank takes the
same optimizer step, and rank 0 alone writes what leaves the process.
"""

from __future__ import annotations


class Single:
    rank, world_size = 0, 1

    @property
    def is_main(self) -> bool:
        return True

    def shard(self, items: list) -> list:
        return items

    def all_reduce_grads(self, params: list) -> None:
        pass

    def sum(self, values: list[float]) -> list[float]:
        return values

    def any(self, flag: bool) -> bool:
        return flag


class Distributed(Single):
    """This process's rank of the default process group."""

    def __init__(self) -> None:
        import torch
        import torch.distributed as dist

        self.torch, self.dist = torch, dist
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        return items[self.rank :: self.world_size]

    def all_reduce_grads(self, params: list) -> None:
        torch = self.torch
        # a rank whose shard was empty (or missed a module) contributes zeros
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads]).to(self.device)
        self.dist.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.device, p.dtype)
            offset += n

    def sum(self, values: list[float]) -> list[float]:
        torch = self.torch
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        self.dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        t = self.torch.tensor([1.0 if flag else 0.0], device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return bool(t.item())


def init_group(rank: int, world_size: int, address: str, cuda: bool = False) -> Distributed:
    """Join the `world_size` ranks meeting at `address` (`tcp://host:port`)."""
    import torch
    import torch.distributed as dist

    if cuda:
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(
        "nccl" if cuda else "gloo", init_method=address, rank=rank, world_size=world_size
    )
    return Distributed()


def leave_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
