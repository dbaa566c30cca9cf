"""Training on several processes and machines: ``torchrun`` starts the ranks, each joins its process group here
(gloo on CPUs, NCCL on GPUs), steps its own envs with its own seed, and the algorithms average gradients and
normalizer statistics across ranks (``robostack.policies.distributed``); rank 0 writes the run folder.

One machine, N processes (``--nproc``: torchrun's engine in this process, as ``torchrun --standalone``)::

    robostack train cf2-hover --nproc 2

Several machines: the same command on each node, node 0's address as the rendezvous endpoint::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 --rdzv-id JOB \\
        -m robostack.cli train go2-walk

``num_envs`` is per rank: N ranks collect N times the recipe's samples per iteration.
"""
from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def pin_local_cores(local_rank: int, local_world: int) -> list[int]:
    """Give this rank its share of the machine's cores (contiguous blocks, one each if there are fewer cores than
    ranks), so ranks' simulator and torch threads do not contend; returns the share."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= local_world:
        share = [int(c) for c in np.array_split(cores, local_world)[local_rank]]
    else:
        share = [cores[local_rank % len(cores)]]
    os.sched_setaffinity(0, share)
    return share


def join(device: str) -> tuple[int, int, str]:
    """Inside torchrun: pin this rank's cores, join the process group and return ``(rank, world_size, device)``
    (a CUDA device becomes this rank's GPU). Outside: ``(0, 1, device)``."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device}: this machine has no CUDA GPU that torch can use")
    if not launched_by_torchrun():
        return 0, 1, device
    import torch.distributed as dist

    local_rank, local_world = int(os.environ["LOCAL_RANK"]), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.startswith("cuda"):
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"local rank {local_rank} has no GPU of its own: this machine has "
                             f"{torch.cuda.device_count()}; start at most that many ranks per machine on cuda")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        pin_local_cores(local_rank, local_world)
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size(), device


def leave() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _train_rank(kwargs: dict[str, Any]) -> dict[str, Any]:
    """One rank of ``launch`` (a process of torch's elastic agent): ``train(**kwargs)``; a user error is one line
    and a failed rank, which makes the agent stop the others."""
    from robostack.config import ConfigError
    from robostack.workflows.train import train

    try:
        return train(**kwargs)
    except (ConfigError, KeyError, ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"robostack: rank {os.environ.get('RANK', '?')}: error: {exc}\n")
        sys.stderr.flush()
        os._exit(2)


def launch(nproc: int, **train_kwargs: Any) -> dict[str, Any]:
    """``robostack.workflows.train.train(**train_kwargs)`` on ``nproc`` local ranks, started by torchrun's engine
    (``torch.distributed.launcher``, as ``torchrun --standalone``); returns rank 0's summary."""
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
                          start_method="spawn")
    # the ranks report their own errors; the agent's account of stopping the others repeats them
    quiet = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.CRITICAL)
    try:
        results = elastic_launch(config, _train_rank)(train_kwargs)
    except ChildFailedError as exc:
        rank, _ = exc.get_first_failure()
        raise RuntimeError(f"distributed training stopped: rank {rank} of {nproc} failed (its error is above)") from None
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    return results[0]
