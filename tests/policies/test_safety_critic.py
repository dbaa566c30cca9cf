"""The safety critic's learning: the TD target on hand-computed cases, and fitted TD recovering the discounted
violation probability of a small Markov chain whose answer is known in closed form."""
from __future__ import annotations

import numpy as np
import torch

from robostack.policies.safety_critic import CriticTrainConfig, fit_critic, td_targets


def test_td_target_by_hand():
    gamma = 0.9
    violation = torch.tensor([True, False, False, True])
    next_risk = torch.tensor([0.5, 0.5, 0.2, 0.7])
    terminal = torch.tensor([True, False, True, True])  # the episode ended after steps 0, 2 and 3
    # violated: 1 whatever follows; safe and going on: gamma * Q(s', a') = 0.9 * 0.5; safe at an episode's end: 0
    expected = torch.tensor([1.0, 0.45, 0.0, 1.0])
    torch.testing.assert_close(td_targets(violation, next_risk, terminal, gamma), expected)


def test_fitted_td_learns_the_discounted_probability_of_a_violation_ahead():
    """A chain 0 -> 1 -> 2 -> violation, where each step also ends the episode safely with probability p. From
    state k (3 - k steps before the violation), Q = gamma^(2-k) * (1-p)^(2-k); a safe absorbing state 3 has 0."""
    rng = np.random.default_rng(0)
    gamma, p, n = 0.8, 0.25, 20_000
    state = rng.integers(0, 4, n)
    safe_end = rng.random(n) < p
    violation = (state == 2) & ~safe_end
    next_state = np.where(state < 3, state + 1, 3)
    terminal = violation | safe_end | (state == 3)
    one_hot = np.eye(4, dtype=np.float32)
    data = {"x": one_hot[state], "x_next": one_hot[next_state], "violation": violation, "terminal": terminal}
    cfg = CriticTrainConfig(hidden=[32], steps=1500, batch_size=512, learning_rate=3e-3, target_tau=0.05,
                            torch_threads=1)
    net = fit_critic(data, gamma, cfg, seed=0, progress=False)
    with torch.no_grad():
        risk = net(torch.as_tensor(one_hot))[:, 0].numpy()
    expected = [(gamma * (1 - p)) ** (2 - k) * (1 - p) for k in range(3)] + [0.0]
    np.testing.assert_allclose(risk, expected, atol=0.04)
    assert risk[0] < risk[1] < risk[2]  # the nearer the violation, the higher the risk
