"""``robostack improve`` and ``robostack bench improve``: the intervention loop (``robostack.workflows.improve``)."""
from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from robostack.cli.common import (Failure, UsageError, _intervention_algo, _print_table, _require_positive,
                                  _stdout_to_stderr)

REPORT_KEYS = ("success_before", "success_after", "rounds", "interventions_per_episode", "intervened_steps", "wall_s")


def cmd_improve(args: argparse.Namespace, out: TextIO) -> int:
    _require_positive(args, "--rounds", "--episodes-per-round", "--eval-episodes")
    if args.intervener != "scripted":
        raise UsageError(f"--intervener {args.intervener!r}: the loop's intervener is the task's scripted human "
                         "(scripted); a person's takeovers are learned with robostack train --interventions")
    overrides = list(args.overrides)
    overrides += [f"{key}={value}" for key, value in (("rounds", args.rounds),
                                                       ("episodes_per_round", args.episodes_per_round),
                                                       ("eval_episodes", args.eval_episodes)) if value is not None]
    if args.shift:
        overrides.append(f"shift={json.dumps(args.shift)}")
    if args.algo is not None or args.offline:
        overrides.append(f"algo={_intervention_algo(args.algo, args.offline)}")
    out_dir = args.out or str(Path("runs") / "improve" / f"{args.task}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    with _stdout_to_stderr(args.json):
        from robostack.workflows.improve import improve, improve_config

        cfg = improve_config(args.task, overrides)
        try:
            report = improve(args.task, args.policy, out_dir, cfg, seed=args.seed)
        except RuntimeError as exc:  # a round's deployment stopped: what finished is kept, a rerun resumes
            raise Failure(f"{exc}; rerun with --out {out_dir} to resume") from None
    if args.json:
        out.write(json.dumps(report, default=str) + "\n")
    else:
        shown = {k: v for k, v in report.items() if k != "per_round"}
        _print_table(f"improve: {args.task} from {report['policy']} ({out_dir})", shown, REPORT_KEYS, out)
    return 0


def add_improve_parser(sub: Any, bench: bool = False) -> None:
    """``improve`` (or, under ``bench``, the benchmark of the same loop from the shipped bundle)."""
    p = sub.add_parser(
        "improve",
        help=("the intervention loop from the shipped bundle on its task's shift: success before and after"
              if bench else "deploy, let a simulated human take over, learn from it, redeploy; round after round"),
        description="Each round deploys the current bundle on the simulated robot through the ROS 2 graph with a "
        "simulated human who takes over when it goes wrong (teleop_node), records and converts the bag, learns a "
        "residual from every round's data (--algo rlif: RLIF reward, RLPD mixing; iql: offline) and evaluates it under "
        "the shift. Defaults: configs/improve/TASK.yaml. Rerun with the same --out to resume.",
        epilog="example: robostack improve --task cf2-hover --rounds 3 --episodes-per-round 20 "
               "--shift randomization.link_mass.range=[1.4,1.4]")
    p.add_argument("--task", required=True, help="task name (see: robostack list)")
    p.add_argument("--policy", metavar="BUNDLE", default=None,
                   help="the bundle to start from (default: the shipped bundles/TASK)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default: the task's improve config, 3)")
    p.add_argument("--episodes-per-round", type=int, default=None, help="deployed episodes per round")
    p.add_argument("--eval-episodes", type=int, default=None, help="evaluation episodes before and after each round")
    p.add_argument("--intervener", default="scripted", help="who takes over (default: scripted, the task's own)")
    p.add_argument("--shift", action="append", default=[], metavar="key=value",
                   help="task-config overrides the robot runs under (repeatable; replaces the config's shift)")
    p.add_argument("--algo", default=None, help="how each round learns (robostack list: rlif, iql, "
                   "command-correction; default: the task's improve config)")
    p.add_argument("--offline", action="store_true", help="learn with IQL from the logs alone (--algo iql)")
    p.add_argument("--out", metavar="DIR", default=None, help="the loop's folder (default: runs/improve/TASK-STAMP)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings of the loop (robostack.workflows."
                   "improve.ImproveConfig), e.g. exploration_std=0.1 rlif.updates=3000 rlif.scale=0.3")
    p.set_defaults(func=cmd_improve)
