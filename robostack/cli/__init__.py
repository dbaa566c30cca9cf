"""The ``robostack`` command: ``list``, ``bench sim|train|deploy``, ``train``, ``export`` (policy bundle), ``eval`` and
``deploy`` (the ROS 2 node graph), ``data info|merge|convert|replay`` (datasets), ``teleop`` (record
demonstrations in simulation).

Importing this module is cheap (argparse and json only): each subcommand imports the workflow it runs
(``robostack.workflows``) when it runs, so ``robostack --help`` starts fast and a command loads only its own.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from robostack.cli.bench import add_bench_parser
from robostack.cli.common import (DEVICE_HELP, EXPERT_NOISE_HELP, NPROC_HELP, Failure, UsageError, _intervention_algo,
                                  _print_table, _report, _require_positive, _stdout_to_stderr)
from robostack.cli.improve import add_improve_parser

PROG = "robostack"


# ---------------------------------------------------------------------------------------------- list


def _spec_json(spec: Any) -> dict[str, Any]:
    """A specification's plain facts (names, kinds, paths), not its builders."""
    import dataclasses

    out: dict[str, Any] = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if isinstance(value, (str, bool, int, float, Path)):
            out[f.name] = str(value) if isinstance(value, Path) else value
        elif isinstance(value, tuple) and all(isinstance(v, str) for v in value):
            out[f.name] = list(value)
    return out


def load_catalogue() -> None:
    """Import what registers every specification: robots and tasks, algorithms, bundle kinds, backends."""
    from robostack import bundle, policies, sim  # noqa: F401 - robostack.bundle registers its kinds

    sim.tasks()
    sim.load_backends()
    policies.load()


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    from robostack import registry
    from robostack.specs import AlgorithmSpec, BackendSpec, BundleKindSpec, RobotSpec, TaskSpec

    load_catalogue()
    kinds = {"robots": RobotSpec, "tasks": TaskSpec, "algorithms": AlgorithmSpec, "bundle_kinds": BundleKindSpec,
             "backends": BackendSpec}
    catalogue = {plural: [_spec_json(spec) for spec in registry.registered(kind)] for plural, kind in kinds.items()}
    if args.json:
        out.write(json.dumps(catalogue, default=str) + "\n")
        return 0
    rows = [row for items in catalogue.values() for row in items]
    width = max([len(r["name"]) for r in rows] + [4])
    blocks = []
    for plural, items in catalogue.items():
        lines = [f"{plural.replace('_', ' ').upper()} ({len(items)})"]
        if not items:
            lines.append("  (none)")
        for item in items:
            lines.append(f"  {item['name']:<{width}}  {item['summary']}".rstrip())
        blocks.append("\n".join(lines))
    out.write("\n\n".join(blocks) + "\n")
    return 0


# --------------------------------------------------------------------------------------------- bench


def cmd_deploy(args: argparse.Namespace, out: TextIO) -> int:
    """Start the deployment node graph (the one the launch files start) and wait for it."""
    if args.episodes and not args.sim:
        raise UsageError("--episodes counts simulated episodes: it needs --sim")
    _require_positive(args, "--duration", count=False)
    if not args.episodes and args.duration is None and args.json:
        raise UsageError("--json needs an end: --duration S or --sim --episodes N")
    from datetime import datetime

    from robostack.bundle import load_bundle
    from robostack.real.graph import node_graph, run_graph

    bundle = load_bundle(args.policy)
    if bundle.task != args.task:
        raise UsageError(f"policy {args.policy} was trained for task {bundle.task!r}, not {args.task!r}")
    if args.disturbance and not args.sim:
        raise UsageError("--disturbance changes the simulated robot: it needs --sim")
    if args.intervener and (not args.sim or args.teleop == "twist"):
        raise UsageError("--intervener is a simulated human with a gamepad: it needs --sim (and no --teleop twist)")
    if args.intervener:
        from robostack import sim

        if sim.task(args.task).intervener is None:
            raise UsageError(f"task {args.task!r} has no simulated intervener (a rule for when to take over)")
    nodes = node_graph(args.policy, sim=args.sim, record=args.record, randomize=not args.play,
                       episodes=args.episodes, seed=args.seed, teleop=args.teleop, disturbances=args.disturbance,
                       intervener=args.intervener is not None)
    log_dir = Path("runs") / "deploy" / f"{args.task}-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
    log_dir.mkdir(parents=True)
    # a rehearsal stays on this machine unless the user has said otherwise
    env = {"ROS_AUTOMATIC_DISCOVERY_RANGE": os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")} \
        if args.sim else None
    result = run_graph(nodes, duration=args.duration, wait_for="sim_robot_node" if args.episodes else None,
                       env=env, log_dir=log_dir)
    summary = result.summary()
    report = {"task": args.task, "policy": str(args.policy), "sim": args.sim, "randomized": args.sim and not args.play,
              "nodes": [n.name for n in nodes], "exit_codes": result.exit_codes, "logs": str(log_dir),
              **({"record": str(args.record)} if args.record else {}), **summary}
    if result.failure:
        raise Failure("; ".join(filter(None, [f"deployment stopped: {result.failure}", result.rest])))
    if result.interrupted:
        sys.stderr.write(f"{PROG}: interrupted; {result.rest or 'stopped'}\n")
        return 130
    if args.episodes and "success_rate" not in summary:
        raise Failure(f"the simulated robot reported no episodes (logs: {log_dir})")
    if args.json:
        out.write(json.dumps(report) + "\n")
    else:
        _print_table(f"deploy: {args.task} with {args.policy}", report,
                     [k for k in ("success_rate", "episodes", "logs", "record") if k in report], out)
    return 0


# --------------------------------------------------------------------------------------------- train


_RUN_DIR_KEYS = ("run_dir", "run", "run_path", "output_dir")


def cmd_train(args: argparse.Namespace, out: TextIO) -> int:
    for item in args.overrides:
        if "=" not in item or item.startswith("="):
            raise UsageError(f"override {item!r} is not of the form key=value (for example ppo.lr=3e-4)")
    _require_positive(args, "--nproc")
    spec = None
    if args.algo is not None:
        from robostack.workflows.runs import algorithm

        spec = algorithm(args.algo)
    if args.nproc > 1 and (args.dataset is not None or (spec is not None and spec.trains_with != "reinforcement")):
        raise UsageError("--nproc runs reinforcement learning on several ranks: not with --dataset or --algo "
                         f"{args.algo}")
    if args.init is not None:
        clash = [flag for flag, given in (("--dataset", args.dataset is not None), ("--interventions", args.interventions),
                                          ("--offline", args.offline), ("--resume", args.resume is not None),
                                          (f"--algo {args.algo}", spec is not None and spec.trains_with != "reinforcement"))
                 if given]
        if clash:
            raise UsageError(f"--init starts a reinforcement learning run from a bundle's policy: not with {clash[0]}")
    if spec is not None and spec.trains_with == "critic":
        return _train_critic(args, out)
    if args.interventions or args.offline or (spec is not None and spec.trains_with == "interventions"):
        return _train_on_interventions(args, out)
    if args.policy is not None or args.out is not None or args.disturbance:
        raise UsageError("--policy, --out and --disturbance train a safety critic: give --algo safety-critic")
    imitation = args.dataset is not None or (spec is not None and spec.trains_with == "imitation")
    if imitation and args.dataset is None:
        raise UsageError(f"--algo {args.algo} learns from demonstrations: give --dataset DATASET")
    if imitation and spec is not None and spec.trains_with != "imitation":
        raise UsageError(f"--dataset: {args.algo} learns by reinforcement, not from demonstrations")
    if imitation and args.resume is not None:
        raise UsageError("--resume continues reinforcement learning runs; an imitation run trains in one go")
    if (args.backend is not None or args.device is not None) and imitation:
        raise UsageError("--backend and --device choose where reinforcement learning runs: not with --dataset")
    if args.base is not None and (imitation or args.resume is not None):
        raise UsageError("--base trains a residual with reinforcement learning: not with --dataset, an imitation "
                         "algorithm or --resume (a resumed run keeps its base)")
    learning = dict(task=args.task, algo=args.algo, resume=args.resume, seed=args.seed, base=args.base,
                    backend=args.backend, run_root=args.run_root,  # --device: the recipe's device key
                    overrides=list(args.overrides) + ([f"device={args.device}"] if args.device is not None else [])
                    + ([f"init={Path(args.init).resolve()}"] if args.init is not None else []))
    with _stdout_to_stderr(args.json):
        if imitation:
            from robostack.workflows.imitation import train_imitation

            summary = train_imitation(args.task, args.dataset, list(args.overrides), seed=args.seed)
        elif args.nproc > 1:
            from robostack.workflows.data_parallel import launch

            try:
                summary = launch(args.nproc, **learning)
            except RuntimeError as exc:
                raise Failure(str(exc)) from None
        else:
            from robostack.workflows.train import train

            summary = train(**learning)
    summary = dict(summary or {})
    if summary.get("rank", 0) != 0:  # a rank other than 0 under torchrun: rank 0 reports
        return 0
    return _report(args, out, f"train: task {args.task}, algorithm {summary.get('algo', args.algo)}", summary, ("success_rate",) + _RUN_DIR_KEYS)


def _loop_learner_settings(task: str) -> dict[str, Any]:
    """The learner's settings of the task's loop (``configs/improve/TASK.yaml``'s ``rlif``: what a command
    correction reads, for one), where the task has a loop; else the defaults."""
    from robostack.config import ConfigError, to_dict
    from robostack.workflows.improve import improve_config

    try:
        return to_dict(improve_config(task).rlif)
    except (ConfigError, KeyError, FileNotFoundError):
        return {}


def _train_on_interventions(args: argparse.Namespace, out: TextIO) -> int:
    if not args.interventions or args.out is None:
        raise UsageError("learning from interventions corrects a deployed bundle: give --interventions DATASET and "
                         "--out DIR (the corrected bundle; --policy BUNDLE, default: the task's shipped bundle)")
    if args.dataset is not None or args.base is not None or args.resume is not None:
        raise UsageError("--interventions: not with --dataset, --base or --resume")
    algo = _intervention_algo(args.algo, args.offline)
    from robostack.config import build_config
    from robostack.policies.rlif import RLIFConfig
    from robostack.real.bench import resolve_bundle

    policy = resolve_bundle(args.task, args.policy)
    cfg = build_config(RLIFConfig, _loop_learner_settings(args.task), "--interventions settings", list(args.overrides))
    if args.seed is not None:
        cfg.seed = args.seed
    with _stdout_to_stderr(args.json):
        from robostack.workflows.interventions import learn_from_interventions

        summary = learn_from_interventions(args.interventions, policy, args.out, algo=algo, cfg=cfg)
    title = f"train: {args.task} from interventions on {policy}"
    return _report(args, out, title, summary, ("bundle", "takeovers"))


def _train_critic(args: argparse.Namespace, out: TextIO) -> int:
    if args.policy is None or args.out is None:
        raise UsageError(f"--algo {args.algo} trains the safety critic of a policy bundle: give --policy BUNDLE and "
                         "--out DIR (the bundle with its critic)")
    if args.dataset is not None or args.base is not None or args.resume is not None:
        raise UsageError(f"--algo {args.algo} learns from rollouts of --policy: not with --dataset, --base or --resume")
    with _stdout_to_stderr(args.json):
        from robostack.workflows.safety_critic import train_safety_critic

        summary = train_safety_critic(args.task, args.policy, args.out, list(args.overrides), args.disturbance,
                                      seed=args.seed or 0, progress=not args.json)
    return _report(args, out, f"train: safety critic for {args.policy}", summary, ("bundle", "epsilon", "wall_s"))


# -------------------------------------------------------------------------------------- export, eval


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    with _stdout_to_stderr(args.json):
        from robostack.bundle import load_bundle
        from robostack.workflows.export import export_bundle

        path = export_bundle(args.run, args.out, checkpoint=args.checkpoint)
        meta = load_bundle(path).metadata
    training = meta.get("training") or {}
    result = {"bundle": str(path), "robot": meta["robot"], "task": meta["task"], "algo": meta.get("algo"),
              "kind": meta.get("kind", "actor_critic"),
              "obs_dim": meta["observation"]["dim"], "action_dim": meta["action"]["dim"],
              "control_rate_hz": meta["control_rate_hz"], "iteration": training.get("iteration"),
              "checkpoint": training.get("checkpoint"), "content_hash": meta["content_hash"]}
    return _report(args, out, f"export: {args.run} -> {path}", result, ("bundle", "robot", "task"))


def cmd_eval(args: argparse.Namespace, out: TextIO) -> int:
    _require_positive(args, "--episodes", "--num-envs")
    with _stdout_to_stderr(args.json):
        from robostack.workflows.evaluate import eval_policy
        from robostack.workflows.render import RenderError

        try:
            result = eval_policy(args.source, episodes=args.episodes, randomized=args.randomized,
                                 video=args.video, num_envs=args.num_envs, seed=args.seed,
                                 checkpoint=args.checkpoint, backend=args.backend, device=args.device,
                                 overrides=args.shift)
        except RenderError as exc:  # no offscreen GL here: a user-fixable setup problem, one line
            raise UsageError(f"--video: {exc}") from None
    if args.json:
        out.write(json.dumps(result, default=str) + "\n")
        return 0
    metrics = tuple(k for k in result if k.startswith("metric/"))
    variant = "randomized" if args.randomized else "play"
    title = f"eval: {result.get('task')} ({result.get('kind')} {args.source}), {result.get('episodes')} episodes, {variant}"
    _print_table(title, result, ("success_rate", "mean_return", *metrics, "std_return", "mean_length"), out)
    return 0


# ---------------------------------------------------------------------------------------------- data


def _print_dataset(title: str, summary: dict[str, Any], out: TextIO) -> None:
    _print_table(title, {k: v for k, v in summary.items() if k not in ("features", "sources", "tasks")},
                 ("episodes", "frames", "fps", "robot_type"), out)
    out.write(f"  tasks ({len(summary['tasks'])})\n" + "".join(f"    {task}\n" for task in summary["tasks"]))
    out.write("  features\n" + "".join(f"    {key:<40} {ft['dtype']:<8} {ft['shape']}\n"
                                       for key, ft in summary["features"].items()))
    out.write("  sources\n")
    for source, s in summary["sources"].items():
        rate = "success unknown" if s["success_rate"] is None else \
            f"success {100 * s['success_rate']:.1f}% of {s['with_outcome']} with an outcome"
        out.write(f"    {source:<14} {s['episodes']} episodes, {s['frames']} frames, {rate}\n")


def cmd_data_info(args: argparse.Namespace, out: TextIO) -> int:
    from robostack.data.dataset import load_dataset

    summary = load_dataset(args.dataset).summary()
    if args.json:
        out.write(json.dumps(summary) + "\n")
    else:
        _print_dataset(f"data info: {args.dataset}", summary, out)
    return 0


def cmd_data_merge(args: argparse.Namespace, out: TextIO) -> int:
    from robostack.data.merge import merge

    summary = merge(args.sources, args.out).summary()
    if args.json:
        out.write(json.dumps(summary) + "\n")
    else:
        _print_dataset(f"data merge: {len(args.sources)} datasets -> {args.out}", summary, out)
    return 0


def cmd_data_convert(args: argparse.Namespace, out: TextIO) -> int:
    _require_positive(args, "--fps")
    from robostack.real.bag import BagError
    from robostack.real.bag_recovery import inspect_bag
    from robostack.workflows.convert import convert_bag

    # A bag whose recorder is alive or was killed: refuse (live, or a file cut mid-write: name `data
    # recover`, which rewrites files, so it is never run unasked) or read it with a one-line note.
    try:
        status = inspect_bag(args.bag)
    except BagError as exc:
        raise UsageError(str(exc)) from None
    refusal = status.refusal(f"{PROG} data recover {args.bag}")
    if refusal:
        raise UsageError(refusal)
    if status.note:
        sys.stdout.flush()
        sys.stderr.write(f"{PROG}: note: {status.note}\n")
    summary = convert_bag(args.bag, args.out, robot=args.robot, fps=args.fps, task=args.task,
                          sim_task=args.sim_task, namespace=args.namespace).summary()
    if args.json:
        out.write(json.dumps(summary) + "\n")
    else:
        _print_dataset(f"data convert: {args.bag} -> {args.out}", summary, out)
    return 0


def cmd_data_recover(args: argparse.Namespace, out: TextIO) -> int:
    """``recover()`` a bag whose recorder was killed; refused while a recorder still writes it."""
    from robostack.real.bag import BagError
    from robostack.real.bag_recovery import is_live, recover

    if Path(args.bag).is_dir() and is_live(args.bag):
        raise UsageError(f"{args.bag} is still being recorded (a live recorder holds its lock); stop the recorder "
                         "first")
    try:
        report = recover(args.bag)
    except BagError as exc:
        raise UsageError(str(exc)) from None
    result = {"bag": str(args.bag), "files": report.files, "message_count": report.message_count,
              "rebuilt": [{"file": r.path, "messages_kept": r.messages, "stopped_at": r.stopped_at}
                          for r in report.rebuilt]}
    if args.json:
        out.write(json.dumps(result) + "\n")
        return 0
    for r in report.rebuilt:
        out.write(f"rebuilt {r.path}: {r.messages} messages kept (stopped at: {r.stopped_at})\n")
    if not report.rebuilt:
        out.write("every file ends with a valid footer: no file rebuilt\n")
    out.write(f"data recover: {args.bag}: {len(report.files)} files, {report.message_count} messages\n")
    return 0


def cmd_data_replay(args: argparse.Namespace, out: TextIO) -> int:
    with _stdout_to_stderr(args.json):
        from robostack.data.dataset import load_dataset
        from robostack.workflows.replay import replay

        report = replay(load_dataset(args.dataset), args.episode)
    if args.json:
        out.write(json.dumps(report) + "\n")
        return 0
    errors = report.pop("errors")
    _print_table(f"data replay: {args.dataset} episode {args.episode} in {report['task']}", report,
                 ("frames", "replayed_frames", "ended_early_at", "worst"), out)
    out.write(f"  {'absolute error':<24} {'max':<11} {'mean':<11} final\n")
    for group, e in errors.items():
        out.write(f"    {group:<22} {e['max']:<11.4g} {e['mean']:<11.4g} {e['final']:.4g}\n")
    return 0


# -------------------------------------------------------------------------------------------- teleop


def cmd_teleop(args: argparse.Namespace, out: TextIO) -> int:
    _require_positive(args, "--episodes")
    _require_positive(args, "--max-seconds", count=False)
    with _stdout_to_stderr(args.json):
        from robostack.workflows.record import choose_view, record
        from robostack.workflows.render import RenderError

        try:
            summary = record(args.task, args.device, args.out, episodes=args.episodes, seed=args.seed,
                             max_seconds=args.max_seconds, camera=args.camera, randomized=args.randomized,
                             view=choose_view(args.view, args.device), expert_noise=args.expert_noise)
        except RenderError as exc:  # no offscreen GL here: a user-fixable setup problem, one line
            raise UsageError(f"--camera: {exc}") from None
    if args.json:
        out.write(json.dumps(summary) + "\n")
    else:
        _print_table(f"teleop: {args.task} with {args.device} -> {args.out}", summary,
                     ("kept", "discarded", "successes", "frames"), out)
    return 0


# -------------------------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # same one-line shape as every other robostack error
        self.print_usage(sys.stderr)
        self.exit(2, f"{PROG}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from robostack import __version__

    parser = _Parser(
        prog=PROG,
        description="RoboStack: train robot policies in simulation, export them, deploy them with ROS 2.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("list", help="list robots, tasks, algorithms and simulator backends")
    p.add_argument("--json", action="store_true", help='print one JSON object {"robots": [...], "tasks": [...], ...}')
    p.set_defaults(func=cmd_list)

    add_bench_parser(sub, _Parser)
    add_improve_parser(sub)

    p = sub.add_parser(
        "train",
        help="train a policy for a task",
        description="Train a policy. Settings of the training recipe (configs/train/TASK.yaml) are overridden "
        "as key=value, dotted for nested keys; those of the task config (configs/tasks/TASK.yaml) as task.key=value.",
        epilog="example: robostack train go2-walk --seed 3 max_iterations=50 ppo.learning_rate=3e-4 "
        "task.sim.num_envs=64",
    )
    p.add_argument("task", help="task name (see: robostack list)")
    p.add_argument("--algo", default=None, help="learning algorithm (see: robostack list; default: the recipe's algo key)")
    p.add_argument("--resume", metavar="RUN", default=None, help="run folder (or name) to continue from")
    p.add_argument("--backend", default=None, help="simulator backend (see: robostack list; default: mujoco, or the "
                   "resumed run's)")
    p.add_argument("--dataset", metavar="DATASET", default=None,
                   help="demonstrations to learn from (algo diffusion; a dataset as robostack teleop writes it)")
    p.add_argument("--base", metavar="RUN_OR_BUNDLE", default=None,
                   help="train a residual on this frozen diffusion run or chunk bundle (recipe configs/train/TASK-residual.yaml)")
    p.add_argument("--init", metavar="BUNDLE", default=None,
                   help="start the policy from this ppo bundle of the task (its actor and normalizer; a fine-tune)")
    p.add_argument("--policy", metavar="BUNDLE", default=None,
                   help="--algo safety-critic: the policy bundle whose critic to train (configs/safety/TASK.yaml)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="--algo safety-critic, --interventions: where the new bundle goes")
    p.add_argument("--interventions", action="append", default=[], metavar="DATASET",
                   help="learn a correction of --policy (default: the shipped bundles/TASK) from datasets of its "
                        "deployments with a human's takeovers "
                        "(RLIF reward, RLPD mixing; repeatable; overrides: robostack.policies.rlif.RLIFConfig keys, "
                        "over configs/improve/TASK.yaml's rlif section where the task has one)")
    p.add_argument("--offline", action="store_true",
                   help="--interventions: learn offline with IQL instead (--algo iql)")
    p.add_argument("--disturbance", action="append", default=[], metavar="key=value",
                   help="--algo safety-critic: a task-config override added to every disturbance of the suite")
    p.add_argument("--run-root", default="runs", metavar="DIR", help="where run folders go (default: runs)")
    p.add_argument("--device", default=None, help=DEVICE_HELP + " (default: the recipe's device key, cpu)")
    p.add_argument("--nproc", type=int, default=1, help=NPROC_HELP)
    p.add_argument("--seed", type=int, default=None, help="random seed (default: from the config)")
    p.add_argument("--json", action="store_true", help="print the summary as exactly one JSON object on stdout")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. max_iterations=50 or task.rewards.upright=-0.5")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "export",
        help="export a trained run as a policy bundle (ONNX + TorchScript + metadata)",
        description="Write the policy bundle deployment consumes: policy.onnx, policy.pt and metadata.json "
        "(observation layout, action mapping, joints, gains, rates, training provenance, content hash).",
        epilog="example: robostack export runs/go2-walk/20250101-120000-ppo --out bundles/go2",
    )
    p.add_argument("run", metavar="RUN", help="run folder (runs/<task>/<run>) or a checkpoint file")
    p.add_argument("--out", required=True, metavar="DIR", help="bundle folder to write (new, empty or a bundle)")
    p.add_argument("--checkpoint", metavar="PATH", default=None,
                   help="checkpoint to export instead of checkpoints/last.pt (a path or a name in checkpoints/)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "deploy",
        help="run a policy bundle through the ROS 2 nodes (policy, safety; --sim: a simulated robot)",
        description="Start the deployment node graph that launch/*.launch.py starts: policy_node and "
        "safety_node, plus sim_robot_node with --sim, teleop_node with --teleop and recorder_node with --record. "
        "With --sim --episodes N it reports the success rate of N simulated episodes run through ROS 2.",
        epilog="example: robostack deploy --task cf2-hover --policy bundles/cf2-hover --sim --episodes 20 --json",
    )
    p.add_argument("--task", required=True, help="task the policy was trained for (checked against the bundle)")
    p.add_argument("--policy", required=True, metavar="BUNDLE", help="policy bundle folder")
    p.add_argument("--sim", action="store_true", help="drive a simulated robot (sim_robot_node) instead of hardware")
    p.add_argument("--play", action="store_true", help="with --sim: randomization off (default: the training one)")
    p.add_argument("--episodes", type=int, default=0, help="with --sim: stop after N episodes and report them")
    p.add_argument("--record", metavar="DIR", default=None, help="record a bag (rosbag2 MCAP) into DIR (new)")
    p.add_argument("--teleop", choices=("joy", "twist"), default=None,
                   help="a human can take over (teleop_node) with a gamepad (joy driver) or a Twist stream")
    p.add_argument("--intervener", choices=("scripted",), default=None,
                   help="with --sim: a simulated human watches the robot and takes over through teleop_node (a "
                   "gamepad) when the task's rule says it goes wrong, then hands back")
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated robot (default: 0)")
    p.add_argument("--disturbance", action="append", default=[], metavar="key=value",
                   help="with --sim: a task-config override the simulated robot runs under (repeatable), e.g. "
                   "randomization.push.range=[-1.5,1.5]")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser(
        "eval",
        help="evaluate a run or a policy bundle: success rate, return, task errors (and a video)",
        description="Run the deterministic policy on the play variant of its task (randomization off; "
        "--randomized: the training randomization) and report success_rate, mean_return and the task's "
        "metrics. A bundle is run through onnxruntime, a run folder through its torch checkpoint.",
        epilog="example: robostack eval bundles/go2 --episodes 50 --video go2.mp4",
    )
    p.add_argument("source", metavar="RUN_OR_BUNDLE", help="run folder, checkpoint file or bundle folder")
    p.add_argument("--episodes", type=int, default=20, help="episodes to evaluate (default: 20)")
    p.add_argument("--randomized", action="store_true", help="keep the training randomization on")
    p.add_argument("--video", metavar="PATH", default=None, help="write an MP4 of env 0 to PATH")
    p.add_argument("--num-envs", type=int, default=None, help="parallel envs (default: min(episodes, 32))")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--checkpoint", metavar="PATH", default=None, help="for a run: checkpoint instead of last.pt")
    p.add_argument("--backend", default=None, help="simulator backend (see: robostack list; default: mujoco)")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP + " (default: cpu)")
    p.add_argument("--shift", action="append", default=[], metavar="key=value",
                   help="a task-config override to evaluate under (repeatable; randomization.* keys need --randomized)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "data", help="datasets (LeRobotDataset v3.0 layout): info, merge, convert a bag, replay in simulation; "
        "recover a bag",
        description="Datasets of teleoperated demonstrations, intervention logs and policy rollouts in the "
        "layout of LeRobotDataset v3.0 (see robostack.data.dataset).")
    data = p.add_subparsers(dest="data_command", metavar="WHAT", parser_class=_Parser)
    data.required = True
    p = data.add_parser("info", help="episodes, frames, fps, features, tasks and success rate by source",
                        epilog="example: robostack data info data/panda-demos --json")
    p.add_argument("dataset", metavar="DATASET", help="dataset folder")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.set_defaults(func=cmd_data_info)
    p = data.add_parser("merge", help="concatenate datasets with identical features into OUT",
                        epilog="example: robostack data merge data/all data/demos data/interventions")
    p.add_argument("out", metavar="OUT", help="dataset folder to write (new, or one with the same features)")
    p.add_argument("sources", metavar="SRC", nargs="+", help="dataset folders, in order")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.set_defaults(func=cmd_data_merge)
    p = data.add_parser(
        "convert", help="turn a bag recorded by recorder_node into dataset episodes",
        description="Convert a rosbag2/MCAP bag recorded by recorder_node (robostack deploy --record) into one "
        "episode of OUT (created, or appended to), or one per simulated episode (--sim: sim/episode reports): state "
        "from the joint state / IMU / odometry topics, action from the driver command topic, intervention flags "
        "and takeover starts from teleop/intervention.",
        epilog="example: robostack data convert bags/go2-20250101-120000 data/go2 --sim-task go2-walk")
    p.add_argument("bag", metavar="BAG", help="bag folder (with metadata.yaml)")
    p.add_argument("out", metavar="OUT", help="dataset folder")
    p.add_argument("--robot", default=None, help="robot whose deploy config names the topics (default: found from "
                   "the bag's topics)")
    p.add_argument("--namespace", default=None, help="namespace the nodes ran in (default: found from the bag)")
    p.add_argument("--fps", type=int, default=None, help="frame rate (default: the rate of the state topic)")
    p.add_argument("--task", default=None, help="what the robot was doing, in words (the episode's task)")
    p.add_argument("--sim-task", default=None, help="the RoboStack task of this robot, stored for data replay")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.set_defaults(func=cmd_data_convert)
    p = data.add_parser(
        "recover", help="make a bag whose recorder was killed whole again (like ros2 bag reindex)",
        description="Rebuild every file of a bag recorded by recorder_node that does not end in a valid "
        "footer (a recorder killed in the middle of a flush) from its complete chunks, and rewrite "
        "metadata.yaml from the files. Files that end in a valid footer are not touched; a bag that a live "
        "recorder still writes is refused.",
        epilog="example: robostack data recover bags/go2-20250101-120000")
    p.add_argument("bag", metavar="BAG", help="bag folder (with metadata.yaml)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.set_defaults(func=cmd_data_recover)
    p = data.add_parser(
        "replay", help="re-execute an episode's actions in simulation and report the state error",
        description="Start the dataset's RoboStack task (its action feature's robostack.task) from the episode's first "
        "state, apply its recorded actions as actuator controls one control step per frame, and report how far "
        "the simulated states are from the recorded ones.",
        epilog="example: robostack data replay data/panda-rollouts --episode 3 --json")
    p.add_argument("dataset", metavar="DATASET", help="dataset folder")
    p.add_argument("--episode", type=int, required=True, help="episode index")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.set_defaults(func=cmd_data_replay)

    p = sub.add_parser(
        "teleop", help="teleoperate a simulated task and record the demonstrations into a dataset",
        description="Drive one simulated env with a device and record each kept episode (source teleop) into "
        "OUT. keyboard: a terminal, in real time (w/s a/d r/f move, q/e yaw, space gripper; Enter start, x stop, "
        "y success, n discard, Esc/Q quit); gamepad (pygame) and joy (ROS 2 sensor_msgs/Joy on topic joy): an "
        "Xbox-style pad (left stick x/y, right stick z and yaw, A gripper; Start start, Y success, X stop, "
        "B discard, Back quit); spacemouse (hidapi): a 3Dconnexion SpaceMouse (the cap moves and turns the TCP; "
        "left button gripper, right button start/success, both discard/quit); scripted: the task's scripted "
        "expert, as fast as it runs.",
        epilog="example: robostack teleop --task panda-lift --device gamepad --out data/lift-demos")
    p.add_argument("--task", required=True, help="simulated task (an end-effector arm task for a human's device)")
    p.add_argument("--device", required=True, help="keyboard, gamepad, joy, spacemouse or scripted")
    p.add_argument("--out", required=True, metavar="DATASET", help="dataset folder (new, or one to append to)")
    p.add_argument("--episodes", type=int, default=None,
                   help="stop after N kept episodes (default: a human's device until quit, scripted 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--max-seconds", type=float, default=None, help="stop after S seconds of wall time")
    p.add_argument("--camera", default=None, metavar="NAME", help="also record this camera (needs offscreen GL)")
    p.add_argument("--randomized", action="store_true",
                   help="keep the task's domain randomization on (default: the play variant)")
    p.add_argument("--expert-noise", type=float, default=0.0, metavar="STD", help=EXPERT_NOISE_HELP)
    p.add_argument("--view", choices=("auto", "viewer", "frames", "none"), default=None,
                   help="live view: viewer (MuJoCo's window), frames (the scene camera about 5 times a second to "
                   "OUT.live.png), none; auto: viewer with a display (DISPLAY or WAYLAND_DISPLAY), else frames "
                   "(default: auto, scripted none)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.set_defaults(func=cmd_teleop)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # ``key=value`` overrides may sit between or after options (train go2-walk a=1 --seed 3 b=2):
    # argparse leaves the later ones over; take them back as overrides, refuse anything else.
    if hasattr(args, "overrides"):
        stray = [x for x in extra if x.startswith("-") or "=" not in x]
        args.overrides = list(args.overrides) + [x for x in extra if x not in stray]
        extra = stray
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        return str(exc.args[0])  # str(KeyError) would quote the message
    if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in str(exc.strerror or ""):
        return f"{exc.strerror or 'file not found'}: {exc.filename}"
    text = str(exc)
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``robostack`` console script; returns the exit code (2 on a user error)."""
    args = parse_args(argv)
    from robostack.config import ConfigError

    try:
        return int(args.func(args, sys.stdout) or 0)
    except (ConfigError, KeyError, ValueError, FileNotFoundError) as exc:
        if os.environ.get("ROBOSTACK_DEBUG"):  # ROBOSTACK_DEBUG=1: the full traceback instead of one line
            raise
        sys.stdout.flush()
        sys.stderr.write(f"{PROG}: error: {_message(exc)}\n")
        return 2
    except Failure as exc:
        sys.stdout.flush()
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
