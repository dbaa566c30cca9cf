"""``robostack train TASK --interventions DATASET --policy BUNDLE``: a correction of a deployed bundle learned from
logs of it with a human's takeovers (``--algo rlif``, the default: ``robostack.policies.rlif``; ``--algo iql`` or
``--offline``: IQL from the logs alone), exported as a residual bundle over it; or (``--algo command-correction``)
the human's stick rule where they took over by moving the task command, exported as a command correction of it.

The logs are datasets (``robostack data convert`` of deployment bags, or ``robostack improve``'s rounds): the
measured state, the task command, the executed actuator controls and the intervention flags per frame. The
policy's observations are rebuilt from them by the deploy side's own ``ObservationBuilder``, step by step as
``policy_node`` builds them (integrals, past actions), so the learner sees what the deployed policy saw. Where a
human took over by changing the task command (a quadruped's velocity, a drone's setpoint), the observation
keeps the command the task gave (the one before the takeover, until the task's next command after it): the
executed actions then answer the task's command, which is what the correction must learn.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from robostack.bundle import BundleError, load_bundle
from robostack.bundle.format import ACTOR_CRITIC, CHUNK, COMMAND_CORRECTION
from robostack.data.dataset import INTERVENTION, Dataset, DatasetError, load_dataset
from robostack.data.features import BASE_ACTION, BASE_STATE, FREE_BODY_STATE, TASK_ACTION, state_columns
from robostack import registry
from robostack.policies.rlif import RLIFConfig, intervention_buffers, residual_targets, rlif_rewards, takeover_starts
from robostack.real.observation import ObservationBuilder, ObservationError
from robostack.real.robot_state import BodyState, RobotState
from robostack.specs import AlgorithmSpec


def robot_state(names: Sequence[str], values: np.ndarray) -> RobotState:
    """The ``RobotState`` an ``observation.state`` row holds (``JOINT.pos``, ``JOINT.vel``, ``base_*.<axis>``, and a
    task's object as ``<body>_<field>.<axis>`` of one other free body)."""
    joints: dict[str, dict[str, float]] = {"pos": {}, "vel": {}}
    base: dict[str, list[float]] = {}
    body: dict[str, list[float]] = {}
    for name, value in zip(names, values):
        stem, _, part = name.rpartition(".")
        if stem in BASE_STATE:
            base.setdefault(stem, []).append(float(value))
        elif part in joints:
            joints[part][stem] = float(value)
        else:
            field = next((f for f in FREE_BODY_STATE if stem.endswith(f"_{f}")), None)
            if field is not None:
                body.setdefault(field, []).append(float(value))
    found = BodyState(*(np.array(body[f]) for f in FREE_BODY_STATE)) if set(body) == set(FREE_BODY_STATE) else None
    return RobotState(joints["pos"], joints["vel"], **{field: np.array(v) for field, v in base.items()}, object=found)


def task_commands(commands: np.ndarray, intervention: np.ndarray, episode_index: np.ndarray) -> np.ndarray:
    """The task's command per frame: during a takeover, and after it until the command next changes (the human's
    last one holds until the task's next), the command in effect just before the takeover."""
    out = np.array(commands, copy=True)
    flags = np.asarray(intervention, dtype=bool)
    for start in np.flatnonzero(takeover_starts(flags, episode_index)):
        if start == 0 or episode_index[start - 1] != episode_index[start]:
            continue  # taken over from the episode's first frame: no task command seen before it
        before, t = out[start - 1].copy(), start
        while t < len(out) and episode_index[t] == episode_index[start] and flags[t]:
            t += 1
        human_last = commands[t - 1]
        out[start:t] = before
        while t < len(out) and episode_index[t] == episode_index[start] and not flags[t] and \
                np.array_equal(commands[t], human_last):
            out[t] = before
            t += 1
    return out


def correctable(policy: str | os.PathLike) -> tuple[Any, ObservationBuilder]:
    """The bundle at ``policy`` and its observation builder, if a correction can be learned for it from logs: an
    actor-critic bundle (PPO, SAC) or a chunk bundle (diffusion) acting in its task's actions. What the logs must
    hold for it (``LoggedSteps``: the policy's actions where controls do not give them, a chunk policy's proposals)
    is checked on the data. Refuses (``BundleError``, one line) otherwise: before a loop deploys anything."""
    base = load_bundle(policy)
    kind = base.metadata.get("kind", ACTOR_CRITIC)
    if kind not in (ACTOR_CRITIC, CHUNK):
        raise BundleError(f"bundle {policy}: a {kind!r} bundle, itself a correction of the bundle in its base/; learn "
                          "from interventions with that base as the policy (a loop's rounds each correct the bundle it "
                          "started from)")
    if base.metadata["action"].get("kind") == "controls":
        raise BundleError(f"bundle {policy}: a chunk bundle writing actuator controls; a correction acts in the task's "
                          "actions (train the chunk policy with action_key: teleop.action)")
    return base, ObservationBuilder(base.metadata)


class LoggedSteps:
    """Every frame of some datasets as the deployed policy saw it: rebuilt observations, the executed actions in the
    policy's action space, intervention flags, episode indices, each frame's successor row (-1: none) and, where
    every dataset logged them, the base's proposals (``base``, else None). The executed actions are the logged ones
    (``TASK_ACTION``) or, where a dataset lacks them, its controls through the inverse of a task's one-to-one action
    map; a task acting by end-effector, relative or gripper commands needs the logged ones."""

    def __init__(self, builder: ObservationBuilder, datasets: Sequence[Dataset]):
        self.builder = builder
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "action", "human", "episode", "next", "base")}
        offset = 0
        for data in datasets:
            self._check(data)
            names = data.features["observation.state"]["names"]
            for e in range(data.num_episodes):
                frames = data.episode(e, images=False)
                length = len(frames["action"])
                flags = frames[INTERVENTION].astype(bool) | (data.episodes[e].get("source") == "teleop")
                episode = np.full(length, len(parts["episode"]))
                commands = frames.get("observation.command")
                if commands is not None:
                    commands = task_commands(commands, flags, episode)
                actions = frames[TASK_ACTION] if TASK_ACTION in data.features else builder.actions_of(frames["action"])
                parts["obs"].append(self._observations(names, frames["observation.state"], commands, actions, flags,
                                                       where=f"{data.root} episode {e}"))
                parts["action"].append(np.asarray(actions, dtype=np.float32))
                if BASE_ACTION in data.features:
                    parts["base"].append(np.asarray(frames[BASE_ACTION], dtype=np.float32))
                parts["human"].append(flags)
                parts["episode"].append(episode)
                parts["next"].append(np.append(np.arange(offset + 1, offset + length), -1))
                offset += length
        if offset == 0:
            raise DatasetError("the datasets hold no frames")
        self.obs, self.actions = np.concatenate(parts["obs"]), np.concatenate(parts["action"])
        self.human, self.episode = np.concatenate(parts["human"]), np.concatenate(parts["episode"])
        self.next_index = np.concatenate(parts["next"])
        self.base = np.concatenate(parts["base"]) if len(parts["base"]) == len(parts["action"]) else None

    def _check(self, data: Dataset) -> None:
        task = self.builder.task
        missing = [k for k in ("observation.state", "action", INTERVENTION) +
                   (("observation.command",) if task.command_dim else ()) if k not in data.features]
        if missing:
            raise DatasetError(f"{data.root}: lacks {missing}, which learning from interventions reads")
        if data.info.get("robot_type") not in (None, task.robot):
            raise DatasetError(f"{data.root}: recorded on robot {data.info['robot_type']!r}, the bundle drives "
                               f"{task.robot!r}")
        nu = self.builder.model.nu
        if data.features["action"]["shape"] != [nu]:
            raise DatasetError(f"{data.root}: actions have shape {data.features['action']['shape']}, the "
                               f"{task.robot}'s controls are [{nu}]")
        if TASK_ACTION not in data.features and not self.builder.one_to_one:
            raise DatasetError(f"{data.root}: lacks {TASK_ACTION}, the policy's actions: task {task.name!r} acts by "
                               "end-effector, relative or gripper commands, which the recorded controls do not "
                               "determine (record the deployment with robostack deploy --record, which logs them)")
        for key in (TASK_ACTION, BASE_ACTION):
            if key in data.features and data.features[key]["shape"] != [self.builder.action_dim]:
                raise DatasetError(f"{data.root}: {key} has shape {data.features[key]['shape']}, the bundle's "
                                   f"actions are [{self.builder.action_dim}]")

    def _observations(self, names: Sequence[str], states: np.ndarray, commands: np.ndarray | None,
                      actions: np.ndarray, human: np.ndarray, where: str) -> np.ndarray:
        """An episode's policy observations, as ``policy_node`` builds them on each measured state (where a human
        is in control, its relative or end-effector targets follow the measured joints, as there)."""
        builder = self.builder
        builder.reset()
        out = []
        try:
            for t, (state, action) in enumerate(zip(states, actions)):
                if commands is not None:
                    builder.set_command(commands[t])
                builder.update(robot_state(names, state))
                if human[t]:
                    builder.anchor_targets()
                if t:  # integrals advance after each step, not before the first
                    builder.integrate()
                out.append(builder.observation())
                builder.controls(action)
        except ObservationError as exc:
            raise DatasetError(f"{where}: {exc}") from None
        return np.stack(out)


def intervention_algorithm(name: str) -> AlgorithmSpec:
    """The algorithm ``name`` if it learns from interventions (``robostack list``: rlif, iql), else ``ValueError``."""
    from robostack import policies

    policies.load()
    spec = registry.algorithm(name)
    if spec.trains_with != "interventions":
        names = [s.name for s in registry.registered(AlgorithmSpec) if s.trains_with == "interventions"]
        raise ValueError(f"algorithm {name!r} does not learn from interventions (those that do: {names})")
    return spec


class HeldCommands:
    """The frames of some datasets where a human held the task command and still held it at the next frame, as a
    command correction learns from them (``robostack.policies.command_correction``): ``inputs`` [T, n + k] (the
    task's command less the ``tracks`` state values, then the ``inputs`` ones), ``rates`` [T, n] (how fast the human
    moved the command), and how far they held it from the task's (``leads``, norms). The task's command during a
    takeover is the one in effect before it (``task_commands``). With ``lead`` (how close to the tracked values a
    takeover keeps the command: a drone's setpoint within 0.5 m of the drone), frames where the command is at that
    limit (``PINNED`` of it) are left out (``pinned`` counts them): there the device moved it, not the human; in
    three rounds of cf2-hover they were 1445 of 3404 frames, and fitted with the rest they taught "do not move"
    (0.04 of 256 shifted episodes, against 0.95 without them: BENCHMARKS.md)."""

    PINNED = 0.98

    def __init__(self, datasets: Sequence[Dataset], model: Any, tracks: Sequence[str], inputs: Sequence[str],
                 lead: float | None = None):
        parts: dict[str, list[np.ndarray]] = {"inputs": [], "rates": [], "leads": []}
        self.pinned = 0
        for data in datasets:
            missing = [k for k in ("observation.state", "observation.command", INTERVENTION) if k not in data.features]
            if missing:
                raise DatasetError(f"{data.root}: lacks {missing}, which a command correction reads")
            columns = state_columns(model, data.features["observation.state"]["names"], [*tracks, *inputs],
                                    str(data.root))
            frames = data.frames(["observation.state", "observation.command", INTERVENTION, "episode_index"])
            state, episode = frames["observation.state"], frames["episode_index"]
            flags = frames[INTERVENTION].astype(bool)
            held = frames["observation.command"].astype(np.float64)
            task = task_commands(held, flags, episode)
            tracked = state[:, columns[:len(tracks)]]
            features = np.hstack([task - tracked, state[:, columns[len(tracks):]]])
            # both frames of a pair held, in one episode: the rate is the human's, not a reset or a hand-back
            pair = flags[:-1] & flags[1:] & (episode[:-1] == episode[1:])
            if lead is not None:
                free = np.linalg.norm(held - tracked, axis=1) < self.PINNED * lead
                self.pinned += int((pair & ~(free[:-1] & free[1:])).sum())
                pair &= free[:-1] & free[1:]
            parts["inputs"].append(features[:-1][pair])
            parts["rates"].append((np.diff(held, axis=0) * data.fps)[pair])
            parts["leads"].append(np.linalg.norm(held - task, axis=1)[flags])
        self.inputs, self.rates = np.vstack(parts["inputs"]), np.vstack(parts["rates"])
        self.leads = np.concatenate(parts["leads"])
        if not len(self.inputs):
            raise DatasetError("the datasets hold no frames where a human moved the task command (held, and not "
                               "pinned at the takeover's lead): no stick rule to learn")


def with_rule_inputs(cfg: RLIFConfig, builder: ObservationBuilder) -> RLIFConfig:
    """``cfg`` with its gripper rule's ``inputs`` (the policy observation's terms, by name) as the columns of the
    observation vector they occupy; ``ValueError`` (one line) naming a term the task's observation lacks."""
    if not cfg.gripper.inputs:
        return cfg
    columns = tuple(builder.term_columns(cfg.gripper.inputs))
    return dataclasses.replace(cfg, gripper=dataclasses.replace(cfg.gripper, columns=columns))


def check_command_settings(policy: str | os.PathLike, cfg: RLIFConfig) -> tuple[Any, ObservationBuilder]:
    """``correctable(policy)``, and ``cfg.command`` names a state value per command component and values the robot
    gives (``ValueError``, one line): what a loop checks before it deploys anything."""
    base, builder = correctable(policy)
    settings, command_dim = cfg.command, int(base.metadata.get("command_dim", 0))
    if len(settings.tracks) != command_dim:
        raise ValueError(f"command.tracks names {len(settings.tracks)} state values; the task's command has "
                         f"{command_dim} components, each the setpoint of one (a drone's target: base_position.x, .y, "
                         ".z)")
    names = builder.frame_reader.state_names
    state_columns(builder.model, names, [*settings.tracks, *settings.inputs], "command.tracks and command.inputs")
    return base, builder


def learn_command_correction(datasets: Sequence[Dataset], policy: str | os.PathLike, out: str | os.PathLike,
                             spec: AlgorithmSpec, cfg: RLIFConfig) -> dict[str, Any]:
    """The human's stick rule from ``datasets`` as a command-correction bundle over the bundle at ``policy``."""
    from robostack.workflows.export import write_command_correction

    base, builder = check_command_settings(policy, cfg)
    settings = cfg.command
    logs = HeldCommands(datasets, builder.model, settings.tracks, settings.inputs, settings.lead)
    rule, losses = spec.trainer(logs.inputs, logs.rates, settings)
    rate_limit = settings.rate_limit or np.quantile(np.abs(logs.rates), 0.99, axis=0).tolist()
    offset_limit = settings.offset_limit or float(logs.leads.max())
    block = {"tracks": list(settings.tracks), "inputs": list(settings.inputs),
             "rate_limit": [float(v) for v in rate_limit], "offset_limit": offset_limit}
    training = {"algo": spec.name, "datasets": [str(Path(d.root).resolve()) for d in datasets],
                "held_frames": rule.frames, "pinned_frames": logs.pinned, "ridge": settings.ridge, "losses": losses}
    bundle = write_command_correction(out, policy, spec.exporter(rule), block, spec.name, training)
    return {**training, "bundle": str(bundle)}


def learn_from_interventions(datasets: Sequence[str | os.PathLike], policy: str | os.PathLike,
                             out: str | os.PathLike, *, algo: str = "rlif", cfg: RLIFConfig | None = None,
                             on_update: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Fit a correction of the bundle at ``policy`` from the logged ``datasets`` with ``algo`` and write it as a
    bundle at ``out``: a residual (rlif: SAC with RLPD's mixing; iql: offline) or a command correction
    (command-correction: the human's stick rule); returns a summary (what it learned from, the fit's last losses,
    the bundle, ``wall_s``)."""
    from robostack.workflows.export import write_residual_bundle

    start = time.perf_counter()
    cfg = cfg or RLIFConfig()
    spec = intervention_algorithm(algo)
    if spec.bundle_kind == COMMAND_CORRECTION:
        summary = learn_command_correction([load_dataset(d) for d in datasets], policy, out, spec, cfg)
        return {**summary, "wall_s": round(time.perf_counter() - start, 1)}
    base, builder = correctable(policy)
    cfg = with_rule_inputs(cfg, builder)
    steps = LoggedSteps(builder, [load_dataset(d) for d in datasets])
    if steps.base is not None:  # what the base proposed as it ran
        base_actions = steps.base
    elif base.metadata.get("kind", ACTOR_CRITIC) == ACTOR_CRITIC:
        base_actions = base.act(steps.obs)
    else:
        raise DatasetError(f"the datasets lack {BASE_ACTION} (in some or all), the chunk policy's proposals, which "
                           "cannot be recomputed from the logs (its chunks depend on its noise and history); record "
                           "the deployments with robostack deploy --record, which logs them")
    residual = residual_targets(steps.actions, base_actions, cfg.scale)
    rewards = rlif_rewards(steps.human, steps.episode)
    online, prior = intervention_buffers(steps.obs, base_actions, residual, rewards, steps.next_index, steps.human)
    updates_done = 0  # as the fit counts them (each learner's count lives in its own config section)

    def count_updates(done: int, losses: dict[str, float]) -> None:
        nonlocal updates_done
        updates_done = done
        if on_update is not None:
            on_update(done, losses)

    learner, losses = spec.trainer(online, prior, cfg, count_updates)
    if not updates_done:  # an unfitted correction would act at random on top of the bundle
        raise ValueError(f"the {spec.name} fit ran no update: its count (rlif: updates, iql: iql.num_updates, "
                         "gripper-rule: gripper.updates) must be at least 1")
    module = spec.exporter(learner)
    training = {"algo": spec.name, "datasets": [str(Path(d).resolve()) for d in datasets],
                "frames": int(len(steps.obs)),
                "takeovers": int((rewards < 0).sum()), "human_steps": int(steps.human.sum()),
                "updates": updates_done,
                "losses": {k: float(v) for k, v in losses.items()}}
    bundle = write_residual_bundle(out, policy, module, cfg.scale, spec.name, training)
    return {**training, "bundle": str(bundle), "wall_s": round(time.perf_counter() - start, 1)}
