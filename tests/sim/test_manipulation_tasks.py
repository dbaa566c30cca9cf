"""panda-lift and panda-insert: the scene, the gripper action, resets, success, the grasp and the scripted experts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from robostack import sim
from robostack.sim import make_env
from robostack.sim.robots.panda import insert, lift
from robostack.sim.robots.panda import manipulation as manip
from robostack.sim.robots.panda import reach

TASKS = ["panda-lift", "panda-insert"]


def within(values, bounds, tol=1e-6) -> bool:
    return bool(np.all((values >= bounds[0] - tol) & (values <= bounds[1] + tol)))


@pytest.mark.parametrize("task", TASKS)
def test_task_builds_and_steps_with_random_actions(task):
    env = make_env(task, num_envs=4, seed=0)
    obs, _ = env.reset(seed=0)
    assert env.action_space.shape == (7,)  # TCP displacement (3 + 3) and the gripper
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        action = torch.rand(4, 7, generator=gen) * 2 - 1
        obs, reward, terminated, truncated, _ = env.step(action)
        for group, tensor in obs.items():
            assert tensor.shape == (4, *env.observation_spaces[group].shape)
            assert torch.isfinite(tensor).all()
        assert reward.shape == (4,) and torch.isfinite(reward).all()
    assert env.observation_spaces["critic"].shape[0] == env.observation_spaces["policy"].shape[0] + 3
    env.close()


def test_gripper_command_opens_and_closes_both_fingers():
    env = make_env("panda-lift", num_envs=2, seed=0, play=True)
    env.reset(seed=0)
    action = torch.zeros(2, 7)
    action[0, 6] = 1.0  # close env 0; zero (env 1) opens
    env.step(action)
    fingers = env.ctrl[:, manip.FINGERS]
    assert torch.all(fingers[0] == manip.GRIPPER.closed) and torch.all(fingers[1] == manip.GRIPPER.open)
    env.close()


def test_bundle_export_refuses_the_gripper_action_it_cannot_describe():
    from robostack.bundle import BundleError
    from robostack.bundle.describe import describe_env

    env = make_env("panda-lift", num_envs=1, seed=0, play=True)
    with pytest.raises(BundleError, match="gripper action"):
        describe_env(env)
    env.close()


def test_lift_reset_places_the_cube_within_the_configured_ranges():
    env = make_env("panda-lift", num_envs=64, seed=1)
    env.reset(seed=1)
    cfg: lift.PandaLiftConfig = env.task_cfg
    pos, yaw = manip.object_pos(env).numpy(), manip.heading(manip.object_quat(env)).numpy()
    assert within(pos[:, 0], cfg.cube.x) and within(pos[:, 1], cfg.cube.y) and within(yaw, cfg.cube.yaw, 1e-4)
    np.testing.assert_allclose(pos[:, 2], lift.resting_height(cfg), atol=1e-6)
    assert np.ptp(pos[:, 0]) > 0.1 and np.ptp(yaw) > 0.5  # spread over the ranges, not one pose
    np.testing.assert_allclose(env.command.numpy(), pos + [0.0, 0.0, cfg.lift_height], atol=1e-6)
    assert not lift.lifted(env).any() and not lift.dropped(env).any()
    env.close()


def test_insert_reset_places_the_hole_within_ranges_and_the_peg_in_the_hand():
    env = make_env("panda-insert", num_envs=64, seed=1)
    env.reset(seed=1)
    cfg: insert.PandaInsertConfig = env.task_cfg
    hole = insert.hole_pos(env).numpy()
    hole_yaw = manip.heading(env.sensor(f"{insert.HOLE}_quat")).numpy()
    assert within(hole[:, 0], cfg.hole.x, 1e-5) and within(hole[:, 1], cfg.hole.y, 1e-5)
    assert within(hole_yaw, cfg.hole.yaw, 1e-4) and np.ptp(hole_yaw) > 0.5
    np.testing.assert_allclose(hole[:, 2], cfg.table.height + cfg.hole.depth, atol=1e-5)
    np.testing.assert_allclose(manip.gripper_opening(env).numpy(), cfg.peg.size, atol=1e-6)
    # peg centre on the tool axis, grasp_depth below its top end
    offset = cfg.peg.length / 2 - manip.tcp_distance(env).numpy()
    assert within(offset, cfg.peg.grasp_depth, 1e-5)
    assert not insert.inserted(env).any() and not insert.dropped(env).any()
    env.close()


def test_lift_success_is_detected_when_the_cube_is_written_into_the_goal():
    env = make_env("panda-lift", num_envs=2, seed=0, play=True)
    env.reset(seed=0)
    tcp = reach.ee_pos(env).numpy().astype(np.float64)  # home: far above the goal height
    manip.place_object(env, np.array([0]), tcp[:1], np.array([[1.0, 0.0, 0.0, 0.0]]))
    env.sim.forward(np.arange(2))
    _, reward, terminated, truncated, info = env.step(torch.zeros(2, 7))
    assert terminated.tolist() == [True, False] and not truncated.any()
    assert info["episode"]["success"].tolist() == [1.0, 0.0] and reward[0] == 1.0 and reward[1] == 0.0
    env.close()


def test_insert_success_is_detected_when_the_peg_is_written_into_the_hole():
    env = make_env("panda-insert", num_envs=2, seed=0, play=True)
    env.reset(seed=0)
    cfg: insert.PandaInsertConfig = env.task_cfg
    hole = insert.hole_pos(env).numpy().astype(np.float64)
    yaw = manip.heading(env.sensor(f"{insert.HOLE}_quat")).double()
    depth = cfg.success_depth + 0.005
    centre = hole[:1] - [0.0, 0.0, depth - cfg.peg.length / 2]  # tip `depth` below the mouth
    manip.place_object(env, np.array([0]), centre, manip.pointing_down(yaw[:1]).numpy())
    env.sim.forward(np.arange(2))
    _, _, terminated, _, info = env.step(torch.zeros(2, 7))
    assert terminated[0] and info["episode"]["success"][0] == 1.0
    assert not terminated[1]
    env.close()


def test_cube_does_not_slip_out_of_the_closed_gripper_while_lifting():
    # the hardest randomized cube: twice the mass, the lowest friction; held high it counts as lifted already
    env = make_env("panda-lift", num_envs=2, seed=0, play=True,
                   overrides=["cube.mass=0.2", "cube.friction=0.6", "terminate_on_success=false"])
    env.reset(seed=0)
    half = env.task_cfg.cube.size / 2
    manip.place_in_gripper(env, np.arange(2), depth=np.zeros(2), half_width=half)
    env.sim.forward(np.arange(2))
    action = torch.zeros(2, 7)
    action[:, 6] = 1.0  # closed
    for _ in range(5):  # squeeze
        env.step(action)
    held = manip.object_from_tcp(env).clone()
    action[1, 1] = 0.5  # env 1 also moves sideways at 0.5 m/s
    for step in range(20):
        action[:, 2] = 0.5 if step < 10 else -1.0  # up at 0.5 m/s, then down at 1 m/s: a sharp reversal
        env.step(action)
        assert torch.norm(manip.object_from_tcp(env) - held, dim=1).max() < 0.003
    assert (manip.object_pos(env)[:, 2] > lift.resting_height(env.task_cfg) + 0.05).all()
    env.close()


def test_camera_and_light_are_randomized_per_env_within_their_ranges():
    env = make_env("panda-lift", num_envs=4, seed=0)
    env.reset(seed=0)
    cfg, default = env.task_cfg.randomization, env.default_model
    cam, light = default.camera(manip.CAMERA).id, default.light(manip.LIGHT).id
    offsets = np.array([m.cam_pos[cam] - default.cam_pos[cam] for m in env.sim.models])
    assert within(offsets, cfg.camera_position.range) and np.abs(offsets).min() > 0
    scales = np.array([m.light_diffuse[light, 0] / default.light_diffuse[light, 0] for m in env.sim.models])
    assert within(scales, cfg.light_intensity.range, 1e-5) and np.ptp(scales) > 0
    play = make_env("panda-lift", num_envs=2, seed=0, play=True)
    play.reset(seed=0)
    assert all(np.array_equal(m.cam_pos, default.cam_pos) for m in play.sim.models)
    env.close()
    play.close()


def test_scene_camera_renders_offscreen():
    from robostack.workflows.render import ensure_offscreen_gl

    ensure_offscreen_gl()  # headless: EGL or OSMesa, as `robostack eval --video` uses (scripts/setup.sh installs it)
    env = make_env("panda-lift", num_envs=1, seed=0, play=True)
    env.reset(seed=0)
    image = manip.render(env, 0, width=64, height=48)
    assert image.shape == (48, 64, 3) and image.std() > 0
    env.close()


@pytest.mark.parametrize("task, minimum", [("panda-lift", 0.9), ("panda-insert", 0.9)])
def test_expert_succeeds_on_randomized_episodes(task, minimum):
    env = make_env(task, num_envs=16, seed=3)
    expert = sim.task(task).expert(env)
    success = manip.first_episode_success(env, expert)
    assert success.mean() >= minimum, f"{task}: expert success {success.mean():.2f}"
    env.close()
