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
class RandomizationConfig:
    """What every task randomizes; a task's own config class adds its further events as fields."""

    enabled: bool  # False in the play variant
    observation_noise: float  # multiplier on every observation term's noise
    link_mass: EventConfig
    com_offset: EventConfig


# ----- term specs the task assembles -----
@dataclass
class ObsTerm:
    func: TermFn
    noise: float = 0.0  # half-width of uniform noise added while randomization is on
    scale: float = 1.0


def noiseless(terms: dict[str, ObsTerm]) -> dict[str, ObsTerm]:
    """The same terms without noise: what the privileged critic reads."""
    return {name: ObsTerm(t.func, scale=t.scale) for name, t in terms.items()}


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
    cfg: EventConfig
    randomization: bool = True  # the play variant turns randomization events off, keeps the rest


@dataclass
class ActionMap:
    """Policy action ``a`` in [-1, 1]^k to actuator controls: ``ctrl = offset; ctrl[ids] += scale * a``.

    Joint-position tasks use offset = default pose; the drone uses offset = hover thrust. Deploy code
    reads the same numbers from the policy bundle, so they are stated once, here.
    """

    actuator_ids: np.ndarray  # [k] actuator index driven by each action dim
    scale: np.ndarray  # [k]
    offset: np.ndarray  # [nu] control for actuators at zero action (and for undriven actuators)

    @property
    def dim(self) -> int:
        return len(self.actuator_ids)


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
    observation_noise: float = 1.0  # multiplier on every ObsTerm's noise
    randomize: bool = True  # False in the play variant
    cfg: Any = None  # the task's typed config, for term functions that read their parameters
