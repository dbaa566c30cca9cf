"""A residual bundle over an actor-critic bundle (``write_residual_bundle``, no training run): it evaluates, seals
its base, refuses a base that does not fit, and deploys through ``policy_node`` as it acts in simulation. The
base is the shipped cf2-hover bundle; the residuals are fixed modules whose corrections are known."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from robostack import sim
from robostack.bundle import BundleError, PolicyBundle, ResidualPolicyBundle, content_hash, load_bundle
from robostack.cli import main
from robostack.workflows.export import write_residual_bundle

from helpers.measured import measured_state

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
BASE = BUNDLES / "cf2-hover"
SCALE = 0.5
CORRECTION = [0.5, -0.5, 3.0, 0.0]  # the constant residual's output: 3.0 is clipped to 1.0 by the writer
SHIFT = np.array([0.25, -0.25, 0.5, 0.0], np.float32)  # SCALE x half-range (1) x clip(CORRECTION, -1, 1)


def _constant(value: list[float]) -> torch.nn.Module:
    """A residual module whose correction is ``value`` whatever it observes."""
    base = load_bundle(BASE)
    module = torch.nn.Linear(base.obs_dim + base.action_dim, base.action_dim)
    torch.nn.init.zeros_(module.weight)
    with torch.no_grad():
        module.bias.copy_(torch.tensor(value))
    return module


def _write(out: Path, value: list[float], base: Path = BASE, scale: float = SCALE) -> Path:
    return write_residual_bundle(out, base, _constant(value), scale, "interventions", {"episodes": 0})


@pytest.fixture(scope="module")
def zero(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("residual") / "zero", [0.0] * 4)


@pytest.fixture(scope="module")
def constant(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("residual") / "constant", CORRECTION)


@pytest.fixture
def copy(zero, tmp_path) -> Path:
    """A private copy of the zero residual to damage."""
    return Path(shutil.copytree(zero, tmp_path / "bundle"))


def _eval(source: Path, capsys) -> dict:
    assert main(["eval", str(source), "--episodes", "8", "--seed", "0", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _reseal(path: Path, edit) -> None:
    meta = json.loads((path / "metadata.json").read_text())
    edit(meta)
    meta["content_hash"] = content_hash(path, meta)
    (path / "metadata.json").write_text(json.dumps(meta, indent=2))


# ------------------------------------------------------------------------------------------ acting


def test_a_zero_residual_evaluates_exactly_like_its_base(zero, capsys):
    base, residual = _eval(BASE, capsys), _eval(zero, capsys)
    assert residual["episodes"] == 8 and residual["task"] == "cf2-hover"
    for key in ("success_rate", "mean_return", "mean_length"):
        assert residual[key] == base[key], key


def test_a_constant_residual_shifts_the_base_action_by_scale_times_half_range_times_its_value(constant):
    from robostack.workflows.acting import load_policy

    bundle = load_bundle(constant)
    np.testing.assert_array_equal(bundle.executed(np.array([[0.9, -0.9, 0.2, 0.3]], np.float32),
                                                  np.array([CORRECTION], np.float32)),
                                  np.array([[1.0, -1.0, 0.7, 0.3]], np.float32))  # clipped to the actions' range
    residual, base = load_policy(constant), load_policy(BASE)
    env = sim.make_env("cf2-hover", num_envs=4, seed=1, play=False, config=residual.task_config)
    try:
        acting, reference = residual.make_policy(env), base.make_policy(env)
        obs, _ = env.reset(seed=1)
        for _ in range(10):
            action = acting(obs)
            expected = np.clip(reference(obs).numpy() + SHIFT, -1.0, 1.0)
            np.testing.assert_array_equal(action.numpy(), expected)
            obs, *_ = env.step(action)
    finally:
        env.close()


# -------------------------------------------------------------------------------------- the bundle


def test_the_residual_bundle_carries_and_seals_its_base(zero, copy):
    bundle = load_bundle(zero)
    assert isinstance(bundle, ResidualPolicyBundle) and isinstance(bundle.base, PolicyBundle)
    meta, base_meta = bundle.metadata, bundle.base.metadata
    assert sorted(p.name for p in (zero / "base").iterdir()) == sorted(p.name for p in BASE.iterdir())
    assert meta["base"] == {"path": "base", "content_hash": json.loads((BASE / "metadata.json").read_text())[
        "content_hash"]}
    assert meta["observation"]["terms"][:-1] == base_meta["observation"]["terms"]
    assert meta["observation"]["terms"][-1]["name"] == "base_action" and bundle.obs_dim == 37 + 4
    assert meta["action"] == base_meta["action"] and meta["task_config"] == base_meta["task_config"]
    assert (meta["algo"], meta["training"], meta["residual"]["scale"]) == ("interventions", {"episodes": 0}, SCALE)

    data = bytearray((copy / "base" / "policy.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "base" / "policy.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"base: content hash mismatch: files were modified"):
        load_bundle(copy)
    shutil.rmtree(copy / "base")
    shutil.copytree(BASE, copy / "base")
    _reseal(copy / "base", lambda m: m["training"].update(note="another base, sealed on its own"))
    with pytest.raises(BundleError, match="base/ is not the base this residual was exported with"):
        load_bundle(copy)


def test_a_residual_over_another_tasks_bundle_is_refused(copy):
    shutil.rmtree(copy / "base")
    shutil.copytree(BUNDLES / "go2-walk", copy / "base")
    other = json.loads((copy / "base" / "metadata.json").read_text())["content_hash"]
    _reseal(copy, lambda m: m["base"].update(content_hash=other))
    with pytest.raises(BundleError) as refused:
        load_bundle(copy)
    message = str(refused.value)
    assert "\n" not in message and "its base (base/) differs in task, robot, joint_names, control_rate_hz" in message
    assert "(task 'go2-walk', the residual's 'cf2-hover')" in message


def test_the_writer_refuses_what_would_not_load_before_writing(tmp_path):
    with pytest.raises(BundleError, match=r"residual.scale must be in \(0, 2\] \(got 3.0\)"):
        _write(tmp_path / "wide", [0.0] * 4, scale=3.0)
    with pytest.raises(ValueError, match=r"the module maps \[1, 41\] .* expected \[1, 4\]"):
        write_residual_bundle(tmp_path / "narrow", BASE, torch.nn.Linear(37, 4), SCALE, "interventions", {})
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ deploy


def test_policy_node_runs_it_as_the_simulation_does(constant):
    """Preflight passes; the node's actor runs the base on the residual's own observation (with the action
    history and integral the node keeps) and executes what the simulation executes, step for step."""
    from robostack.bundle.kinds import ResidualActor, VectorActor
    from robostack.real.graph import preflight
    from robostack.real.policy_node import PolicyRunner
    from robostack.workflows.acting import load_policy

    assert isinstance(preflight(constant), ResidualPolicyBundle)
    runner = PolicyRunner(str(constant))
    assert isinstance(runner.actor, ResidualActor) and isinstance(runner.actor.base, VectorActor)
    loaded = load_policy(constant)
    env = sim.make_env("cf2-hover", num_envs=1, seed=2, play=True, config=loaded.task_config)
    try:
        obs, _ = env.reset(seed=2)
        policy = loaded.make_policy(env)
        for step in range(20):
            for builder in runner.builders:
                builder.update(measured_state(env, runner.builder.joint_names))
            if step:
                runner.builder.integrate()
            executed = runner.actor.act()[0]
            base = runner.bundle.base.act(runner.builder.observation())
            np.testing.assert_allclose(runner.actor.base_action, np.atleast_2d(base))  # what policy/action logs
            assert not np.allclose(executed, runner.actor.base_action[0])  # the constant correction moved it
            runner.builder.controls(executed)  # the node records what it sent (the action history)
            obs, *_ = env.step(policy(obs))
            np.testing.assert_allclose(executed, env.action[0].numpy(), atol=1e-4, err_msg=f"step {step}")
    finally:
        env.close()


def test_robostack_deploy_rehearses_it(zero, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ROS_DOMAIN_ID", "71")
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.chdir(tmp_path)  # node logs go to runs/deploy/ here
    assert main(["deploy", "--task", "cf2-hover", "--policy", str(zero), "--sim", "--episodes", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["episodes"] == 1 and set(report["exit_codes"].values()) == {0}, report
    policy_log = (next((tmp_path / "runs" / "deploy").iterdir()) / "policy_node.log").read_text()
    assert "cannot act" not in policy_log, policy_log
