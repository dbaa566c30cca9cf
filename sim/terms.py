"""Building blocks a task is composed from (Isaac Lab style): small term functions wrapped in term specs.

A term function takes the env (``TaskEnv``) and returns a tensor over the batch:
observations ``[N, k]``, rewards ``[N]``, terminations ``[N]`` bool. Events take ``(env, env_ids, cfg)`` and
change state or physics for those envs. The YAML config only sets weights, ranges and modes; which
function a name means is fixed by the task module, so a typo is a config error, never a silent no-op.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

import numpy as np
import torch

from robostack.sim.joint_limits import TargetBounds

if TYPE_CHECKING:
    from robostack.sim.task_env import TaskEnv

TermFn = Callable[["TaskEnv"], torch.Tensor]
EventFn = Callable[["TaskEnv", np.ndarray, "EventConfig"], None]


# ----- configuration pieces shared by every task (loaded from YAML by robostack.config) -----
@dataclass
class SimConfig:
    timestep: float  # physics step, seconds
    decimation: int  # physics steps per control step
    episode_length_s: float
    num_envs: int
    num_threads: int = 0  # 0: all cores


@dataclass
class EventConfig:
    """One randomization or command event. ``range`` is interpreted by the event (a scale or an offset)."""

    mode: Literal["startup", "reset", "interval"] = "reset"
    range: tuple[float, float] = (1.0, 1.0)
    interval_s: tuple[float, float] = (0.0, 0.0)  # interval mode: seconds between events, sampled per env
    enabled: bool = True


@dataclass
class WeakMotorConfig(EventConfig):
    """``count`` actuators per env, picked at random (or the fixed ``actuators``), lose strength: their output
    scaled within ``range`` on top of ``motor_strength`` (a worn motor, a chipped propeller). A task shift for
    evaluation, off unless enabled."""

    mode: Literal["startup", "reset"] = "startup"
    enabled: bool = False
    count: int = 1
    actuators: tuple[int, ...] = ()  # fixed actuator indices instead of ``count`` random ones


@dataclass
class PayloadConfig:
    """A point mass of ``mass`` kg fixed to ``body`` (the floating base where "") at ``offset`` from its centre of
    mass (m per axis of the body frame), both uniform per env. A task shift for evaluation, off unless enabled."""

    mode: Literal["startup", "reset"] = "startup"
    enabled: bool = False
    mass: tuple[float, float] = (0.0, 0.0)
    offset: tuple[tuple[float, float], tuple[float, float], tuple[float, float]] = ((0.0, 0.0),) * 3
    body: str = ""


@dataclass
class RandomizationConfig:
    """What every task randomizes; a task's own config class adds its further events as fields. The task shifts
    (``weak_motor``, ``payload``) default to off, so configs written before them still load."""

    enabled: bool  # False in the play variant
    observation_noise: float  # multiplier on every observation term's noise
    link_mass: EventConfig
    com_offset: EventConfig
    weak_motor: WeakMotorConfig = field(default_factory=WeakMotorConfig, kw_only=True)
    payload: PayloadConfig = field(default_factory=PayloadConfig, kw_only=True)


# ----- term specs the task assembles -----
FRAMES = {  # the frames a Definition names (REP 103 axes)
    "world": "fixed, z up (gravity along -z); for a fixed-base arm, its base frame",
    "base": "the robot base's body frame: x forward, y left, z up",
}


@dataclass(frozen=True)
class Definition:
    """What an observation term's values are, for a reader of a policy bundle who has no RoboStack: the
    quantity, its units, the frame its vectors are expressed in (a key of ``FRAMES``, or "" for none), what it
    is relative to (its zero, sign conventions) and what each value is, in order. The bundle's metadata and its
    ONNX graph carry it; export refuses a policy term without one."""

    quantity: str
    units: str
    frame: str = ""
    reference: str = ""
    components: str = ""

    def __post_init__(self) -> None:
        if self.frame and self.frame not in FRAMES:
            raise ValueError(f"definition of {self.quantity!r}: frame must be one of {sorted(FRAMES)} or '', "
                             f"got {self.frame!r}")


def defined(definition: Definition) -> Callable[[TermFn], TermFn]:
    """Decorator: the ``Definition`` of what a term function returns (``ObsTerm.definition`` overrides it)."""
    def attach(func: TermFn) -> TermFn:
        func.definition = definition
        return func

    return attach


@dataclass
class ObsTerm:
    func: TermFn
    noise: float = 0.0  # half-width of uniform noise added while randomization is on
    scale: float = 1.0
    definition: Definition | None = None  # what it measures; default: the function's own (``defined``)

    @property
    def defines(self) -> Definition | None:
        return self.definition or getattr(self.func, "definition", None)


def noiseless(terms: dict[str, ObsTerm]) -> dict[str, ObsTerm]:
    """The same terms without noise: what the privileged critic reads."""
    return {name: ObsTerm(t.func, scale=t.scale, definition=t.definition) for name, t in terms.items()}


@dataclass
class RewardTerm:
    func: TermFn
    weight: float


@dataclass
class DoneTerm:
    func: TermFn
    time_out: bool = False  # a time-out truncates; anything else terminates


@dataclass
class EventTerm:
    func: EventFn
    cfg: EventConfig | PayloadConfig
    randomization: bool = True  # the play variant turns randomization events off, keeps the rest


@dataclass
class EndEffectorIK:
    """Actions as end-effector displacements: per control step, (x, y, z) in metres then a rotation vector
    in radians, both in the world frame, each scaled by ``ActionMap.scale``. Damped least squares on the
    Jacobian of ``site`` (built from the ``<joint>_anchor`` / ``<joint>_axis`` sensors of each joint, see
    ``sim.ik``) turns them into changes of those joints' targets, which integrate like a relative map."""

    site: str  # its position sensor is ``<site>_pos``
    joints: tuple[str, ...]  # the joints moved, in the order of ``ActionMap.actuator_ids``
    damping: float  # lambda of damped least squares (m): keeps steps bounded near singularities


@dataclass
class GripperCommand:
    """One more action dim, the last, that opens or closes a parallel gripper: above zero sets every finger
    actuator's target to ``closed``, otherwise to ``open``. Binary like a real gripper's grasp and release
    calls, so small action noise cannot leave the fingers half open."""

    actuator_ids: np.ndarray  # the finger actuators
    open: float  # their control target when open
    closed: float  # and when closed (past the object, so they squeeze it)


@dataclass
class ActionMap:
    """Policy action ``a`` in [-1, 1]^k to actuator controls: ``ctrl = base; ctrl[ids] += scale * a``,
    clipped to the control limits, where ``base`` is ``offset`` or, for a ``relative`` map, the previous
    step's control (``offset`` after a reset).

    Joint-position tasks use offset = default pose; the drone uses offset = hover thrust. A relative map
    integrates the action into joint targets, so a policy holds a pose with zero action and removes a
    steady error without having to learn exact inverse kinematics. Deploy code reads the same numbers
    from the policy bundle, so they are stated once, here.
    """

    actuator_ids: np.ndarray  # [k] actuator index driven by each action dim (with ``ik``: the joints moved)
    scale: np.ndarray  # [action dim]
    offset: np.ndarray  # [nu] control for actuators at zero action (and for undriven actuators)
    relative: bool = False
    ik: EndEffectorIK | None = None  # actions move the end effector instead (always relative)
    limits: TargetBounds | None = None  # the deployment's safety clamps on joint targets, trained under
    gripper: GripperCommand | None = None  # a last action dim, after the ``scale``d ones, opens or closes it

    @property
    def dim(self) -> int:
        return len(self.scale) + (self.gripper is not None)


@dataclass
class Integral:
    """A running integral over the episode of a term (units x seconds), clipped to +-``limit`` and zero
    after a reset: a PID's I term. It lets a memoryless policy remove a steady error (a thrust or mass
    mismatch, a constant wind); read it with ``mdp.integral(name)``. Deploy code integrates the same term
    at the bundle's control rate (the metadata names it)."""

    func: TermFn
    limit: float


@dataclass
class TaskDefinition:
    """Everything the generic ``TaskEnv`` needs to run one task."""

    name: str
    robot: str
    model: object  # mujoco.MjModel; TaskEnv sets its timestep from ``sim``
    sim: SimConfig
    action: ActionMap
    observations: dict[str, dict[str, ObsTerm]]  # group -> ordered terms
    rewards: dict[str, RewardTerm]
    terminations: dict[str, DoneTerm]
    events: dict[str, EventTerm]
    reset: Callable[["TaskEnv", np.ndarray], None]  # writes initial qpos/qvel of those envs
    success: TermFn  # evaluated on the final state of an episode
    default_joint_pos: np.ndarray = field(default_factory=lambda: np.zeros(0))  # actuated joints
    command_dim: int = 0
    action_history: int = 0  # how many past actions env.action_history keeps (mdp.action_history)
    metrics: dict[str, TermFn] = field(default_factory=dict)  # averaged over an episode, e.g. errors
    integrals: dict[str, Integral] = field(default_factory=dict)  # updated once per control step
    observation_noise: float = 1.0  # multiplier on every ObsTerm's noise
    randomize: bool = True  # False in the play variant
    cfg: Any = None  # the task's typed config, for term functions that read their parameters
    # what a perception stack would report about the scene, noiseless (datasets record it as
    # observation.environment_state): name -> (term [N, len(axes)], one letter per component, e.g. "xyz")
    environment_state: dict[str, tuple[TermFn, str]] = field(default_factory=dict)
    # fixed bodies an event places per episode (a change of each env's model: panda-insert's hole); a
    # deployment measures their poses (robostack.real.observation)
    fixtures: tuple[str, ...] = ()
