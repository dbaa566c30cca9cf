"""The batched env contract, randomization and config errors, on the three shipped tasks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from robostack.config import ConfigError
from robostack.sim import make_env
from robostack.sim.gym_adapter import GymAdapter

TASKS = ["panda-reach", "go2-walk", "cf2-hover"]


@pytest.mark.parametrize("task", TASKS)
def test_contract_shapes_and_dtypes(task):
    env = make_env(task, num_envs=4, seed=0)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"policy", "critic"}
    for group, tensor in obs.items():
        assert tensor.shape == (4, *env.observation_spaces[group].shape)
        assert tensor.dtype == torch.float32
    assert env.observation_spaces["critic"].shape[0] >= env.observation_spaces["policy"].shape[0]
    action = torch.zeros(4, env.action_space.shape[0])
    obs, reward, terminated, truncated, info = env.step(action)
    assert reward.shape == (4,) and reward.dtype == torch.float32
    assert terminated.dtype == torch.bool and truncated.dtype == torch.bool
    assert set(info) >= {"done", "final_obs"}
    assert all(torch.isfinite(t).all() for t in obs.values())
    env.close()


def test_auto_reset_and_truncation_are_reported_separately():
    # 0.1 s episodes at 100 Hz: every env times out after exactly 10 steps.
    env = make_env("cf2-hover", num_envs=3, seed=0, overrides=["sim.episode_length_s=0.1"], play=True)
    env.reset(seed=0)
    hover = torch.zeros(3, 4)
    for step in range(1, 11):
        obs, _, terminated, truncated, info = env.step(hover)
        if step < 10:
            assert not truncated.any() and "episode" not in info
    assert truncated.all() and not terminated.any()
    assert torch.equal(info["episode"]["length"], torch.full((3,), 10))
    assert "reward/position" in info["episode"] and "metric/position_error" in info["episode"]
    assert (env.episode_length == 0).all()  # already reset
    assert not torch.equal(info["final_obs"]["policy"], obs["policy"])  # next episode's first obs
    env.close()


def test_a_fall_terminates_and_is_not_a_success():
    env = make_env("go2-walk", num_envs=2, seed=0, play=True)
    env.reset(seed=0)
    env.sim.qpos[0, 2] = 0.05  # base on the floor: fallen
    _, _, terminated, truncated, info = env.step(torch.zeros(2, 12))
    assert terminated.tolist() == [True, False] and not truncated.any()
    assert info["episode"]["success"][0] == 0.0
    env.close()


def test_bad_actions_are_rejected_with_a_clear_error():
    env = make_env("cf2-hover", num_envs=2, seed=0)
    env.reset()
    with pytest.raises(ValueError, match="non-finite action"):
        env.step(torch.tensor([[0.0, float("nan"), 0.0, 0.0], [0.0] * 4]))
    with pytest.raises(ValueError, match=r"shape \(2, 4\)"):
        env.step(torch.zeros(2, 3))
    env.close()


def _model_params(env):
    return np.stack([np.concatenate([m.body_mass, m.geom_friction[:, 0], m.dof_damping, m.dof_armature,
                                     m.actuator_gainprm[:, 0], m.body_ipos.ravel()]) for m in env.sim.models])


def test_randomization_stays_in_range_and_is_reproducible():
    env = make_env("go2-walk", num_envs=8, seed=3)
    env.reset(seed=3)
    default = env.default_model
    masses = np.stack([m.body_mass[1:] / default.body_mass[1:] for m in env.sim.models])
    assert masses.min() >= 0.9 and masses.max() <= 1.1 and masses.std() > 0.01
    friction = np.array([m.geom_friction[0, 0] / default.geom_friction[0, 0] for m in env.sim.models])
    assert friction.min() >= 0.4 and friction.max() <= 1.25 and len(set(friction.round(6))) == 8
    com = np.stack([m.body_ipos[1:] - default.body_ipos[1:] for m in env.sim.models])
    assert np.abs(com).max() <= 0.02 + 1e-12 and np.abs(com).max() > 0.0
    gains = np.stack([m.actuator_gainprm[:, 0] / default.actuator_gainprm[:, 0] for m in env.sim.models])
    assert gains.min() >= 0.9 * 0.9 - 1e-9 and gains.max() <= 1.1 * 1.1 + 1e-9  # kp x strength
    assert set(env.latency.tolist()) <= {0, 1}

    same = make_env("go2-walk", num_envs=8, seed=3)
    same.reset(seed=3)
    np.testing.assert_array_equal(_model_params(env), _model_params(same))
    other = make_env("go2-walk", num_envs=8, seed=4)
    other.reset(seed=4)
    assert not np.array_equal(_model_params(env), _model_params(other))
    for e in (env, same, other):
        e.close()


def test_a_centre_of_mass_offset_moves_every_body_s_centre_of_mass():
    """MuJoCo skips the inertial offset of bodies compiled with their centre of mass at their origin
    (body_sameframe): the randomizer takes that shortcut away, so go2's feet and IMU bodies get their offsets too."""
    import mujoco

    env = make_env("go2-walk", num_envs=1, seed=0, overrides=["randomization.com_offset.range=[0.01,0.01]",
                                                              "sim.num_threads=1"])
    env.reset(seed=0)
    default, randomized = env.default_model, env.sim.models[0]
    shortcut = np.flatnonzero(default.body_sameframe[1:] == mujoco.mjtSameFrame.mjSAMEFRAME_BODY) + 1
    assert len(shortcut) > 0
    data, moved = mujoco.MjData(default), mujoco.MjData(randomized)
    mujoco.mj_forward(default, data)
    mujoco.mj_forward(randomized, moved)
    offset = np.linalg.norm(moved.xipos[shortcut] - data.xipos[shortcut], axis=1)
    np.testing.assert_allclose(offset, np.sqrt(3) * 0.01, rtol=1e-6)
    env.close()


def test_play_variant_turns_randomization_off():
    env = make_env("go2-walk", num_envs=4, seed=0, play=True)
    obs_a, _ = env.reset(seed=0)
    assert all(m is env.default_model for m in env.sim.models)
    assert (env.latency == 0).all()
    # Without observation noise the same state gives the same observation.
    assert torch.equal(env.observe()["policy"], env.observe()["policy"])
    env.close()
    noisy = make_env("go2-walk", num_envs=4, seed=0)
    noisy.reset(seed=0)
    assert not torch.equal(noisy.observe()["policy"], noisy.observe()["policy"])
    noisy.close()


def test_action_latency_delays_controls_by_whole_steps():
    env = make_env("cf2-hover", num_envs=2, seed=0, overrides=["randomization.action_latency.range=[2,2]"])
    env.reset(seed=0)
    actions = [torch.full((2, 4), v) for v in (0.5, -0.5, 0.25, 0.0)]
    applied = []
    for a in actions:
        env.step(a)
        applied.append(env.ctrl[0, 0].item())
    from robostack.sim.robots.cf2 import model as cf2
    scale = cf2.SPEC.load_config().max_thrust - cf2.HOVER_THRUST
    expected = [cf2.HOVER_THRUST, cf2.HOVER_THRUST, cf2.HOVER_THRUST + 0.5 * scale, cf2.HOVER_THRUST - 0.5 * scale]
    np.testing.assert_allclose(applied, expected, rtol=1e-6)
    env.close()


def test_pushes_kick_the_base_at_their_interval():
    env = make_env("go2-walk", num_envs=2, seed=0,
                   overrides=["randomization.push.range=[1.0,1.0]", "randomization.push.interval_s=[0.1,0.1]"])
    env.reset(seed=0)
    env.sim.qvel[:] = 0.0
    velocities = []
    for _ in range(6):  # 0.02 s per step: the push lands at 0.1 s
        env.step(torch.zeros(2, 12))
        velocities.append(env.qvel[:, 0].clone())
    jump = torch.stack(velocities).diff(dim=0).max(dim=0).values
    assert (jump > 0.5).all()
    env.close()


def test_wind_gusts_stay_in_range():
    env = make_env("cf2-hover", num_envs=16, seed=0,
                   overrides=["randomization.wind.interval_s=[0.01,0.01]"])
    env.reset(seed=0)
    for _ in range(3):  # the first gust comes one interval (one 0.01 s step) into the episode
        env.step(torch.zeros(16, 4))
    force = env.external_force[:, :3]
    assert np.abs(force).max() <= 0.01 and np.abs(force).max() > 0
    assert np.all(env.external_force[:, 3:] == 0)
    env.close()


def test_same_seed_same_trajectory():
    def rollout():
        env = make_env("go2-walk", num_envs=4, seed=7)
        obs, _ = env.reset(seed=7)
        gen = torch.Generator().manual_seed(0)
        trace = [obs["critic"]]
        for _ in range(20):
            obs, reward, *_ = env.step(torch.rand(4, 12, generator=gen) * 2 - 1)
            trace += [obs["critic"], reward[:, None]]
        env.close()
        return torch.cat(trace, dim=1)

    torch.testing.assert_close(rollout(), rollout(), rtol=0, atol=0)


def test_config_typos_and_types_are_errors_naming_key_and_file():
    with pytest.raises(ConfigError, match=r"go2-walk\.yaml.*unknown key .rewards\.track_lin_vel_xyz"):
        make_env("go2-walk", num_envs=1, overrides=["rewards.track_lin_vel_xyz=1.0"])
    with pytest.raises(ConfigError, match=r"sim\.decimation"):
        make_env("go2-walk", num_envs=1, overrides=["sim.decimation=fast"])
    with pytest.raises(ConfigError, match=r"randomization\.push\.mode"):
        make_env("go2-walk", num_envs=1, overrides=["randomization.push.mode=sometimes"])
    with pytest.raises(KeyError, match="unknown task 'go3-walk'"):
        make_env("go3-walk", num_envs=1)


def test_gymnasium_adapter_passes_the_env_checker():
    adapter = GymAdapter(make_env("cf2-hover", num_envs=1, seed=0))
    check_env(adapter, skip_render_check=True)
    obs, _ = adapter.reset(seed=1)
    assert adapter.observation_space.contains(obs)
    done = False
    steps = 0
    while not done:
        obs, reward, terminated, truncated, info = adapter.step(np.zeros(4, dtype=np.float32))
        done = terminated or truncated
        steps += 1
    assert "episode" not in info and "success" in info["task_episode"] and steps <= 500
    assert info["is_success"] == (info["task_episode"]["success"] > 0.5)
    with pytest.raises(RuntimeError, match="reset"):
        adapter.step(np.zeros(4, dtype=np.float32))
    adapter.close()


def test_every_task_is_a_gymnasium_id_and_works_under_gymnasiums_own_wrappers():
    """``gymnasium.make`` by id (the module imported by the id's prefix), and ``RecordEpisodeStatistics`` (which
    refuses an env that writes ``info["episode"]`` itself) counting the episode."""
    import gymnasium
    from gymnasium.wrappers import RecordEpisodeStatistics

    from robostack import sim
    from robostack.sim.gym_adapter import register_tasks

    assert register_tasks() == [f"RoboStack/{spec.name}-v0" for spec in sim.tasks()]
    env = RecordEpisodeStatistics(gymnasium.make("robostack.sim.gym_adapter:RoboStack/cf2-hover-v0", seed=3,
                                                 overrides=["sim.episode_length_s=0.5"]))
    env.reset(seed=3)
    steps, done, info = 0, False, {}
    while not done:
        _, _, terminated, truncated, info = env.step(env.action_space.sample() * 0.0)
        done, steps = terminated or truncated, steps + 1
    assert info["episode"]["l"] == steps and "task_episode" in info
    env.close()


def test_registry_lists_the_builtin_catalogue():
    """Each owner finds its own: the robot folders and their tasks, the algorithms, the backends."""
    from robostack import policies, registry, sim
    from robostack.specs import AlgorithmSpec, BackendSpec, RobotSpec

    assert [spec.name for spec in registry.registered(RobotSpec)] == ["cf2", "go2", "panda"]
    assert [spec.name for spec in sim.tasks()] == ["cf2-hover", "go2-walk", "panda-insert", "panda-lift", "panda-reach"]
    policies.load()
    assert [spec.name for spec in registry.registered(AlgorithmSpec)] == ["command-correction", "diffusion",
                                                                         "gripper-rule", "iql", "ppo", "rlif", "sac",
                                                                         "safety-critic"]
    sim.load_backends()
    assert [spec.name for spec in registry.registered(BackendSpec)] == ["mujoco", "warp"]
    assert sim.task("go2-walk").robot == "go2"


def test_action_history_keeps_the_last_actions_newest_first_and_clears_on_reset():
    env = make_env("cf2-hover", num_envs=2, seed=0, play=True, overrides=["action_history=3"])
    env.reset(seed=0)
    for value in (0.1, 0.2, 0.3, 0.4):
        env.step(torch.full((2, 4), value))
    np.testing.assert_allclose(env.action_history[:, :, 0].numpy(), [[0.4, 0.3, 0.2]] * 2, rtol=1e-6)
    policy = env.observe()["policy"]
    np.testing.assert_allclose(policy[:, 18:30].numpy(), env.action_history.reshape(2, -1).numpy())  # after 18 state values
    env.sim.qpos[0, 2] = 0.0  # crash env 0: it resets on the next step
    env.step(torch.full((2, 4), 0.5))
    assert torch.all(env.action_history[0] == 0) and env.action_history[1, 0, 0] == 0.5
    env.close()


def test_integral_runs_near_the_target_is_clipped_and_clears_on_reset():
    from robostack.sim.robots.cf2.tasks import position_error

    env = make_env("cf2-hover", num_envs=3, seed=0, play=True,
                   overrides=["position_integral_radius=0.3", "position_integral_limit=0.05"])
    env.reset(seed=0)
    target = env.command[0].numpy()
    env.sim.qpos[:, 0:3] = target + np.array([[0.0, 0.0, 0.1], [0.0, 0.0, 0.5], [0.0, 0.0, 0.1]])  # near, far, near
    env.sim.qpos[:, 3:7] = [1.0, 0.0, 0.0, 0.0]
    env.sim.qvel[:] = 0.0
    env.sim.forward(np.arange(3))
    expected = torch.zeros(3, 3)
    for _ in range(3):
        env.step(torch.zeros(3, 4))
        err = position_error(env)
        near = torch.norm(err, dim=1) < 0.3
        expected = torch.clamp(expected + env.control_dt * err * near.unsqueeze(1), -0.05, 0.05)
    integral = env.integrals["position_error_near_target"]
    torch.testing.assert_close(integral, expected)
    assert integral[0, 2] < -0.002 and torch.all(integral[1] == 0)  # below the target: negative error; far: none
    np.testing.assert_allclose(env.observe()["policy"][:, -3:].numpy(), integral.numpy())
    for _ in range(30):
        env.step(torch.zeros(3, 4))
    assert torch.all(env.integrals["position_error_near_target"].abs() <= 0.05)
    env.sim.qpos[0, 2] = 0.0  # crash env 0: it resets on the next step, and so does its integral
    env.step(torch.zeros(3, 4))
    assert torch.all(env.integrals["position_error_near_target"][0] == 0)
    env.close()


def test_relative_actions_move_the_joint_targets_and_reset_to_home():
    env = make_env("panda-reach", num_envs=2, seed=0, play=True,  # the action map alone, no target limits
                   overrides=["action_mode=joint_relative", "action_scale=0.05", "target_limits=null"])
    env.reset(seed=0)
    home = env.ctrl_target.clone()
    env.step(torch.zeros(2, 7))
    torch.testing.assert_close(env.ctrl_target, home)  # zero action holds the targets
    for _ in range(3):
        env.step(torch.full((2, 7), 0.4))
    expected = home.clone()
    expected[:, :7] += 3 * 0.05 * 0.4
    torch.testing.assert_close(env.ctrl_target, torch.minimum(expected, env._ctrl_hi))
    env._reset_envs(np.array([1]))
    torch.testing.assert_close(env.ctrl_target[1], home[1])
    env.close()


def test_step_controls_applies_clipped_controls_and_rejects_bad_ones():
    env = make_env("panda-reach", num_envs=2, seed=0, play=True)
    env.reset(seed=0)
    ctrl = env.ctrl_target.clone()
    ctrl[:, 0] = 100.0  # far beyond joint1's range: clipped to it
    env.step_controls(ctrl)
    assert torch.all(env.ctrl[:, 0] == env._ctrl_hi[0]) and torch.all(env.ctrl[:, 1:] == ctrl[:, 1:])
    with pytest.raises(ValueError, match="controls must be finite"):
        env.step_controls(torch.full_like(ctrl, float("nan")))
    with pytest.raises(ValueError, match=r"with shape \(2, 9\)"):
        env.step_controls(ctrl[:, :7])
    env.close()


def test_quaternion_product_matches_mujoco_in_both_precisions():
    """``mdp.quat_mul`` (a sign table, not 28 scalar products) against MuJoCo's ``mju_mulQuat``."""
    import mujoco

    from robostack.sim import mdp

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    expected = np.empty((50, 4))
    for row, (qa, qb) in enumerate(zip(a, b)):
        mujoco.mju_mulQuat(expected[row], qa, qb)
    for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        product = mdp.quat_mul(torch.as_tensor(a, dtype=dtype), torch.as_tensor(b, dtype=dtype))
        assert product.dtype == dtype and product.shape == (50, 4)
        np.testing.assert_allclose(product.numpy(), expected, atol=tolerance)
    mdp.hamilton_table.cache_clear()
    with torch.inference_mode():  # the table made first for a deploy-side tick still serves autograd
        mdp.quat_mul(torch.as_tensor(a), torch.as_tensor(b))
    leaf = torch.as_tensor(a, dtype=torch.float64).requires_grad_()
    mdp.quat_mul(leaf, torch.as_tensor(b)).sum().backward()
    assert leaf.grad is not None and leaf.grad.shape == (50, 4)


@pytest.mark.parametrize("task", ["go2-walk", "panda-lift"])
def test_a_centre_of_mass_offset_moves_the_body_s_collision_boxes_with_it(task):
    """MuJoCo keeps a body's bounding boxes in its inertial frame: the randomizer moves them as the compiler
    (``mj_setConst``) would place them, or contacts of a moved body go missing (a go2 foot sinks into the floor)."""
    import copy

    import mujoco

    from robostack.sim.randomization import offset_coms

    env = make_env(task, num_envs=1, seed=0, play=True, overrides=["sim.num_threads=1"])
    default = env.default_model
    env.close()
    moved = copy.copy(default)
    offset_coms(moved, default, np.random.default_rng(0), (-0.02, 0.02))
    compiled = copy.copy(moved)
    mujoco.mj_setConst(compiled, mujoco.MjData(compiled))
    assert np.abs(moved.bvh_aabb - default.bvh_aabb).max() > 0.01
    np.testing.assert_allclose(moved.bvh_aabb, compiled.bvh_aabb, atol=1e-12)
    offset_coms(moved, default, np.random.default_rng(1), (0.0, 0.0))  # rewritten from the default, no drift
    np.testing.assert_array_equal(moved.bvh_aabb, default.bvh_aabb)


def test_a_go2_with_moved_centres_of_mass_stands_on_its_feet():
    """The contacts the stale boxes lost: a standing go2 whose feet's centres of mass moved 2 cm up keeps its four
    feet on the floor (before the boxes moved with them, the floor's contacts went missing and the feet sank)."""
    import copy

    import mujoco

    from robostack.sim.randomization import offset_coms

    env = make_env("go2-walk", num_envs=1, seed=0, play=True, overrides=["sim.num_threads=1"])
    default = env.default_model
    env.close()
    moved = copy.copy(default)
    offset_coms(moved, default, np.random.default_rng(0), (0.02, 0.02))
    heights = []
    for model in (default, moved):
        data = mujoco.MjData(model)
        mujoco.mj_resetDataKeyframe(model, data, 0)
        data.ctrl[:] = data.qpos[7:19]
        for _ in range(500):
            mujoco.mj_step(model, data)
        heights.append(data.qpos[2])
    assert abs(heights[1] - heights[0]) < 0.005
