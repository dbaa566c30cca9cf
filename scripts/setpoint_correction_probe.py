"""How far a correction of the task command alone can take the shipped cf2-hover bundle under a shift: the policy
flies to ``target + offset`` instead of the target, its motor commands untouched, with the offset either

* a PI on the true error (``--kp``, ``--ki``): ``offset = kp * error + ki * integral(error)``, the integral clipped
  to +-``--limit`` m s; or
* the pilot's sticks learned from logs (``--learn-from DATASET ...``, datasets of ``robostack improve`` rounds or
  ``robostack data convert``): the setpoint's rate in the takeovers (``observation.command`` from one frame to the
  next) fitted by least squares on the drone's error and velocity, then run all the time as a pilot who never lets
  go: the rate clipped to the sticks' full scale (0.5 m/s), the offset to the takeover's lead (0.5 m).

Success is the task's (within its success radius of the true target at the episode's end, not crashed).

    .venv/bin/python scripts/setpoint_correction_probe.py --kp 0.5 --ki 0.5 [--episodes 128] [--shift key=value ...]
    .venv/bin/python scripts/setpoint_correction_probe.py --learn-from runs/improve/RUN/round-0/dataset

Without --shift it uses the benchmark's shift (configs/improve/cf2-hover.yaml); --kp 0 --ki 0 is the bundle alone.
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
from robostack.data.dataset import INTERVENTION, load_dataset  # noqa: E402
from robostack.real.teleop_node import DRONE_LEAD  # noqa: E402
from robostack.teleop.mapping import TAKEOVER_MAPPINGS  # noqa: E402
from robostack.workflows.acting import load_policy  # noqa: E402
from robostack.workflows.improve import improve_config  # noqa: E402

STICK_SPEED = np.asarray(TAKEOVER_MAPPINGS["drone"].scales, dtype=np.float32)  # m/s per axis at full stick


def learned_stick_rate(datasets: list[str], target: np.ndarray) -> np.ndarray:
    """W [7, 3]: the setpoint's rate in the takeovers = [error, velocity, 1] @ W, by least squares over the frames
    that are in a takeover and still in it at the next frame."""
    features, rates = [], []
    for path in datasets:
        data = load_dataset(path)
        columns = data.frames()
        names = list(data.features["observation.state"]["names"])
        state = columns["observation.state"]
        position = state[:, [names.index(f"base_position.{a}") for a in "xyz"]]
        velocity = state[:, [names.index(f"base_linear_velocity.{a}") for a in "xyz"]]
        command, episode = columns["observation.command"], columns["episode_index"]
        taken = columns[INTERVENTION].astype(bool)
        dt = 1.0 / data.fps
        for index in np.unique(episode):
            rows = np.flatnonzero(episode == index)
            inside = taken[rows[:-1]] & taken[rows[1:]]
            features.append(np.hstack([target - position[rows[:-1]], velocity[rows[:-1]]])[inside])
            rates.append((np.diff(command[rows], axis=0) / dt)[inside])
    x, y = np.vstack(features), np.vstack(rates)
    if not len(x):
        raise SystemExit("no takeover frames in the datasets: nothing to learn the pilot's sticks from")
    x = np.hstack([x, np.ones((len(x), 1))])
    return np.linalg.solve(x.T @ x + 1e-3 * np.eye(x.shape[1]), x.T @ y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kp", type=float, default=0.5)
    parser.add_argument("--ki", type=float, default=1.0)
    parser.add_argument("--limit", type=float, default=1.0)
    parser.add_argument("--learn-from", nargs="+", default=None, metavar="DATASET")
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
    weights = None if args.learn_from is None else learned_stick_rate(args.learn_from, target.double().numpy())
    stick = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    integral, offset = torch.zeros(n, 3), torch.zeros(n, 3)
    quota = np.full(n, args.episodes // n) + (np.arange(n) < args.episodes % n)
    counted, outcomes = np.zeros(n, dtype=int), []
    env.reset(args.seed)
    while (counted < quota).any():
        error = target - torch.as_tensor(env.sim.qpos[:, 0:3], dtype=torch.float32)
        if stick is None:
            integral = torch.clamp(integral + error * env.control_dt, -args.limit, args.limit)
            offset = args.kp * error + args.ki * integral
        else:
            velocity = torch.as_tensor(env.sim.qvel[:, 0:3], dtype=torch.float32)  # world frame, as datasets log it
            speed = torch.as_tensor(STICK_SPEED)
            rate = torch.clamp(torch.cat([error, velocity, torch.ones(n, 1)], dim=1) @ stick, -speed, speed)
            offset = torch.clamp(offset + rate * env.control_dt, -DRONE_LEAD, DRONE_LEAD)
        env.command[:] = target + offset
        with torch.inference_mode():
            action = policy(env.observe())
        _, _, terminated, _, info = env.step(action)
        for i in np.flatnonzero(info["done"].cpu().numpy()):
            if counted[i] < quota[i]:  # the last step's error: the episode ended right after it
                outcomes.append(bool(error[i].norm() < radius) and not bool(terminated[i]))
            counted[i] += 1
            integral[i], offset[i] = 0.0, 0.0
    env.close()
    report = {"shift": shift, "episodes": len(outcomes), "success": round(float(np.mean(outcomes)), 4)}
    if weights is None:
        report.update(kp=args.kp, ki=args.ki)
    else:
        report.update(learned_from=args.learn_from, stick_rate_weights=np.round(weights, 3).tolist())
    print(json.dumps(report))


if __name__ == "__main__":
    main()
