"""Residual RL on a frozen diffusion policy (``robostack.residual``): the env executes base + scaled correction,
``robostack train TASK --base RUN`` trains it with PPO, and the residual exports with its base as one bundle."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil

import numpy as np
import pytest
import torch
import yaml

from robostack import cli, sim
from robostack.bundle import BundleError, ChunkPolicyBundle, ResidualPolicyBundle, load_bundle
from robostack.workflows.runs import load_run
from robostack.workflows.acting import load_base
from robostack.workflows.residual import ResidualEnv

from helpers.measured import measured_state

TINY_BASE = ["diffusion.num_steps=20", "diffusion.warmup_steps=5", "diffusion.batch_size=16",
             "diffusion.mlp_hidden=[32, 32]", "eval_episodes=0"]
TINY_PPO = ["max_iterations=2", "num_envs=8", "ppo.num_steps_per_env=8", "eval_episodes=2"]


def _cli_json(args: list[str], cwd) -> dict:
    out, before = io.StringIO(), os.getcwd()
    os.chdir(cwd)  # run folders go to ./runs
    try:
        with contextlib.redirect_stdout(out):
            assert cli.main([*args, "--json"]) == 0
    finally:
        os.chdir(before)
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A tiny panda-insert diffusion policy (task actions) trained on 2 scripted demonstrations."""
    workdir = tmp_path_factory.mktemp("residual")
    assert cli.main(["teleop", "--task", "panda-insert", "--device", "scripted", "--out", str(workdir / "demos"),
                     "--episodes", "2", "--json"]) == 0
    summary = _cli_json(["train", "panda-insert", "--dataset", str(workdir / "demos"), *TINY_BASE], workdir)
    return workdir / summary["run_dir"]


@pytest.fixture(scope="module")
def residual_run(base_run, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("residual-ppo")
    summary = _cli_json(["train", "panda-insert", "--base", str(base_run), *TINY_PPO], workdir)
    return workdir / summary["run_dir"], summary


def test_the_env_executes_the_base_action_plus_the_scaled_correction(base_run):
    base = load_base(base_run, "panda-insert")
    task_env = sim.make_env("panda-insert", num_envs=3, seed=0, config=base.task_config)
    env = ResidualEnv(task_env, base.make_policy(task_env), 0.1)
    try:
        obs, _ = env.reset(seed=0)
        n = env.action_space.shape[0]
        assert obs["policy"].shape[1] == env.env.observation_spaces["policy"].shape[0] + n
        assert obs["critic"].shape[1] == env.env.observation_spaces["critic"].shape[0] + n
        for correction in (torch.zeros(3, n), torch.ones(3, n), -torch.ones(3, n)):
            base_action = env.base_action.clone()
            assert torch.equal(obs["policy"][:, -n:], base_action)  # the residual sees what it corrects
            obs, *_ = env.step(correction)
            expected = torch.clamp(base_action + 0.1 * correction, -1.0, 1.0)
            torch.testing.assert_close(env.env.action, expected)  # what the task executed
        assert env.task.name == "panda-insert"  # the rest is the task env's
        with pytest.raises(ValueError, match="residual scale must be in"):
            ResidualEnv(env.env, env.base, 0.0)
    finally:
        env.close()


def test_a_residual_trains_evaluates_and_exports_with_its_base(residual_run, base_run, tmp_path):
    run_dir, summary = residual_run
    assert summary["iterations"] == 2 and 0.0 <= summary["success_rate"] <= 1.0
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["residual"] == {"base": str(base_run.resolve()), "scale": 0.1}

    result = _cli_json(["eval", str(run_dir), "--episodes", "2", "--num-envs", "2"], tmp_path)
    assert result["episodes"] == 2 and result["task"] == "panda-insert"

    exported = _cli_json(["export", str(run_dir), "--out", str(tmp_path / "bundle")], tmp_path)
    assert exported["kind"] == "residual"
    bundle = load_bundle(tmp_path / "bundle")
    assert isinstance(bundle, ResidualPolicyBundle) and isinstance(bundle.base, ChunkPolicyBundle)
    assert bundle.scale == 0.1 and bundle.metadata["observation"]["terms"][-1]["name"] == "base_action"
    assert bundle.metadata["base"]["content_hash"] == bundle.base.metadata["content_hash"]

    # the residual's graph gives the run's corrections
    run, base = load_run(run_dir), load_base(base_run, "panda-insert")
    task_env = run.make_env(num_envs=4, seed=3, play=False)
    env = ResidualEnv(task_env, base.make_policy(task_env), 0.1)
    try:
        obs, _ = env.reset(seed=3)
        module = run.policy_module(env)
        with torch.no_grad():
            expected = module(obs["policy"]).numpy()
    finally:
        env.close()
    np.testing.assert_allclose(bundle.act(obs["policy"].numpy()), expected, atol=1e-5)

    result = _cli_json(["eval", str(tmp_path / "bundle"), "--episodes", "2", "--num-envs", "2", "--randomized"],
                       tmp_path)
    assert result["episodes"] == 2 and result["kind"] == "bundle"


def test_a_residual_bundle_with_a_missing_or_other_base_is_refused(residual_run, tmp_path):
    run_dir, _ = residual_run
    _cli_json(["export", str(run_dir), "--out", str(tmp_path / "bundle")], tmp_path)
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "bundle", other)
    meta_path = other / "base" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["chunk"]["ensemble_coef"] = 0.5  # a different base: its own hash no longer holds
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="content hash mismatch"):
        load_bundle(other)
    shutil.rmtree(other / "base")
    with pytest.raises(BundleError, match="missing base/"):
        load_bundle(other)


def test_a_base_must_be_a_diffusion_policy_of_the_same_task_acting_in_task_actions(base_run, residual_run, capsys):
    with pytest.raises(ValueError, match="trained for task 'panda-insert', not 'panda-lift'"):
        load_base(base_run, "panda-lift")
    with pytest.raises(ValueError, match="is a 'ppo' policy"):
        load_base(residual_run[0], "panda-insert")
    with pytest.raises(FileNotFoundError, match="no such run folder or bundle"):
        load_base(base_run / "nope", "panda-insert")
    assert cli.main(["train", "panda-insert", "--base", str(base_run), "--dataset", "x"]) == 2
    assert "--base trains a residual with reinforcement learning" in capsys.readouterr().err


def test_policy_node_runs_a_residual_bundle_as_the_simulation_does(residual_run, tmp_path):
    """The deploy side places the hole where it was measured, runs the base's chunks and the residual's graph
    on the observations it rebuilds, and executes what the residual env executes, step for step."""
    from robostack.bundle.kinds import ResidualActor
    from robostack.real.observation import ObservationError
    from robostack.real.policy_node import PolicyRunner
    from robostack.workflows.acting import load_policy

    run_dir, _ = residual_run
    out = tmp_path / "bundle"
    _cli_json(["export", str(run_dir), "--out", str(out)], tmp_path)
    runner = PolicyRunner(str(out))
    assert isinstance(runner.actor, ResidualActor) and runner.builder.task.fixtures == ("hole",)
    loaded = load_policy(out)
    assert loaded.wrap_env is None  # in simulation the bundle's own actor runs the base too
    env = sim.make_env("panda-insert", num_envs=1, seed=2, play=True, config=loaded.task_config)
    try:
        obs, _ = env.reset(seed=2)
        policy = loaded.make_policy(env)
        for step in range(12):  # past the base's second chunk
            state = measured_state(env, runner.builder.joint_names)
            for builder in runner.builders:
                builder.update(state)
            executed = runner.actor.act()[0]
            runner.builder.controls(executed)  # the node records what it sent (the last-action term)
            obs, *_ = env.step(policy(obs))
            np.testing.assert_allclose(executed, env.action[0].numpy(), atol=2e-3, err_msg=f"step {step}")
    finally:
        env.close()
    state.fixtures = {}
    with pytest.raises(ObservationError, match=r"places 'hole' per episode: state.fixtures\['hole'\] must be"):
        runner.builder.update(state)
