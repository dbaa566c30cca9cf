"""Learning from interventions: RLIF's reward labelling, the residual targets, RLPD's two buffers and their mixing,
and the task command a takeover hid."""
from __future__ import annotations

import numpy as np
import torch

from robostack.policies.rlif import (RLIFConfig, fit_residual, intervention_buffers, residual_targets, rlif_rewards,
                                     takeover_starts)


def test_the_step_before_each_takeover_is_rewarded_minus_one_and_nothing_else():
    # two episodes: a takeover at frames 3-4 and one at 6 (episode 0), one on episode 1's first frame (9)
    flags = np.array([0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0], dtype=bool)
    episode = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1])
    assert np.flatnonzero(takeover_starts(flags, episode)).tolist() == [3, 6, 9]
    rewards = rlif_rewards(flags, episode)
    assert rewards.tolist() == [0, 0, -1, 0, 0, -1, 0, 0, 0, 0, 0, 0]  # frame 8 is episode 0's end, not before 9
    assert rewards.dtype == np.float32


def test_residual_targets_invert_the_executed_rule_within_reach():
    base = np.array([[0.2, -0.5], [0.9, 0.0]])
    executed = np.array([[0.4, -0.5], [1.0, -1.0]])
    assert np.allclose(residual_targets(executed, base, 0.5), [[0.4, 0.0], [0.2, -1.0]])  # -2 clipped to -1


def _logged(n=10, obs_dim=3, act_dim=2):
    rng = np.random.default_rng(0)
    obs, base = rng.normal(size=(n, obs_dim)), rng.uniform(-1, 1, (n, act_dim))
    residual = rng.uniform(-1, 1, (n, act_dim)).astype(np.float32)
    human = np.zeros(n, dtype=bool)
    human[[3, 4, 8]] = True
    episode = np.array([0] * 6 + [1] * (n - 6))
    next_index = np.array([1, 2, 3, 4, 5, -1, 7, 8, 9, -1])
    return obs, base, residual, rlif_rewards(human, episode), next_index, human


def test_every_step_with_a_successor_goes_online_and_the_humans_steps_also_into_the_prior_buffer():
    obs, base, residual, rewards, next_index, human = _logged()
    online, prior = intervention_buffers(obs, base, residual, rewards, next_index, human)
    assert len(online["rewards"]) == 8  # the two episodes' last frames have no logged outcome
    assert len(prior["rewards"]) == 3
    inputs = np.concatenate([obs, base], axis=1).astype(np.float32)
    rows = [0, 1, 2, 3, 4, 6, 7, 8]
    assert np.allclose(online["policy_obs"].numpy(), inputs[rows])
    assert np.allclose(online["next_policy_obs"].numpy(), inputs[[1, 2, 3, 4, 5, 7, 8, 9]])
    assert np.allclose(prior["actions"].numpy(), residual[[3, 4, 8]])
    assert online["rewards"].tolist() == [0, 0, -1, 0, 0, 0, -1, 0]
    assert not online["dones"].any()


def test_each_batch_draws_half_from_the_humans_steps():
    obs, base, residual, rewards, next_index, human = _logged()
    online, prior = intervention_buffers(obs, base, residual, rewards, next_index, human)
    alg, _ = fit_residual(online, prior, RLIFConfig(updates=4, utd_ratio=1, batch_size=64, hidden=(8,)))
    batch = alg.sample_batch(1000, torch.Generator().manual_seed(0))
    human_rows = {tuple(np.round(row, 5)) for row in prior["policy_obs"].numpy()}
    from_human = sum(tuple(np.round(row, 5)) in human_rows for row in batch["policy_obs"].numpy())
    # 500 drawn from the prior buffer, plus the human's share (3 of 8) of the 500 drawn from all steps
    assert 500 + 0.375 * 500 - 60 < from_human < 500 + 0.375 * 500 + 60


def test_a_residual_learns_to_avoid_the_action_that_got_it_taken_over():
    """A one-step world: from state s the policy's residual 0 leads to a takeover (reward -1), the human's +1
    does not. The fitted residual moves towards the human's."""
    n = 400
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(n, 2)) * 0.1
    base = np.zeros((n, 1))
    human = np.arange(n) % 2 == 1
    residual = np.where(human, 1.0, 0.0)[:, None].astype(np.float32)
    rewards = np.where(human, 0.0, -1.0).astype(np.float32)
    next_index = np.arange(n)  # every step leads back to a state like itself
    online, prior = intervention_buffers(obs, base, residual, rewards, next_index, human)
    alg, losses = fit_residual(online, prior, RLIFConfig(updates=1500, utd_ratio=2, batch_size=128, hidden=(32, 32)))
    with torch.no_grad():
        chosen = alg.export_policy()(online["policy_obs"][:64])
    assert chosen.mean() > 0.5, (chosen.mean(), losses)


def test_the_behaviour_cloning_term_pulls_the_residual_to_the_humans_action_without_any_reward():
    n = 200
    obs = np.random.default_rng(2).normal(size=(n, 2))
    human = np.ones(n, dtype=bool)
    residual = np.full((n, 1), 0.6, dtype=np.float32)
    online, prior = intervention_buffers(obs, np.zeros((n, 1)), residual, np.zeros(n, np.float32), np.arange(n), human)
    cfg = RLIFConfig(updates=600, utd_ratio=1, batch_size=64, hidden=(32,), bc_weight=2.0)
    alg, _ = fit_residual(online, prior, cfg)
    with torch.no_grad():
        assert abs(alg.export_policy()(online["policy_obs"]).mean().item() - 0.6) < 0.1
