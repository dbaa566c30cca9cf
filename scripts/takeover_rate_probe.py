"""How often the simulated human would take over a bundle, measured in the vectorized simulator rather than through
ROS 2: the task's intervener watches the first episode of every env and says where it would take over (its
``going_wrong``), but nobody does, so the bundle runs each episode to its end. Prints the share of episodes it
would take over, the bundle's success in those and in the rest, and the seconds into the episode it would start.

    .venv/bin/python scripts/takeover_rate_probe.py BUNDLE [BUNDLE ...] [--episodes 256] [--shift key=value ...]

Beside ``robostack bench improve``'s rounds (20-40 episodes through ROS 2 each) it tells a learned bundle's rate
from the rounds' noise and from what the rehearsal adds (timing, the recorder's load).
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

from robostack import registry, sim  # noqa: E402
from robostack.workflows.acting import load_policy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--episodes", type=int, default=256)
    parser.add_argument("--seed", type=int, default=7919)
    parser.add_argument("--shift", action="append", default=[])
    args = parser.parse_args()
    for bundle in args.bundles:
        loaded = load_policy(bundle)
        env = sim.make_env(loaded.task, num_envs=args.episodes, seed=0, config=loaded.task_config,
                           overrides=list(args.shift))
        policy = loaded.make_policy(env)
        human = registry.task(loaded.task).intervener(env)
        would_take_over = np.full(args.episodes, np.nan)  # seconds into the episode; nan: never
        success = np.full(args.episodes, np.nan)
        obs, _ = env.reset(args.seed)
        with torch.inference_mode():
            while np.isnan(success).any():
                wrong = human.going_wrong(env).cpu().numpy()
                first = wrong & np.isnan(would_take_over) & np.isnan(success)
                would_take_over[first] = env.episode_length.cpu().numpy()[first] * env.control_dt
                if first.any():
                    human.begin(env, np.flatnonzero(first))  # its counts start over, as after a takeover
                obs, _, terminated, truncated, info = env.step(policy(obs))
                ended = (terminated | truncated).cpu().numpy() & np.isnan(success)
                if ended.any():
                    success[ended] = info["episode"]["success"].cpu().numpy()[ended]
        env.close()
        taken = ~np.isnan(would_take_over)
        print(json.dumps({
            "bundle": str(bundle), "shift": args.shift, "episodes": args.episodes,
            "takeovers_per_episode": round(float(taken.mean()), 4),
            "success_where_taken_over": round(float(success[taken].mean()), 4) if taken.any() else None,
            "success_elsewhere": round(float(success[~taken].mean()), 4) if (~taken).any() else None,
            "start_s_p10_p50_p90": np.percentile(would_take_over[taken], [10, 50, 90]).round(2).tolist()
            if taken.any() else None}), flush=True)


if __name__ == "__main__":
    main()
