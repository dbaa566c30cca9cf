"""PPO building blocks: GAE with time-out bootstrap, normalizer, log-probs, the update, checkpoints."""
from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch

from robostack.workflows.evaluate import evaluate  # noqa: E402
from robostack.policies.ppo import PPO, EmpiricalNormalizer, PPOConfig, gaussian_entropy, gaussian_log_prob  # noqa: E402
from helpers.toy_env import PointMassEnv  # noqa: E402


def small_cfg(**kw) -> PPOConfig:
    base = dict(num_steps_per_env=16, actor_hidden=(32, 32), critic_hidden=(32, 32), learning_rate=3e-3)
    base.update(kw)
    return PPOConfig(**base)


# ------------------------------------------------------------------------------------------------ GAE


def test_gae_hand_computed_with_timeout_bootstrap_and_termination():
    gamma, lam = 0.9, 0.8
    cfg = PPOConfig(num_steps_per_env=3, gamma=gamma, lam=lam, critic_hidden=(), actor_hidden=(), normalize_obs=False,
                    num_mini_batches=1)
    algo = PPO(num_policy_obs=1, num_critic_obs=1, num_actions=1, num_envs=2, cfg=cfg)
    with torch.no_grad():  # V(critic_obs) = critic_obs[0]
        algo.actor_critic.critic[0].weight.fill_(1.0)
        algo.actor_critic.critic[0].bias.zero_()

    def obs(v0, v1):
        return {"policy": torch.zeros(2, 1), "critic": torch.tensor([[v0], [v1]])}

    f = torch.tensor
    # env 0: t0 time-out (final V=2.0 -> bootstrapped), t1 plain, t2 terminated
    # env 1: t0 plain, t1 terminated AND truncated (no bootstrap), t2 plain, then V(last)=4
    algo.act(obs(0.5, 1.0))
    algo.process_env_step(f([1.0, 1.0]), f([False, False]), f([True, False]),
                          {"final_obs": {"critic": f([[2.0], [99.0]]), "policy": torch.zeros(2, 1)}})
    algo.act(obs(1.0, 2.0))
    algo.process_env_step(f([0.0, 1.0]), f([False, True]), f([False, True]),
                          {"final_obs": {"critic": f([[99.0], [99.0]]), "policy": torch.zeros(2, 1)}})
    algo.act(obs(1.5, 0.0))
    algo.process_env_step(f([3.0, 0.5]), f([True, False]), f([False, False]), {})
    algo.compute_returns(obs(7.0, 4.0))

    s = algo.storage
    torch.testing.assert_close(s.rewards, f([[1.0 + 0.9 * 2.0, 1.0], [0.0, 1.0], [3.0, 0.5]]))
    torch.testing.assert_close(s.dones, f([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    # env 0: A2 = 3 - 1.5 = 1.5; A1 = (0 + .9*1.5 - 1) + .72*1.5 = 1.43; A0 = 2.8 - 0.5 = 2.3
    # env 1: A2 = 0.5 + .9*4 - 0 = 4.1; A1 = 1 - 2 = -1; A0 = (1 + .9*2 - 1) + .72*(-1) = 1.08
    expected_adv = f([[2.3, 1.08], [1.43, -1.0], [1.5, 4.1]])
    torch.testing.assert_close(s.advantages, expected_adv)
    torch.testing.assert_close(s.returns, expected_adv + f([[0.5, 1.0], [1.0, 2.0], [1.5, 0.0]]))


# ----------------------------------------------------------------------------------------- normalizer


def test_normalizer_matches_numpy_over_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=[3.0, -2.0, 0.0], scale=[0.5, 4.0, 1e-2], size=(n, 3)) for n in (1, 7, 100, 33)]
    norm = EmpiricalNormalizer(3)
    for b in batches:
        norm.update(torch.tensor(b, dtype=torch.float32))
    data = np.concatenate(batches).astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(norm.mean.numpy(), data.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(norm.var.numpy(), data.var(0), rtol=1e-6, atol=1e-12)
    assert int(norm.count) == len(data)
    x = torch.tensor(data, dtype=torch.float32)
    y = norm(x)
    np.testing.assert_allclose(y.mean(0).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.std(0, unbiased=False).numpy(), 1.0, atol=1e-3)

    norm.eval()  # frozen
    norm.update(torch.full((10, 3), 100.0))
    assert int(norm.count) == len(data)
    restored = EmpiricalNormalizer(3)
    restored.load_state_dict(norm.state_dict())
    torch.testing.assert_close(restored(x), y)


# ----------------------------------------------------------------------------------------- log-probs


def test_log_prob_and_entropy_match_torch_distributions():
    torch.manual_seed(0)
    mean, std, x = torch.randn(50, 3), torch.rand(50, 3) + 0.1, torch.randn(50, 3) * 3
    normal = torch.distributions.Normal(mean, std)
    torch.testing.assert_close(gaussian_log_prob(x, mean, std), normal.log_prob(x).sum(-1))
    torch.testing.assert_close(gaussian_entropy(std), normal.entropy().sum(-1))


@pytest.mark.parametrize("bounded", ["clip", "tanh"])
def test_act_stores_unbounded_sample_and_its_log_prob(bounded):
    torch.manual_seed(0)
    env = PointMassEnv(num_envs=256)
    algo = PPO.from_env(env, small_cfg(init_noise_std=2.0, bounded_actions=bounded))
    obs, _ = env.reset(seed=0)
    action = algo.act(obs)
    s = algo.storage
    sample, mean, std = s.actions[0], s.mean[0], s.std[0]
    normal = torch.distributions.Normal(mean, std)
    torch.testing.assert_close(s.log_probs[0], normal.log_prob(sample).sum(-1))
    assert action.min() >= -1.0 and action.max() <= 1.0
    assert sample.abs().max() > 1.0  # the stored sample is not squashed/clipped
    if bounded == "clip":
        torch.testing.assert_close(action, sample.clamp(-1.0, 1.0))
    else:
        torch.testing.assert_close(action, torch.tanh(sample))
    # the mean action is bounded too
    det = algo.actor_critic.act_inference(obs["policy"])
    assert det.abs().max() <= 1.0


# -------------------------------------------------------------------------------------------- update


def collect(algo: PPO, env: PointMassEnv, obs):
    with torch.inference_mode():
        for _ in range(algo.cfg.num_steps_per_env):
            obs, r, term, trunc, info = env.step(algo.act(obs))
            algo.process_env_step(r, term, trunc, info)
        algo.compute_returns(obs)
    return obs


def test_update_lowers_the_surrogate_loss():
    torch.manual_seed(0)
    env = PointMassEnv(num_envs=64)
    algo = PPO.from_env(env, small_cfg(desired_kl=None, learning_rate=1e-3))
    obs, _ = env.reset(seed=0)
    collect(algo, env, obs)
    stats = algo.update()
    for key in ("surrogate_loss", "value_loss", "entropy", "kl", "learning_rate", "action_std", "clip_fraction"):
        assert np.isfinite(stats[key]), key
    s = algo.storage  # the data stays after update; advantages were normalized in place
    with torch.no_grad():
        mean, std = algo.actor_critic.distribution(s.policy_obs)
        ratio = torch.exp(gaussian_log_prob(s.actions, mean, std) - s.log_probs)
        a = s.advantages
        after = -torch.min(ratio * a, ratio.clamp(0.8, 1.2) * a).mean()
    before = -a.mean()  # ratio = 1 with the old policy
    assert abs(before) < 1e-5
    assert after < before - 0.01


def test_policy_improves_on_toy_env():
    torch.manual_seed(0)
    env = PointMassEnv(num_envs=64)
    eval_env = PointMassEnv(num_envs=32)
    algo = PPO.from_env(env, small_cfg())

    def score():
        algo.eval_mode()
        out = evaluate(eval_env, lambda o: algo.actor_critic.act_inference(o["policy"]), 64, seed=123)
        algo.train_mode()
        return out

    before = score()
    obs, _ = env.reset(seed=0)
    for _ in range(12):
        obs = collect(algo, env, obs)
        algo.update()
    after = score()
    assert after["episodes"] == 64
    assert after["mean_return"] > before["mean_return"] + 10.0
    assert after["success_rate"] > before["success_rate"]


def test_adaptive_learning_rate_stays_in_bounds():
    torch.manual_seed(0)
    env = PointMassEnv(num_envs=32)
    algo = PPO.from_env(env, small_cfg(desired_kl=1e-6, learning_rate=1e-3))
    obs, _ = env.reset(seed=0)
    collect(algo, env, obs)
    stats = algo.update()
    assert stats["learning_rate"] < 1e-3 and stats["learning_rate"] >= 1e-5
    assert algo.optimizer.param_groups[0]["lr"] == algo.learning_rate


# -------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_gives_identical_actions():
    torch.manual_seed(0)
    env = PointMassEnv(num_envs=32)
    algo = PPO.from_env(env, small_cfg())
    obs, _ = env.reset(seed=0)
    collect(algo, env, obs)
    algo.update()
    buf = io.BytesIO()
    torch.save(algo.state_dict(), buf)
    buf.seek(0)

    torch.manual_seed(1)  # a differently initialized model
    other = PPO.from_env(env, small_cfg())
    probe = torch.randn(100, 4)
    assert not torch.allclose(other.actor_critic.act_inference(probe), algo.actor_critic.act_inference(probe))
    other.load_state_dict(torch.load(buf, weights_only=False))
    algo.eval_mode()
    other.eval_mode()
    torch.testing.assert_close(other.actor_critic.act_inference(probe), algo.actor_critic.act_inference(probe),
                               rtol=0, atol=0)
    torch.testing.assert_close(other.actor_critic.export_policy()(probe), algo.actor_critic.act_inference(probe))
    assert other.learning_rate == algo.learning_rate
    s1, s2 = algo.optimizer.state_dict(), other.optimizer.state_dict()
    for k in s1["state"]:
        torch.testing.assert_close(s1["state"][k]["exp_avg"], s2["state"][k]["exp_avg"])


def test_registered_builder_is_lazy_and_builds_ppo():
    import subprocess

    code = "import sys, robostack.policies; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

    from robostack import policies, registry

    policies.load()
    spec = registry.algorithm("ppo")
    learner = spec.trainer(PointMassEnv(num_envs=8), small_cfg())
    assert isinstance(learner.alg, PPO) and learner.alg.storage.actions.shape == (16, 8, 2)
    assert spec.trains_with == "reinforcement" and spec.bundle_kind == "actor_critic"
