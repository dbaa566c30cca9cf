"""Joint target limits: one function clamps targets for the safety layer (numpy) and in training (torch),
and a task trains under exactly the limits its robot's deploy config enforces."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from robostack import sim
from robostack.real.deploy_config import load_deploy_config
from robostack.real.safety import safety_config
from robostack.sim.joint_limits import TargetBounds, limit_targets
from robostack.sim.robots.go2 import model as go2_model
from robostack.sim.robots.panda import model as panda_model


@pytest.mark.parametrize("task, robot", [("go2-walk", "go2"), ("panda-lift", "panda")])
def test_tasks_train_under_the_limits_their_deploy_config_enforces(task, robot):
    trained = sim.load_task_config(task).target_limits
    enforced = safety_config(load_deploy_config(robot), robot).joints
    assert trained == enforced, f"configs/tasks/{task}.yaml target_limits != configs/deploy/{robot}.yaml safety.joints"


@pytest.mark.parametrize("robot, module", [("go2", go2_model), ("panda", panda_model)])
def test_numpy_and_torch_clamp_alike(robot, module):
    """go2's config bounds the effort, panda's does not (its window is infinite and never clamps)."""
    rng = np.random.default_rng(0)
    limits = safety_config(load_deploy_config(robot), robot).joints
    config = module.SPEC.load_config()
    bounds = TargetBounds.for_robot(module.SPEC, config, module.SPEC.build_model(config), limits)
    n = len(module.JOINT_NAMES)
    target, position, previous = (rng.uniform(-3, 3, (64, n)) for _ in range(3))
    velocity = rng.uniform(-2, 2, (64, n))
    expected, outside = limit_targets(target, position, velocity, previous, bounds, 0.02)
    got, outside_t = limit_targets(*(torch.as_tensor(a, dtype=torch.float32) for a in (target, position, velocity,
                                                                                      previous)),
                                   bounds.converted(lambda v: torch.as_tensor(v, dtype=torch.float32)), 0.02, xp=torch)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    assert [m.any() for m in outside] == [True, limits.effort_scale is not None, True]
    assert all((np.asarray(a) == b.numpy()).all() for a, b in zip(outside, outside_t))


def test_training_targets_stay_inside_the_safety_limits_at_the_state_they_were_sent_in():
    env = sim.make_env("go2-walk", num_envs=16, seed=0, overrides=["randomization.enabled=false"])
    env.reset(seed=0)
    bounds = env.task.action.limits
    for _ in range(10):
        position, velocity, previous = env.joint_pos.clone(), env.joint_vel.clone(), env.ctrl_target.clone()
        env.step(torch.randn(16, env.action_dim) * 5)  # far outside what the limits allow
        target = env.ctrl_target.numpy().astype(np.float64)
        kp, kd = env.task_cfg.robot.joint_gains()
        torque = kp * (target - position.numpy()) - kd * velocity.numpy()
        assert np.all(np.abs(torque) <= go2_model.LIMITS.effort * (1 + 1e-5))
        assert np.all(np.abs(target - previous.numpy()) <= bounds.max_velocity * env.control_dt * (1 + 1e-5))
        assert np.all((target >= bounds.lower - 1e-6) & (target <= bounds.upper + 1e-6))


def test_panda_gripper_targets_are_not_rate_limited_and_no_interval_gives_nan():
    """The fingers' open / close command passes at once (``prismatic_velocity_scale: null``) while the arm's
    targets still move at most ``max_velocity * dt``; two outputs at the same instant (dt = 0) hold every target
    (an infinite rate times a zero interval would be NaN)."""
    limits = safety_config(load_deploy_config("panda"), "panda").joints
    config = panda_model.SPEC.load_config()
    bounds = TargetBounds.for_robot(panda_model.SPEC, config, panda_model.SPEC.build_model(config), limits)
    home = config.home_joint_pos()
    target = home + np.r_[np.full(7, 0.5), -0.04, -0.04]  # every arm joint far off, the gripper closed
    held, _ = limit_targets(target, home, np.zeros(9), home, bounds, 0.0)
    np.testing.assert_array_equal(held, home)  # finite, and nothing moves in no time
    safe, _ = limit_targets(target, home, np.zeros(9), home, bounds, 0.002)
    np.testing.assert_allclose(safe[7:], 0.0)
    np.testing.assert_allclose(safe[:7] - home[:7], bounds.max_velocity[:7] * 0.002, atol=1e-12)
