"""Task shifts for evaluation (robostack.sim.randomization: ``weak_motor``, ``payload``): where they land, that they
compose with the training randomization, that they are off (and draw nothing) unless enabled, and that
``eval_policy`` runs a shipped bundle under them."""
from __future__ import annotations

import copy

import mujoco
import numpy as np
import pytest
import torch

from robostack import sim
from robostack.config import ConfigError
from robostack.sim import mujoco_backend

WEAK = ["randomization.weak_motor.enabled=true"]
PAYLOAD = ["randomization.payload.enabled=true"]
CF2_SHIFT = ["randomization.link_mass.range=[1.4,1.4]", *WEAK, "randomization.weak_motor.range=[0.8,0.8]"]
OFFSET = (-0.1, 0.02, 0.05)  # m from the base's centre of mass: behind, left, above
GO2_PAYLOAD = [*PAYLOAD, "randomization.payload.mass=[3,3]", f"randomization.payload.offset={[[x, x] for x in OFFSET]}"]


def gains(env) -> np.ndarray:
    """Each env's actuator gains over the default model's."""
    return np.stack([m.actuator_gainprm[:, 0] / env.default_model.actuator_gainprm[:, 0] for m in env.sim.models])


def test_a_weak_motor_lands_in_count_actuators_and_composes_with_motor_strength():
    env = sim.make_env("cf2-hover", num_envs=32, seed=0, overrides=[*CF2_SHIFT, "sim.num_threads=1"])
    env.reset(seed=0)
    weak = env.actuator_factors[:, 3].copy()
    assert ((weak == 0.8).sum(axis=1) == 1).all() and ((weak == 0.8) | (weak == 1.0)).all()
    assert set(np.argmin(weak, axis=1)) == {0, 1, 2, 3}  # picked at random per env
    strength = env.actuator_factors[:, 2].copy()
    assert strength.min() >= 0.9 and strength.max() <= 1.1 and strength.std() > 0.01  # motor_strength still on
    np.testing.assert_allclose(gains(env), strength * weak, rtol=1e-12)
    masses = np.array([m.body_mass[1] / env.default_model.body_mass[1] for m in env.sim.models])
    np.testing.assert_allclose(masses, 1.4)  # with link_mass: 40% heavier, one motor at 80%

    env.reset()  # motor_strength redraws at every reset; the weak motor (startup) stays where it was
    assert not np.array_equal(env.actuator_factors[:, 2], strength)
    np.testing.assert_array_equal(env.actuator_factors[:, 3], weak)
    np.testing.assert_allclose(gains(env), env.actuator_factors[:, 2] * weak, rtol=1e-12)
    env.close()


def test_weak_joints_of_a_quadruped_count_range_fixed_actuators_and_redraws():
    env = sim.make_env("go2-walk", num_envs=8, seed=1, overrides=[
        *WEAK, "randomization.weak_motor.count=3", "randomization.weak_motor.range=[0.5,0.7]",
        "randomization.weak_motor.mode=reset", "sim.num_threads=1"])
    env.reset(seed=1)
    weak = env.actuator_factors[:, 3].copy()
    picked = weak < 1.0
    assert (picked.sum(axis=1) == 3).all() and weak[picked].min() >= 0.5 and weak[picked].max() <= 0.7
    env.reset()
    assert not np.array_equal(env.actuator_factors[:, 3] < 1.0, picked)  # mode reset: picked again
    env.close()

    fixed = sim.make_env("go2-walk", num_envs=4, seed=1, overrides=[
        *WEAK, "randomization.weak_motor.actuators=[2,7]", "randomization.weak_motor.range=[0.6,0.6]"])
    fixed.reset(seed=1)
    expected = np.ones(12)
    expected[[2, 7]] = 0.6
    np.testing.assert_array_equal(fixed.actuator_factors[:, 3], np.tile(expected, (4, 1)))
    fixed.close()


def inertia_tensor(model: mujoco.MjModel, body: int) -> np.ndarray:
    """The body's inertia about its centre of mass as a full tensor in the body frame."""
    rotation = np.empty(9)
    mujoco.mju_quat2Mat(rotation, model.body_iquat[body])
    rotation = rotation.reshape(3, 3)
    return rotation @ np.diag(model.body_inertia[body]) @ rotation.T


def point_inertia(mass: float, r: np.ndarray) -> np.ndarray:
    return mass * (r @ r * np.eye(3) - np.outer(r, r))


def test_a_payload_moves_mass_centre_of_mass_and_inertia_as_the_physics_of_a_point_mass_would():
    env = sim.make_env("go2-walk", num_envs=1, seed=2, overrides=[*GO2_PAYLOAD, "sim.num_threads=1"])
    env.reset(seed=2)
    default, loaded = env.default_model, env.sim.models[0]
    base, m, offset = 1, 3.0, np.array(OFFSET)
    own, centre = default.body_mass[base], default.body_ipos[base]
    combined = (own * centre + m * (centre + offset)) / (own + m)
    assert loaded.body_mass[base] == own + m
    np.testing.assert_allclose(loaded.body_ipos[base], combined, atol=1e-15)
    expected = (inertia_tensor(default, base) + point_inertia(own, centre - combined)
                + point_inertia(m, centre + offset - combined))  # parallel axes, each mass about the new centre
    np.testing.assert_allclose(inertia_tensor(loaded, base), expected, rtol=1e-12, atol=1e-14)

    # Against MuJoCo's physics: the unloaded robot (this env's other bodies, the default base) plus a point mass
    # at the payload's place has the loaded one's whole-body centre of mass and joint-space inertia.
    unloaded = copy.copy(loaded)
    for field in ("body_mass", "body_ipos", "body_iquat", "body_inertia", "body_sameframe"):
        getattr(unloaded, field)[base] = getattr(default, field)[base]
    mujoco.mj_setConst(unloaded, mujoco.MjData(unloaded))
    qpos = env.sim_array("qpos")[0].copy()
    qpos[3:7] = [0.9, 0.2, -0.3, 0.25]  # tilted, so no axis lines up by chance
    qpos[3:7] /= np.linalg.norm(qpos[3:7])
    datas = {}
    for name, model in (("loaded", loaded), ("unloaded", unloaded)):
        data = datas[name] = mujoco.MjData(model)
        data.qpos[:] = qpos
        mujoco.mj_forward(model, data)
    ref = datas["unloaded"]
    point = ref.xpos[base] + ref.xmat[base].reshape(3, 3) @ (centre + offset)
    total = unloaded.body_subtreemass[base]
    np.testing.assert_allclose(datas["loaded"].subtree_com[base], (total * ref.subtree_com[base] + m * point)
                               / (total + m), atol=1e-12)
    jacp = np.zeros((3, unloaded.nv))
    mujoco.mj_jac(unloaded, ref, jacp, None, point, base)
    mass_matrix = {}
    for name, model in (("loaded", loaded), ("unloaded", unloaded)):
        mass_matrix[name] = np.zeros((model.nv, model.nv))
        mujoco.mj_fullM(model, datas[name], mass_matrix[name])
    np.testing.assert_allclose(mass_matrix["loaded"], mass_matrix["unloaded"] + m * jacp.T @ jacp, atol=1e-10)
    env.close()


def test_a_payload_at_every_reset_is_redrawn_from_the_default_never_accumulated():
    env = sim.make_env("go2-walk", num_envs=2, seed=3, overrides=[
        *PAYLOAD, "randomization.payload.mode=reset", "randomization.payload.mass=[2,4]",
        "randomization.payload.offset=[[-0.1,0.1],[-0.1,0.1],[0,0.05]]", "randomization.link_mass.mode=reset",
        "randomization.com_offset.mode=reset", "sim.num_threads=1"])
    default = env.default_model.body_mass[1]
    added = []
    for _ in range(4):
        env.reset()
        added.append([m.body_mass[1] - default for m in env.sim.models])
        for m in env.sim.models:  # the centre of mass within reach of the offsets, drawn afresh
            assert np.abs(m.body_ipos[1] - env.default_model.body_ipos[1]).max() <= 0.1 * 4 / (default + 4)
    added = np.array(added)
    assert added.min() >= 2.0 and added.max() <= 4.0 and len(np.unique(added.round(9))) == added.size
    env.close()

    def fixed_payload_after(resets: int) -> list[np.ndarray]:
        env = sim.make_env("go2-walk", num_envs=1, seed=3, overrides=[*GO2_PAYLOAD, "randomization.payload.mode=reset"])
        for _ in range(resets):
            env.reset()
        model = env.sim.models[0]
        env.close()
        return [model.body_mass.copy(), model.body_ipos.copy(), model.body_inertia.copy(), model.body_iquat.copy(),
                model.body_subtreemass.copy(), model.dof_invweight0.copy()]

    for first, later in zip(fixed_payload_after(1), fixed_payload_after(5)):
        np.testing.assert_array_equal(first, later)


def rollout(task: str, without: tuple[str, ...] = ()) -> torch.Tensor:
    """A seeded randomized rollout's observations and rewards, with the events ``without`` taken out of the task."""
    definition = sim.task(task).build(sim.load_task_config(task, ["sim.num_threads=1"]))
    for name in without:
        del definition.events[name]
    env = mujoco_backend.make_env(definition, num_envs=4, seed=5)
    obs, _ = env.reset(seed=5)
    generator = torch.Generator().manual_seed(0)
    trace = [obs["critic"]]
    for _ in range(15):
        obs, reward, *_ = env.step(torch.rand(4, env.action_dim, generator=generator) * 2 - 1)
        trace += [obs["critic"], reward[:, None]]
    env.close()
    return torch.cat(trace, dim=1)


@pytest.mark.parametrize("task", ["cf2-hover", "go2-walk", "panda-reach"])
def test_the_shifts_are_off_by_default_and_leave_a_seeded_rollout_bit_identical(task):
    randomization = sim.load_task_config(task).randomization
    assert not randomization.weak_motor.enabled and not randomization.payload.enabled
    torch.testing.assert_close(rollout(task), rollout(task, without=("weak_motor", "payload")), rtol=0, atol=0)


@pytest.mark.parametrize("task, override, message", [
    ("cf2-hover", "randomization.weak_motor.cont=2", r"unknown key 'randomization\.weak_motor\.cont'; did you mean"),
    ("go2-walk", "randomization.payload.mass=heavy", r"'randomization\.payload\.mass' must be tuple\[float, float\]"),
    ("go2-walk", "randomization.weak_motor.mode=interval", r"'randomization\.weak_motor\.mode' must be one of"),
    ("cf2-hover", "randomization.weak_motor.count=5", r"weak_motor\.count: 5 must be 1 to the model's 4 actuators"),
    ("go2-walk", "randomization.weak_motor.actuators=[3,12]", r"actuators: \[3, 12\] must be distinct .* below 12"),
    ("go2-walk", "randomization.payload.body=bsae", r"payload\.body: no body 'bsae' to carry it \(bodies: base, "),
    ("panda-reach", "randomization.payload.mass=[1,1]", r"payload\.body: the model has no floating base"),
    ("go2-walk", "randomization.payload.mass=[-1,2]", r"payload\.mass: \[-1\.0, 2\.0\] kg must not be negative"),
    ("go2-walk", "randomization.link_mass.mode=reset", r"payload\.mode: startup, but link_mass \(mode reset\)"),
])
def test_a_wrong_shift_is_one_config_error_line_naming_its_key(task, override, message):
    enable = PAYLOAD if "payload" in override or "link_mass" in override else WEAK
    with pytest.raises(ConfigError, match=message) as error:
        sim.make_env(task, num_envs=1, overrides=[*enable, override])
    assert "\n" not in str(error.value)


def test_eval_policy_runs_a_shipped_bundle_under_a_shift_of_the_randomized_variant():
    from robostack.workflows.evaluate import eval_policy

    nominal = eval_policy("bundles/cf2-hover", episodes=16, randomized=True, num_envs=16, seed=0)
    shifted = eval_policy("bundles/cf2-hover", episodes=16, randomized=True, num_envs=16, seed=0, overrides=CF2_SHIFT)
    assert nominal["overrides"] == [] and shifted["overrides"] == CF2_SHIFT and shifted["episodes"] == 16
    # same seed, same episodes: only the shift differs, and the heavier drone with a weak motor strays further
    assert shifted["metric/position_error"] > nominal["metric/position_error"]
    with pytest.raises(ValueError, match=r"'randomization\.link_mass\.range=\[1\.4,1\.4\]' changes nothing in the "
                                         r"play variant"):
        eval_policy("bundles/cf2-hover", episodes=16, overrides=CF2_SHIFT)
