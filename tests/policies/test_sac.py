"""Soft Actor-Critic (``robostack.policies.sac``): the math, the buffers, checkpoints and a toy training run."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

import robostack.sim  # noqa: E402
from robostack.config import config_path, load_config  # noqa: E402
from robostack.workflows.evaluate import evaluate  # noqa: E402
from robostack.policies.sac import (  # noqa: E402
    BUFFER_KEYS, SAC, ReplayBuffer, SACConfig, compute_targets, polyak_update, squashed_log_prob)
from robostack.workflows.train import train, train_config_type  # noqa: E402
from helpers.toy_env import PointMassEnv, make_toy_env, toy_task_config  # noqa: E402

P, C, A = 4, 5, 2  # toy env: policy obs, critic obs, action sizes


def small_cfg(**kw) -> SACConfig:
    base = dict(actor_hidden=(32, 32), critic_hidden=(32, 32), batch_size=32, buffer_size=1000, learning_starts=0)
    base.update(kw)
    return SACConfig(**base)


def transitions(n: int, reward: float | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "policy_obs": torch.randn(n, P, generator=g), "critic_obs": torch.randn(n, C, generator=g),
        "actions": torch.rand(n, A, generator=g) * 2 - 1,
        "rewards": torch.full((n,), reward) if reward is not None else torch.randn(n, generator=g),
        "next_policy_obs": torch.randn(n, P, generator=g), "next_critic_obs": torch.randn(n, C, generator=g),
        "dones": (torch.rand(n, generator=g) < 0.1).float(),
    }


# ------------------------------------------------------------------------------------------- targets


def test_compute_targets_by_hand():
    reward = torch.tensor([1.0, 2.0, 3.0, -1.0])
    done = torch.tensor([0.0, 1.0, 0.0, 0.0])  # only env 1 terminated (env 3 was a time-out: bootstraps)
    q1 = torch.tensor([10.0, 5.0, -1.0, 4.0])
    q2 = torch.tensor([8.0, 7.0, -2.0, 6.0])
    log_prob = torch.tensor([0.5, 0.1, -1.0, 2.0])
    target = compute_targets(reward, done, q1, q2, log_prob, alpha=0.2, gamma=0.9)
    expected = torch.tensor([
        1.0 + 0.9 * (8.0 - 0.2 * 0.5),  # twin minimum is q2, entropy term subtracts alpha * log_prob
        2.0,  # terminated: no bootstrap at all
        3.0 + 0.9 * (-2.0 - 0.2 * -1.0),  # negative log-prob (high entropy) raises the target
        -1.0 + 0.9 * (4.0 - 0.2 * 2.0),
    ])
    torch.testing.assert_close(target, expected)
    # alpha as a tensor works the same
    torch.testing.assert_close(compute_targets(reward, done.bool(), q1, q2, log_prob, torch.tensor(0.2), 0.9),
                               expected)


def test_process_env_step_bootstraps_truncations_only():
    sac = SAC(P, C, A, num_envs=3, cfg=small_cfg())
    obs = {"policy": torch.zeros(3, P), "critic": torch.zeros(3, C)}
    next_obs = {"policy": torch.ones(3, P), "critic": torch.ones(3, C)}  # already reset for envs 1 and 2
    final = {"policy": torch.full((3, P), 7.0), "critic": torch.full((3, C), 7.0)}
    terminated = torch.tensor([False, True, False])
    truncated = torch.tensor([False, False, True])
    info = {"final_obs": final, "done": terminated | truncated}
    action = torch.tensor([[0.5, -0.5]] * 3)
    with torch.inference_mode():  # as in the trainer
        sac.process_env_step(obs, action, torch.tensor([1.0, 2.0, 3.0]), terminated, truncated, info, next_obs)
    d = sac.buffer.data
    assert len(sac.buffer) == 3 and sac.num_transitions == 3 and sac.pending_env_steps == 1
    torch.testing.assert_close(d["dones"][:3], torch.tensor([0.0, 1.0, 0.0]))  # time-out is not done
    torch.testing.assert_close(d["next_policy_obs"][:3, 0], torch.tensor([1.0, 7.0, 7.0]))
    torch.testing.assert_close(d["next_critic_obs"][:3, 0], torch.tensor([1.0, 7.0, 7.0]))
    torch.testing.assert_close(d["rewards"][:3], torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(d["actions"][:3], action)


# -------------------------------------------------------------------------------------------- buffers


def test_replay_buffer_wraps_around_and_samples_shapes():
    buf = ReplayBuffer(5, P, C, A)

    def add(values):
        t = transitions(len(values))
        t["rewards"] = torch.tensor(values, dtype=torch.float32)
        t["policy_obs"] = t["rewards"][:, None].expand(-1, P)
        buf.add(**t)

    add([0, 1, 2])
    assert len(buf) == 3 and buf.ptr == 3
    add([3, 4, 5, 6])  # wraps: rows 3, 4, 0, 1
    assert len(buf) == 5 and buf.ptr == 2
    assert buf.data["rewards"].tolist() == [5, 6, 2, 3, 4]
    assert buf.data["policy_obs"][:, 0].tolist() == [5, 6, 2, 3, 4]
    add(list(range(10, 17)))  # more than the capacity: only the 5 newest survive
    assert len(buf) == 5 and buf.ptr == 2
    assert sorted(buf.data["rewards"].tolist()) == [12, 13, 14, 15, 16]

    batch = buf.sample(7, torch.Generator().manual_seed(0))
    shapes = {k: tuple(v.shape) for k, v in batch.items()}
    assert shapes == {"policy_obs": (7, P), "critic_obs": (7, C), "actions": (7, A), "rewards": (7,),
                      "next_policy_obs": (7, P), "next_critic_obs": (7, C), "dones": (7,)}
    assert set(batch["rewards"].tolist()) <= {12, 13, 14, 15, 16}
    torch.testing.assert_close(batch["policy_obs"][:, 0], batch["rewards"])  # rows stay together

    state = buf.state_dict()
    other = ReplayBuffer(5, P, C, A)
    other.load_state_dict(state)
    assert len(other) == 5 and other.ptr == 2
    for k in BUFFER_KEYS:
        torch.testing.assert_close(other.data[k], buf.data[k])
    with pytest.raises(RuntimeError):
        ReplayBuffer(3, P, C, A).sample(1)


@pytest.mark.parametrize("ratio, expected", [(0.5, 32), (0.25, 16), (0.0, 0), (1.0, 64)])
def test_prior_data_share_of_each_batch(ratio, expected):
    sac = SAC(P, C, A, num_envs=8, cfg=small_cfg(batch_size=64, prior_ratio=ratio),
              prior_data=transitions(50, reward=-1.0))  # prior rows are marked by reward -1
    sac.buffer.add(**transitions(200, reward=1.0))
    for _ in range(3):
        batch = sac.sample_batch()
        assert batch["rewards"].shape == (64,)
        assert int((batch["rewards"] < 0).sum()) == expected
    # without prior data every row is online
    plain = SAC(P, C, A, num_envs=8, cfg=small_cfg(batch_size=64, prior_ratio=ratio))
    plain.buffer.add(**transitions(200, reward=1.0))
    assert bool((plain.sample_batch()["rewards"] > 0).all())
    with pytest.raises(KeyError):
        sac.load_prior_data({"rewards": torch.zeros(3)})


# ------------------------------------------------------------------------------------------ the math


def test_squashed_log_prob_matches_a_numerical_density():
    mean, log_std = torch.tensor([0.3], dtype=torch.float64), torch.tensor([math.log(0.8)], dtype=torch.float64)
    # density of a = tanh(u) on a fine grid of (-1, 1): integrates to 1 ...
    a = torch.linspace(-1 + 1e-7, 1 - 1e-7, 400_001, dtype=torch.float64)
    u = torch.atanh(a)
    density = squashed_log_prob(u[:, None], mean, log_std).exp()
    assert abs(torch.trapezoid(density, a).item() - 1.0) < 1e-4
    # ... and the probability of an interval equals that of its pre-image under the Gaussian
    lo, hi = -0.2, 0.6
    inside = (a >= lo) & (a <= hi)
    numeric = torch.trapezoid(density[inside], a[inside]).item()
    normal = torch.distributions.Normal(mean, log_std.exp())
    exact = (normal.cdf(torch.atanh(torch.tensor(hi, dtype=torch.float64)))
             - normal.cdf(torch.atanh(torch.tensor(lo, dtype=torch.float64)))).item()
    assert abs(numeric - exact) < 1e-5
    # multi-dimensional, against finite differences of tanh: log N(u) - sum log |d tanh / du|
    g = torch.Generator().manual_seed(0)
    u = torch.randn(64, 3, generator=g, dtype=torch.float64) * 1.5
    m = torch.randn(64, 3, generator=g, dtype=torch.float64)
    ls = torch.randn(64, 3, generator=g, dtype=torch.float64) * 0.5
    h = 1e-6
    jac = (torch.tanh(u + h) - torch.tanh(u - h)) / (2 * h)
    ref = torch.distributions.Normal(m, ls.exp()).log_prob(u).sum(-1) - jac.log().sum(-1)
    torch.testing.assert_close(squashed_log_prob(u, m, ls), ref, rtol=1e-6, atol=1e-6)
    # stays finite far in the tails, where 1 - tanh(u)^2 underflows
    assert torch.isfinite(squashed_log_prob(torch.tensor([[30.0, -30.0]]), torch.zeros(1, 2), torch.zeros(1, 2))).all()


def test_polyak_update():
    src, tgt = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in tgt.parameters()]
    polyak_update(tgt, src, 0.1)
    for t, b, s in zip(tgt.parameters(), before, src.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)
    polyak_update(tgt, src, 1.0)
    for t, s in zip(tgt.parameters(), src.parameters()):
        torch.testing.assert_close(t, s)


def test_update_moves_the_target_critics_by_tau_only():
    torch.manual_seed(0)
    sac = SAC(P, C, A, num_envs=4, cfg=small_cfg(tau=0.25))
    sac.buffer.add(**transitions(100))
    old_target = [p.clone() for p in sac.critic_target.parameters()]
    sac.update(num_updates=1)
    for new, old, online in zip(sac.critic_target.parameters(), old_target, sac.critic.parameters()):
        torch.testing.assert_close(new, 0.75 * old + 0.25 * online)


@pytest.mark.parametrize("target_entropy, rises", [(50.0, True), (-50.0, False)])
def test_temperature_moves_toward_the_target_entropy(target_entropy, rises):
    torch.manual_seed(0)
    sac = SAC(P, C, A, num_envs=4, cfg=small_cfg(init_temperature=0.5, target_entropy=target_entropy))
    sac.buffer.add(**transitions(100))
    out = sac.update(num_updates=5)
    # the entropy of a squashed Gaussian on [-1, 1]^2 is at most 2 log 2: below +50 (alpha rises), above -50
    assert (out["alpha"] > 0.5) == rises and out["alpha"] != 0.5
    assert set(out) == {"critic_loss", "actor_loss", "alpha", "q_mean", "entropy"}
    assert all(math.isfinite(v) for v in out.values())


def test_learning_starts_and_update_count():
    env = PointMassEnv(num_envs=4)
    sac = SAC.from_env(env, small_cfg(learning_starts=10, utd_ratio=3))
    obs, _ = env.reset(seed=0)
    assert all(math.isnan(v) for v in sac.update().values())  # nothing collected yet
    for step in range(4):  # 16 transitions: the first 3 steps (12 transitions) act uniformly at random
        action = sac.act(obs)
        assert action.shape == (4, A) and bool((action.abs() <= 1).all())
        nxt, r, te, tr, info = env.step(action)
        sac.process_env_step(obs, action, r, te, tr, info, nxt)
        obs = nxt
    assert sac.pending_env_steps == 4 and sac.can_update()
    calls = []
    original = sac.sample_batch
    sac.sample_batch = lambda *a, **k: calls.append(1) or original(*a, **k)
    out = sac.update()
    assert len(calls) == 4 * 3 and sac.pending_env_steps == 0  # utd_ratio critic updates per env step
    assert math.isfinite(out["critic_loss"])


def test_actions_are_scaled_to_the_bounds_and_actor_is_asymmetric():
    class Env:
        num_envs = 5
        device = torch.device("cpu")
        observation_spaces = {"policy": gym.spaces.Box(-np.inf, np.inf, (P,)),
                              "critic": gym.spaces.Box(-np.inf, np.inf, (C,))}
        action_space = gym.spaces.Box(np.array([0.0, -3.0], np.float32), np.array([2.0, -1.0], np.float32))

    sac = SAC.from_env(Env(), small_cfg(learning_starts=0))
    assert sac.actor.trunk[0].in_features == P  # the actor never reads critic-only terms
    assert sac.critic.q1[0][0].in_features == C + A
    obs = {"policy": torch.randn(5, P) * 10, "critic": torch.randn(5, C)}
    for a in (sac.act(obs), sac.act_inference(obs["policy"]), sac.export_policy()(obs["policy"])):
        assert bool((a[:, 0] >= 0).all() and (a[:, 0] <= 2).all() and (a[:, 1] >= -3).all() and (a[:, 1] <= -1).all())
    a = torch.rand(5, A) * 2 - 1
    torch.testing.assert_close(sac.actor.from_env_action(sac.actor.to_env_action(a)), a)
    with pytest.raises(ValueError):
        SAC(P, C, A, 1, small_cfg(), action_low=-np.inf, action_high=np.inf)


@pytest.mark.parametrize("normalize_obs", [False, True])
def test_checkpoint_round_trip_gives_identical_actions(normalize_obs):
    torch.manual_seed(0)
    env = PointMassEnv(num_envs=8)
    a = SAC.from_env(env, small_cfg(normalize_obs=normalize_obs))
    obs, _ = env.reset(seed=1)
    for _ in range(10):
        act = a.act(obs)
        nxt, r, te, tr, info = env.step(act)
        a.process_env_step(obs, act, r, te, tr, info, nxt)
        obs = nxt
    a.update()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)  # a differently initialized copy
    b = SAC.from_env(env, small_cfg(normalize_obs=normalize_obs))
    x = torch.randn(16, P) * 2
    assert not torch.equal(a.act_inference(x), b.act_inference(x))
    b.load_state_dict(torch.load(buf, weights_only=False))
    a.eval_mode()
    b.eval_mode()
    assert torch.equal(a.act_inference(x), b.act_inference(x))
    assert torch.equal(a.export_policy()(x), b.export_policy()(x))
    assert torch.equal(a.export_policy()(x), a.act_inference(x))
    assert b.num_transitions == a.num_transitions == 80 and torch.equal(b.log_alpha, a.log_alpha)
    if normalize_obs:
        assert float(b.actor.normalizer.count) == 80.0


# ----------------------------------------------------------------------------------------- training


RECIPE = """
algo: ppo               # the argument algo="sac" replaces it
num_envs: 64
max_iterations: 12
seed: 3
torch_threads: 1
save_interval: 10
eval_episodes: 32
ppo:
  num_steps_per_env: 16
sac:
  num_envs: 16          # replace the top-level values for SAC
  max_iterations: 30
  num_steps_per_env: 10
  utd_ratio: 4
  batch_size: 128
  learning_starts: 500
  actor_lr: 1.0e-3
  critic_lr: 1.0e-3
  alpha_lr: 1.0e-3
  gamma: 0.95
  init_temperature: 0.1
  actor_hidden: [64, 64]
  critic_hidden: [64, 64]
"""


@pytest.fixture
def toy(monkeypatch, tmp_path):
    monkeypatch.setattr(robostack.sim, "make_env", make_toy_env, raising=False)
    monkeypatch.setattr(robostack.sim, "load_task_config", toy_task_config, raising=False)
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(RECIPE)
    old = torch.get_num_threads()
    yield {"recipe": str(recipe), "runs": str(tmp_path / "runs")}
    torch.set_num_threads(old)


def read_rows(run_dir) -> list[dict[str, str]]:
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_sac_trains_on_the_toy_env(toy):
    summary = train("toy", algo="sac", config=toy["recipe"], run_root=toy["runs"], progress=False,
                    overrides=["task.max_episode_length=30"])
    run = Path(summary["run_dir"])
    assert run.name.endswith("-sac") and summary["algo"] == "sac"
    assert summary["iterations"] == 30 and summary["env_steps"] == 30 * 16 * 10
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["algo"] == "sac" and saved["train"]["num_envs"] == 16 and saved["train"]["max_iterations"] == 30
    assert saved["train"]["sac"]["num_envs"] is None  # resolved to the top level
    rows = read_rows(run)
    assert [int(r["iteration"]) for r in rows] == list(range(1, 31))
    for col in ("critic_loss", "actor_loss", "alpha", "q_mean", "entropy", "mean_return", "reward/distance"):
        assert col in rows[0], col
    assert rows[0]["critic_loss"] == "" and rows[-1]["critic_loss"] != ""  # no update before learning_starts
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["algo"] == "sac" and ckpt["algorithm"]["num_transitions"] == 30 * 16 * 10

    env = PointMassEnv(num_envs=32, max_episode_length=30)
    torch.manual_seed(0)
    untrained = SAC.from_env(env, load_config(train_config_type(), toy["recipe"]).sac)
    base = evaluate(env, lambda o: untrained.act_inference(o["policy"]), 32, seed=5)
    assert summary["mean_return"] > base["mean_return"] + 10.0
    assert summary["success_rate"] > base["success_rate"] + 0.3


def test_sac_is_deterministic_and_resumes(toy):
    over = ["max_iterations=5", "eval_episodes=0"]  # explicit: wins over sac.max_iterations
    a = train("toy", algo="sac", config=toy["recipe"], run_root=toy["runs"], progress=False, overrides=over)
    b = train("toy", algo="sac", config=toy["recipe"], run_root=toy["runs"], progress=False, overrides=over)
    assert a["iterations"] == 5

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in ("wall_s", "steps_per_s")} for r in rows]

    assert strip(read_rows(a["run_dir"])) == strip(read_rows(b["run_dir"]))
    assert read_rows(a["run_dir"])[-1]["critic_loss"] != ""

    again = train("toy", resume=a["run_dir"], run_root=toy["runs"], progress=False, overrides=["max_iterations=6"])
    assert again["iterations"] == 6 and again["env_steps"] == 6 * 16 * 10 and again["algo"] == "sac"
    assert [int(r["iteration"]) for r in read_rows(a["run_dir"])] == list(range(1, 7))
    from robostack.config import ConfigError
    with pytest.raises(ConfigError):
        train("toy", algo="ppo", resume=a["run_dir"], run_root=toy["runs"], progress=False)


def test_shipped_cf2_recipe_has_a_sac_section():
    cfg = load_config(train_config_type(), config_path("train", "cf2-hover.yaml"))
    assert cfg.algo == "ppo"
    assert cfg.sac.num_envs and 64 <= cfg.sac.num_envs <= 256 and cfg.sac.utd_ratio == 1
    assert cfg.sac.max_iterations and cfg.sac.learning_starts >= cfg.sac.batch_size
