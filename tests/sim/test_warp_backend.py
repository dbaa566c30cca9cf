"""The warp backend (robostack.sim.warp_backend) on Warp's CPU device against the C backend: the same task, reset
and controls give the same states, observations and rewards (float32 against float64, over 20 control steps,
40-100 physics steps: within STATE_TOLERANCE and OBSERVATION_TOLERANCE); randomized model parameters land in the
same worlds; what it cannot do yet is refused in one line."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from robostack import registry, sim
from robostack.sim.warp_backend import WarpBackendError

STATE_TOLERANCE = 1e-4  # qpos (m, rad); measured at most 7e-6
OBSERVATION_TOLERANCE = 3e-3  # observations and rewards; measured at most 1.1e-3 (panda-lift: the velocities of
# the gripper in contact with float32 physics), 2e-5 elsewhere
PAYLOAD = ["randomization.payload.enabled=true", "randomization.payload.mass=[3,3]",
           "randomization.payload.offset=[[-0.1,-0.1],[0,0],[0.05,0.05]]"]


def both(task: str, play: bool, overrides: list[str], num_envs: int = 3):
    return {backend: sim.make_env(task, num_envs=num_envs, play=play, backend=backend,
                                  overrides=["sim.num_threads=1", *overrides]) for backend in ("mujoco", "warp")}


def worst_differences(envs: dict, steps: int, seed: int) -> tuple[float, float, float]:
    for env in envs.values():
        env.reset(seed=seed)
    c, w = envs["mujoco"], envs["warp"]
    generator = torch.Generator().manual_seed(seed)
    state = observation = reward = 0.0
    for _ in range(steps):
        action = (torch.randn(c.num_envs, c.action_dim, generator=generator) * 0.3).clamp(-1.0, 1.0)
        (obs_c, rew_c, *_), (obs_w, rew_w, *_) = c.step(action), w.step(action)
        state = max(state, float(np.abs(c.sim_array("qpos") - w.sim_array("qpos")).max()))
        observation = max(observation, max(float((obs_c[g] - obs_w[g]).abs().max()) for g in obs_c))
        reward = max(reward, float((rew_c - rew_w).abs().max()))
    return state, observation, reward


@pytest.mark.parametrize("task", ["cf2-hover", "go2-walk", "panda-reach", "panda-lift"])
def test_the_same_task_steps_alike_on_both_backends(task):
    envs = both(task, play=True, overrides=[])
    try:
        state, observation, reward = worst_differences(envs, steps=20, seed=1)
        assert state < STATE_TOLERANCE and max(observation, reward) < OBSERVATION_TOLERANCE
    finally:
        for env in envs.values():
            env.close()


def test_a_model_copy_changed_for_one_env_reaches_its_world_alone():
    """Only the worlds whose copies changed are copied to the device (on a GPU envs reset every step): a drone
    made 1.5 times heavier in env 1 alone steps as its C-backend twin does, and so do the others."""
    envs = both("cf2-hover", play=True, overrides=[])
    try:
        for env in envs.values():
            env.sim.per_env_models(np.array([1]))[1].body_mass[1] *= 1.5
        state, observation, reward = worst_differences(envs, steps=20, seed=1)
        assert state < STATE_TOLERANCE and max(observation, reward) < OBSERVATION_TOLERANCE
        climb = envs["warp"].sim_array("qvel")[:, 2]
        assert climb[1] < min(climb[0], climb[2]) - 0.5  # the heavy one sinks: its world did get the mass
    finally:
        for env in envs.values():
            env.close()


@pytest.mark.parametrize("task, shift", [("go2-walk", []), ("panda-lift", []), ("go2-walk", PAYLOAD)])
def test_randomized_parameters_land_in_the_right_worlds(task, shift):
    """Masses, centres of mass, friction, damping, armature, gains (go2-walk), the cube's mass and friction
    (panda-lift) and an off-centre payload (its rotated inertia) differ per world, as on the C backend: a world
    given another's parameters would step away from its C twin."""
    envs = both(task, play=False, overrides=["randomization.observation_noise=0.0", *shift])
    try:
        state, observation, reward = worst_differences(envs, steps=15, seed=2)
        masses = np.stack([m.body_mass for m in envs["warp"].sim.models])
        assert masses.std(axis=0).max() > 1e-3  # the worlds do differ
        np.testing.assert_array_equal(masses, np.stack([m.body_mass for m in envs["mujoco"].sim.models]))
        assert state < STATE_TOLERANCE and max(observation, reward) < OBSERVATION_TOLERANCE
    finally:
        for env in envs.values():
            env.close()


def test_what_the_warp_backend_cannot_do_yet_is_refused_by_name():
    """A randomizer changing a field the worlds do not get (here the collision margins) stops the env."""
    env = sim.make_env("go2-walk", num_envs=2, backend="warp", overrides=["sim.num_threads=1"])
    try:
        env.sim.per_env_models(np.arange(2))[0].geom_margin[:] = 0.01
        with pytest.raises(WarpBackendError, match=r"randomization changes geom_margin, which the warp backend does "
                                                   r"not copy to its worlds yet"):
            env.reset(seed=0)
    finally:
        env.close()
    if not torch.cuda.is_available():
        with pytest.raises(WarpBackendError, match=r"device 'cuda': this machine has no CUDA GPU"):
            sim.make_env("cf2-hover", num_envs=2, backend="warp", device="cuda")
    with pytest.raises(WarpBackendError, match=r"runs on a CUDA GPU or Warp's CPU device, not 'meta'"):
        sim.make_env("cf2-hover", num_envs=2, backend="warp", device="meta")
    sim.load_backends()
    assert {spec.name for spec in registry.registered(registry.BackendSpec)} >= {"mujoco", "warp"}


def test_train_and_eval_run_on_the_warp_backend(tmp_path, monkeypatch, capsys):
    """``robostack train --backend warp`` trains in it and keeps it in the run's config; ``robostack eval
    --backend warp`` flies the shipped cf2-hover bundle there as on the C backend."""
    import json
    from pathlib import Path

    import yaml

    from robostack.cli import main

    bundle = Path(__file__).resolve().parents[2] / "bundles" / "cf2-hover"
    monkeypatch.chdir(tmp_path)
    assert main(["train", "cf2-hover", "--backend", "warp", "max_iterations=1", "num_envs=4", "eval_episodes=0",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["env_steps"] > 0
    assert yaml.safe_load((Path(summary["run_dir"]) / "config.yaml").read_text())["backend"] == "warp"
    assert main(["eval", str(bundle), "--backend", "warp", "--episodes", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["success_rate"] == 1.0


def test_tasks_read_the_warp_state_without_a_copy_and_write_it_in_place():
    """The term functions' ``env.qpos`` is the Warp array's memory (``wp.to_torch``); resets and pushes write into
    it through ``TaskEnv.write_sim``, with numpy indexes and values as on the C backend."""
    env = sim.make_env("go2-walk", num_envs=3, backend="warp", overrides=["sim.num_threads=1"])
    try:
        env.reset(seed=0)
        assert env.qpos.data_ptr() == env.sim.qpos.data_ptr() and env.qpos.dtype == torch.float32
        env.write_sim("qvel", (np.array([0, 2]), slice(0, 2)), np.array([[1.0, 2.0], [3.0, 4.0]]), add=True)
        env.write_sim("qpos", np.array([1]), np.asarray(env.default_model.qpos0))
        qvel, qpos = env.sim_array("qvel"), env.sim_array("qpos")
        assert isinstance(qvel, np.ndarray) and qpos[1, 2] == np.float32(env.default_model.qpos0[2])
        obs, *_ = env.step(torch.zeros(3, env.action_dim))
        assert torch.equal(env.qpos, env.sim.qpos)  # still the same memory after a step
    finally:
        env.close()


def test_an_overflowing_contact_buffer_is_an_error(monkeypatch):
    from robostack.sim import warp_backend

    monkeypatch.setattr(warp_backend, "CONTACTS_PER_WORLD", 24)
    env = sim.make_env("go2-walk", num_envs=2, backend="warp", overrides=["sim.num_threads=1"])
    try:
        env.reset(seed=0)
        # both robots sunk into the floor (the model's qpos0): 48 contacts each, 96 for a buffer of 48
        env.write_sim("qpos", np.arange(2), np.tile(env.default_model.qpos0, (2, 1)))
        with pytest.raises(WarpBackendError, match=r"contacts buffer overflowed \(\d+ > 48"):
            env.sim.forward(np.arange(2))
    finally:
        env.close()
