"""The three robot descriptions: valid URDF for MuJoCo, PyBullet and ROS, constants that match it, and models
that hold their default pose for 10 s of simulated time."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import mujoco
import numpy as np
import pytest

from robostack.sim.robots import description
from robostack.sim.robots.cf2 import model as cf2
from robostack.sim.robots.go2 import model as go2
from robostack.sim.robots.panda import model as panda

ROBOTS = {"panda": panda, "go2": go2, "cf2": cf2}
SPECS = {name: module.SPEC for name, module in ROBOTS.items()}
FLOATING = {"panda": False, "go2": True, "cf2": True}
# Published masses (kg): Menagerie's link masses summed.
TOTAL_MASS = {
    "panda": 0.629769 + 4.970684 + 0.646926 + 3.228604 + 3.587895 + 1.225946 + 1.666555 + 0.735522 + 0.73 + 2 * 0.015,
    "go2": 6.921 + 4 * (0.678 + 1.152 + 0.241352),
    "cf2": 0.027,
}
PRIMITIVES = {"box", "cylinder", "sphere"}


@pytest.fixture(params=sorted(ROBOTS))
def robot(request):
    return request.param


def test_urdf_is_what_robot_state_publisher_needs(robot):
    root = ET.parse(description.urdf_path(robot)).getroot()
    assert root.tag == "robot" and root.get("name") == robot
    links = [link.get("name") for link in root.iter("link")]
    assert len(links) == len(set(links))
    children = []
    for joint in root.iter("joint"):
        parent, child = joint.find("parent").get("link"), joint.find("child").get("link")
        assert parent in links and child in links, joint.get("name")
        children.append(child)
    assert len(children) == len(set(children)), "a link has two parents"
    roots = set(links) - set(children)
    assert len(roots) == 1, f"not a single tree: roots {roots}"


def test_urdf_geometry_is_primitive_and_all_collision_geometry_reaches_mujoco(robot):
    root = ET.parse(description.urdf_path(robot)).getroot()
    shapes = [g[0].tag for g in root.iter("geometry")]
    assert shapes and set(shapes) <= PRIMITIVES
    assert not list(root.iter("mesh"))
    n_collision = len(list(root.iter("collision")))
    model = description.load_urdf_spec(description.urdf_path(robot), FLOATING[robot]).compile()
    assert model.ngeom == n_collision  # every collision element became a geom, every visual was dropped


def test_links_survive_as_named_bodies(robot):
    root = ET.parse(description.urdf_path(robot)).getroot()
    model = description.load_urdf_spec(description.urdf_path(robot), FLOATING[robot]).compile()
    bodies = {model.body(i).name for i in range(model.nbody)}
    assert {link.get("name") for link in root.iter("link")} <= bodies


def test_spec_matches_urdf_config_and_model(robot):
    spec = SPECS[robot]
    config = spec.load_config()
    model = spec.build_model(config)
    kp, kd = config.joint_gains()
    limits = spec.joint_limits
    assert model.nu == (4 if robot == "cf2" else len(spec.joint_names))
    for i, name in enumerate(spec.joint_names):
        joint = model.joint(name)
        assert model.actuator(i).name == name and model.actuator_trnid[i, 0] == joint.id
        np.testing.assert_allclose(joint.range, [limits.lower[i], limits.upper[i]])
        np.testing.assert_allclose(model.actuator_forcerange[i], [-limits.effort[i], limits.effort[i]])
        np.testing.assert_allclose(model.actuator_gainprm[i, 0], kp[i])
        np.testing.assert_allclose(model.actuator_biasprm[i, :3], [0, -kp[i], -kd[i]])
    home = config.home_joint_pos()
    assert home.shape == (len(spec.joint_names),)
    assert np.all(home >= limits.lower) and np.all(home <= limits.upper) and np.all(limits.velocity > 0)


def test_robots_are_registered_specs_and_their_model_follows_the_config_given(robot):
    """One typed specification per robot in the registry; the model is built from the configuration passed,
    not from the YAML file read at import (an edited file changes nothing of a model built from a stored one)."""
    from dataclasses import replace

    from robostack import registry

    spec = registry.robot(robot)
    assert spec is SPECS[robot] and spec.urdf == description.urdf_path(robot)
    assert spec.kind == {"panda": "arm", "go2": "quadruped", "cf2": "drone"}[robot]
    config = spec.load_config()
    changed = replace(config, **({"max_thrust": 0.2} if robot == "cf2" else {"kd": tuple(np.add(config.kd, 1.0))
                                                                              if robot == "panda" else config.kd + 1.0}))
    model, other = spec.build_model(config), spec.build_model(changed)
    if robot == "cf2":
        assert model.actuator_ctrlrange[0, 1] == 0.15 and other.actuator_ctrlrange[0, 1] == 0.2
    else:
        np.testing.assert_allclose(other.actuator_biasprm[:, 2], model.actuator_biasprm[:, 2] - 1.0)


def test_published_joint_limits():
    np.testing.assert_allclose(panda.LIMITS.upper[:7], [2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973])
    np.testing.assert_allclose(panda.LIMITS.effort, [87] * 4 + [12] * 3 + [20] * 2)
    np.testing.assert_allclose(panda.LIMITS.velocity, [2.175] * 4 + [2.61] * 3 + [0.2] * 2)
    assert go2.JOINT_NAMES[:3] == ("FR_hip_joint", "FR_thigh_joint", "FR_calf_joint")
    assert [n.split("_")[0] for n in go2.JOINT_NAMES[::3]] == ["FR", "FL", "RR", "RL"]
    np.testing.assert_allclose(go2.LIMITS.effort, [23.7, 23.7, 45.43] * 4)
    np.testing.assert_allclose(go2.LIMITS.upper[1::3], [3.4907, 3.4907, 4.5379, 4.5379])
    np.testing.assert_allclose(cf2.HOVER_THRUST, 0.027 * 9.81 / 4, rtol=1e-3)


def test_masses(robot):
    model = SPECS[robot].build_model()
    np.testing.assert_allclose(model.body_mass.sum(), TOTAL_MASS[robot], rtol=1e-3)
    np.testing.assert_allclose(description.link_mass(description.urdf_path(robot)), TOTAL_MASS[robot], rtol=1e-3)


def test_pybullet_loads_urdf(robot):
    pybullet = pytest.importorskip("pybullet")
    client = pybullet.connect(pybullet.DIRECT)
    try:
        # Not fixed-base even for the panda, so the base mass is reported too.
        body = pybullet.loadURDF(str(description.urdf_path(robot)), physicsClientId=client)
        n = pybullet.getNumJoints(body, physicsClientId=client)
        mass = sum(pybullet.getDynamicsInfo(body, i, physicsClientId=client)[0] for i in range(-1, n))
        np.testing.assert_allclose(mass, TOTAL_MASS[robot], rtol=1e-3)
        infos = {}
        for i in range(n):
            info = pybullet.getJointInfo(body, i, physicsClientId=client)
            infos[info[1].decode()] = info
        spec = SPECS[robot]
        limits = spec.joint_limits
        for i, name in enumerate(spec.joint_names):
            info = infos[name]
            np.testing.assert_allclose(info[8:12], [limits.lower[i], limits.upper[i], limits.effort[i],
                                                    limits.velocity[i]])
    finally:
        pybullet.disconnect(client)


def _hold(module, timestep: float, seconds: float = 10.0):
    """Start at the ``home`` keyframe, command it, and simulate."""
    model = module.SPEC.build_model()
    model.opt.timestep = timestep
    data = mujoco.MjData(model)
    mujoco.mj_resetDataKeyframe(model, data, model.key("home").id)
    for _ in range(round(seconds / timestep)):
        mujoco.mj_step(model, data)
    assert np.all(np.isfinite(data.qpos)) and np.all(np.isfinite(data.qvel))
    qpos = np.array([data.qpos[model.joint(n).qposadr[0]] for n in module.JOINT_NAMES])
    return model, data, qpos


def test_panda_holds_home_pose():
    model, data, qpos = _hold(panda, 0.002)
    assert model.opt.integrator == mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    # Measured: largest error 0.0066 rad (gravity sag of joints 2 and 4 under the PD gains).
    assert np.abs(qpos - panda.SPEC.load_config().home_joint_pos()).max() < 0.02
    assert np.abs(data.qvel).max() < 1e-3
    np.testing.assert_allclose(data.sensor("ee_pos").data, data.site("ee").xpos)
    assert data.sensor("ee_pos").data[2] > 0.4  # the hand stays up, not sagging towards the floor


def test_panda_ee_matches_franka_kinematics():
    """The TCP from our URDF equals Franka's published DH chain + flange (0.107) + hand (-45 deg, 0.1034)."""

    def dh(a, d, alpha, theta):  # Craig's modified DH, as in Franka's documentation
        ca, sa, ct, st = np.cos(alpha), np.sin(alpha), np.cos(theta), np.sin(theta)
        return np.array(
            [[ct, -st, 0, a], [st * ca, ct * ca, -sa, -d * sa], [st * sa, ct * sa, ca, d * ca], [0, 0, 0, 1]]
        )

    a = [0, 0, 0, 0.0825, -0.0825, 0, 0.088]
    d = [0.333, 0, 0.316, 0, 0.384, 0, 0]
    alpha = [0, -np.pi / 2, np.pi / 2, np.pi / 2, -np.pi / 2, np.pi / 2, np.pi / 2]
    model = panda.SPEC.build_model()
    data = mujoco.MjData(model)
    rng = np.random.default_rng(0)
    for _ in range(5):
        q = rng.uniform(panda.LIMITS.lower[:7], panda.LIMITS.upper[:7])
        tcp = np.eye(4)
        for i in range(7):
            tcp = tcp @ dh(a[i], d[i], alpha[i], q[i])
        tcp = tcp @ dh(0, 0.107, 0, -np.pi / 4) @ dh(0, 0.1034, 0, 0)
        data.qpos[:7] = q
        mujoco.mj_kinematics(model, data)
        np.testing.assert_allclose(data.site("ee").xpos, tcp[:3, 3], atol=1e-9)
        np.testing.assert_allclose(data.site("ee").xmat.reshape(3, 3), tcp[:3, :3], atol=1e-9)


def test_go2_stands_in_default_pose():
    model, data, qpos = _hold(go2, 0.004)
    base = model.body("base").id
    height = data.qpos[2]
    projected_gravity_z = data.xmat[base].reshape(3, 3).T @ np.array([0, 0, -1.0])
    # Measured (settled after ~2 s, no creep): height 0.2475 m, projected gravity z -0.9993, joint errors
    # hip 0.005, thigh 0.074, calf 0.164 (front) / 0.241 (rear) rad: the calves sag under the robot's
    # weight with Playground's soft kp = 35, so 0.1 rad holds for hip and thigh only.
    assert 0.2 < height < 0.35
    assert projected_gravity_z[2] < -0.99
    err = np.abs(qpos - go2.SPEC.load_config().home_joint_pos()).reshape(4, 3)
    assert err[:, :2].max() < 0.1 and err[:, 2].max() < 0.3
    contacts = np.array([data.sensor(f"{leg}_contact").data[0] for leg in go2.LEGS])
    assert np.all(contacts > 0)
    np.testing.assert_allclose(contacts.sum(), model.body_mass.sum() * 9.81, rtol=0.02)
    for leg in go2.LEGS:
        foot = data.sensor(f"{leg}_foot_pos").data
        assert abs(foot[2] - go2.FOOT_RADIUS) < 0.005  # resting on the floor
    np.testing.assert_allclose(data.sensor("imu_acc").data[2], 9.81, rtol=0.01)
    assert np.abs(data.sensor("base_linvel").data).max() < 1e-3


def test_cf2_hovers_under_equal_hover_thrust():
    model, data, _ = _hold(cf2, 0.002)
    # Measured: 0 drift in x, y, attitude and |z - 1| ~ 1e-13 m: equal thrusts, symmetric body.
    np.testing.assert_allclose(data.qpos[:3], cf2.SPEC.load_config().home_base_pos(), atol=1e-6)
    np.testing.assert_allclose(data.act, cf2.HOVER_THRUST)
    np.testing.assert_allclose(data.sensor("imu_acc").data, [0, 0, 9.81], atol=1e-6)


def test_cf2_motor_layout_and_yaw_sign():
    """More thrust on M2/M4 (clockwise rotors) must yaw the body counter-clockwise, as Bitcraze's mixer expects;
    more thrust on the left motors M3/M4 must roll it right side up (positive x torque)."""
    model = cf2.SPEC.build_model()
    data = mujoco.MjData(model)
    for i, (sx, sy) in enumerate([(1, -1), (-1, -1), (-1, 1), (1, 1)]):
        np.testing.assert_allclose(model.site(cf2.MOTOR_NAMES[i]).pos[:2], [sx * 0.0325, sy * 0.0325])
    for extra, axis in (([0, 1, 0, 1], 2), ([0, 0, 1, 1], 0)):
        mujoco.mj_resetDataKeyframe(model, data, model.key("home").id)
        data.act[:] += 0.01 * np.array(extra)
        mujoco.mj_forward(model, data)
        torque = data.qfrc_actuator[3:6]  # free joint angular dofs, body frame
        assert torque[axis] > 0 and np.abs(np.delete(torque, axis)).max() < 1e-9


def test_cf2_motor_lag():
    config = cf2.SPEC.load_config()
    model = cf2.SPEC.build_model(config)
    data = mujoco.MjData(model)
    mujoco.mj_resetDataKeyframe(model, data, model.key("home").id)
    data.act[:] = 0
    data.ctrl[:] = config.max_thrust
    steps = round(config.motor_time_constant / model.opt.timestep)
    for _ in range(steps):
        mujoco.mj_step(model, data)
    np.testing.assert_allclose(data.act, config.max_thrust * (1 - np.exp(-1)), rtol=0.05)


def test_menagerie_override(tmp_path, monkeypatch):
    """A Menagerie-layout model is used when MENAGERIE_ROOT has it; its actuators, keys and sensors go."""
    spec = description.load_urdf_spec(description.urdf_path("go2"), floating_base=True)
    spec.add_actuator(name="theirs", target="FL_hip_joint", trntype=mujoco.mjtTrn.mjTRN_JOINT)
    spec.body("base").add_site(name="imu")
    spec.add_sensor(name="their_gyro", type=mujoco.mjtSensor.mjSENS_GYRO, objtype=mujoco.mjtObj.mjOBJ_SITE,
                    objname="imu")
    spec.add_key(name="theirs", qpos=spec.compile().qpos0)
    path = tmp_path / go2.SPEC.menagerie_file
    path.parent.mkdir(parents=True)
    path.write_text(spec.to_xml())
    monkeypatch.setenv("MENAGERIE_ROOT", str(tmp_path))
    assert description.menagerie_path(go2.SPEC.menagerie_file) == path
    model = go2.SPEC.build_model()
    assert [model.actuator(i).name for i in range(model.nu)] == list(go2.JOINT_NAMES)
    assert model.nkey == 1 and model.key(0).name == "home"
    assert "their_gyro" not in {model.sensor(i).name for i in range(model.nsensor)}
    assert model.njnt == 13  # one free joint, not two


def test_ik_jacobian_from_joint_sensors_matches_mujoco_and_dls_moves_the_tcp():
    """sim.ik builds the TCP Jacobian from per-joint anchor/axis sensors; it must equal mj_jacSite, and a
    damped least-squares step must move the TCP by (about) the asked displacement."""
    import mujoco
    import torch

    from robostack.sim import ik
    from robostack.sim.robots.panda import model as panda

    m = panda.SPEC.build_model()
    d = mujoco.MjData(m)
    d.qpos[:7] = panda.SPEC.load_config().home_joint_pos()[:7] + np.random.default_rng(0).uniform(-0.3, 0.3, 7)
    mujoco.mj_forward(m, d)

    class Sensors:
        def sensor(self, name):
            i = m.sensor(name).id
            return torch.tensor(d.sensordata[m.sensor_adr[i]:m.sensor_adr[i] + m.sensor_dim[i]]).reshape(1, -1)

    jac = ik.site_jacobian(Sensors(), "ee", panda.ARM_JOINT_NAMES)[0].numpy()
    jp, jr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
    mujoco.mj_jacSite(m, d, jp, jr, m.site("ee").id)
    np.testing.assert_allclose(jac, np.vstack([jp[:, :7], jr[:, :7]]), atol=1e-12)

    step = torch.tensor([[0.01, -0.005, 0.008, 0.0, 0.0, 0.02]], dtype=torch.float64)
    dq = ik.damped_least_squares(torch.as_tensor(jac).unsqueeze(0), step, damping=1e-3)[0].numpy()
    before = d.site("ee").xpos.copy()
    d.qpos[:7] += dq
    mujoco.mj_kinematics(m, d)
    np.testing.assert_allclose(d.site("ee").xpos - before, step[0, :3].numpy(), atol=5e-4)
