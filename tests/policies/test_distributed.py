"""Data-parallel training (``robostack.policies.distributed``): two gloo ranks, each stepping its own envs with its
own seed, end every update with identical parameters and normalizer statistics; without the gradient exchange
they would not."""
from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from helpers.ranks import train_rank


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(tmp_path, algo: str, average: bool = True) -> list[dict]:
    mp.spawn(train_rank, args=(2, free_port(), algo, str(tmp_path), average), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_two_gloo_ranks_keep_identical_parameters_after_updates(tmp_path, algo):
    ranks = run_ranks(tmp_path, algo)
    assert ranks[0]["reward_sum"] != ranks[1]["reward_sum"]  # each rank learned from its own rollouts
    assert not torch.equal(ranks[0]["state"], ranks[0]["initial"])  # the updates moved the weights
    assert torch.equal(ranks[0]["initial"], ranks[1]["initial"])  # rank 0's start was broadcast
    assert torch.equal(ranks[0]["state"], ranks[1]["state"])  # and they moved as one
    assert ranks[0]["in_sync"] and ranks[1]["in_sync"]
    # the normalizer counted every rank's rows
    assert ranks[0]["normalizer_count"] == ranks[1]["normalizer_count"] == ranks[0]["rows"] * 2


def test_ranks_that_do_not_average_gradients_drift_apart(tmp_path):
    ranks = run_ranks(tmp_path, "ppo", average=False)
    assert not torch.equal(ranks[0]["state"], ranks[1]["state"])
    assert not ranks[0]["in_sync"] and not ranks[1]["in_sync"]
