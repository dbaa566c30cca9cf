"""The safety reflex layer: the last code between a policy (or a human) and the robot's driver.

Every safety period (``rate_hz``), and whenever a command arrives, ``SafetyLayer.filter`` turns the latest
command and measured state into the one command the driver gets, and lists what it changed and why. Pure
logic, no ROS: ``safety_node`` wires it to topics, and tests drive it with plain numbers and MuJoCo.

It intervenes in two ways:

* clamps reshape a command that is acceptable in kind: joint position bounds (URDF limits minus a margin),
  a rate limit on position targets (velocity limit x the time since the previous output, at most one
  safety period: commands that arrive faster than the safety rate move no faster), an effort bound where
  the config sets one (|kp (target - measured) - kd measured velocity| <= effort limit: the PD torque the
  driver will apply),
  motor thrusts within [0, max], and for an arm a TCP workspace box (a target whose TCP would leave the
  box is not taken: the previous target is held);
* fallbacks replace it: a missing, stale, non-finite or wrong-length command, a stale or invalid state, a
  robot outside its envelope (quadruped tilt and height, drone attitude and geofence), a safety critic's
  veto, or the e-stop. Each robot kind has its own fallback (arm: hold the measured position; quadruped:
  glide to a lying pose; drone: hover, then land), and its output passes the same clamps.

Envelope violations, the e-stop and the fallback's cutting a drone's motors latch: the fallback stays until
``reset``, which is refused while the state is stale. The other causes last only as long as they do, and
the clamps (the rate limit above all) make the return to the policy's commands smooth. Before the first
command there is no control to lose: a quadruped holds the pose it was found in rather than lying down.

A learned safety critic (``robostack.real.critic.RiskCritic``, from the policy's bundle; none by default) judges
every command in the measured state before the clamps: where its risk (the discounted probability of a
violation ahead) is above its ``epsilon`` and the recovery's own risk is lower, the layer runs the recovery
instead for at least ``RECOVERY_MIN_S`` and until the command's risk is below ``epsilon`` again, then passes
commands again: the recovery policy trained with the critic where the bundle has one (``critic.recovery_policy``),
else the kind's scripted recovery (arm: hold where it was; quadruped: stand on the home pose; drone: level and
hold its position), which also takes over where the learned one cannot act. A recovery is not a fallback:
nothing latches, and the clamps apply to it as to any command. A critic that cannot judge (it raises) counts as a
high risk: the layer recovers and the override's reason says why.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import mujoco
import numpy as np

from robostack.config import ConfigError, from_dict
from robostack.real.deploy_config import DeployConfig
from robostack.real.robot_state import RobotState
from robostack.sim.joint_limits import WINDOWS, JointTargetLimits, TargetBounds, limit_targets
from robostack.specs import ROBOT_KINDS, RobotSpec

# ------------------------------------------------------------------------------------------ config


@dataclass
class Box:
    """An axis-aligned box (m)."""

    min: tuple[float, float, float]
    max: tuple[float, float, float]


@dataclass
class ArmLimits:
    workspace: Box  # m, the TCP's box in the robot's base frame
    tcp_site: str = "ee"  # MuJoCo site of the TCP


@dataclass
class QuadrupedLimits:
    max_tilt: float  # rad between the base's up axis and the world's
    height: tuple[float, float]  # m, base height envelope (world frame)
    stand_down_pose: tuple[float, ...]  # one leg's joint targets when lying (the same for every leg)
    stand_down_s: float  # s the targets take to glide from the standing pose to the lying pose
    support_s: float  # s the targets take first, from where they were to the standing pose (feet under the body)


@dataclass
class DroneLimits:
    max_tilt: float  # rad between the body's up axis and the world's
    geofence: Box  # m, world frame; its z bounds are the altitude limits
    hover_s: float  # s the fallback holds position before it lands
    descent_speed: float  # m/s while landing
    landed_height: float  # m: at or below this the drone is on the ground and the fallback cuts the motors
    blind_thrust: float  # x hover thrust on every motor while the state is stale: an open-loop slow descent
    blind_s: float  # s of blind descent before the motors are cut


@dataclass
class SafetyConfig:
    """The ``safety:`` section of ``configs/deploy/<robot>.yaml``: common keys and one robot-kind section."""

    rate_hz: float  # the reflex loop
    command_timeout_s: float  # no policy or teleop command for this long: fall back
    state_timeout_s: float  # from the deploy config's top level: older state is stale
    joints: JointTargetLimits | None = None  # jointed robots (arm, quadruped)
    arm: ArmLimits | None = None
    quadruped: QuadrupedLimits | None = None
    drone: DroneLimits | None = None

    @property
    def tcp_site(self) -> str | None:
        """The arm's TCP site (what its workspace box and its critic's features are about); None for others."""
        return self.arm.tcp_site if self.arm is not None else None


POSITIVE_KEYS = ("rate_hz", "command_timeout_s", "state_timeout_s", "joints.velocity_scale", "joints.effort_scale",
                 "joints.prismatic_velocity_scale", "quadruped.stand_down_s", "quadruped.support_s", "drone.descent_speed",
                 "drone.landed_height")


def safety_config(deploy: DeployConfig, source: str) -> SafetyConfig:
    """The checked ``safety:`` section of a deploy config read from ``source`` (named in every error)."""
    where = f"{source} (section safety)"
    if "state_timeout_s" in deploy.safety:
        raise ConfigError(f"{where}: 'state_timeout_s' belongs at the top level of the file",
                          key="safety.state_timeout_s", source=source)
    cfg = from_dict(SafetyConfig, {**deploy.safety, "state_timeout_s": deploy.state_timeout_s}, where)
    kinds = [kind for kind in ROBOT_KINDS if getattr(cfg, kind) is not None]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: give exactly one of {', '.join(map(repr, ROBOT_KINDS))} (got {kinds or 'none'})",
                          source=source)
    if kinds[0] != "drone" and cfg.joints is None:
        raise ConfigError(f"{where}: missing required key 'joints' (an {kinds[0]} has joint limits)",
                          key="safety.joints", source=source)
    for key in POSITIVE_KEYS:
        section, _, name = key.rpartition(".")
        holder = getattr(cfg, section) if section else cfg
        value = None if holder is None else getattr(holder, name)
        if value is not None and not value > 0:
            raise ConfigError(f"{where}: '{key}' must be > 0, got {value}", key=f"safety.{key}",
                              source=source)
    for key in ("arm.workspace", "drone.geofence"):
        section, _, name = key.partition(".")
        box = getattr(getattr(cfg, section), name) if getattr(cfg, section) is not None else None
        if box is not None and not all(low < high for low, high in zip(box.min, box.max)):
            raise ConfigError(f"{where}: '{key}' needs min < max on every axis, got {box}", key=f"safety.{key}",
                              source=source)
    return cfg


# ------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class Command:
    """Actuator controls as the policy or teleop sent them, in driver order, and when they arrived."""

    values: Sequence[float]
    received: float  # monotonic s


@dataclass(frozen=True)
class Measurement:
    """A measured state and its age's origin, for the watchdog."""

    state: RobotState
    received: float  # monotonic s when its oldest part arrived


RECOVERY_MIN_S = 0.2  # a recovery runs at least this long: a risk hovering at epsilon does not chatter


class SafetyCritic(Protocol):
    """A learned judge of a command in a state: the risk of a violation ahead, in [0, 1]; above ``epsilon`` the
    layer recovers (``robostack.real.critic.RiskCritic``)."""

    epsilon: float
    judges_recovery: bool  # its risk of the recovery's commands is learned too: recover only where it is lower

    def judge(self, state: RobotState) -> Callable[[np.ndarray], float]:
        """The risk of commands in ``state`` (what depends on the state alone computed once)."""

    def new_recovery(self) -> LearnedRecovery | None:
        """A recovery policy trained with the critic, for one robot (None: the kind's scripted recovery)."""


class LearnedRecovery(Protocol):
    """A trained recovery (``robostack.real.recovery_policy.PolicyRecovery``): ``begin`` where a recovery starts (from the
    command it takes over), then ``target`` on every tick of it."""

    name: str

    def begin(self, state: RobotState, now: float, command: np.ndarray) -> None: ...

    def target(self, state: RobotState, now: float) -> np.ndarray: ...


def tilt(quat_wxyz: np.ndarray) -> float:
    """Angle (rad) between the body's up axis and the world's."""
    _, x, y, _ = quat_wxyz / np.linalg.norm(quat_wxyz)
    return math.acos(float(np.clip(1.0 - 2.0 * (x * x + y * y), -1.0, 1.0)))


def rotation_matrix(quat_wxyz: np.ndarray) -> np.ndarray:
    """The rotation matrix (body to world) of a w, x, y, z quaternion, normalized first."""
    matrix = np.zeros(9)
    mujoco.mju_quat2Mat(matrix, quat_wxyz / np.linalg.norm(quat_wxyz))
    return matrix.reshape(3, 3)


def _base_problem(state: RobotState, fields: Sequence[str]) -> str | None:
    """Why the floating base's ``fields`` of ``state`` cannot be used, or None."""
    bad = [name for name in fields if getattr(state, name) is None or not np.isfinite(getattr(state, name)).all()]
    if bad:
        return f"{', '.join(bad)} missing or not finite"
    if abs(np.linalg.norm(state.base_orientation) - 1.0) > 0.1:
        return "base_orientation is not a unit quaternion"
    return None


def _box_violations(what: str, point: np.ndarray, box: Box, axis_notes: Sequence[str] = ("", "", "")) -> list[str]:
    out = []
    for axis, value, low, high, note in zip("xyz", point, box.min, box.max, axis_notes):
        if value < low:
            out.append(f"{what} {axis}={value:.3f} m below {low}{note}")
        elif value > high:
            out.append(f"{what} {axis}={value:.3f} m above {high}{note}")
    return out


# ------------------------------------------------------------------------------------------ layers

LANDED = "landed by the fallback"  # latched: a drone on the ground stays there until reset
STOOD_DOWN = "stood down by the fallback"  # latched: a quadruped lying down stays there until reset


class SafetyLayer(ABC):
    """The limits, watchdogs, e-stop latch and fallback common to every robot kind; subclasses say what a
    valid state is, what the envelope and clamps are and what the fallback does."""

    def __init__(self, robot: RobotSpec, robot_config: Any, cfg: SafetyConfig, critic: SafetyCritic | None = None):
        self.spec, self.robot, self.cfg, self.critic = robot, robot.name, cfg, critic
        self.risk = 0.0  # the critic's latest risk of the command (0 without a critic)
        self.critic_problem = ""  # why the critic could not judge on this tick (its risk then counts as high)
        self.recovering_since: float | None = None  # when the current recovery began
        self.executed: np.ndarray | None = None  # the command the layer ran last: the policy's, or the recovery's
        self.learned_recovery = critic.new_recovery() if critic is not None else None
        self.recovery_problem = ""  # why the learned recovery could not act (the scripted one ran instead)
        # The robot's model as configured (actuators in driver order): its limits, masses and geometry
        self.robot_config = robot_config
        self.model = robot.build_model(robot_config)
        self.num_actuators = self.model.nu
        self.period = 1.0 / cfg.rate_hz
        self.estopped = False
        self.tripped: str | None = None  # why the fallback is latched besides the e-stop
        self.fallback_since: float | None = None  # monotonic s; None while commands pass
        self.fallback_phase = ""  # what the fallback does now ("hold", "land", ...); empty while commands pass
        self.last_output: np.ndarray | None = None
        self.last_output_at = -math.inf  # monotonic s
        self.output_interval = self.period  # s since the previous output, at most one period (the rate limit's)
        self.commanded = False  # whether any command has passed yet
        self.commands_stopped = False  # shutting down: no command is taken any more, the fallback finishes
        self._measurement: Measurement | None = None  # the last valid one

    # ----- e-stop and reset
    @property
    def latches(self) -> list[str]:
        """What holds the fallback until ``reset``."""
        return ["e-stop"] * self.estopped + [self.tripped] * (self.tripped is not None)

    @property
    def fallback_complete(self) -> bool:
        """Whether the fallback has done what it does and now only keeps the robot there (arm: holding;
        quadruped: lying; drone: motors off on the ground): a deployment whose policy died may stop then."""
        return False

    def trigger_estop(self) -> None:
        self.estopped = True

    def stop_commands(self) -> None:
        """Take no command from now on: the fallback brings the robot to rest (a deployment that shuts down)."""
        self.commands_stopped = True

    def state_age(self, now: float) -> float:
        return math.inf if self._measurement is None else now - self._measurement.received

    def restart(self) -> None:
        """Forget the commands of the last episode: a robot put back by an operator (a simulated episode's reset)
        takes its next command from where it now is, not by the rate limit from where its targets were."""
        self.last_output, self.fallback_since, self.fallback_phase = None, None, ""
        self.recovering_since, self.commanded = None, False
        self.estopped, self.tripped = False, None

    def reset(self, now: float) -> tuple[bool, str]:
        """Clear the e-stop and any latched fallback, unless the state is stale: with no fresh state there
        is no telling whether the robot is fit to take commands again."""
        age = self.state_age(now)
        if age > self.cfg.state_timeout_s:
            return False, f"reset refused: the state is stale ({self._age_text(age)})"
        cleared = self.latches
        self.estopped, self.tripped = False, None
        return True, f"reset: cleared {', '.join(cleared)}" if cleared else "reset: nothing was latched"

    def _age_text(self, age: float) -> str:
        if math.isinf(age):
            return "never received"
        return f"{age * 1e3:.0f} ms old, limit {self.cfg.state_timeout_s * 1e3:.0f} ms"

    # ----- the reflex
    def filter(self, command: Command | None, measurement: Measurement | None, now: float
               ) -> tuple[np.ndarray | None, list[str]]:
        """The command for the driver now (None before the first valid state: nothing is safe to hold) and
        the reasons for every change made to it, fallback first."""
        reasons: list[str] = []
        self.output_interval = min(self.period, max(0.0, now - self.last_output_at))
        if measurement is not None:
            problem = self._state_problem(measurement.state)
            if problem:
                reasons.append(f"invalid state: {problem}")
            else:
                self._measurement = measurement
        if self._measurement is None:
            return None, reasons
        state = self._measurement.state
        state_fresh = self.state_age(now) <= self.cfg.state_timeout_s
        if not state_fresh:
            reasons.append(f"state stale: {self._age_text(self.state_age(now))}")
        else:
            violations = self._envelope(state)
            if violations and self.tripped is None:
                self.tripped = "; ".join(violations)
        reasons += [f"{latch} (latched until reset)" for latch in self.latches]
        values, problem = ((None, "shutting down: no command is taken") if self.commands_stopped
                           else self._check_command(command, now))
        if problem:
            reasons.append(problem)
        if not reasons:
            self.fallback_since, self.fallback_phase = None, ""
            self.commanded = True
            recovery = self._critic(state, values, now)
            if recovery is None:
                self.executed = values.copy()  # the command as judged: a caller may reuse its array
                safe, clamps = self._limit_command(values, state)
            else:
                self.executed, name = recovery
                safe, clamps = self._clamp(self.executed, state)
                failed = f"; the critic failed: {self.critic_problem}" if self.critic_problem else ""
                clamps = [f"critic: risk {self.risk:.2f} above {self.critic.epsilon:.2f}: recovery ({name}){failed}",
                          *clamps]
            self.last_output, self.last_output_at = safe, now
            return safe, clamps
        if self.fallback_since is None:
            self.fallback_since = now
            self._begin_fallback(self._measurement, now)
        self.executed, self.fallback_phase = self._fallback(self._measurement, now, state_fresh)
        safe, clamps = self._clamp(self.executed, state)
        self.last_output, self.last_output_at = safe, now
        return safe, [f"fallback: {self.fallback_phase}", *reasons, *clamps]

    def _check_command(self, command: Command | None, now: float) -> tuple[np.ndarray | None, str | None]:
        """The command's values, or why it cannot be used at all."""
        if command is None:
            return None, "no command yet"
        age = now - command.received
        if age > self.cfg.command_timeout_s:
            return None, f"command stale: {age * 1e3:.0f} ms old, limit {self.cfg.command_timeout_s * 1e3:.0f} ms"
        values = np.asarray(command.values, dtype=np.float64)
        if values.shape != (self.num_actuators,):
            return None, f"command has {values.size} values, the {self.robot} takes {self.num_actuators}"
        if not np.isfinite(values).all():
            return None, f"command not finite at {np.flatnonzero(~np.isfinite(values)).tolist()}"
        return values, None

    def _critic(self, state: RobotState, command: np.ndarray, now: float) -> tuple[np.ndarray, str] | None:
        """The recovery's target and name where the layer recovers now, else None. A recovery begins where the
        command's risk is above epsilon (a NaN risk counts as high) and, with a critic that ``judges_recovery``
        (trained on rollouts with recoveries in them), the recovery's own risk is lower: a robot that a recovery would not save (a
        strong push a walking policy steps out of) keeps its policy. It lasts at least ``RECOVERY_MIN_S`` and
        until the command's risk is below epsilon again."""
        if self.critic is None:
            return None
        self.critic_problem = ""
        try:
            judge = self.critic.judge(state)
            self.risk = judge(command)
        except Exception as exc:  # a learned critic's fault never stops the layer: it counts as a high risk
            judge, self.risk, self.critic_problem = None, math.nan, f"{type(exc).__name__}: {exc}"
        risky = not self.risk <= self.critic.epsilon
        judged = None  # the recovery as judged on this tick, computed once
        if risky and self.recovering_since is None:
            self.start_recovery(state, now, command)
            judged = self.recovery_target(state, now)
            if not (self.critic.judges_recovery and math.isfinite(self.risk)) or \
                    self._judged_lower(judge, judged[0]):
                self.recovering_since = now
        elif not risky and self.recovering_since is not None and now - self.recovering_since >= RECOVERY_MIN_S:
            self.recovering_since = None
        if self.recovering_since is None:
            return None
        return judged or self.recovery_target(state, now)

    def _judged_lower(self, judge: Callable[[np.ndarray], float], target: np.ndarray) -> bool:
        """Whether the critic judges ``target`` less risky than the command; where it cannot judge it, the
        recovery runs (the critic already judged the command risky)."""
        try:
            return judge(target) < self.risk
        except Exception as exc:  # as for the command's risk: the layer goes on, the reason says why
            self.critic_problem = f"{type(exc).__name__}: {exc}"
            return True

    def start_recovery(self, state: RobotState, now: float, command: np.ndarray) -> None:
        """A recovery starts from ``state``, taking over ``command``: the critic's learned one where it has one."""
        self.begin_recovery(state, now)  # the scripted one stands by: it runs if the learned one cannot act
        if self.learned_recovery is not None:
            try:
                self.learned_recovery.begin(state, now, command)
                self.recovery_problem = ""
            except Exception as exc:  # never let the recovery stop the layer: the scripted one runs instead
                self.recovery_problem = f"{type(exc).__name__}: {exc}"

    def recovery_target(self, state: RobotState, now: float) -> tuple[np.ndarray, str]:
        """The recovery's target now and its name: the learned recovery's, or the scripted one where there is none
        or it failed (a non-finite target, an exception: ``recovery_problem`` says which)."""
        if self.learned_recovery is not None and not self.recovery_problem:
            try:
                target = np.asarray(self.learned_recovery.target(state, now), dtype=np.float64)
                if target.shape == (self.num_actuators,) and np.isfinite(target).all():
                    return target, self.learned_recovery.name
                self.recovery_problem = f"its target {target.tolist()} is not {self.num_actuators} finite values"
            except Exception as exc:  # never let the recovery stop the layer: the scripted one runs instead
                self.recovery_problem = f"{type(exc).__name__}: {exc}"
        target, name = self.recovery(state, now)
        if self.recovery_problem:
            return target, f"{name}; the learned recovery failed: {self.recovery_problem}"
        return target, name

    @abstractmethod
    def begin_recovery(self, state: RobotState, now: float) -> None:
        """A recovery starts from ``state``."""

    @abstractmethod
    def recovery(self, state: RobotState, now: float) -> tuple[np.ndarray, str]:
        """The recovery's target now and its name."""

    def _limit_command(self, command: np.ndarray, state: RobotState) -> tuple[np.ndarray, list[str]]:
        """The clamps a policy's or teleop's command goes through (the fallback's skips nothing but this)."""
        return self._clamp(command, state)

    # ----- what each robot kind defines
    @abstractmethod
    def _state_problem(self, state: RobotState) -> str | None:
        """Why ``state`` cannot be used (missing or non-finite fields), or None."""

    @abstractmethod
    def _envelope(self, state: RobotState) -> list[str]:
        """Where the measured robot is outside its envelope (these latch the fallback)."""

    @abstractmethod
    def _clamp(self, target: np.ndarray, state: RobotState) -> tuple[np.ndarray, list[str]]:
        """``target`` within the actuator limits, and which limits it broke."""

    @abstractmethod
    def _begin_fallback(self, measurement: Measurement, now: float) -> None:
        """Remember what the fallback starts from."""

    @abstractmethod
    def _fallback(self, measurement: Measurement, now: float, state_fresh: bool) -> tuple[np.ndarray, str]:
        """The fallback's target now and the name of its phase."""


class JointSafetyLayer(SafetyLayer):
    """A robot of PD position-controlled joints: targets are clamped to position bounds, an effort bound
    around the measured state and a rate limit from the previous target, in that priority
    (``robostack.sim.joint_limits``, the same clamps a task may train under)."""

    def __init__(self, robot: RobotSpec, robot_config: Any, cfg: SafetyConfig, critic: SafetyCritic | None = None):
        super().__init__(robot, robot_config, cfg, critic)
        self.joint_names = list(robot.joint_names)
        if len(self.joint_names) != self.num_actuators:
            raise ValueError(f"{robot.name}: {self.num_actuators} actuators but {len(self.joint_names)} joints")
        self.bounds = TargetBounds.for_robot(robot, robot_config, self.model, cfg.joints)

    def joint_positions(self, state: RobotState) -> np.ndarray:
        return np.array([state.joint_position[name] for name in self.joint_names])

    def joint_velocities(self, state: RobotState) -> np.ndarray:
        """Measured velocities; a joint whose driver reports none counts as still (the stricter bound)."""
        return np.array([state.joint_velocity.get(name, 0.0) for name in self.joint_names])

    def _state_problem(self, state: RobotState) -> str | None:
        missing = [n for n in self.joint_names if n not in state.joint_position]
        if missing:
            return f"no position for {missing}"
        if not np.isfinite(self.joint_positions(state)).all():
            return "joint positions not finite"
        if not np.isfinite(self.joint_velocities(state)).all():
            return "joint velocities not finite"
        return None

    def _clamp(self, target: np.ndarray, state: RobotState) -> tuple[np.ndarray, list[str]]:
        measured = self.joint_positions(state)
        previous = measured if self.last_output is None else self.last_output
        safe, outside = limit_targets(target, measured, self.joint_velocities(state), previous, self.bounds,
                                      self.output_interval)
        return safe, [f"{name}: {', '.join(n for n, o in zip(self.joint_names, mask) if o)}"
                      for name, mask in zip(WINDOWS, outside) if mask.any()]


class ArmSafetyLayer(JointSafetyLayer):
    """A fixed-base arm: the commanded targets' TCP (forward kinematics) must stay in the workspace box;
    the fallback holds the position measured when it began."""

    def __init__(self, robot: RobotSpec, robot_config: Any, cfg: SafetyConfig, critic: SafetyCritic | None = None):
        super().__init__(robot, robot_config, cfg, critic)
        self._data = mujoco.MjData(self.model)
        self._qpos_address = self.model.jnt_qposadr[self.model.actuator_trnid[:, 0]]
        self._tcp_site = self.model.site(cfg.arm.tcp_site).id
        self._hold: np.ndarray | None = None

    def tcp_position(self, joint_targets: np.ndarray) -> np.ndarray:
        self._data.qpos[self._qpos_address] = joint_targets
        mujoco.mj_kinematics(self.model, self._data)
        return self._data.site_xpos[self._tcp_site].copy()

    def _envelope(self, state: RobotState) -> list[str]:
        return []  # the workspace bounds commands, not the measured arm: holding is always allowed

    def _limit_command(self, command: np.ndarray, state: RobotState) -> tuple[np.ndarray, list[str]]:
        safe, reasons = self._clamp(command, state)
        outside = _box_violations("TCP", self.tcp_position(safe), self.cfg.arm.workspace)
        if not outside:
            return safe, reasons
        previous = self.joint_positions(state) if self.last_output is None else self.last_output
        held, clamps = self._clamp(previous, state)
        return held, [f"workspace: {'; '.join(outside)}: holding the previous target", *clamps]

    def _begin_fallback(self, measurement: Measurement, now: float) -> None:
        self._hold = self.joint_positions(measurement.state)

    def _fallback(self, measurement: Measurement, now: float, state_fresh: bool) -> tuple[np.ndarray, str]:
        return self._hold, "hold"

    def begin_recovery(self, state: RobotState, now: float) -> None:
        self._recovery_hold = self.joint_positions(state)

    def recovery(self, state: RobotState, now: float) -> tuple[np.ndarray, str]:
        return self._recovery_hold, "hold"

    @property
    def fallback_complete(self) -> bool:
        return self.fallback_phase == "hold"


class QuadrupedSafetyLayer(JointSafetyLayer):
    """A legged floating base: base tilt and height must stay in the envelope; the fallback is a stand-down
    in two glides of the joint targets (the rate limit bounds both): from the targets the joints were
    following to the standing (home) pose in ``support_s``, which puts every foot under the body (a walking
    robot's swing legs are in the air), then to the lying pose in ``stand_down_s``; the base height follows
    the targets' profile down instead of dropping. A robot already out of its envelope (tipped over) skips
    the first glide. Lying down latches, as a landed drone does: a policy that comes back does not stand the
    robot up again by itself. Before the first command it holds the pose it found instead: there is no
    control to lose yet, and the policy should start from the pose the robot was put in."""

    def __init__(self, robot: RobotSpec, robot_config: Any, cfg: SafetyConfig, critic: SafetyCritic | None = None):
        super().__init__(robot, robot_config, cfg, critic)
        leg_pose = np.asarray(cfg.quadruped.stand_down_pose, dtype=np.float64)
        if leg_pose.size == 0 or self.num_actuators % leg_pose.size:
            raise ValueError(f"{robot.name}: safety.quadruped.stand_down_pose has {leg_pose.size} values; one leg's "
                             f"joints must divide the {self.num_actuators} joints")
        self.lying_pose = np.tile(leg_pose, self.num_actuators // leg_pose.size)
        self.standing_pose = np.asarray(robot_config.home_joint_pos(), dtype=np.float64)
        self._glide_from: np.ndarray | None = None
        self._glide_start = 0.0
        self._support_s = 0.0  # this fallback's first glide (0: straight to lying)

    def _state_problem(self, state: RobotState) -> str | None:
        return super()._state_problem(state) or _base_problem(state, ("base_position", "base_orientation"))

    def _envelope(self, state: RobotState) -> list[str]:
        limits, out = self.cfg.quadruped, []
        base_tilt = tilt(state.base_orientation)
        if base_tilt > limits.max_tilt:
            out.append(f"tilt {base_tilt:.2f} rad above {limits.max_tilt}")
        height = float(state.base_position[2])
        if not limits.height[0] <= height <= limits.height[1]:
            out.append(f"base height {height:.3f} m outside {list(limits.height)}")
        return out

    def _begin_fallback(self, measurement: Measurement, now: float) -> None:
        # From the targets the joints were following, not the measured pose: a loaded leg sags below its target,
        # and gliding from there dropped the body at once (below 0.15 m within 0.3-0.9 s of a 2 s glide).
        # Before any command: from the pose the robot was found in.
        self._glide_from = self.joint_positions(measurement.state) if self.last_output is None else self.last_output
        self._glide_start = now - self.period  # one period in at the first tick: the fallback shows at once
        self._support_s = 0.0 if self._envelope(measurement.state) else self.cfg.quadruped.support_s

    @property
    def fallback_complete(self) -> bool:
        return self.tripped == STOOD_DOWN

    def begin_recovery(self, state: RobotState, now: float) -> None:
        pass

    def recovery(self, state: RobotState, now: float) -> tuple[np.ndarray, str]:
        return self.standing_pose, "stand"  # all four feet down, body up: the rate limit makes it a glide

    def _fallback(self, measurement: Measurement, now: float, state_fresh: bool) -> tuple[np.ndarray, str]:
        if not self.commanded and not self.latches:
            self._glide_start = now  # a stand-down would start from here, one period on
            return self._glide_from, "hold until the first command"
        elapsed = now - self._glide_start
        if elapsed < self._support_s:
            progress = elapsed / self._support_s
            return self._glide_from + progress * (self.standing_pose - self._glide_from), "stand down: support"
        start = self.standing_pose if self._support_s else self._glide_from
        progress = min(1.0, (elapsed - self._support_s) / self.cfg.quadruped.stand_down_s)
        if progress >= 1.0:
            self.tripped = self.tripped or STOOD_DOWN
        return start + progress * (self.lying_pose - start), "stand down"


# Fallback flight controller: natural frequency (rad/s) and damping ratio of each loop. The attitude loop
# is several times faster than the position loop and slower than the motors (time constant 0.02 s).
POSITION_BANDWIDTH, POSITION_DAMPING = 2.5, 0.9
ATTITUDE_BANDWIDTH, ATTITUDE_DAMPING = np.array([15.0, 15.0, 5.0]), 0.8  # roll, pitch, yaw
MAX_FALLBACK_TILT = 0.35  # rad: the fallback asks for gentle attitudes only
# rad: a recovery holds its position against what is pushing the drone away (a gust), so it may lean into it
# further: 40 degrees, a third of the envelope's tilt below it, where holding altitude takes 1.3 x hover thrust (the
# cf2 has 2.3 x). On cf2-hover's disturbance suite, 1000 episodes: 127 crashes in gusts against 167 with the
# fallback's 0.35 (hard limits alone 159; BENCHMARKS.md).
MAX_RECOVERY_TILT = 0.7
MIN_VERTICAL_ACCEL = 0.3  # x g: the thrust axis always points up


class DroneSafetyLayer(SafetyLayer):
    """A multirotor driven by motor thrusts: thrusts within [0, max], attitude and position within the
    envelope. The fallback holds the position where it began (clipped into the geofence) for ``hover_s``
    with a cascaded position -> attitude -> thrust controller of its own, descends at ``descent_speed`` and
    cuts the motors on the ground; the e-stop lands at once. With stale state it cannot close the loop: it
    descends open-loop on ``blind_thrust`` and cuts the motors after ``blind_s``."""

    def __init__(self, robot: RobotSpec, robot_config: Any, cfg: SafetyConfig, critic: SafetyCritic | None = None):
        super().__init__(robot, robot_config, cfg, critic)
        model, data = self.model, mujoco.MjData(self.model)
        mujoco.mj_forward(model, data)
        base = model.jnt_bodyid[0]  # the free joint's body
        self.mass = float(model.body_subtreemass[base])
        self.gravity = float(-model.opt.gravity[2])
        self.hover_thrust = self.mass * self.gravity / self.num_actuators
        self.max_thrust = model.actuator_ctrlrange[:, 1].copy()
        body_rotation = rotation_matrix(model.body_iquat[base])
        self.inertia = body_rotation @ np.diag(model.body_inertia[base]) @ body_rotation.T
        # Body-frame wrench (thrust along z, torque about the centre of mass) per newton of each motor, from
        # the actuators' sites and gears.
        to_body = data.xmat[base].reshape(3, 3).T
        allocation = np.zeros((4, self.num_actuators))
        for i in range(self.num_actuators):
            site = model.actuator_trnid[i, 0]
            site_to_body = to_body @ data.site_xmat[site].reshape(3, 3)
            force = site_to_body @ model.actuator_gear[i, :3]
            arm = to_body @ (data.site_xpos[site] - data.subtree_com[base])
            allocation[:, i] = [force[2], *(np.cross(arm, force) + site_to_body @ model.actuator_gear[i, 3:])]
        self.mixer = np.linalg.pinv(allocation)  # motor thrusts for a wanted (thrust, torque)
        self.position_gains = (POSITION_BANDWIDTH ** 2, 2 * POSITION_DAMPING * POSITION_BANDWIDTH)
        self.attitude_gains = (ATTITUDE_BANDWIDTH ** 2, 2 * ATTITUDE_DAMPING * ATTITUDE_BANDWIDTH)
        self._hold_position = np.zeros(3)
        self._hold_yaw = 0.0
        self._land_at = 0.0
        self._airborne = False

    def _state_problem(self, state: RobotState) -> str | None:
        return _base_problem(state, ("base_position", "base_orientation", "base_linear_velocity",
                                     "base_angular_velocity"))

    @property
    def fallback_complete(self) -> bool:
        return self.fallback_phase == "motors off"

    def _envelope(self, state: RobotState) -> list[str]:
        limits, out = self.cfg.drone, []
        attitude = tilt(state.base_orientation)
        if attitude > limits.max_tilt:
            out.append(f"tilt {attitude:.2f} rad above {limits.max_tilt}")
        return out + _box_violations("geofence:", state.base_position, limits.geofence, ("", "", " (altitude)"))

    def _clamp(self, target: np.ndarray, state: RobotState) -> tuple[np.ndarray, list[str]]:
        safe = np.clip(target, 0.0, self.max_thrust)
        changed = np.flatnonzero(safe != target)
        names = ", ".join(self.model.actuator(int(i)).name for i in changed)
        return safe, [f"thrust limit: {names}"] if changed.size else []

    def _begin_fallback(self, measurement: Measurement, now: float) -> None:
        state, fence = measurement.state, self.cfg.drone.geofence
        self._hold_position = np.clip(state.base_position, fence.min, fence.max)
        rotation = rotation_matrix(state.base_orientation)
        self._hold_yaw = math.atan2(rotation[1, 0], rotation[0, 0])
        self._land_at = now + self.cfg.drone.hover_s
        self._airborne = state.base_position[2] > self.cfg.drone.landed_height

    def _fallback(self, measurement: Measurement, now: float, state_fresh: bool) -> tuple[np.ndarray, str]:
        limits, off = self.cfg.drone, np.zeros(self.num_actuators)
        if not self._airborne:
            return off, "motors off"
        if not state_fresh:
            if self.state_age(now) > self.cfg.state_timeout_s + limits.blind_s:
                self._airborne = False
                self.tripped = self.tripped or f"motors cut after {limits.blind_s} s of blind descent"
                return off, "motors off"
            return np.full(self.num_actuators, limits.blind_thrust * self.hover_thrust), "blind descent"
        if self.estopped:
            self._land_at = min(self._land_at, now)
        state = measurement.state
        if now < self._land_at:
            return self.position_hold(state, self._hold_position, np.zeros(3)), "hover"
        if state.base_position[2] <= limits.landed_height:
            self._airborne = False
            self.tripped = self.tripped or LANDED
            return off, "motors off"
        descended = limits.descent_speed * (now - self._land_at)
        reference = self._hold_position - np.array([0.0, 0.0, descended])
        return self.position_hold(state, reference, np.array([0.0, 0.0, -limits.descent_speed])), "land"

    def begin_recovery(self, state: RobotState, now: float) -> None:
        fence = self.cfg.drone.geofence
        self._recovery_position = np.clip(state.base_position, fence.min, fence.max)
        rotation = rotation_matrix(state.base_orientation)
        self._hold_yaw = math.atan2(rotation[1, 0], rotation[0, 0])

    def recovery(self, state: RobotState, now: float) -> tuple[np.ndarray, str]:
        return (self.position_hold(state, self._recovery_position, np.zeros(3), MAX_RECOVERY_TILT),
                "level and hold")

    def position_hold(self, state: RobotState, position: np.ndarray, velocity: np.ndarray,
                      max_tilt: float = MAX_FALLBACK_TILT) -> np.ndarray:
        """Motor thrusts that steer toward ``position`` moving at ``velocity`` (world frame) with the held yaw,
        leaning at most ``max_tilt``: PD position loop -> desired thrust axis and collective thrust -> attitude PD
        (on SO(3)) -> mixer."""
        kp, kd = self.position_gains
        accel = kp * (position - state.base_position) + kd * (velocity - state.base_linear_velocity)
        accel[2] = max(accel[2] + self.gravity, MIN_VERTICAL_ACCEL * self.gravity)
        horizontal, max_horizontal = math.hypot(accel[0], accel[1]), accel[2] * math.tan(max_tilt)
        if horizontal > max_horizontal:
            accel[:2] *= max_horizontal / horizontal
        # mujoco's 3-vector helpers and few numpy temporaries: this runs on every tick of a recovery or fallback
        # (and a recovery's tick also runs the critic twice), where numpy's per-call overhead on 3-vectors would
        # cost several times the arithmetic
        rotation = rotation_matrix(state.base_orientation)
        z_axis, y_axis, x_axis = accel.copy(), np.empty(3), np.empty(3)
        mujoco.mju_normalize3(z_axis)
        mujoco.mju_cross(y_axis, z_axis, np.array([math.cos(self._hold_yaw), math.sin(self._hold_yaw), 0.0]))
        mujoco.mju_normalize3(y_axis)
        mujoco.mju_cross(x_axis, y_axis, z_axis)
        # the attitude error vee(Rd^T R - R^T Rd) / 2, from the one product Rd^T R (the second is its transpose)
        e = (np.array((x_axis, y_axis, z_axis)) @ rotation).tolist()
        attitude_error = np.array([e[2][1] - e[1][2], e[0][2] - e[2][0], e[1][0] - e[0][1]])
        attitude_error *= 0.5
        rate = state.base_angular_velocity
        kr, kw = self.attitude_gains
        gyroscopic = np.empty(3)
        mujoco.mju_cross(gyroscopic, rate, self.inertia @ rate)
        torque = self.inertia @ (-kr * attitude_error - kw * rate) + gyroscopic
        collective = self.mass * float(accel @ rotation[:, 2])
        thrusts = self.mixer @ np.array([collective, *torque])
        return np.minimum(np.maximum(thrusts, 0.0), self.max_thrust)


LAYERS = {"arm": ArmSafetyLayer, "quadruped": QuadrupedSafetyLayer, "drone": DroneSafetyLayer}  # by RobotKind


def safety_layer(robot: RobotSpec, robot_config: Any, cfg: SafetyConfig, critic: SafetyCritic | None = None
                 ) -> SafetyLayer:
    """The layer of the robot's kind; its deploy config must hold that kind's section."""
    if getattr(cfg, robot.kind) is None:
        given = next(kind for kind in ROBOT_KINDS if getattr(cfg, kind) is not None)
        raise ConfigError(f"the {robot.name} is a {robot.kind}, but its deploy config's safety section is for a "
                          f"{given} ('safety.{given}'; give 'safety.{robot.kind}')", key=f"safety.{robot.kind}")
    return LAYERS[robot.kind](robot, robot_config, cfg, critic)
