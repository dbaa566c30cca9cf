"""How far a correction of the task command alone can take the shipped cf2-hover bundle under a shift: the policy
flies to ``target + offset`` instead of the target, its motor commands untouched, with a PI on the true error
(``--kp``, ``--ki``): ``offset = kp * error + ki * integral(error)``, the integral clipped to +-``--limit`` m s.
Success is the task's (within its success radius of the true target at the episode's end, not crashed).

    .venv/bin/python scripts/setpoint_correction_probe.py --kp 0.5 --ki 0.5 [--episodes 128] [--shift key=value ...]

Without --shift it uses the benchmark's shift (configs/improve/cf2-hover.yaml); --kp 0 --ki 0 is the bundle alone.
The correction learned from a human's takeovers is a bundle kind (``robostack train cf2-hover --interventions
DATASET --algo command-correction``, then ``robostack eval``); this probe's ``--learn-from``, its forerunner, is in
the history (``git show b808cf8:scripts/setpoint_correction_probe.py``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from robostack import sim  # noqa: E402
from robostack.workflows.acting import load_policy  # noqa: E402
from robostack.workflows.improve import improve_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kp", type=float, default=0.5)
    parser.add_argument("--ki", type=float, default=1.0)
    parser.add_argument("--limit", type=float, default=1.0)
    parser.add_argument("--episodes", type=int, default=128)
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7919)
    parser.add_argument("--shift", action="append", default=None)
    args = parser.parse_args()
    shift = args.shift if args.shift is not None else improve_config("cf2-hover").shift
    loaded = load_policy(ROOT / "bundles" / "cf2-hover")
    n = min(args.num_envs, args.episodes)
    env = sim.make_env("cf2-hover", num_envs=n, seed=args.seed, config=loaded.task_config, overrides=list(shift))
    policy = loaded.make_policy(env)
    target = torch.as_tensor(env.task_cfg.target, dtype=torch.float32)
    radius = env.task_cfg.success_radius
    integral = torch.zeros(n, 3)
    quota = np.full(n, args.episodes // n) + (np.arange(n) < args.episodes % n)
    counted, outcomes = np.zeros(n, dtype=int), []
    env.reset(args.seed)
    while (counted < quota).any():
        error = target - torch.as_tensor(env.sim.qpos[:, 0:3], dtype=torch.float32)
        integral = torch.clamp(integral + error * env.control_dt, -args.limit, args.limit)
        env.command[:] = target + args.kp * error + args.ki * integral
        with torch.inference_mode():
            action = policy(env.observe())
        _, _, terminated, _, info = env.step(action)
        for i in np.flatnonzero(info["done"].cpu().numpy()):
            if counted[i] < quota[i]:  # the last step's error: the episode ended right after it
                outcomes.append(bool(error[i].norm() < radius) and not bool(terminated[i]))
            counted[i] += 1
            integral[i] = 0.0
    env.close()
    print(json.dumps({"shift": shift, "episodes": len(outcomes), "success": round(float(np.mean(outcomes)), 4),
                      "kp": args.kp, "ki": args.ki}))


if __name__ == "__main__":
    main()
