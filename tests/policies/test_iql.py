"""Implicit Q-Learning (``robostack.policies.iql``): the math by hand, a tiny offline chain, export, prior sampling."""
from __future__ import annotations

import io
import math

import pytest
import torch

from robostack.policies.iql import IQL, LOSS_KEYS, IQLConfig, awr_weights, expectile_loss, q_targets
from robostack.policies.sac import BUFFER_KEYS

P, C, A = 4, 5, 2  # policy obs, critic obs, action sizes of the random-data tests


def small_cfg(**kw) -> IQLConfig:
    return IQLConfig(**{"actor_hidden": (32, 32), "critic_hidden": (32, 32), "batch_size": 32, **kw})


def transitions(n: int, reward: float | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    actions = torch.rand(n, A, generator=g) * 2 - 1
    actions[: n // 4, 0] = 1.0  # saturated commands, as logs hold them
    actions[n // 4: n // 2, 1] = -1.0
    return {
        "policy_obs": torch.randn(n, P, generator=g) * 3 + 1, "critic_obs": torch.randn(n, C, generator=g),
        "actions": actions,
        "rewards": torch.full((n,), reward) if reward is not None else torch.randn(n, generator=g),
        "next_policy_obs": torch.randn(n, P, generator=g), "next_critic_obs": torch.randn(n, C, generator=g),
        "dones": torch.rand(n, generator=g) < 0.1,
    }


# ----------------------------------------------------------------------------------------------- math


def test_expectile_loss_by_hand():
    diff = torch.tensor([2.0, -1.0, 0.5, -2.0])  # Q - V
    # positive errors weigh tau = 0.7, negative ones 1 - tau = 0.3
    expected = (0.7 * 4.0 + 0.3 * 1.0 + 0.7 * 0.25 + 0.3 * 4.0) / 4
    torch.testing.assert_close(expectile_loss(diff, 0.7), torch.tensor(expected))
    torch.testing.assert_close(expectile_loss(diff, 0.5), 0.5 * diff.square().mean())  # tau 0.5: half the MSE
    # its minimiser over a constant V is the expectile: for Q in {0, 1} equally often, exactly tau
    q = torch.tensor([0.0, 1.0])
    v = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([v], lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        expectile_loss(q - v, 0.9).backward()
        opt.step()
    assert v.item() == pytest.approx(0.9, abs=1e-4)


def test_q_target_by_hand():
    rewards = torch.tensor([1.0, 2.0, -1.0])
    dones = torch.tensor([False, True, False])  # only transition 1 terminated: no bootstrap
    next_v = torch.tensor([10.0, 5.0, 3.0])
    torch.testing.assert_close(q_targets(rewards, dones, next_v, gamma=0.9), torch.tensor([10.0, 2.0, 1.7]))


def test_awr_weights_are_clipped_without_overflow():
    adv = torch.tensor([-1.0, 0.0, 0.5, 1e4])
    torch.testing.assert_close(awr_weights(adv, beta=2.0, max_weight=100.0),
                               torch.tensor([torch.e ** -2, 1.0, torch.e, 100.0]))


# ------------------------------------------------------------------------------------ an offline chain


def chain_data(copies: int = 16) -> dict[str, torch.Tensor]:
    """Two states, one action dimension, each state's data half good, half bad behaviour:
    in s_A, +0.5 moves to s_B (reward 0), -0.5 ends the episode with 0.2; in s_B, +0.5 ends it with 1, -0.5 with 0."""
    s_a, s_b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    rows = [(s_a, 0.5, 0.0, s_b, False), (s_a, -0.5, 0.2, s_a, True),
            (s_b, 0.5, 1.0, s_b, True), (s_b, -0.5, 0.0, s_b, True)] * copies
    obs, next_obs = torch.stack([r[0] for r in rows]), torch.stack([r[3] for r in rows])
    return {"policy_obs": obs, "critic_obs": obs.clone(), "actions": torch.tensor([[r[1]] for r in rows]),
            "rewards": torch.tensor([r[2] for r in rows]), "next_policy_obs": next_obs,
            "next_critic_obs": next_obs.clone(), "dones": torch.tensor([r[4] for r in rows])}


def test_iql_learns_the_chain_offline():
    """With gamma 0.9 and expectile 0.9: Q(s_B, +) = 1, Q(s_B, -) = 0, so V(s_B) = the 0.9-expectile of {0, 1}
    = 0.9; Q(s_A, +) = 0.9 * 0.9 = 0.81, Q(s_A, -) = 0.2, so V(s_A) = 0.2 + 0.9 * 0.61 = 0.749. The policy picks
    the better logged action (+0.5) in both states though the data holds each half the time."""
    torch.manual_seed(0)
    cfg = small_cfg(expectile=0.9, beta=10.0, gamma=0.9, tau=0.05, actor_lr=1e-3, critic_lr=1e-3, value_lr=1e-3,
                    batch_size=256)
    iql = IQL(2, 2, 1, cfg)
    iql.load_data(chain_data())
    iql.update(350)
    for optimizer in (iql.value_optimizer, iql.critic_optimizer, iql.actor_optimizer):  # anneal the noise away
        optimizer.param_groups[0]["lr"] = 1e-4
    stats = iql.update(150)
    assert set(stats) == set(LOSS_KEYS) and all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert iql.updates_done == 500

    states = torch.eye(2)
    with torch.no_grad():
        v = iql.value(iql.critic_normalizer(states)).squeeze(-1)
        q = torch.minimum(*iql.critic(iql.critic_normalizer(states.repeat_interleave(2, 0)),
                                      torch.tensor([[0.5], [-0.5], [0.5], [-0.5]])))
    torch.testing.assert_close(q, torch.tensor([0.81, 0.2, 1.0, 0.0]), atol=0.03, rtol=0)
    torch.testing.assert_close(v, torch.tensor([0.749, 0.9]), atol=0.03, rtol=0)
    actions = iql.act_inference(states).squeeze(-1)
    assert (actions > 0.4).all() and (actions < 0.6).all(), actions  # the good action, +0.5, in both states


# ------------------------------------------------------------------------------- updates and export


def test_update_on_saturated_actions_is_finite_and_keeps_the_target_behind():
    torch.manual_seed(0)
    iql = IQL(P, C, A, small_cfg(actor_dropout=0.1))
    with pytest.raises(RuntimeError, match="load_data"):
        iql.update(1)
    iql.load_data(transitions(200))
    stats = iql.update(20)
    assert set(stats) == set(LOSS_KEYS)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values()), stats
    assert 0.0 < stats["weight_mean"] <= iql.cfg.max_weight
    assert all(math.isnan(v) for v in iql.update(0).values())  # no update: NaN
    online, target = iql.critic.state_dict(), iql.critic_target.state_dict()
    assert not torch.equal(online["q1.1.weight"], target["q1.1.weight"])  # Polyak: the target lags


def test_load_data_checks_its_input():
    iql = IQL(P, C, A, small_cfg())
    data = transitions(10)
    with pytest.raises(KeyError, match="dones"):
        iql.load_data({k: v for k, v in data.items() if k != "dones"})
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        iql.load_data({**data, "actions": data["actions"] * 2})
    with pytest.raises(ValueError, match="critic_obs"):
        iql.load_data({**data, "critic_obs": torch.zeros(10, C + 1)})
    with pytest.raises(ValueError, match="same number"):
        iql.load_data({**data, "rewards": torch.zeros(9)})


def test_observation_statistics_are_measured_once_and_constant_dims_not_scaled():
    data = transitions(500)
    data["policy_obs"][:, 2] = 4.0  # a dimension the logs never vary
    iql = IQL(P, C, A, small_cfg())
    iql.load_data(data)
    norm = iql.actor.normalizer
    torch.testing.assert_close(norm.mean.float(), data["policy_obs"].mean(0), atol=1e-4, rtol=0)
    assert norm.var[2].item() == 1.0  # centred, not divided by sqrt(1e-8)
    iql.update(2)
    mean = norm.mean.clone()
    iql.load_data(transitions(500, seed=1))  # a reload (e.g. after resuming) keeps the statistics
    assert torch.equal(norm.mean, mean)


def test_export_is_deterministic_matches_the_actor_mean_and_exports():
    torch.manual_seed(0)
    iql = IQL(P, C, A, small_cfg(actor_dropout=0.2))
    iql.load_data(transitions(200))
    iql.update(5)  # leaves the learner in train mode (dropout on)
    module = iql.export_policy()
    obs = torch.randn(64, P) * 5
    out = module(obs)
    assert out.shape == (64, A) and out.abs().max() <= 1.0
    torch.testing.assert_close(module(obs), out, rtol=0, atol=0)
    iql.actor.eval()
    with torch.no_grad():
        mean, _ = iql.actor(obs)
    torch.testing.assert_close(out.detach(), torch.tanh(mean), atol=1e-6, rtol=0)
    torch.testing.assert_close(iql.act_inference(obs), out.detach(), atol=1e-6, rtol=0)

    scripted = torch.jit.script(module)
    torch.testing.assert_close(scripted(obs), out, atol=1e-6, rtol=0)
    onnxruntime = pytest.importorskip("onnxruntime")
    buf = io.BytesIO()
    torch.onnx.export(module, (obs[:1],), buf, input_names=["obs"], output_names=["action"],
                      dynamic_axes={"obs": {0: "batch"}, "action": {0: "batch"}}, dynamo=False)
    session = onnxruntime.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"obs": obs.numpy()})
    torch.testing.assert_close(torch.from_numpy(onnx_out), out.detach(), atol=1e-5, rtol=0)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    iql = IQL(P, C, A, small_cfg())
    iql.load_data(transitions(100))
    iql.update(3)
    state = iql.state_dict()
    fresh = IQL(P, C, A, small_cfg())
    fresh.load_state_dict(state)
    obs = torch.randn(8, P)
    torch.testing.assert_close(fresh.export_policy()(obs), iql.export_policy()(obs), rtol=0, atol=0)
    assert fresh.updates_done == 3
    assert torch.equal(fresh.critic_normalizer.mean, iql.critic_normalizer.mean)
    fresh.load_data(transitions(100, seed=3))
    fresh.update(1)  # the loaded optimizer states step on
    with pytest.raises(ValueError, match="IQL"):
        fresh.load_state_dict({**state, "algo": "sac"})


# ---------------------------------------------------------------------------------------- prior data


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_prior_ratio_draws_its_share_of_every_batch(ratio):
    iql = IQL(P, C, A, small_cfg(prior_ratio=ratio, batch_size=200))
    iql.load_data(transitions(300, reward=0.0), prior=transitions(50, reward=1.0, seed=1))
    for _ in range(3):
        batch = iql.sample_batch()
        assert set(BUFFER_KEYS) <= set(batch) and batch["rewards"].shape == (200,)
        assert batch["num_prior"] == round(ratio * 200)
        assert int(batch["rewards"].sum()) == round(ratio * 200)
    iql.load_data(transitions(300, reward=0.0))  # no prior: all from the data
    assert int(iql.sample_batch()["rewards"].sum()) == 0
    stats = iql.update(2)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
