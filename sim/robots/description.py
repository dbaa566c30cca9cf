"""One place that turns a robot description into a ``mujoco.MjSpec`` and adds what URDF cannot say.

Each robot is described once, as a URDF next to its ``model.py`` (MuJoCo, PyBullet and ROS
robot_state_publisher all read it). URDF has no actuators, sensors, sites or armature, so the builders add
those here, by name. Names equal MuJoCo Menagerie's, which lets ``MENAGERIE_ROOT`` swap in a Menagerie model:
its own actuators, keyframes and sensors are removed and ours are added to it the same way.
"""
from __future__ import annotations

import os
import pathlib
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import mujoco
import numpy as np

from robostack.specs import JointLimits

ROBOTS_DIR = pathlib.Path(__file__).resolve().parent


def urdf_path(robot: str) -> pathlib.Path:
    """The URDF that describes ``robot`` ("panda", "go2" or "cf2")."""
    path = ROBOTS_DIR / robot / f"{robot}.urdf"
    if not path.is_file():
        raise FileNotFoundError(f"no URDF for robot {robot!r} at {path}")
    return path


def menagerie_path(menagerie_file: str | None) -> pathlib.Path | None:
    """The Menagerie MJCF (``menagerie_file``, relative to a checkout) to use instead of our URDF, when
    ``MENAGERIE_ROOT`` points at a checkout holding it."""
    root = os.environ.get("MENAGERIE_ROOT")
    if not root or not menagerie_file:
        return None
    path = pathlib.Path(root) / menagerie_file
    return path if path.is_file() else None


def load_urdf_spec(path: str | os.PathLike, floating_base: bool) -> mujoco.MjSpec:
    """Parse a URDF into a spec whose every link stays a named body (frames like ``ee`` must survive)."""
    spec = mujoco.MjSpec.from_file(str(path))
    # MuJoCo's URDF defaults fuse bodies welded by fixed joints; sites are attached to them by name.
    spec.compiler.fusestatic = False
    spec.compiler.discardvisual = True
    if floating_base:
        _add_freejoint(spec)
    return spec


def load_spec(robot: str, floating_base: bool, menagerie_file: str | None = None) -> mujoco.MjSpec:
    """The robot's spec: our URDF, or the Menagerie model stripped of actuators, keyframes and sensors."""
    menagerie = menagerie_path(menagerie_file)
    if menagerie is None:
        return load_urdf_spec(urdf_path(robot), floating_base)
    spec = mujoco.MjSpec.from_file(str(menagerie))
    for element in [*spec.actuators, *spec.keys, *spec.sensors]:
        spec.delete(element)
    spec.nkey = 0  # <size nkey=...> would otherwise still reserve unnamed keyframes
    if floating_base:
        _add_freejoint(spec)
    return spec


def _add_freejoint(spec: mujoco.MjSpec) -> None:
    root = spec.worldbody.first_body()
    if not root.joints:  # Menagerie models already carry their free joint
        root.add_freejoint()


# ----------------------------------------------------------------------------------------------- URDF facts


def _joints(path: str | os.PathLike) -> dict[str, ET.Element]:
    return {j.get("name"): j for j in ET.parse(path).getroot().iter("joint")}


def joint_limits(path: str | os.PathLike, names: Sequence[str]) -> JointLimits:
    """Read limits from the URDF so constants in ``model.py`` never restate them."""
    joints = _joints(path)
    rows = []
    for name in names:
        limit = joints[name].find("limit")
        rows.append([float(limit.get(k)) for k in ("lower", "upper", "effort", "velocity")])
    lower, upper, effort, velocity = np.array(rows, dtype=np.float64).reshape(-1, 4).T
    return JointLimits(lower, upper, effort, velocity)


def link_mass(path: str | os.PathLike) -> float:
    """Total mass of all links of a URDF."""
    return sum(float(m.get("value")) for m in ET.parse(path).getroot().iter("mass"))


@dataclass(frozen=True)
class Frame:
    """A link welded to its parent by a fixed joint: where sites and sensors go."""

    parent: str
    pos: np.ndarray
    quat: np.ndarray  # w x y z


def fixed_frame(path: str | os.PathLike, link: str) -> Frame:
    """Pose of a fixed-joint child ``link`` in its parent link, from the URDF."""
    for joint in _joints(path).values():
        if joint.find("child").get("link") == link:
            if joint.get("type") != "fixed":
                raise ValueError(f"link {link!r} is not attached by a fixed joint")
            origin = joint.find("origin")
            xyz = [float(v) for v in origin.get("xyz", "0 0 0").split()]
            rpy = [float(v) for v in origin.get("rpy", "0 0 0").split()]
            return Frame(joint.find("parent").get("link"), np.array(xyz), _rpy_to_quat(rpy))
    raise KeyError(f"no joint has child link {link!r}")


def _rpy_to_quat(rpy: Sequence[float]) -> np.ndarray:
    """URDF rpy (fixed-axis x, then y, then z) as a w-x-y-z quaternion."""
    quat = np.zeros(4)
    mujoco.mju_euler2Quat(quat, np.asarray(rpy, dtype=np.float64), "XYZ")
    return quat


# ------------------------------------------------------------------------------------- additions to a spec


def add_ground(spec: mujoco.MjSpec, friction: float = 1.0) -> None:
    """A floor plane at z = 0 and a light above it."""
    spec.worldbody.add_geom(
        name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[0, 0, 0.05], friction=[friction, 0.005, 0.0001]
    )
    spec.worldbody.add_light(
        name="top", pos=[0, 0, 3], dir=[0, 0, -1], type=mujoco.mjtLightType.mjLIGHT_DIRECTIONAL
    )


def add_site(
    spec: mujoco.MjSpec,
    body: str,
    name: str,
    pos: Sequence[float] = (0, 0, 0),
    quat: Sequence[float] = (1, 0, 0, 0),
    size: float = 0.005,
) -> mujoco.MjsSite:
    """A sphere site on ``body``; replaces a site of the same name (Menagerie models have some of ours)."""
    old = spec.site(name)
    if old is not None:
        spec.delete(old)
    return spec.body(body).add_site(
        name=name, pos=list(pos), quat=list(quat), size=[size, size, size], type=mujoco.mjtGeom.mjGEOM_SPHERE
    )


def add_frame_site(spec: mujoco.MjSpec, path: str | os.PathLike, link: str, name: str | None = None, **kw) -> None:
    """Site at a URDF frame link, put on the frame's parent body so it also works on a Menagerie model."""
    frame = fixed_frame(path, link)
    add_site(spec, frame.parent, name or link, frame.pos, frame.quat, **kw)


def add_position_actuators(
    spec: mujoco.MjSpec,
    joints: Sequence[str],
    kp: Sequence[float],
    kd: Sequence[float],
    limits: JointLimits,
) -> None:
    """PD position servos, one per joint in the given order (actuator i drives ``joints[i]``).

    ``general`` with force = kp*(ctrl - q) - kd*qdot, the target clipped to the joint range and the force to
    the effort limit: the same law the real robots' joint controllers run.
    """
    for i, joint in enumerate(joints):
        spec.add_actuator(
            name=joint,
            target=joint,
            trntype=mujoco.mjtTrn.mjTRN_JOINT,
            gaintype=mujoco.mjtGain.mjGAIN_FIXED,
            biastype=mujoco.mjtBias.mjBIAS_AFFINE,
            gainprm=[kp[i]] + [0] * 9,
            biasprm=[0, -kp[i], -kd[i]] + [0] * 7,
            ctrllimited=True,
            ctrlrange=[limits.lower[i], limits.upper[i]],
            forcelimited=True,
            forcerange=[-limits.effort[i], limits.effort[i]],
        )


def set_joint_dynamics(spec: mujoco.MjSpec, joints: Sequence[str], armature: float) -> None:
    """Reflected rotor inertia, which URDF cannot express (damping and friction come from ``<dynamics>``)."""
    for joint in joints:
        spec.joint(joint).armature = armature


def disable_self_collision(spec: mujoco.MjSpec, root: str) -> None:
    """Robot geoms under ``root`` still touch the world and objects (contype 1) but not each other.

    Colliding geoms get contype 2 / conaffinity 1: two robot geoms never match, while a default geom
    (contype = conaffinity = 1) matches through its own contype. Visual-only geoms are left alone.
    """
    stack = [spec.body(root)]
    while stack:
        body = stack.pop()
        stack.extend(body.bodies)
        for geom in body.geoms:
            if geom.contype or geom.conaffinity:
                geom.contype, geom.conaffinity = 2, 1


def add_sensor(spec: mujoco.MjSpec, name: str, kind: mujoco.mjtSensor, site: str) -> None:
    """A sensor at ``site``; task code reads sensors by name."""
    spec.add_sensor(name=name, type=kind, objtype=mujoco.mjtObj.mjOBJ_SITE, objname=site)


def add_joint_axis_sensors(spec: mujoco.MjSpec, joints: Sequence[str]) -> None:
    """Per hinge joint, a site at its anchor with z along its axis and the ``<joint>_anchor`` (framepos) and
    ``<joint>_axis`` (framezaxis) sensors that ``sim.ik`` builds Jacobians from."""
    from robostack.sim import ik

    for name in joints:
        joint = spec.joint(name)
        site = f"{name}_frame"
        add_site(spec, joint.parent.name, site, joint.pos, ik.axis_quat(joint.axis))
        add_sensor(spec, ik.anchor_sensor(name), mujoco.mjtSensor.mjSENS_FRAMEPOS, site)
        add_sensor(spec, ik.axis_sensor(name), mujoco.mjtSensor.mjSENS_FRAMEZAXIS, site)


def add_imu(spec: mujoco.MjSpec, site: str = "imu") -> None:
    """``imu_gyro`` and ``imu_acc`` at ``site``, both in the site frame, like the real boards."""
    add_sensor(spec, "imu_gyro", mujoco.mjtSensor.mjSENS_GYRO, site)
    add_sensor(spec, "imu_acc", mujoco.mjtSensor.mjSENS_ACCELEROMETER, site)


def add_home_key(
    spec: mujoco.MjSpec,
    joint_pos: Mapping[str, float],
    ctrl: Sequence[float],
    base_pos: Sequence[float] | None = None,
    act: Sequence[float] | None = None,
) -> None:
    """Keyframe ``home``: the default pose (and base position for floating robots), commanded by ``ctrl``."""
    model = spec.compile()  # only to learn the qpos layout
    qpos = model.qpos0.copy()
    for name, value in joint_pos.items():
        qpos[model.joint(name).qposadr[0]] = value
    if base_pos is not None:
        qpos[0:3] = base_pos  # the root free joint comes first
    key = spec.add_key(name="home", qpos=qpos, ctrl=list(ctrl))
    if act is not None:
        key.act = list(act)
