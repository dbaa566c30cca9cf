"""A learned safety critic for a deployed policy, and the closed loop it is trained and judged in.

    robostack train go2-walk --algo safety-critic --policy bundles/go2-walk --out bundles/go2-walk-critic
    robostack bench safety --task go2-walk --json

The method (Recovery RL, SQRL): Q_risk(s, a) in [0, 1] is the discounted probability of a constraint violation
ahead when the bundle's policy commands ``a`` in state ``s``, fitted by temporal differences on rollouts that
contain violations: target ``c(s') + (1 - c(s')) * gamma * Q_risk(s', a')``, with ``c`` the violation indicator
(privileged simulator state labels it; the critic's inputs are only what the robot measures,
``robostack.real.critic.RiskFeatures``).

The closed loop (``SafeLoop``) is the deployed one in simulation: the bundle's policy, every command through the
robot kind's safety layer (``robostack.real.safety``, the hard limits, at the control rate) and, with a critic,
its recovery; violations are counted by ``Violations`` from the task's own state. Rollouts for training run the
policy under the disturbance suite of ``configs/safety/<task>.yaml`` (stronger pushes and gusts, payloads, weak
motors, low friction, added latency, task shifts) and on nominal episodes, in two rounds: the hard limits alone,
then with the first critic engaging the recovery often, so that the final critic also knows what the recovery's
commands lead to and the layer recovers only where that is less risky than the policy's command. ``epsilon``
is the lowest risk threshold whose engagements stay within ``false_trigger_budget`` of nominal control steps,
checked in the closed loop. The critic's graph goes into the bundle (``critic.onnx``), hashed with the policy
it was trained for (``robostack.bundle.write.add_critic``).

The recovery is the robot kind's scripted one (``robostack.real.safety``: the arm holds, the quadruped stands, the
drone levels and holds its position) unless ``recovery_policy.train`` is set: then a recovery policy is trained
first (Recovery RL's; ``train_recovery``: the bundle's PPO policy fine-tuned under the disturbances with a raised
fall penalty, at the recovery's task command), goes into the bundle beside the critic (``recovery.onnx``), and runs
in the second round's rollouts, so the critic judges it too.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from robostack import registry, sim
from robostack.bundle import load_bundle
from robostack.bundle.format import (CRITIC_INPUT, CRITIC_OUTPUT, ONNX_FILE, ONNX_OPSET, RECOVERIES, RECOVERY_FILE,
                                     contract)
from robostack.bundle.write import add_critic
from robostack.config import config_path, load_config, to_dict
from robostack.real.bench import SHIPPED_BUNDLES
from robostack.real.critic import MeasuredBatch, RiskCritic, RiskFeatures, bundle_critic
from robostack.real.deploy_config import load_deploy_config
from robostack.real.robot_state import RobotState
from robostack.real.safety import RECOVERY_MIN_S, Command, Measurement, safety_config, safety_layer
from robostack.workflows.acting import load_policy
from robostack.policies.safety_critic import CriticTrainConfig, RiskNetwork, export_module, fit_critic
from robostack.workflows.runs import available_cores

# ------------------------------------------------------------------------------------------ config


@dataclass
class ViolationConfig:
    """What counts as a violation, each check off where null: a fall or crash (tilt above ``max_tilt`` rad, or a
    base below ``min_height`` m; a drone below it at more than ``max_ground_speed`` m/s), a drone outside
    ``geofence`` (m, world box), an arm's link (not its base, not its fingers) pressing on the floor with more than
    ``max_contact_force`` N, a joint within ``joint_margin`` rad of its URDF limit, or a joint moving faster than
    ``max_joint_speed`` x its URDF velocity limit (what stops a real Panda with a reflex error)."""

    max_tilt: float | None = None
    min_height: float | None = None
    max_ground_speed: float | None = None
    geofence: list[list[float]] | None = None  # [[x, y, z] min, [x, y, z] max]
    max_contact_force: float | None = None
    joint_margin: float | None = None
    max_joint_speed: float | None = None


@dataclass
class RecoveryPolicyConfig:
    """A recovery policy trained with the critic (Recovery RL's, in place of the kind's scripted recovery): the
    bundle's PPO policy fine-tuned (``robostack.workflows.train`` with ``init``) under ``overrides`` (the recipe's
    keys and ``task.*`` keys, as ``robostack train`` takes them: the disturbances, a larger fall penalty, the
    commands), deployed with the task command ``command``. Where ``train`` is false the scripted one recovers."""

    train: bool = False
    command: list[float] = field(default_factory=list)  # the task command it recovers with (go2: stand still)
    overrides: list[str] = field(default_factory=list)


@dataclass
class SafetyCriticConfig:
    gamma: float = 0.95  # per control step: at 50 Hz the risk looks about 0.4 s ahead
    false_trigger_budget: float = 0.005  # share of nominal control steps on which the critic may engage
    recovery_round: bool = True  # a second round of rollouts with recoveries, so the critic judges them too
    num_envs: int = 64
    episodes_per_disturbance: int = 64
    nominal_episodes: int = 128
    episode_length_s: float | None = None  # rollouts' episodes (None: the task's)
    task_overrides: list[str] = field(default_factory=list)  # for every rollout (e.g. no early termination)
    violation: ViolationConfig = field(default_factory=ViolationConfig)
    disturbances: dict[str, list[str]] = field(default_factory=dict)  # name -> task-config overrides
    train: CriticTrainConfig = field(default_factory=CriticTrainConfig)
    recovery_policy: RecoveryPolicyConfig = field(default_factory=RecoveryPolicyConfig)


def load_safety_config(task: str, overrides: Sequence[str] = ()) -> SafetyCriticConfig:
    return load_config(SafetyCriticConfig, config_path("safety", f"{task}.yaml"), overrides)


def disturbance_suite(cfg: SafetyCriticConfig, extra: Sequence[str] = ()) -> dict[str, list[str]]:
    """The suite's override sets, each with ``extra`` (``--disturbance key=value``) added, replacing its own
    value of the same key; with no suite, ``extra`` alone."""
    extra_keys = {item.partition("=")[0].strip() for item in extra}
    suite = cfg.disturbances or {"given": []}
    return {name: [o for o in overrides if o.partition("=")[0].strip() not in extra_keys] + list(extra)
            for name, overrides in suite.items()}


# --------------------------------------------------------------------------------------- violations


class Violations:
    """The violation indicator of every env of a ``TaskEnv`` now, from privileged simulator state."""

    def __init__(self, env: Any, cfg: ViolationConfig):
        self.env, self.cfg = env, cfg
        model = env.default_model
        self.kind = registry.robot(env.task.robot).kind
        self.floating = self.kind in ("quadruped", "drone")
        if self.kind == "arm":
            base = model.body("link0").id if _has_body(model, "link0") else 0
            fingers = {model.body(name).id for name in ("left_finger", "right_finger") if _has_body(model, name)}
            robot = [g for g in range(model.ngeom) if model.geom_bodyid[g] not in (0, base, *fingers)]
            self.robot_geoms = set(robot)
            self.ground_geoms = {g for g in range(model.ngeom) if model.geom_bodyid[g] == 0}
            joints = [j for j in model.actuator_trnid[:, 0] if model.jnt_type[j] == 3]  # hinges (not the fingers,
            self.qpos_adr = model.jnt_qposadr[joints]                                  # which rest at a limit)
            self.lower, self.upper = model.jnt_range[joints].T
            self.dof_adr = model.jnt_dofadr[joints]
            robot = registry.robot(env.task.robot)
            hinge = [robot.joint_names.index(model.joint(j).name) for j in joints]
            self.max_speed = robot.joint_limits.velocity[hinge]

    def __call__(self) -> np.ndarray:
        env, cfg = self.env, self.cfg
        q, v = env.sim.qpos, env.sim.qvel
        out = np.zeros(env.num_envs, dtype=bool)
        if self.floating:
            x, y = q[:, 4], q[:, 5]
            tilt = np.arccos(np.clip(1.0 - 2.0 * (x * x + y * y), -1.0, 1.0))
            if cfg.max_tilt is not None:
                out |= tilt > cfg.max_tilt
            if cfg.min_height is not None:
                low = q[:, 2] < cfg.min_height
                if cfg.max_ground_speed is not None:
                    low &= np.linalg.norm(v[:, 0:3], axis=1) > cfg.max_ground_speed
                out |= low
            if cfg.geofence is not None:
                lo, hi = np.asarray(cfg.geofence[0]), np.asarray(cfg.geofence[1])
                out |= ((q[:, 0:3] < lo) | (q[:, 0:3] > hi)).any(axis=1)
            return out
        if cfg.joint_margin is not None:
            joints = q[:, self.qpos_adr]
            out |= ((joints < self.lower + cfg.joint_margin) | (joints > self.upper - cfg.joint_margin)).any(axis=1)
        if cfg.max_joint_speed is not None:
            out |= (np.abs(v[:, self.dof_adr]) > cfg.max_joint_speed * self.max_speed).any(axis=1)
        if cfg.max_contact_force is not None:
            for i in range(env.num_envs):
                out[i] |= self._contact_force(i) > cfg.max_contact_force
        return out

    def _contact_force(self, i: int) -> float:
        import mujoco

        data, model = self.env.sim.data_for(i), self.env.sim.models[i]
        force, worst = np.zeros(6), 0.0
        for k in range(data.ncon):
            contact = data.contact[k]
            pair = {int(contact.geom1), int(contact.geom2)}
            if pair & self.robot_geoms and pair & self.ground_geoms:
                mujoco.mj_contactForce(model, data, k, force)
                worst = max(worst, abs(float(force[0])))
        return worst


def _has_body(model: Any, name: str) -> bool:
    import mujoco

    return mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name) >= 0


# ------------------------------------------------------------------------------------- closed loop


def measured(env: Any) -> MeasuredBatch:
    """What the robots' drivers report of every env now (the deploy side's view; no privileged state)."""
    q, v = env.sim.qpos, env.sim.qvel
    floating = env.default_model.njnt and env.default_model.jnt_type[0] == 0  # mjJNT_FREE
    base = dict(base_pos=q[:, 0:3].copy(), base_quat=q[:, 3:7].copy(), base_lin_vel=v[:, 0:3].copy(),
                base_ang_vel=v[:, 3:6].copy()) if floating else {}
    return MeasuredBatch(env.joint_pos.cpu().numpy().astype(np.float64), env.joint_vel.cpu().numpy().astype(np.float64),
                         **base)


def robot_states(batch: MeasuredBatch, joints: Sequence[str]) -> list[RobotState]:
    states = []
    for i in range(len(batch.joint_pos)):
        base = {} if batch.base_pos is None else dict(
            base_position=batch.base_pos[i], base_orientation=batch.base_quat[i],
            base_linear_velocity=batch.base_lin_vel[i], base_angular_velocity=batch.base_ang_vel[i])
        states.append(RobotState(joint_position=dict(zip(joints, batch.joint_pos[i])),
                                 joint_velocity=dict(zip(joints, batch.joint_vel[i])), **base))
    return states


class SafeLoop:
    """The bundle's policy acting in ``num_envs`` envs of its task (with ``overrides``) through one safety layer
    per env at the control rate, with ``critic`` (a ``RiskCritic``) or the hard limits alone. ``run(episodes)``
    returns per-episode outcomes and, with ``record``, the transitions the critic is fitted on."""

    def __init__(self, bundle_path: str | os.PathLike, num_envs: int, seed: int, overrides: Sequence[str] = (),
                 play: bool = False, critic: RiskCritic | None = None, violation: ViolationConfig | None = None):
        self.loaded = load_policy(bundle_path)
        self.bundle = self.loaded.bundle
        self.env = sim.make_env(self.loaded.task, num_envs=num_envs, seed=seed, play=play,
                                config=self.loaded.task_config, overrides=list(overrides))
        self.policy = self.loaded.make_policy(self.env)
        robot = registry.robot(self.env.task.robot)
        self.joints = list(robot.joint_names)
        robot_config = robot.load_config(self.loaded.task_config["robot"])
        deploy = load_deploy_config(robot.name, task=self.loaded.task)
        cfg = safety_config(deploy, str(robot.deploy_config_file))
        cfg = dataclasses.replace(cfg, rate_hz=1.0 / self.env.control_dt)  # one output per control step here
        self.features = RiskFeatures(robot, robot_config, cfg.tcp_site)
        self.layers = [safety_layer(robot, robot_config, copy.deepcopy(cfg), critic) for _ in range(num_envs)]
        self.critic = critic
        self.anchored = self.env.task.action.relative or self.env.task.action.ik is not None
        self.violations = Violations(self.env, violation or ViolationConfig())

    def close(self) -> None:
        if hasattr(self.policy, "close"):
            self.policy.close()
        self.env.close()

    def run(self, episodes: int, record: bool = False, seed: int = 0) -> dict[str, Any]:
        """Every env's first episodes until ``episodes`` ended (quotas per env, as ``evaluate`` counts them).
        Per episode: violated, success, length, the share of its steps the critic engaged; with ``record``,
        per step: features of the state and of the command the safety layer ran (the policy's, before the
        clamps, or a recovery's or fallback's target), the violation after the step, done, whether counted."""
        env, n = self.env, self.env.num_envs
        quota = np.full(n, episodes // n) + (np.arange(n) < episodes % n)
        counted = np.zeros(n, dtype=int)
        violated, engaged_steps = np.zeros(n, dtype=bool), np.zeros(n, dtype=int)
        outcomes: list[dict[str, Any]] = []
        steps: dict[str, list[np.ndarray]] = {"features": [], "violation": [], "done": [], "active": []}
        obs, _ = env.reset(seed)
        for layer in self.layers:
            layer.restart()
        t = 0
        while (counted < quota).any():
            now = t * env.control_dt
            batch = measured(env)
            states = robot_states(batch, self.joints)
            executed: list[np.ndarray] = []

            def through_safety(ctrl: torch.Tensor) -> torch.Tensor:
                out = ctrl.cpu().numpy().astype(np.float64)
                for i, layer in enumerate(self.layers):
                    safe, _ = layer.filter(Command(out[i], now), Measurement(states[i], now), now)
                    if safe is not None:
                        out[i] = safe
                executed.append(np.stack([layer.executed for layer in self.layers]))
                return torch.as_tensor(out, dtype=torch.float32)

            judged: list[np.ndarray] = []
            with torch.inference_mode():
                action = self.policy(obs)
            obs, _, terminated, truncated, info = env.step(action, control_filter=through_safety,
                                                           before_reset=lambda: judged.append(self.violations()))
            recovering = np.array([layer.recovering_since is not None for layer in self.layers])
            if self.anchored and recovering.any():  # the policy node's targets follow the held joints
                ids = torch.as_tensor(np.flatnonzero(recovering))
                env.ctrl_target[ids] = env.joint_pos[ids]
            engaged_steps += recovering
            bad = judged[0]
            done = info["done"].cpu().numpy()
            if record:
                steps["features"].append(self.features(batch, executed[0]))
                steps["violation"].append(bad.copy())
                steps["done"].append(done.copy())
                steps["active"].append(counted < quota)
            violated |= bad
            for i in np.flatnonzero(done):
                if counted[i] < quota[i]:
                    length = int(info["episode"]["length"][i])
                    outcomes.append({"violated": bool(violated[i]), "success": float(info["episode"]["success"][i]),
                                     "length": length, "engaged": float(engaged_steps[i]) / max(1, length)})
                counted[i] += 1
                violated[i], engaged_steps[i] = False, 0
                self.layers[i].restart()
            t += 1
        result: dict[str, Any] = {"episodes": outcomes}
        if record:
            result["steps"] = {key: np.stack(values) for key, values in steps.items()}  # [T, N, ...]
        return result


def transitions(rollouts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """(x, c, x', terminal) of every counted step of every rollout: x' is the same env's next step; a step after
    which the episode ended (done, or the rollout stopped) has no successor."""
    out: dict[str, list[np.ndarray]] = {"x": [], "violation": [], "x_next": [], "terminal": []}
    for steps in rollouts:
        features, violation, done, active = steps["features"], steps["violation"], steps["done"], steps["active"]
        last = len(features) - 1
        keep = active[:last]
        out["x"].append(features[:last][keep])
        out["violation"].append(violation[:last][keep])
        out["x_next"].append(features[1:][keep])
        out["terminal"].append((done[:last] | violation[:last])[keep])
    return {key: np.concatenate(values) for key, values in out.items()}


def write_critic_onnx(net: RiskNetwork, path: Path) -> None:
    example = torch.zeros(2, net.mean.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy (TorchScript-based) exporter warns it is legacy
        torch.onnx.export(export_module(net), (example,), str(path), dynamo=False, input_names=[CRITIC_INPUT],
                          output_names=[CRITIC_OUTPUT], opset_version=ONNX_OPSET,
                          dynamic_axes={CRITIC_INPUT: {0: "batch"}, CRITIC_OUTPUT: {0: "batch"}})


# --------------------------------------------------------------------------------------------- train


CALIBRATION_ROUNDS = 6  # epsilons tried at most, each but the last checked in the closed loop on nominal episodes

MAX_EPSILON = 0.98


def recorded_risk(net: RiskNetwork, steps: dict[str, np.ndarray]) -> np.ndarray:
    """The critic's risk [T, N] of every recorded step of a rollout."""
    features = steps["features"]
    with torch.no_grad():
        risk = net(torch.as_tensor(features.reshape(-1, features.shape[-1])))[:, 0].numpy()
    return risk.reshape(features.shape[:2])


def engaged_share(risk: np.ndarray, steps: dict[str, np.ndarray], epsilon: float, hold_steps: int) -> float:
    """The share of a recording's counted steps a critic with ``epsilon`` engages on, engaging as the safety
    layer does (on a risk above epsilon, for at least ``hold_steps`` and until it is below again), on the
    recorded states (a recovery's effect on them is not simulated)."""
    since = np.full(risk.shape[1], -1)  # steps since the engagement began; -1: not engaged
    engaged = 0
    for t in range(len(risk)):
        risky = risk[t] > epsilon
        since[risky & (since < 0)] = 0
        since[~risky & (since >= hold_steps)] = -1
        on = since >= 0
        engaged += int((on & steps["active"][t]).sum())
        since[on] += 1
        since[steps["done"][t]] = -1
    return engaged / max(1, int(steps["active"].sum()))


def calibrate_epsilon(risk: np.ndarray, steps: dict[str, np.ndarray], budget: float, hold_steps: int) -> float:
    """The lowest epsilon (most violations caught) whose engagements on the recorded nominal steps stay within
    ``budget`` (a share of steps), among the quantiles of their risk."""
    counted = risk[steps["active"]]
    for epsilon in np.quantile(counted, 1.0 - budget * np.geomspace(1.0, 0.01, 40)):
        if engaged_share(risk, steps, float(epsilon), hold_steps) <= budget:
            break
    return float(np.clip(epsilon, 0.02, MAX_EPSILON))


def next_epsilon(epsilon: float, offline: float, overshoot: float) -> float:
    """The next epsilon to check after ``epsilon`` engaged ``overshoot`` times the budget in the closed loop: the
    offline choice for the budget lowered by that much, where it rises (by a tenth at least); where the closed loop
    engages in states the recording never saw it stops rising, and epsilon rises by the overshoot itself (at least a
    fifth), never further: a jump past every checked value would pass a critic that hardly engages."""
    if offline > 1.1 * epsilon:
        return offline
    return min(MAX_EPSILON, epsilon * max(1.2, overshoot))


def engaged_rate(episodes: Sequence[dict[str, Any]]) -> float:
    """The share of control steps of ``SafeLoop`` episodes on which the critic engaged."""
    return float(sum(e["engaged"] * e["length"] for e in episodes) / max(1, sum(e["length"] for e in episodes)))




def rollout_overrides(cfg: SafetyCriticConfig) -> list[str]:
    """Task-config overrides of every rollout, disturbed or nominal."""
    return [*cfg.task_overrides, *([f"sim.episode_length_s={cfg.episode_length_s}"] if cfg.episode_length_s else [])]


def collect(bundle: str | os.PathLike, cfg: SafetyCriticConfig, overrides: Sequence[str], seed: int,
            episodes: int, critic: RiskCritic | None = None) -> dict[str, Any]:
    loop = SafeLoop(bundle, min(cfg.num_envs, episodes), seed, [*overrides, *rollout_overrides(cfg)],
                    critic=critic, violation=cfg.violation)
    try:
        return loop.run(episodes, record=True, seed=seed)
    finally:
        loop.close()


EXPLORATION = 10.0  # the first round's critic engages on this many times the budget in the second round's rollouts


def train_safety_critic(task: str, policy: str | os.PathLike, out: str | os.PathLike, overrides: Sequence[str] = (),
                        disturbances: Sequence[str] = (), seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Fit ``policy``'s safety critic and write the bundle with it to ``out`` (a copy of ``policy``); plots and
    TensorBoard scalars go to ``<out>.critic-training/``. Two rounds of rollouts under the disturbance suite and
    on nominal episodes: the first with the hard limits alone; the second with the first round's critic
    engaging the recovery often (``EXPLORATION`` times the false-trigger budget), so the final critic, fitted on
    both, knows the risk of the recovery's commands as well as of the policy's (``judges_recovery``). Epsilon is
    then chosen for the false-trigger budget and checked in the closed loop on nominal episodes."""
    from torch.utils.tensorboard import SummaryWriter

    cfg = load_safety_config(task, overrides)
    source = load_bundle(policy)
    if source.task != task:
        raise ValueError(f"bundle {policy} was trained for task {source.task!r}, not {task!r}")
    robot = registry.robot(source.robot)
    torch.set_num_threads(cfg.train.torch_threads or available_cores())
    out, report_dir = Path(out), Path(f"{Path(out)}.critic-training")
    report_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(report_dir))
    start = time.perf_counter()
    suite = disturbance_suite(cfg, disturbances)
    features = RiskFeatures(robot, robot.load_config(source.metadata["task_config"]["robot"]), _tcp_site(source))
    hold_steps = math.ceil(RECOVERY_MIN_S * source.metadata["control_rate_hz"] - 1e-9)
    checks: list[dict[str, float]] = []
    record: dict[str, Any] = {}

    def seal(net: RiskNetwork, epsilon: float, judges_recovery: bool) -> None:
        learned = {} if recovery is None else {"recovery_policy": {
            "file": RECOVERY_FILE, "command": [float(v) for v in cfg.recovery_policy.command], "training": recovery[1]}}
        add_critic(out, lambda path: write_critic_onnx(net, path), {
            "features": features.names, "epsilon": epsilon, "gamma": cfg.gamma, "recovery": RECOVERIES[robot.kind],
            **learned, "judges_recovery": judges_recovery, "violation": to_dict(cfg.violation), "training": {
                "disturbances": suite, "false_trigger_budget": cfg.false_trigger_budget, "steps": cfg.train.steps,
                "seed": seed, **record, "calibration": checks, "wall_s": round(time.perf_counter() - start, 1)}},
            recovery=None if recovery is None else recovery[0])

    def rollouts(round_: int, critic: RiskCritic | None) -> tuple[list[dict[str, np.ndarray]], list[dict]]:
        """The suite's rollouts and the nominal ones (last) of one round, and the disturbed episodes."""
        steps, episodes = [], []
        for k, (name, shifts) in enumerate(suite.items()):
            result = collect(policy, cfg, shifts, seed + 1000 * k + 500_000 * round_, cfg.episodes_per_disturbance,
                             critic)
            steps.append(result["steps"])
            episodes += result["episodes"]
            rate = float(np.mean([e["violated"] for e in result["episodes"]]))
            writer.add_scalar(f"rollouts/violation_rate/{name}", rate, round_)
            if progress:
                print(f"safety critic, round {round_ + 1}: {name}: violations in {rate:.2f} of "
                      f"{len(result['episodes'])} episodes")
        steps.append(collect(policy, cfg, [], seed + 99_991 + 500_000 * round_, cfg.nominal_episodes, critic)["steps"])
        return steps, episodes

    recovery = train_recovery(task, policy, cfg.recovery_policy, report_dir, seed, progress) \
        if cfg.recovery_policy.train else None
    first, disturbed = rollouts(0, None)
    net = fit_critic(transitions(first), cfg.gamma, cfg.train, seed, writer, progress)
    if out.resolve() != Path(policy).resolve():
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(policy, out)
    nominal, data = first[-1], transitions(first)
    if cfg.recovery_round:
        explore = calibrate_epsilon(recorded_risk(net, nominal), nominal, EXPLORATION * cfg.false_trigger_budget,
                                    hold_steps)
        seal(net, explore, judges_recovery=False)
        second, _ = rollouts(1, RiskCritic(out, load_bundle(out).metadata, features))
        data = transitions(first + second)
        record["exploration_epsilon"] = explore
        net = fit_critic(data, cfg.gamma, cfg.train, seed + 1, writer, progress)
    record.update(transitions=int(len(data["x"])), violations=int(data["violation"].sum()))
    nominal_risk, budget, epsilon, overshoot = recorded_risk(net, nominal), cfg.false_trigger_budget, 0.0, 1.0
    for check in range(CALIBRATION_ROUNDS):  # the offline choice, checked in the closed loop (a recovery moves
        offline = calibrate_epsilon(nominal_risk, nominal, budget, hold_steps)  # the robot off the recorded states)
        epsilon = next_epsilon(epsilon, offline, overshoot)
        seal(net, epsilon, judges_recovery=cfg.recovery_round)
        if check == CALIBRATION_ROUNDS - 1:
            break
        loop = SafeLoop(out, min(cfg.num_envs, cfg.nominal_episodes), seed + 7 + check, rollout_overrides(cfg),
                        critic=RiskCritic(out, load_bundle(out).metadata, features), violation=cfg.violation)
        try:
            engaged = engaged_rate(loop.run(cfg.nominal_episodes, seed=seed + 7 + check)["episodes"])
        finally:
            loop.close()
        checks.append({"epsilon": epsilon, "engaged": engaged})
        writer.add_scalar("calibration/engaged_share", engaged, check)
        if progress:
            print(f"safety critic: epsilon {epsilon:.3f} engages on {engaged:.4f} of nominal control steps "
                  f"(budget {cfg.false_trigger_budget})")
        if engaged <= cfg.false_trigger_budget:
            break
        overshoot = engaged / cfg.false_trigger_budget
        budget /= overshoot
    seal(net, epsilon, judges_recovery=cfg.recovery_round)  # with the last check in its record
    plots = plot_critic(net, first, epsilon, 1.0 / source.metadata["control_rate_hz"], report_dir)
    writer.close()
    return {"task": task, "bundle": str(out), "epsilon": epsilon, **record,
            "violation_rate_disturbed": float(np.mean([e["violated"] for e in disturbed])),
            "wall_s": round(time.perf_counter() - start, 1), "plots": plots}


def train_recovery(task: str, policy: str | os.PathLike, cfg: RecoveryPolicyConfig, report_dir: Path, seed: int,
                   progress: bool) -> tuple[Path, dict[str, Any]]:
    """Fine-tune ``policy`` into its recovery policy (a PPO run under ``report_dir/recovery``, exported beside it);
    its graph, which must read and write what the policy does, and a record of its training."""
    from robostack.workflows.export import export_bundle
    from robostack.workflows.train import train

    source = load_bundle(policy)
    if source.metadata.get("algo") != "ppo":
        raise ValueError(f"recovery_policy.train: the recovery is fine-tuned from a ppo policy; {policy} is "
                         f"{source.metadata.get('algo')!r} (set recovery_policy.train: false)")
    if len(cfg.command) != int(source.metadata.get("command_dim", 0)):
        raise ValueError(f"recovery_policy.command has {len(cfg.command)} values; task {task}'s command "
                         f"{source.metadata.get('command_dim', 0)}")
    overrides = [*cfg.overrides, f"init={Path(policy).resolve()}", "eval_episodes=0"]
    summary = train(task, overrides=overrides, seed=seed, run_root=str(report_dir / "recovery"), progress=progress)
    bundle_dir = export_bundle(summary["run_dir"], report_dir / "recovery-bundle")
    differ = contract_differences(source.metadata, load_bundle(bundle_dir).metadata)
    if differ:
        raise ValueError(f"the recovery policy's {', '.join(differ)} differ from {policy}'s: its overrides may change "
                         "the task's observations or actions, not only its conditions")
    return Path(bundle_dir) / ONNX_FILE, {"run_dir": summary["run_dir"], "overrides": overrides,
                                              "iterations": summary["iterations"], "env_steps": summary["env_steps"],
                                              "wall_s": summary["wall_s"]}


def contract_differences(policy: dict[str, Any], recovery: dict[str, Any]) -> list[str]:
    """The parts of the policy's contract (``robostack.bundle.format.contract``: observation, action map, joints,
    gains, rate, ...) that a recovery trained from it changed: it runs in the policy's place, so it must read and
    write what the policy does. The format version and the kind (absent from older bundles) may differ."""
    ours, theirs = contract(policy), contract(recovery)
    return [key for key in ours if key not in ("format_version", "kind") and theirs.get(key) != ours[key]]


def _tcp_site(bundle: Any) -> str | None:
    robot = registry.robot(bundle.robot)
    cfg = safety_config(load_deploy_config(robot.name, task=bundle.task), str(robot.deploy_config_file))
    return cfg.tcp_site


def plot_critic(net: RiskNetwork, rollouts: Sequence[dict[str, np.ndarray]], epsilon: float, control_dt: float,
                out: Path) -> list[str]:
    """Mean risk against the time left before a violation, and the offline trade-off as epsilon varies: the share
    of violating episodes the critic flagged at least 0.1 s ahead against the share of nominal steps flagged."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    horizon = int(round(1.0 / control_dt))
    before, flagged_ahead, nominal = [], [], rollouts[-1]
    thresholds = np.linspace(0.02, 0.98, 49)
    for steps in rollouts[:-1]:
        risk = recorded_risk(net, steps)
        ongoing = np.zeros_like(steps["violation"])  # a violation that went on from the step before
        ongoing[1:] = steps["violation"][:-1] & ~steps["done"][:-1]
        for t, i in zip(*np.nonzero(steps["violation"] & ~ongoing & steps["active"])):
            window = risk[max(0, t - horizon):t + 1, i][::-1]
            before.append(np.pad(window, (0, horizon + 1 - len(window)), constant_values=np.nan))
            ahead = window[max(1, int(round(0.1 / control_dt))):]
            flagged_ahead.append([bool((ahead > e).any()) for e in thresholds])
    nominal_risk = recorded_risk(net, nominal)[nominal["active"]]
    fig = Figure(figsize=(11, 4.5), tight_layout=True)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    if before:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a column no violation reached back to: NaN, as it is
            ax.plot(np.arange(horizon + 1) * control_dt, np.nanmean(np.array(before), axis=0))
    ax.axhline(epsilon, color="r", ls="--", label=f"epsilon {epsilon:.2f}")
    ax.set_xlabel("s before the violation")
    ax.set_ylabel("mean Q_risk of the policy's command")
    ax.invert_xaxis()
    ax.legend()
    ax = fig.add_subplot(1, 2, 2)
    if flagged_ahead:
        ax.plot([float((nominal_risk > e).mean()) for e in thresholds], np.mean(flagged_ahead, axis=0), marker=".")
    ax.set_xlabel("nominal control steps flagged (false triggers)")
    ax.set_ylabel("violations flagged >= 0.1 s ahead")
    ax.set_xscale("symlog", linthresh=1e-3)
    path = out / "critic.png"
    fig.savefig(path, dpi=100)
    return [str(path)]


# ------------------------------------------------------------------------------------------- bench


SWEEP = (0.25, 0.5, 2.0, 4.0)  # ``--sweep``: the critic's epsilon times these, beside its own


def bench_safety(task: str, policy: str | os.PathLike | None = None, episodes: int | None = None,
                 disturbances: Sequence[str] = (), seed: int = 0, overrides: Sequence[str] = (),
                 sweep_plot: str | os.PathLike | None = None) -> dict[str, Any]:
    """``robostack bench safety``: the bundle (default: the shipped one, ``bundles/<task>``, with its critic) on
    the disturbance suite and on nominal episodes (play and training randomization), with the hard limits alone
    and with the critic; and the critic's cost per tick in the node's code path. With ``sweep_plot``, the same at
    other epsilons (``SWEEP``), and their violation-versus-success trade-off plotted there."""
    cfg = load_safety_config(task, overrides)
    path = Path(policy) if policy is not None else SHIPPED_BUNDLES / task
    bundle = load_bundle(path)
    robot = registry.robot(bundle.robot)
    critic = bundle_critic(path, bundle.metadata, robot, robot.load_config(bundle.metadata["task_config"]["robot"]),
                           _tcp_site(bundle))
    if critic is None:
        raise ValueError(f"bundle {path} has no safety critic: robostack train {task} --algo safety-critic "
                         f"--policy {path} --out DIR")
    episodes = episodes or cfg.episodes_per_disturbance
    start = time.perf_counter()
    suite = disturbance_suite(cfg, disturbances)
    per_set = max(1, math.ceil(episodes / len(suite)))

    def run(shifts: Sequence[str], play: bool, judge: RiskCritic | None, count: int, run_seed: int) -> list[dict]:
        loop = SafeLoop(path, min(cfg.num_envs, count), run_seed, [*shifts, *rollout_overrides(cfg)], play=play,
                        critic=judge, violation=cfg.violation)
        try:
            return loop.run(count, seed=run_seed)["episodes"]
        finally:
            loop.close()

    def arm(judge: RiskCritic | None) -> dict[str, Any]:
        """Violations per disturbance, and the nominal episodes (play and training randomization)."""
        violated = {name: sum(e["violated"] for e in run(shifts, False, judge, per_set, seed + 7919 * (k + 1)))
                    for k, (name, shifts) in enumerate(suite.items())}
        nominal = [e for play in (True, False) for e in run([], play, judge, episodes, seed + 104_729)]
        return {"violations": sum(violated.values()), "by_disturbance": violated, "nominal": nominal,
                "success": float(np.mean([e["success"] for e in nominal])), "engaged": engaged_rate(nominal)}

    hard, judged = arm(None), arm(critic)
    reduction = (lambda arm_: 1.0 - arm_["violations"] / hard["violations"] if hard["violations"] else None)
    result = {
        "task": task, "bundle": str(path), "episodes": per_set * len(suite), "disturbances": suite,
        "violations_hard_only": hard["violations"], "violations_with_critic": judged["violations"],
        "violation_reduction": reduction(judged),
        "violations_by_disturbance": {name: {"hard_only": hard["by_disturbance"][name],
                                             "with_critic": judged["by_disturbance"][name]} for name in suite},
        "success_nominal_hard_only": hard["success"], "success_nominal_with_critic": judged["success"],
        "false_trigger_rate": judged["engaged"], "nominal_episodes": len(judged["nominal"]), "epsilon": critic.epsilon,
        "critic_p99_ms": critic_tick_ms(path, critic, seed),
    }
    if sweep_plot is not None:
        points = [{"epsilon": critic.epsilon, "violation_reduction": reduction(judged), "success_nominal":
                   judged["success"], "false_trigger_rate": judged["engaged"]}]
        own = critic.epsilon
        for factor in SWEEP:
            critic.epsilon = float(np.clip(own * factor, 1e-3, 0.999))
            other = arm(critic)
            points.append({"epsilon": critic.epsilon, "violation_reduction": reduction(other),
                           "success_nominal": other["success"], "false_trigger_rate": other["engaged"]})
        critic.epsilon = own
        result["sweep"] = sorted(points, key=lambda point: point["epsilon"])
        result["sweep_plot"] = plot_tradeoff(task, result["sweep"], hard["success"], own, Path(sweep_plot))
    result["wall_s"] = round(time.perf_counter() - start, 1)
    result["machine"] = {"cores": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2)}
    return result


def plot_tradeoff(task: str, points: Sequence[dict[str, Any]], success_hard: float, epsilon: float,
                  path: Path) -> str:
    """Violations avoided against nominal success (and false triggers) as epsilon varies, closed loop."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), tight_layout=True)
    FigureCanvasAgg(fig)
    for i, (key, label) in enumerate((("success_nominal", "nominal success"),
                                      ("false_trigger_rate", "nominal control steps engaged (false triggers)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.plot([p[key] for p in points], [p["violation_reduction"] or 0.0 for p in points], marker="o")
        for p in points:
            ax.annotate(f"{p['epsilon']:.3f}" + (" (its own)" if p["epsilon"] == epsilon else ""),
                        (p[key], p["violation_reduction"] or 0.0), fontsize=8)
        if key == "success_nominal":
            ax.axvline(success_hard, color="gray", ls="--", label="hard limits alone")
            ax.legend()
        ax.set_xlabel(label)
        ax.set_ylabel("violation reduction (1 - with / without)")
    fig.suptitle(f"{task}: the critic's epsilon, closed loop")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return str(path)


def critic_tick_ms(path: Path, critic: RiskCritic, seed: int, ticks: int = 2000) -> float:
    """p99 of the critic plus the recovery per tick as the safety layer runs them on an engaging tick (the costlier
    path): the command's risk (features of a measured state and the command, the graph), the recovery's target
    and its risk."""
    loop = SafeLoop(path, 1, seed, play=True, critic=critic)
    try:
        state = robot_states(measured(loop.env), loop.joints)[0]
        layer = loop.layers[0]
        command = loop.env.ctrl[0].cpu().numpy().astype(np.float64)
        layer.filter(Command(command, 0.0), Measurement(state, 0.0), 0.0)
        times = []
        for k in range(ticks):
            start = time.perf_counter_ns()
            judge = critic.judge(state)
            judge(command)
            layer.start_recovery(state, 0.0, command)
            judge(layer.recovery_target(state, 0.0)[0])
            times.append(time.perf_counter_ns() - start)
    finally:
        loop.close()
    return round(float(np.percentile(np.array(times) * 1e-6, 99)), 4)
