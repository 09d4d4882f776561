"""Data-parallel fits on PyTorch's own engine (``torchrun``, or any launcher that sets the ``env://``
variables: ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).

Each rank fits the same model on its share of every batch: the ELBO module (Pyro's ``ELBO(model, guide)``)
is wrapped in ``DistributedDataParallel`` once the guide's parameters exist, so gradients are averaged
across ranks. The data plate is told the per-rank batch and the full data size, so each rank's loss is an
unbiased ELBO estimate and the KL is counted once (the average of the ranks' equal KL terms), not divided
by the world size. Initial parameters are identical (the same seed, and DDP broadcasts rank 0's); the
sampling seeds are offset by rank; only rank 0 writes.

    torchrun --nproc-per-node 2 -m pyro_bhpeft fit --task sentiment --guide mean-field --out runs/ddp
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["world", "is_main", "init_from_env", "wrap_loss"]


def world() -> tuple[int, int]:
    """``(rank, world size)``: ``(0, 1)`` outside a distributed run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes results (rank 0, or the only process)."""
    return world()[0] == 0


def init_from_env(device: torch.device | None = None) -> bool:
    """Join the process group a launcher described in the environment (``WORLD_SIZE`` > 1); NCCL on
    CUDA, gloo otherwise. Returns whether this is a distributed run."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return True


def wrap_loss(loss_module: torch.nn.Module) -> torch.nn.Module:
    """``loss_module`` (an ELBO module) under ``DistributedDataParallel`` when the process group is up:
    the gradients of its trainable parameters (the guide's; the frozen backbone has none) are averaged."""
    if world()[1] == 1:
        return loss_module
    return torch.nn.parallel.DistributedDataParallel(loss_module, find_unused_parameters=True,
                                                     broadcast_buffers=False)
