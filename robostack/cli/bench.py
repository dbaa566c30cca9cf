"""``robostack bench sim|train|imitation|policy|safety|deploy``: benchmarks that print figures."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

from robostack.cli.common import (DEVICE_HELP, EXPERT_NOISE_HELP, NPROC_HELP, UsageError, _print_table, _report,
                                  _require_positive, _stdout_to_stderr)
from robostack.cli.improve import add_improve_parser


def cmd_bench_sim(args: argparse.Namespace, out: TextIO) -> int:
    _require_positive(args, "--num-envs")
    _require_positive(args, "--seconds", count=False)
    with _stdout_to_stderr(args.json):
        from robostack.sim.bench import bench_sim

        result = bench_sim(task=args.task, num_envs=args.num_envs, seconds=args.seconds, seed=args.seed,
                           backend=args.backend, device=args.device, overrides=list(args.overrides))
    title = (f"bench sim: task {args.task} on {args.backend} ({args.device}), {args.num_envs} envs, "
             f"{args.seconds:g} s, seed {args.seed}")
    return _report(args, out, title, dict(result), ("env_steps_per_s", "raw_steps_per_s", "ratio"))


def cmd_bench_train(args: argparse.Namespace, out: TextIO) -> int:
    _require_positive(args, "--episodes", "--nproc")
    with _stdout_to_stderr(args.json):
        from robostack.workflows.bench import bench_train

        result = bench_train(args.task, seed=args.seed, episodes=args.episodes, overrides=list(args.overrides),
                             nproc=args.nproc, backend=args.backend, device=args.device)
    title = f"bench train: task {args.task}, {args.episodes} randomized evaluation episodes"
    return _report(args, out, title, result, ("wall_s", "env_steps", "success_rate"))


def cmd_bench_imitation(args: argparse.Namespace, out: TextIO) -> int:
    _require_positive(args, "--demos", "--episodes")
    with _stdout_to_stderr(args.json):
        from robostack.workflows.bench import bench_imitation

        result = bench_imitation(args.task, demos=args.demos, episodes=args.episodes, seed=args.seed,
                                 overrides=list(args.overrides), cameras=[args.camera] if args.camera else [],
                                 workdir=args.workdir, expert_noise=args.expert_noise)
    title = (f"bench imitation: task {args.task}, {args.demos} scripted demonstrations, "
             f"{args.episodes} randomized evaluation episodes")
    return _report(args, out, title, result, ("success_rate", "demonstrations", "wall_s"))


def cmd_bench_policy(args: argparse.Namespace, out: TextIO) -> int:
    _require_positive(args, "--iterations", "--threads")
    from robostack.workflows.bench import bench_policy

    result = bench_policy(args.bundle, iterations=args.iterations, threads=args.threads)
    if args.json:
        out.write(json.dumps(result) + "\n")
    else:
        title = (f"bench policy: {args.bundle} ({result['kind']}), {args.iterations} inferences, "
                 f"{args.threads} thread(s)")
        latency = {f"latency_{k}_ms": v for k, v in result.pop("latency_ms").items()}
        _print_table(title, {**latency, **result}, ("latency_p50_ms", "latency_p99_ms"), out)
    return 0


def cmd_bench_safety(args: argparse.Namespace, out: TextIO) -> int:
    _require_positive(args, "--episodes")
    with _stdout_to_stderr(args.json):
        from robostack.workflows.safety_critic import bench_safety

        result = bench_safety(args.task, policy=args.policy, episodes=args.episodes, disturbances=args.disturbance,
                              seed=args.seed, overrides=list(args.overrides), sweep_plot=args.sweep)
    return _report(args, out, f"bench safety: {args.task}", result, ("violation_reduction", "violations_hard_only",
                                                            "violations_with_critic", "false_trigger_rate"))


def cmd_bench_deploy(args: argparse.Namespace, out: TextIO) -> int:
    _require_positive(args, "--rate", "--duration", count=False)
    if args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    from datetime import datetime

    with _stdout_to_stderr(args.json):
        from robostack.bundle import load_bundle
        from robostack.real.bench import bench_deploy, resolve_bundle

        bundle = resolve_bundle(args.task, args.policy)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        log_dir = Path("runs") / "bench-deploy" / f"{load_bundle(bundle).task}-{stamp}"
        log_dir.mkdir(parents=True)
        result = bench_deploy(policy=bundle, rate_hz=args.rate, duration_s=args.duration, warmup_s=args.warmup,
                              log_dir=log_dir)
    if args.json:
        out.write(json.dumps(result) + "\n")
        return 0
    latency = result["latency_ms"] or {}
    out.write(f"bench deploy: {result['task']} at {result['rate_hz']:g} Hz for {result['duration_s']:g} s: "
              f"state-to-command latency p50 {latency.get('p50')} ms, p99 {latency.get('p99')} ms "
              f"(max {latency.get('max')}), achieved {result['achieved_rate_hz']} Hz, "
              f"{result['lost']} of {result['cycles']} cycles lost\n")
    stages = result["stages_ms"]
    if stages["policy"] is not None:
        out.write(f"  state to policy command p50 {stages['policy']['p50']} ms, p99 {stages['policy']['p99']} ms; "
                  f"policy command to driver command p50 {stages['safety']['p50']} ms, "
                  f"p99 {stages['safety']['p99']} ms\n")
    return 0


# -------------------------------------------------------------------------------------------- deploy


def add_bench_parser(sub: Any, parser_class: type) -> None:
    """The ``bench`` subcommands, under the top-level subparsers ``sub``."""
    p = sub.add_parser("bench", help="measure throughput")
    bench = p.add_subparsers(dest="bench_command", metavar="WHAT", parser_class=parser_class)
    bench.required = True
    p = bench.add_parser("sim", help="simulator steps per second for a task, policy-free")
    p.add_argument("--task", required=True, help="task name (see: robostack list)")
    p.add_argument("--num-envs", type=int, required=True, help="parallel environments")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to measure (default: 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--backend", default="mujoco", help="simulator backend (see: robostack list; default: mujoco)")
    p.add_argument("--device", default="cpu", help="device of the backend (default: cpu)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="task-config overrides")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.set_defaults(func=cmd_bench_sim)
    p = bench.add_parser("train", help="train from scratch with the task's recipe, then evaluate it randomized")
    p.add_argument("task", help="task name (see: robostack list)")
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides; task.key=value for the task config")
    p.add_argument("--episodes", type=int, default=1000, help="randomized evaluation episodes (default: 1000)")
    p.add_argument("--backend", default=None, help="simulator backend (see: robostack list; default: mujoco)")
    p.add_argument("--device", default=None, help=DEVICE_HELP + " (default: the recipe's device key, cpu)")
    p.add_argument("--nproc", type=int, default=1, help=NPROC_HELP)
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.set_defaults(func=cmd_bench_train)
    p = bench.add_parser(
        "deploy", help="state-to-command latency through policy_node and safety_node, and the rate they sustain",
        description="Start policy_node (acting on every state) and safety_node as processes and drive them "
        "from this process as the robot's driver, in a closed loop at --rate: report the latency from a state "
        "to the driver command that answers it (p50, p90, p99, max), the achieved rate, lost cycles and CPU.",
        epilog="example: robostack bench deploy --task cf2-hover --rate 500 --duration 10 --json")
    p.add_argument("--task", default=None, help="task whose shipped bundle (bundles/TASK) to bench (default: "
                   "the first of go2-walk, panda-reach, cf2-hover shipped); with --policy: checked against it")
    p.add_argument("--policy", metavar="BUNDLE", default=None, help="policy bundle folder instead")
    p.add_argument("--rate", type=float, default=500.0, help="driver state rate in Hz (default: 500)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured (default: 10)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds run before measuring (default: 1)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.set_defaults(func=cmd_bench_deploy)

    p = bench.add_parser(
        "safety", help="violations with the hard limits alone and with the bundle's safety critic",
        description="Run the bundle's policy through the robot's safety layer in simulation on the disturbance "
        "suite of configs/safety/TASK.yaml and on nominal episodes (play and training randomization), with the "
        "hard limits alone and with its safety critic; report violations, nominal success, false triggers and "
        "the critic's cost per tick.",
        epilog="example: robostack bench safety --task go2-walk --disturbance randomization.push.range=[-2,2] --json")
    p.add_argument("--task", required=True, help="task name (see: robostack list)")
    p.add_argument("--policy", metavar="BUNDLE", default=None, help="bundle with a critic (default: bundles/TASK)")
    p.add_argument("--episodes", type=int, default=None, help="disturbed episodes per arm, and nominal ones per "
                   "variant (default: configs/safety/TASK.yaml episodes_per_disturbance)")
    p.add_argument("--disturbance", action="append", default=[], metavar="key=value",
                   help="a task-config override added to every disturbance of the suite (repeatable)")
    p.add_argument("--sweep", metavar="PNG", default=None, help="also run the critic at 0.25, 0.5, 2 and 4 times its "
                   "epsilon and plot the violation-versus-success trade-off to PNG")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="configs/safety/TASK.yaml overrides")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.set_defaults(func=cmd_bench_safety)

    p = bench.add_parser(
        "policy", help="inference latency of a policy bundle (one action, or one full chunk of a diffusion policy)",
        description="Time onnxruntime inferences of a bundle for one robot on observations of its shapes: one "
        "action for an actor-critic bundle, one chunk with every denoising step for a chunk (diffusion) bundle.")
    p.add_argument("bundle", metavar="BUNDLE", help="policy bundle folder")
    p.add_argument("--iterations", type=int, default=200, help="timed inferences (default: 200)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default: 1)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.set_defaults(func=cmd_bench_policy)

    p = bench.add_parser(
        "imitation", help="scripted demonstrations, a diffusion policy trained on them, its randomized success",
        description="Record DEMOS demonstrations of the task's scripted expert under randomization (as robostack "
        "teleop --device scripted --randomized does), train the task's diffusion recipe on them (robostack train "
        "TASK --dataset), then evaluate it on randomized episodes. Prints each stage's wall time.")
    p.add_argument("--task", required=True, help="task with a scripted expert and a diffusion recipe")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. diffusion.num_steps=2000")
    p.add_argument("--demos", type=int, default=200, help="demonstrations to record (default: 200)")
    p.add_argument("--episodes", type=int, default=200, help="randomized evaluation episodes (default: 200)")
    p.add_argument("--camera", default=None, metavar="NAME", help="record this camera and let the policy see it")
    p.add_argument("--workdir", default=None, metavar="DIR", help="where the dataset goes (default: a new temp dir)")
    p.add_argument("--expert-noise", type=float, default=0.0, metavar="STD", help=EXPERT_NOISE_HELP)
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.set_defaults(func=cmd_bench_imitation)
    add_improve_parser(bench, bench=True)
