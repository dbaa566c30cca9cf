"""How far a correction of the joint targets alone can take the shipped go2-walk bundle under a heavier base: at
every control step, each leg on the ground has its joint targets moved by its share of the base's extra weight,
as joint torques through the foot's Jacobian divided by the joint's kp (the static sag a PD joint gives under that
load), times ``--factor`` (1: the static compensation, 0: the bundle alone). Privileged on purpose: the extra mass
and where it sits come from the simulator's model against the nominal one, the feet on the ground from their
height; the shares are the least-norm vertical forces that carry the extra weight without a moment about it.
Success is the task's (no fall to the episode's end).

    .venv/bin/python scripts/load_compensation_probe.py --factor 1 [--factor 0 ...] [--episodes 128] [--shift k=v ...]

Without --shift it uses the benchmark's shift (configs/improve/go2-walk.yaml: 3 kg, 10 cm behind and 5 cm above the
base's centre of mass). The ceiling it measures is that of any learned correction that only offsets the bundle's
joint targets by the load.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from robostack import sim  # noqa: E402
from robostack.workflows.acting import load_policy  # noqa: E402
from robostack.workflows.improve import improve_config  # noqa: E402

FEET = ("FR_foot", "FL_foot", "RR_foot", "RL_foot")
ON_GROUND_M = 0.03  # a foot site this low carries weight (the foot sphere's radius is 0.022 m)


def extra_weight(model: mujoco.MjModel, nominal: mujoco.MjModel, body: int) -> tuple[float, np.ndarray]:
    """The base's extra mass (kg) and where it sits in the body's frame (m)."""
    extra = float(model.body_mass[body] - nominal.body_mass[body])
    if extra <= 1e-9:
        return 0.0, np.zeros(3)
    moment = model.body_mass[body] * model.body_ipos[body] - nominal.body_mass[body] * nominal.body_ipos[body]
    return extra, moment / extra


def target_offsets(model: mujoco.MjModel, nominal: mujoco.MjModel, data: mujoco.MjData, body: int,
                   sites: list[int], dofs: np.ndarray, kp: np.ndarray) -> np.ndarray:
    """[nu] joint-target offsets (rad) that hold the base's extra weight on the legs on the ground."""
    mass, where = extra_weight(model, nominal, body)
    on_ground = [s for s in sites if data.site_xpos[s][2] < ON_GROUND_M]
    if not mass or len(on_ground) < 2:
        return np.zeros(len(dofs))
    load = data.xpos[body] + data.xmat[body].reshape(3, 3) @ where
    feet = np.array([data.site_xpos[s] for s in on_ground])
    balance = np.vstack([np.ones(len(feet)), feet[:, 0] - load[0], feet[:, 1] - load[1]])
    forces = np.linalg.lstsq(balance, np.array([mass * -model.opt.gravity[2], 0.0, 0.0]), rcond=None)[0].clip(0.0)
    torque = np.zeros(model.nv)
    jacobian = np.zeros((3, model.nv))
    for site, force in zip(on_ground, forces):
        mujoco.mj_jacSite(model, data, jacobian, None, site)
        torque -= jacobian[2] * force  # the joints push the foot down as hard as the ground pushes it up
    return torque[dofs] / kp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--factor", type=float, action="append", default=None)
    parser.add_argument("--episodes", type=int, default=128)
    parser.add_argument("--seed", type=int, default=7919)
    parser.add_argument("--shift", action="append", default=None)
    args = parser.parse_args()
    shift = args.shift if args.shift is not None else improve_config("go2-walk").shift
    loaded = load_policy(ROOT / "bundles" / "go2-walk")
    for factor in args.factor or [1.0]:
        env = sim.make_env("go2-walk", num_envs=args.episodes, seed=0, config=loaded.task_config,
                           overrides=list(shift))
        policy = loaded.make_policy(env)
        nominal = env.default_model
        body = int(nominal.jnt_bodyid[0])  # the floating base
        sites = [mujoco.mj_name2id(nominal, mujoco.mjtObj.mjOBJ_SITE, name) for name in FEET]
        dofs = env.actuator_dof_adr.cpu().numpy()
        kp = nominal.actuator_gainprm[:, 0].copy()
        scale = env.task.action.scale
        data = mujoco.MjData(nominal)
        outcome = np.full(args.episodes, -1)  # first episode of each env: 1 no fall, 0 fell
        obs, _ = env.reset(args.seed)
        while (outcome < 0).any():
            offsets = np.zeros((args.episodes, len(dofs)))
            for i in range(args.episodes if factor else 0):
                model = env.sim.models[i]
                mujoco.mj_setState(model, data, env.sim.state[i], mujoco.mjtState.mjSTATE_FULLPHYSICS)
                mujoco.mj_kinematics(model, data)
                mujoco.mj_comPos(model, data)
                offsets[i] = factor * target_offsets(model, nominal, data, body, sites, dofs, kp)
            with torch.inference_mode():
                action = policy(obs) + torch.as_tensor(offsets / scale, dtype=torch.float32)
            obs, _, terminated, truncated, _ = env.step(action)
            ended = (terminated | truncated).cpu().numpy() & (outcome < 0)
            outcome[ended] = ~terminated.cpu().numpy()[ended]
        env.close()
        print(json.dumps({"shift": shift, "episodes": args.episodes, "factor": factor,
                          "success": round(float(outcome.mean()), 4)}), flush=True)


if __name__ == "__main__":
    main()
