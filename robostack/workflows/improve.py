"""``robostack improve``: deploy a bundle, let a (simulated) human take over when it goes wrong, learn from that,
redeploy the better bundle; round after round.

    robostack improve --task cf2-hover --policy bundles/cf2-hover --rounds 3 --episodes-per-round 20 \\
        --shift randomization.link_mass.range=[1.4,1.4] --out runs/improve/cf2

Each round (a folder ``round-<r>/`` of ``--out``):

1. ``deploy/``: the current bundle runs on the simulated robot through the real ROS 2 graph
   (``robostack.real.graph.node_graph``: policy, safety, simulated robot, ``teleop_node`` driven by the task's
   simulated intervener, the recorder), ``episodes_per_round`` episodes under the shift; the bag is ``bag/``.
2. ``dataset/``: the bag converted (``robostack.workflows.convert``): one episode per simulated episode, the
   takeovers flagged.
3. ``bundle/``: a correction of the starting bundle learned from the datasets of every round so far
   (``robostack.workflows.interventions``, with the config's ``algo``: rlif, a residual with RLIF's reward and
   RLPD's mixing; iql, a residual by IQL from the logs alone; command-correction, the human's stick rule moving
   the command the bundle follows; gripper-rule, a residual closing the gripper where the human closed it).
4. ``eval.json``: the new bundle in the vectorized simulator under the shift.

The next round deploys that bundle. Every step leaves its output and a ``.json`` that says it finished; a rerun
with the same ``--out`` skips what finished (a round is resumable); a step redone makes its round's later steps run
again (not later rounds'). Recorded data is never deleted: a deployment that did not finish is kept as
``deploy-unfinished-<n>/`` and the round deploys again.
``report.json`` and ``rounds.png`` sum the rounds up: takeovers per episode, success deployed and evaluated.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from robostack.bundle.format import COMMAND_CORRECTION
from robostack.config import ConfigError, config_path, load_config, to_dict
from robostack.data.dataset import Dataset
from robostack.policies.rlif import RLIFConfig, rlif_rewards
from robostack.workflows.convert import convert_bag
from robostack.workflows.evaluate import eval_policy
from robostack.workflows.interventions import (check_command_settings, correctable, intervention_algorithm,
                                                learn_from_interventions, with_rule_inputs)

SETTINGS_FILE = "improve.json"
ROUND_STEPS = ("deploy", "dataset", "train", "eval")  # each writes <step>.json in its round's folder when done


@dataclass
class ImproveConfig:
    """A task's loop (``configs/improve/<task>.yaml``): the benchmark's shift and sizes, and the learner's settings."""

    shift: list[str] = field(default_factory=list)  # task-config overrides the bundle is deployed and judged under
    rounds: int = 3
    episodes_per_round: int = 20
    eval_episodes: int = 1000
    exploration_std: float = 0.0  # the deployed policy's action noise (policy_node): logs with actions to compare
    algo: str = "rlif"  # the learner of every round, one that learns from interventions (robostack list)
    rlif: RLIFConfig = field(default_factory=RLIFConfig)


def improve_config(task: str, overrides: Sequence[str] = ()) -> ImproveConfig:
    """``configs/improve/<task>.yaml`` with ``key=value`` overrides, for a task with a simulated intervener."""
    from robostack import sim

    if sim.task(task).intervener is None:
        raise ConfigError(f"task {task!r} has no simulated intervener (a rule for when to take over)")
    return load_config(ImproveConfig, config_path("improve", f"{task}.yaml"), overrides)


def _done(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
    return data


def deploy_round(policy: str | os.PathLike, folder: Path, episodes: int, shift: Sequence[str], seed: int,
                 exploration_std: float = 0.0) -> dict[str, Any]:
    """The bundle on the simulated robot through the ROS 2 graph with the simulated intervener, recorded."""
    from robostack.real.graph import node_graph, run_graph

    if folder.exists():  # an unfinished deployment starts over; its bag, cut short, is kept beside
        kept = next(folder.with_name(f"{folder.name}-unfinished-{i}") for i in range(1000)
                    if not folder.with_name(f"{folder.name}-unfinished-{i}").exists())
        folder.rename(kept)
    folder.mkdir(parents=True)
    nodes = node_graph(policy, sim=True, record=folder / "bag", episodes=episodes, seed=seed,
                       disturbances=list(shift), intervener=True, exploration_std=exploration_std)
    env = {"ROS_AUTOMATIC_DISCOVERY_RANGE": os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")}
    result = run_graph(nodes, wait_for="sim_robot_node", env=env, log_dir=folder)
    if result.failure or result.interrupted:
        raise RuntimeError(f"round deployment in {folder} stopped: {result.failure or 'interrupted'}")
    summary = result.summary()
    if "success_rate" not in summary:
        raise RuntimeError(f"the simulated robot reported no episodes (logs: {folder})")
    return summary


def _round_figures(data: Dataset) -> dict[str, Any]:
    frames = data.frames(["complementary_info.intervention", "episode_index"])
    flags, episodes = frames["complementary_info.intervention"], frames["episode_index"]
    takeovers = int((rlif_rewards(flags, episodes) < 0).sum())  # not one held over an episode's reset twice
    return {"episodes": data.num_episodes, "takeovers": takeovers,
            "interventions_per_episode": takeovers / max(data.num_episodes, 1), "intervened_steps": int(flags.sum())}


def improve(task: str, policy: str | os.PathLike | None, out: str | os.PathLike, cfg: ImproveConfig | None = None, *,
            seed: int = 0, note: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the loop in ``out`` from the bundle at ``policy`` (None: the task's shipped bundle; ``cfg``:
    the task's ``improve_config``); returns the report (also ``out/report.json``)."""
    from robostack.real.bench import resolve_bundle

    cfg = cfg or improve_config(task)
    policy = resolve_bundle(task, policy)
    rounds, episodes_per_round, eval_episodes, shift = cfg.rounds, cfg.episodes_per_round, cfg.eval_episodes, cfg.shift
    start = time.perf_counter()
    if rounds < 1 or episodes_per_round < 1 or eval_episodes < 1:
        raise ConfigError("rounds, episodes per round and evaluation episodes must be at least 1")
    if intervention_algorithm(cfg.algo).bundle_kind == COMMAND_CORRECTION:  # all before anything is deployed
        check_command_settings(policy, cfg.rlif)
    else:
        with_rule_inputs(cfg.rlif, correctable(policy)[1])
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    settings = {"task": task, "policy": str(Path(policy).resolve()), "episodes_per_round": episodes_per_round,
                "shift": list(shift), "algo": cfg.algo, "eval_episodes": eval_episodes, "seed": seed,
                "exploration_std": cfg.exploration_std, "rlif": to_dict(cfg.rlif)}
    previous = _done(root / SETTINGS_FILE)
    if previous is not None and previous != settings:
        differing = sorted(k for k in settings if previous.get(k) != settings[k])
        raise ConfigError(f"{root} holds a loop with other settings ({', '.join(differing)}); give another --out")
    _write(root / SETTINGS_FILE, settings)

    def evaluate(bundle: str | os.PathLike, path: Path) -> dict[str, Any]:
        found = _done(path)
        if found is None:
            note(f"evaluating {bundle} on {eval_episodes} episodes under the shift")
            result = eval_policy(bundle, eval_episodes, randomized=True, seed=seed + 7919, overrides=list(shift))
            found = _write(path, {"success_rate": result["success_rate"], "mean_return": result["mean_return"],
                                  "episodes": eval_episodes})
        return found

    before = evaluate(policy, root / "eval-before.json")
    current, datasets, per_round = str(Path(policy).resolve()), [], []
    for r in range(rounds):
        folder = root / f"round-{r}"
        folder.mkdir(exist_ok=True)
        steps = [folder / f"{step}.json" for step in ROUND_STEPS]
        missing = [i for i, path in enumerate(steps) if _done(path) is None]
        for path in steps[missing[0] + 1:] if missing else []:  # a step redone: the ones after it are redone too
            path.unlink(missing_ok=True)
        deployed = _done(folder / "deploy.json")
        if deployed is None:
            note(f"round {r}: deploying {current} for {episodes_per_round} episodes through ROS 2")
            deployed = _write(folder / "deploy.json", deploy_round(current, folder / "deploy", episodes_per_round,
                                                                   shift, seed + 1000 * r, cfg.exploration_std))
        figures = _done(folder / "dataset.json")
        if figures is None:
            shutil.rmtree(folder / "dataset", ignore_errors=True)
            data = convert_bag(folder / "deploy" / "bag", folder / "dataset", task=f"{task}: improve round {r}",
                               sim_task=task)
            figures = _write(folder / "dataset.json", _round_figures(data))
        datasets.append(folder / "dataset")
        trained = _done(folder / "train.json")
        if trained is None:
            note(f"round {r}: learning from {len(datasets)} round(s) of data")
            trained = _write(folder / "train.json", learn_from_interventions(
                datasets, policy, folder / "bundle", algo=cfg.algo, cfg=cfg.rlif))
        evaluated = evaluate(folder / "bundle", folder / "eval.json")
        per_round.append({"round": r, "deployed": str(current), "success_deployed": deployed["success_rate"],
                          **figures, "success_after_round": evaluated["success_rate"], "train_s": trained["wall_s"]})
        current = str((folder / "bundle").resolve())
    report = {"task": task, "policy": settings["policy"], "shift": list(shift), "rounds": rounds,
              "episodes_per_round": episodes_per_round, "success_before": before["success_rate"],
              "success_after": per_round[-1]["success_after_round"],
              "interventions_per_episode": [p["interventions_per_episode"] for p in per_round],
              "intervened_steps": sum(p["intervened_steps"] for p in per_round), "bundle": current,
              "per_round": per_round, "wall_s": round(time.perf_counter() - start, 1)}
    _write(root / "report.json", report)
    plot_rounds(report, root / "rounds.png")
    return report


def plot_rounds(report: dict[str, Any], path: Path) -> None:
    """Takeovers per episode (deployed) and success (deployed, evaluated after the round's learning) per round."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rounds = [p["round"] for p in report["per_round"]]
    fig = Figure(figsize=(7, 3.2))
    left, right = fig.subplots(1, 2)
    left.plot(rounds, report["interventions_per_episode"], "o-")
    left.set(xlabel="round", ylabel="takeovers per episode", title="deployed through ROS 2", xticks=rounds)
    right.plot(rounds, [p["success_deployed"] for p in report["per_round"]], "o-", label="deployed (round's bundle)")
    right.plot(rounds, [p["success_after_round"] for p in report["per_round"]], "s-", label="evaluated after round")
    right.axhline(report["success_before"], color="grey", ls="--", label="before")
    right.set(xlabel="round", ylabel="success", ylim=(0, 1.02), xticks=rounds, title=report["task"])
    right.legend(fontsize=7)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(path))
