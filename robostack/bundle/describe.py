"""What a task states in a bundle's metadata: its robot (actuators, joints, default pose, gains), the policy
observation's terms with their definitions, the action map; and which of those the task rebuilt from a bundle's
stored config states otherwise. Reads a task and its MuJoCo model (imported when called)."""
from __future__ import annotations

from typing import Any

import numpy as np

from robostack.bundle.format import ACTOR_CRITIC, BundleError, _jsonable


def describe_observation(env: Any) -> dict[str, Any]:
    """The policy observation group of a ``TaskEnv`` for the metadata: its terms in order, sized from what
    the env computes now."""
    import dataclasses

    task = env.task
    terms, offset = [], 0
    for name, term in task.observations["policy"].items():
        dim = int(term.func(env).shape[-1])
        if term.defines is None:
            raise BundleError(f"task {task.name}: policy observation term {name!r} has no definition (what it "
                              "measures, its frame, units and order: robostack.sim.terms.Definition)")
        entry = {"name": name, "dim": dim, "scale": float(term.scale), "offset_in_vector": offset,
                 "definition": dataclasses.asdict(term.defines)}
        if hasattr(term.func, "integral_of"):  # a running integral: deploy code integrates that quantity
            of = term.func.integral_of
            entry["integral"] = {"of": of, "limit": float(task.integrals[of].limit), "dt": float(env.control_dt)}
        terms.append(entry)
        offset += dim
    obs_dim = int(env.observation_spaces["policy"].shape[-1])
    if offset != obs_dim:
        raise RuntimeError(f"task {task.name}: policy terms add up to {offset}, observation space is {obs_dim}")
    return {"dim": obs_dim, "terms": terms}


def _actuated_joint(model: Any, i: int) -> str | None:
    import mujoco

    if int(model.actuator_trntype[i]) in (int(mujoco.mjtTrn.mjTRN_JOINT), int(mujoco.mjtTrn.mjTRN_JOINTINPARENT)):
        return model.joint(int(model.actuator_trnid[i, 0])).name
    return None


def describe_actuators(model: Any) -> list[dict[str, Any]]:
    """Every actuator of a ``mujoco.MjModel`` in driver order: name, joint, type ("position": a PD servo,
    "motor": force or thrust = gain x gear x ctrl), gain, gear, control range (null: unlimited), kp, kd."""
    import mujoco

    actuators = []
    for i in range(model.nu):
        gain, bias = model.actuator_gainprm[i], model.actuator_biasprm[i]
        gaintype, biastype = int(model.actuator_gaintype[i]), int(model.actuator_biastype[i])
        is_pd = (gaintype == int(mujoco.mjtGain.mjGAIN_FIXED) and biastype == int(mujoco.mjtBias.mjBIAS_AFFINE)
                 and bias[0] == 0.0 and gain[0] > 0 and np.isclose(bias[1], -gain[0]))
        limited = bool(model.actuator_ctrllimited[i])
        lo, hi = (float(model.actuator_ctrlrange[i, 0]), float(model.actuator_ctrlrange[i, 1])) if limited \
            else (None, None)
        if is_pd:
            kind = "position"
        elif biastype == int(mujoco.mjtBias.mjBIAS_NONE) and gaintype == int(mujoco.mjtGain.mjGAIN_FIXED):
            kind = "motor"  # force/torque/thrust = gain * gear * ctrl
        else:
            kind = "other"
        actuators.append({"name": model.actuator(i).name, "joint": _actuated_joint(model, i), "type": kind,
                          "gain": float(gain[0]), "gear": float(model.actuator_gear[i, 0]),
                          "ctrl_range": [lo, hi], "kp": float(gain[0]) if is_pd else None,
                          "kd": float(-bias[2]) if is_pd else None})
    return actuators


def describe_robot(task: Any, model: Any) -> dict[str, Any]:
    """What every bundle states about the robot it drives: its name, actuators, actuated joints (driver
    order), default joint positions and PD gains."""
    actuators = describe_actuators(model)
    return {
        "robot": task.robot,
        "actuators": actuators,
        "joint_names": [a["joint"] for a in actuators if a["joint"] is not None],
        "default_joint_pos": [float(v) for v in np.asarray(task.default_joint_pos).tolist()],
        "pd_gains": {"kp": [a["kp"] for a in actuators], "kd": [a["kd"] for a in actuators]},
    }


def describe_action(task: Any, model: Any) -> dict[str, Any]:
    """A vector policy's action map (``ActionMap``) for the metadata: what ``PolicyBundle.controls`` applies."""
    am, nu = task.action, model.nu
    if am.gripper is not None:
        raise BundleError(f"task {task.name}: its gripper action cannot be described in a bundle yet")
    action_terms, ik = [], None
    if am.ik is None:
        for k, aid in enumerate(np.asarray(am.actuator_ids).tolist()):
            action_terms.append({"index": k, "actuator": model.actuator(int(aid)).name, "actuator_index": int(aid),
                                 "joint": _actuated_joint(model, int(aid)), "scale": float(am.scale[k]),
                                 "offset": float(am.offset[int(aid)])})
    else:
        axes = ("x", "y", "z", "rx", "ry", "rz")  # metres, then a rotation vector (rad), world frame
        action_terms = [{"index": k, "ee_axis": axes[k], "scale": float(am.scale[k])} for k in range(am.dim)]
        ik = {"site": am.ik.site, "joints": list(am.ik.joints), "damping": float(am.ik.damping),
              "actuator_indices": [int(a) for a in np.asarray(am.actuator_ids).tolist()]}
    limited = model.actuator_ctrllimited.astype(bool)
    return {
        "dim": int(am.dim), "range": [-1.0, 1.0], "terms": action_terms,
        "actuators": [model.actuator(i).name for i in range(nu)],
        "offset": [float(v) for v in am.offset],
        "ctrl_min": [float(lo) if on else None for (lo, _), on in zip(model.actuator_ctrlrange, limited)],
        "ctrl_max": [float(hi) if on else None for (_, hi), on in zip(model.actuator_ctrlrange, limited)],
        "relative": bool(am.relative or am.ik), "ik": ik,
        "formula": ("ctrl = previous ctrl (offset at episode start)" if am.relative or am.ik else "ctrl = offset")
                   + ("; ctrl[ik.actuator_indices] += dls(J(ik.site), terms.scale * clip(a, -1, 1), ik.damping)"
                      if am.ik else "; ctrl[terms[i].actuator_index] += terms[i].scale * clip(a[i], -1, 1)")
                   + "; ctrl = clip(ctrl, ctrl_min, ctrl_max)"
                   + ("; ctrl = robostack.sim.joint_limits.limit_targets(ctrl, measured q, qdot, previous ctrl, "
                      "target_limits, control dt)" if am.limits is not None else ""),
        "target_limits": None if am.limits is None else {k: np.asarray(v).tolist() for k, v in vars(am.limits).items()},
    }


def rebuilt_mismatches(metadata: dict[str, Any], task: Any, model: Any) -> list[str]:
    """The metadata fields that the task rebuilt from the bundle's stored config (robot configuration
    included) describes otherwise: the robot's actuators, joints, default pose and gains, and a vector
    policy's action map. Empty when deployment applies actions exactly as the metadata says."""
    rebuilt = _jsonable(describe_robot(task, model))
    if metadata.get("kind", ACTOR_CRITIC) == ACTOR_CRITIC:
        rebuilt["action"] = _jsonable(describe_action(task, model))

    def differs(stored: Any, built: Any) -> bool:
        if isinstance(stored, dict) and isinstance(built, dict):  # a key stored without (older exports): null
            return any(differs(stored.get(k), built.get(k)) for k in {*stored, *built})
        return stored != built

    return [key for key, value in rebuilt.items() if key in metadata and differs(metadata[key], value)]


def describe_env(env: Any) -> dict[str, Any]:
    """Robot/task facts of a ``TaskEnv`` for a vector bundle's metadata: the robot (``describe_robot``),
    observation terms, action map, control timing."""
    task, model = env.task, env.default_model
    return {
        **describe_robot(task, model),
        "task": task.name,
        "observation": describe_observation(env),
        "action": describe_action(task, model),
        "command_dim": int(task.command_dim),
        "control_rate_hz": 1.0 / float(env.control_dt),
        "control_dt": float(env.control_dt),
        "physics_dt": float(task.sim.timestep),
        "decimation": int(task.sim.decimation),
        "max_episode_length": int(env.max_episode_length),
    }
