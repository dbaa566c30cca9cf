"""Deploy-side observations (``robostack.real.observation``) equal the simulator's, term for term."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from robostack import sim
from robostack.bundle.describe import describe_env
from robostack.config import to_dict
from robostack.real.observation import ObservationBuilder, ObservationError
from robostack.real.robot_state import RobotState


def _metadata(task: str, env) -> dict:
    return {**describe_env(env), "task_config": to_dict(env.task_cfg)}


def _measured(env, builder: ObservationBuilder, i: int = 0) -> RobotState:
    """What a robot's drivers would report about env ``i`` (names, not indices)."""
    pos = env.joint_pos[i].numpy()
    vel = env.joint_vel[i].numpy()
    state = RobotState(joint_position=dict(zip(builder.joint_names, pos)),
                       joint_velocity=dict(zip(builder.joint_names, vel)))
    if builder.floating_base:
        q, v = env.qpos[i].numpy(), env.qvel[i].numpy()
        state.base_position, state.base_orientation = q[0:3], q[3:7]
        state.base_linear_velocity, state.base_angular_velocity = v[0:3], v[3:6]
    return state


# Terms computed from MuJoCo sensors. The simulator's batched rollout reports sensor values computed at the
# start of the last physics substep (one substep, 2 ms, before the state it returns); the deploy side computes
# them from the measured state itself. They agree to what the arm moves in one substep (joints move at up
# to 5 rad/s in this test: 2 mm and 0.01 rad per substep).
SENSOR_TERMS = {"panda-reach": {"position_error": 2e-2, "orientation_error": 2e-2, "position_error_integral": 1e-3,
                                "joint_target": 1e-3}}  # one IK step from those sensors


def _assert_same_observation(builder: ObservationBuilder, task: str, expected: torch.Tensor) -> None:
    got = builder.observation()
    for term in builder.metadata["observation"]["terms"]:
        part = slice(term["offset_in_vector"], term["offset_in_vector"] + term["dim"])
        atol = SENSOR_TERMS.get(task, {}).get(term["name"], 1e-5)
        np.testing.assert_allclose(got[part], expected[part].numpy(), atol=atol, err_msg=term["name"])


@pytest.mark.parametrize("task,overrides", [
    ("panda-reach", []), ("panda-reach", ["action_mode=joint_relative", "action_scale=0.05"]),
    ("go2-walk", []), ("cf2-hover", []),
])
def test_deploy_observation_and_controls_match_the_simulator(task, overrides):
    env = sim.make_env(task, num_envs=1, seed=1, play=True, overrides=overrides)  # play: no noise to compare
    obs, _ = env.reset(seed=1)
    builder = ObservationBuilder(_metadata(task, env))
    builder.reset(env.command[0].numpy())
    builder.update(_measured(env, builder))
    _assert_same_observation(builder, task, obs["policy"][0])
    gen = torch.Generator().manual_seed(0)
    action = torch.zeros(1, env.action_dim)
    for _ in range(12):  # a random walk that drifts past the [-1, 1] bounds now and then
        action = torch.clamp(action + (torch.rand(1, env.action_dim, generator=gen) - 0.5) * 0.8, -1.2, 1.2)
        builder.ctrl_target = env.ctrl_target.clone()  # compare one step's mapping, not accumulated drift
        controls = builder.controls(action[0].numpy())
        obs, _, terminated, truncated, _ = env.step(action)
        assert not (terminated | truncated).any()
        # end-effector actions go through a Jacobian from sensors: the same one-substep difference
        np.testing.assert_allclose(controls, env.ctrl_target[0].numpy(), atol=1e-3 if task in SENSOR_TERMS else 1e-5)
        builder.update(_measured(env, builder))
        builder.integrate()
        _assert_same_observation(builder, task, obs["policy"][0])
    env.close()


def test_bad_measurements_are_refused_naming_the_problem():
    env = sim.make_env("go2-walk", num_envs=1, seed=0, play=True)
    env.reset(seed=0)
    builder = ObservationBuilder(_metadata("go2-walk", env))
    state = _measured(env, builder)
    del state.joint_position["FR_hip_joint"]
    with pytest.raises(ObservationError, match="no value for joint.*FR_hip_joint"):
        builder.update(state)
    state = _measured(env, builder)
    state.base_orientation = None
    with pytest.raises(ObservationError, match="floating base: state.base_orientation"):
        builder.update(state)
    state = _measured(env, builder)
    state.joint_velocity["RL_calf_joint"] = float("nan")
    with pytest.raises(ObservationError, match="non-finite"):
        builder.update(state)
    with pytest.raises(ObservationError, match="command must be 3 finite values"):
        builder.set_command([0.5, float("inf"), 0.0])
    with pytest.raises(ObservationError, match="action must be 12 finite values"):
        builder.controls(np.full(12, np.nan))
    meta = _metadata("go2-walk", env)
    meta["observation"]["terms"][0]["dim"] = 4
    with pytest.raises(ObservationError, match="do not match the task rebuilt"):
        ObservationBuilder(meta)
    env.close()


class _FixedState:
    """A listener whose state is always ``state``, just received."""

    def __init__(self, state: RobotState):
        self.state = lambda: state

    def ready(self) -> bool:
        return True

    def staleness(self, now: float, timeout_s: float) -> None:
        return None


@pytest.mark.parametrize("task", ["go2-walk", "cf2-hover"])
def test_policy_runner_starts_each_episode_afresh(task):
    """A new episode (``sim/episode``) mid-run clears the policy's past actions and integrals: its first controls
    for a state are those of the first episode; they differ once the past is not clear."""
    from robostack.real.bench import SHIPPED_BUNDLES, home_state
    from robostack.real.policy_node import PolicyRunner

    runner = PolicyRunner(str(SHIPPED_BUNDLES / task))
    runner.executed = True  # the safety layer passes its commands (safety/status)
    listener = _FixedState(home_state(runner.builder.model, runner.builder.joint_names))
    first = [runner.tick(listener)[0] for _ in range(5)]
    assert all(controls is not None for controls in first)
    assert not np.allclose(first[0], first[-1], atol=1e-6)  # the past matters to this policy
    runner.reset()
    again = [runner.tick(listener)[0] for _ in range(5)]
    np.testing.assert_allclose(np.array(again), np.array(first), atol=1e-6)


def test_a_policy_whose_commands_are_not_executed_does_not_wind_up():
    """Until the safety layer passes its commands, panda-reach's end-effector actions start over from the measured
    joints at every tick (the same controls for the same state); once passed, they add up as in training; held
    again (a fallback, a human in control), its targets follow the measured joints instead of running away."""
    from robostack.real.bench import SHIPPED_BUNDLES, home_state
    from robostack.real.policy_node import PolicyRunner

    runner = PolicyRunner(str(SHIPPED_BUNDLES / "panda-reach"))
    state = home_state(runner.builder.model, runner.builder.joint_names)
    listener = _FixedState(state)
    measured = np.array([state.joint_position[name] for name in runner.builder.joint_names])
    waiting = [runner.tick(listener)[0] for _ in range(3)]
    np.testing.assert_allclose(waiting[1], waiting[0], atol=1e-6)
    np.testing.assert_allclose(waiting[2], waiting[0], atol=1e-6)
    runner.executed = True
    passed = [runner.tick(listener)[0] for _ in range(3)]
    step = np.abs(waiting[0] - measured).max()  # the last waiting command is the one the safety layer passed first
    assert np.abs(passed[2] - measured).max() > 3 * step  # the robot did not follow: targets run ahead
    runner.executed = False
    held = [runner.tick(listener)[0] for _ in range(3)]
    assert max(np.abs(h - measured).max() for h in held) < 1.5 * step  # one step from where the joints are


def test_exploration_noise_perturbs_the_policys_actions_within_their_range():
    """``exploration_std`` (what ``robostack improve`` deploys with, so its logs hold actions to compare): the same
    state gives other controls each tick, around the noiseless ones and within the action range; 0 changes
    nothing; a value outside [0, 1) is refused."""
    from robostack.real.bench import SHIPPED_BUNDLES, home_state
    from robostack.real.policy_node import PolicyRunner

    def controls(std: float) -> np.ndarray:
        runner = PolicyRunner(str(SHIPPED_BUNDLES / "cf2-hover"), exploration_std=std)
        runner.executed = True
        listener = _FixedState(home_state(runner.builder.model, runner.builder.joint_names))
        return np.array([runner.tick(listener)[0] for _ in range(40)])

    plain, again, noisy = controls(0.0), controls(0.0), controls(0.2)
    np.testing.assert_allclose(plain, again)
    differences = noisy - plain
    assert np.abs(differences).max() > 0.01 and np.abs(differences.mean(axis=0)).max() < np.abs(differences).max()
    builder = PolicyRunner(str(SHIPPED_BUNDLES / "cf2-hover")).builder
    low, high = builder.model.actuator_ctrlrange[:, 0], builder.model.actuator_ctrlrange[:, 1]
    assert ((noisy >= low - 1e-9) & (noisy <= high + 1e-9)).all()
    with pytest.raises(ValueError, match="exploration_std"):
        PolicyRunner(str(SHIPPED_BUNDLES / "cf2-hover"), exploration_std=1.5)
