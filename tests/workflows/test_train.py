"""Smoke tests of ``robostack.train.train`` on the toy point-mass env (monkeypatched ``make_env``)."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

import robostack.sim  # noqa: E402
from robostack.config import ConfigError, config_path, load_config  # noqa: E402
from robostack.workflows.evaluate import evaluate  # noqa: E402
from robostack.policies.ppo import PPO  # noqa: E402
from robostack.workflows.train import train, train_config_type  # noqa: E402
from helpers.toy_env import PointMassEnv, make_toy_env, toy_task_config  # noqa: E402

RECIPE = """
num_envs: 64
max_iterations: 12
seed: 3
torch_threads: 1
save_interval: 5
eval_episodes: 64
ppo:
  num_steps_per_env: 16
  learning_rate: 3.0e-3
  actor_hidden: [32, 32]
  critic_hidden: [32, 32]
"""


@pytest.fixture
def toy(monkeypatch, tmp_path):
    calls = []

    def make_env(task, num_envs, seed, overrides=(), play=False, config=None, backend="mujoco", device="cpu"):
        assert backend == "mujoco" and device == "cpu"  # the toy env stands in for the default backend
        calls.append({"task": task, "num_envs": num_envs, "seed": seed, "play": play,
                      "config": toy_task_config(task, overrides, play, config)})
        return make_toy_env(task, num_envs, seed, overrides, play, config)

    monkeypatch.setattr(robostack.sim, "make_env", make_env, raising=False)
    monkeypatch.setattr(robostack.sim, "load_task_config", toy_task_config, raising=False)
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(RECIPE)
    old = torch.get_num_threads()
    yield {"recipe": str(recipe), "runs": str(tmp_path / "runs"), "calls": calls}
    torch.set_num_threads(old)


def read_rows(run_dir) -> list[dict[str, str]]:
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_train_writes_a_run_folder_and_improves(toy):
    summary = train("toy", config=toy["recipe"], run_root=toy["runs"], progress=False,
                    overrides=["task.max_episode_length=30"])
    run = Path(summary["run_dir"])
    assert run.parent == Path(toy["runs"]) / "toy" and run.name.endswith("-ppo")
    assert summary["iterations"] == 12 and summary["env_steps"] == 12 * 64 * 16
    for key in ("success_rate", "mean_return", "mean_length", "episodes", "wall_s", "reward/distance"):
        assert key in summary, key
    assert summary["episodes"] == 64

    # the task override went to make_env (train and play variants), not to the recipe
    assert [c["play"] for c in toy["calls"]] == [False, True]
    assert all(c["config"] == {"max_episode_length": 30} for c in toy["calls"])  # task.* overrides reach the task
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["task"] == "toy" and saved["task_overrides"] == ["max_episode_length=30"]
    assert saved["train"]["num_envs"] == 64 and saved["train"]["ppo"]["actor_hidden"] == [32, 32]

    rows = read_rows(run)
    assert [int(r["iteration"]) for r in rows] == list(range(1, 13))
    for col in ("env_steps", "wall_s", "steps_per_s", "mean_return", "mean_episode_length", "success_rate",
                "reward/distance", "reward/reach", "surrogate_loss", "value_loss", "kl", "lr", "action_std"):
        assert col in rows[0], col
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["last.pt", "model_10.pt", "model_12.pt", "model_5.pt"]
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "training_curves.png").stat().st_size > 1000

    # the trained deterministic policy beats the untrained one by far
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["iteration"] == 12
    cfg = load_config(train_config_type(), toy["recipe"])
    env = PointMassEnv(num_envs=64, max_episode_length=30)
    torch.manual_seed(0)
    untrained = PPO.from_env(env, cfg.ppo)
    untrained.eval_mode()
    base = evaluate(env, lambda o: untrained.actor_critic.act_inference(o["policy"]), 64, seed=5)
    assert summary["mean_return"] > base["mean_return"] + 10.0
    assert summary["success_rate"] > base["success_rate"] + 0.3
    first = [float(r["mean_return"]) for r in rows[1:5] if r["mean_return"]]
    last = [float(r["mean_return"]) for r in rows[-4:] if r["mean_return"]]
    assert sum(last) / len(last) > sum(first) / len(first)


def test_resume_continues_the_iteration_count(toy):
    first = train("toy", config=toy["recipe"], run_root=toy["runs"], progress=False,
                  overrides=["max_iterations=3", "eval_episodes=0"])
    run = first["run_dir"]
    assert first["iterations"] == 3
    again = train("toy", resume=run, run_root=toy["runs"], progress=True,
                  overrides=["max_iterations=5", "eval_episodes=8"])
    assert again["run_dir"] == run and again["iterations"] == 5
    assert again["env_steps"] == 5 * 64 * 16
    assert [int(r["iteration"]) for r in read_rows(run)] == [1, 2, 3, 4, 5]
    ckpt = torch.load(Path(run) / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["iteration"] == 5 and ckpt["env_steps"] == 5 * 64 * 16
    assert yaml.safe_load((Path(run) / "config.yaml").read_text())["train"]["max_iterations"] == 5
    with pytest.raises(ValueError):
        train("other-task", resume=run, run_root=toy["runs"], progress=False)


def test_same_seed_gives_same_metrics(toy):
    over = ["max_iterations=3", "eval_episodes=16"]
    a = train("toy", config=toy["recipe"], run_root=toy["runs"], progress=False, overrides=over, seed=7)
    b = train("toy", config=toy["recipe"], run_root=toy["runs"], progress=False, overrides=over, seed=7)
    c = train("toy", config=toy["recipe"], run_root=toy["runs"], progress=False, overrides=over, seed=8)
    assert a["run_dir"] != b["run_dir"]
    timing = ("wall_s", "steps_per_s")

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in timing} for r in rows]

    assert strip(read_rows(a["run_dir"])) == strip(read_rows(b["run_dir"]))
    assert strip(read_rows(a["run_dir"])) != strip(read_rows(c["run_dir"]))
    assert a["mean_return"] == b["mean_return"]


def test_bad_override_is_a_config_error(toy):
    with pytest.raises(ConfigError, match="ppo.learning_rat"):
        train("toy", config=toy["recipe"], run_root=toy["runs"], progress=False, overrides=["ppo.learning_rat=1"])


@pytest.mark.parametrize("task", ["cf2-hover", "panda-reach", "go2-walk"])
def test_shipped_recipes_load(task):
    cfg = load_config(train_config_type(), config_path("train", f"{task}.yaml"))
    assert cfg.algo == "ppo" and cfg.num_envs > 0 and cfg.max_iterations > 0
    assert cfg.num_envs * cfg.ppo.num_steps_per_env % cfg.ppo.num_mini_batches == 0


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    """Many processes asking for a run folder at once: each gets a fresh one (the mkdir decides, not a check)."""
    from concurrent.futures import ProcessPoolExecutor

    from robostack.workflows.runs import new_run_dir

    with ProcessPoolExecutor(4) as pool:
        folders = list(pool.map(new_run_dir, [tmp_path] * 16, ["cartpole"] * 16, ["ppo"] * 16))
    assert len(set(folders)) == 16 and all(folder.is_dir() for folder in folders)
