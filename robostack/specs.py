"""Typed specifications of what RoboStack runs, registered in ``robostack.registry`` and read by every stage.

Core: this module imports no simulator, learner or ROS code, so any process (a deploy node included) can
read a specification without loading what it describes. Each kind is declared once, where it lives:

* ``RobotSpec`` in ``sim/robots/<robot>/model.py``: kind (which safety layer, fallback, launch file and
  teleop mapping it gets), URDF (links, inertias, joint limits), configuration type (the tunable actuation
  numbers of ``configs/robots/<robot>.yaml``), the builder of its MuJoCo model, its joints in driver order;
* ``TaskSpec`` beside the task's terms (``sim/robots/<robot>/<task>.py``): robot, configuration type, builder
  of its ``TaskDefinition``, and a scripted expert where it has one;
* ``AlgorithmSpec`` in its file in ``policies/``: what it trains with, its recipe section's type, its trainer
  and the kind of bundle it exports;
* ``BundleKindSpec`` in ``robostack.bundle.kinds``: how a bundle of that kind is checked, loaded and run;
* ``BackendSpec`` in a simulator backend's module (``sim/*_backend.py``): how it builds a task's env.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import numpy as np

RobotKind = Literal["arm", "quadruped", "drone"]
ROBOT_KINDS: tuple[RobotKind, ...] = ("arm", "quadruped", "drone")
TrainsWith = Literal["reinforcement", "imitation", "critic", "interventions"]


class RobotConfig(Protocol):
    """What every robot configuration (a dataclass read from ``configs/robots/<robot>.yaml``) answers."""

    def joint_gains(self) -> tuple[np.ndarray, np.ndarray]:
        """kp and kd of each actuated joint's PD servo, in driver order (empty for a robot without joints)."""

    def home_joint_pos(self) -> np.ndarray:
        """The default (home) pose of the actuated joints, in driver order."""


@dataclass(frozen=True)
class JointLimits:
    """Per-joint ``<limit>`` values of a URDF, in driver order."""

    lower: np.ndarray
    upper: np.ndarray
    effort: np.ndarray
    velocity: np.ndarray


@dataclass(frozen=True)
class RobotSpec:
    """One robot, described once (see the module docstring). ``build_spec(config)`` returns the robot on a
    floor as a ``mujoco.MjSpec`` with one actuator per driver command value, in driver order; tasks add
    their scene to it."""

    name: str
    kind: RobotKind
    summary: str
    urdf: Path
    config_type: type
    build_spec: Callable[[Any], Any]
    joint_names: tuple[str, ...]  # actuated joints in driver order; () for a robot driven by motors alone
    joint_limits: JointLimits  # of ``joint_names``, from the URDF
    menagerie_file: str | None = None  # its MJCF in a MuJoCo Menagerie checkout (``MENAGERIE_ROOT``)

    def __post_init__(self) -> None:
        if self.kind not in ROBOT_KINDS:
            raise ValueError(f"robot {self.name!r}: kind must be one of {ROBOT_KINDS}, got {self.kind!r}")

    @property
    def config_file(self) -> Path:
        from robostack.config import config_path

        return config_path("robots", f"{self.name}.yaml")

    @property
    def deploy_config_file(self) -> Path:
        from robostack.config import config_path

        return config_path("deploy", f"{self.name}.yaml")

    @property
    def launch_file(self) -> str:
        """The launch file (``launch/``) that brings up a robot of this kind."""
        return f"{self.kind}.launch.py"

    def load_config(self, data: dict[str, Any] | None = None, source: str | None = None) -> Any:
        """The robot's configuration: from ``data`` (as a bundle or run stored it), else from its YAML file."""
        from robostack.config import from_dict, load_config

        if data is None:
            return load_config(self.config_type, self.config_file)
        return from_dict(self.config_type, data, source or f"the {self.name} robot config given")

    def build_model(self, config: Any = None) -> Any:
        """The robot's ``mujoco.MjModel`` for ``config`` (default: its YAML file)."""
        return self.build_spec(config if config is not None else self.load_config()).compile()


@dataclass(frozen=True)
class TaskSpec:
    """A task: ``build(config)`` makes its ``robostack.sim.terms.TaskDefinition`` from a ``config_type``
    (``configs/tasks/<task>.yaml``, its robot's configuration in ``robot``); ``expert(env)``, where the task has
    one, is a scripted expert acting in a batched env (``robostack teleop --device scripted``); ``intervener(env)``
    a human watching the simulated robot who takes over when it goes wrong (``robostack.sim.intervention``,
    ``robostack deploy --sim --intervener``)."""

    name: str
    robot: str
    summary: str
    config_type: type
    build: Callable[[Any], Any]
    expert: Callable[[Any], Any] | None = None
    intervener: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class AlgorithmSpec:
    """A learning algorithm. ``config_type`` is its section of a training recipe (``configs/train/<task>.yaml``,
    under its name); ``bundle_kind`` is what ``robostack export`` makes of its runs.

    * reinforcement: ``trainer(env, config, device)`` is the ``robostack.policies.learner.Learner`` the shared
      training loop drives (``robostack.workflows.train``); ``exporter(env, config, state)`` is the deterministic
      policy (a torch module, raw policy observation in, action out) of a checkpoint's algorithm ``state``;
    * imitation: ``trainer(episodes, config, **options)`` returns the trained policy
      (``robostack.workflows.imitation``); ``exporter(state)`` is the module of one action chunk a chunk bundle
      holds, from a checkpoint's policy ``state``;
    * critic: ``trainer(transitions, gamma, config, ...)`` fits a safety critic of a deployed policy
      (``robostack.workflows.safety_critic``); ``exporter(network)`` is the module its bundle's ``critic.onnx``
      holds (``bundle_kind`` "critic": it goes into the policy's bundle, beside the policy);
    * interventions: ``trainer(online, prior, settings, on_update)`` fits a correction of a deployed bundle from its
      logged steps and the human's (``robostack.workflows.interventions``; ``settings`` its ``RLIFConfig``) and
      returns ``(learner, losses)``; ``exporter(learner)`` is the correction's module, which a residual bundle over
      the deployed one holds (``bundle_kind`` "residual"). With ``bundle_kind`` "command_correction",
      ``trainer(inputs, rates, settings)`` fits how the human moved the task command and ``exporter(rule)`` is the
      module of the command-correction bundle over the deployed one.
    """

    name: str
    summary: str
    trains_with: TrainsWith
    config_type: type
    bundle_kind: str
    trainer: Callable[..., Any]
    exporter: Callable[..., Any]


@dataclass(frozen=True)
class BundleKindSpec:
    """A kind of policy bundle (metadata ``kind``): ``check(metadata, fail)`` validates its metadata (``fail(what)``
    makes the error to raise), ``load(path, metadata, session, base)`` makes the loaded bundle (``base``: the
    loaded bundle in ``base/``, for kinds that have one), ``actor(bundle, source, num_envs, seed, base_source)`` runs
    it for a batch of robots whose observations ``source`` gives (``robostack.bundle.kinds.ObservationSource``;
    ``base_source``, where it differs, those of the bundle in ``base/``)."""

    name: str
    summary: str
    check: Callable[[dict[str, Any], Callable[[str], Exception]], None]
    load: Callable[..., Any]
    actor: Callable[..., Any]
    has_base: bool = False


@dataclass(frozen=True)
class BackendSpec:
    """A simulator backend: ``make_env(definition, num_envs, seed, device)`` runs a task's
    ``TaskDefinition`` as a batched ``robostack.sim.env.VecEnv`` on ``devices``."""

    name: str
    summary: str
    make_env: Callable[..., Any]
    devices: tuple[str, ...] = ("cpu",)
