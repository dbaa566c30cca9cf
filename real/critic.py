"""The learned safety critic on the robot: what it sees of a measured state and a command, and its risk.

``RiskFeatures`` turns what the robot measures (``RobotState``: joints, the floating base's pose and twist) and
a command (actuator controls) into the critic's input, for one robot or a batch, in numpy: the same code labels
the simulator's rollouts when the critic is trained (``robostack.workflows.safety_critic``) and feeds it on the
robot, so training and deployment cannot see different inputs. Privileged simulator state (contacts, the
object, the target) is never an input.

* quadruped: gravity in the body frame, body angular and linear velocity, base height, joint positions from
  the home pose, joint velocities, commanded targets from the home pose;
* drone: gravity in the body frame, body angular velocity, world linear velocity and position, motor commands
  as fractions of their maximum thrust;
* arm: joint positions and velocities, commanded targets from the measured positions, the TCP's position at the
  measured joints and at the commanded targets (forward kinematics of the robot's model).

``RiskCritic`` runs a bundle's ``critic.onnx`` (onnxruntime, imported when a bundle has a critic) on them:
Q_risk(s, a) in [0, 1], the discounted probability of a constraint violation ahead under the bundle's policy.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import mujoco
import numpy as np

from robostack.bundle import BundleError
from robostack.bundle.format import CRITIC_FILE, CRITIC_INPUT, CRITIC_OUTPUT, RECOVERIES, RECOVERY_FILE
from robostack.bundle.kinds import check_vector_graph
from robostack.real.robot_state import RobotState
from robostack.real.safety import rotation_matrix
from robostack.specs import RobotSpec

VELOCITY_SCALE = 0.1  # joint velocities (rad/s) are an order larger than positions: scaled to a like range


BASE_FIELDS = ("base_position", "base_orientation", "base_linear_velocity", "base_angular_velocity")  # in order


@dataclass
class MeasuredBatch:
    """Measured states of B robots as arrays (floating-base fields None for a fixed-base robot)."""

    joint_pos: np.ndarray  # [B, n] in joint order
    joint_vel: np.ndarray
    base_pos: np.ndarray | None = None  # [B, 3] world
    base_quat: np.ndarray | None = None  # [B, 4] w, x, y, z
    base_lin_vel: np.ndarray | None = None  # [B, 3] world
    base_ang_vel: np.ndarray | None = None  # [B, 3] body

    @classmethod
    def of(cls, states: Sequence[RobotState], joint_names: Sequence[str]) -> MeasuredBatch:
        if len(states) == 1:  # the robot's path, every tick: views of its arrays rather than copies
            return cls.one(states[0], joint_names)

        def stack(field: str) -> np.ndarray | None:
            values = [getattr(s, field) for s in states]
            return None if any(v is None for v in values) else np.asarray(values, dtype=np.float64)

        return cls(np.array([[s.joint_position[n] for n in joint_names] for s in states], dtype=np.float64),
                   np.array([[s.joint_velocity.get(n, 0.0) for n in joint_names] for s in states], dtype=np.float64),
                   *(stack(field) for field in BASE_FIELDS))

    @classmethod
    def one(cls, state: RobotState, joint_names: Sequence[str]) -> MeasuredBatch:
        """A batch of one state (B = 1)."""
        def row(field: str) -> np.ndarray | None:
            value = getattr(state, field)
            return None if value is None else np.asarray(value, dtype=np.float64)[None]

        count = len(joint_names)
        return cls(np.fromiter((state.joint_position[n] for n in joint_names), np.float64, count)[None],
                   np.fromiter((state.joint_velocity.get(n, 0.0) for n in joint_names), np.float64, count)[None],
                   *(row(field) for field in BASE_FIELDS))


def rotations(quat: np.ndarray) -> np.ndarray:
    """Rotation matrices [B, 3, 3] (body to world) of orientations ``quat`` [B, 4] (w, x, y, z), normalized first:
    the safety layer's ``rotation_matrix`` per row (on the robot B is 1)."""
    if len(quat) == 1:
        return rotation_matrix(quat[0])[None]
    return np.stack([rotation_matrix(q) for q in quat]).reshape(-1, 3, 3)


def to_body(rotation: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """World vectors [B, 3] in the body frames of ``rotation`` [B, 3, 3]: R^T v."""
    return np.matmul(vectors[:, None, :], rotation)[:, 0]


class RiskFeatures:
    """The critic's input for a robot (see the module docstring); ``names`` label its columns."""

    def __init__(self, robot: RobotSpec, robot_config: Any, tcp_site: str | None = None):
        self.kind, self.joints = robot.kind, list(robot.joint_names)
        self.home = np.asarray(robot_config.home_joint_pos(), dtype=np.float64)
        self.model = robot.build_model(robot_config)
        axes = ("x", "y", "z")
        if self.kind == "quadruped":
            self.names = ([f"gravity_{a}" for a in axes] + [f"angular_velocity_{a}" for a in axes]
                          + [f"linear_velocity_{a}" for a in axes] + ["base_height"]
                          + [f"{j}.pos" for j in self.joints] + [f"{j}.vel" for j in self.joints]
                          + [f"{j}.target" for j in self.joints])
        elif self.kind == "drone":
            self.max_thrust = self.model.actuator_ctrlrange[:, 1].copy()
            self.names = ([f"gravity_{a}" for a in axes] + [f"angular_velocity_{a}" for a in axes]
                          + [f"linear_velocity_{a}" for a in axes] + [f"position_{a}" for a in axes]
                          + [f"motor_{i}" for i in range(self.model.nu)])
        else:
            if tcp_site is None:
                raise ValueError(f"{robot.name}: an arm's risk features need its TCP site")
            self.site = self.model.site(tcp_site).id
            self.qpos_adr = self.model.jnt_qposadr[self.model.actuator_trnid[:, 0]]
            self._data = mujoco.MjData(self.model)
            self.names = ([f"{j}.pos" for j in self.joints] + [f"{j}.vel" for j in self.joints]
                          + [f"{j}.target" for j in self.joints] + [f"tcp_{a}" for a in axes]
                          + [f"target_tcp_{a}" for a in axes])
        self.dim = len(self.names)

    def tcp(self, joints: np.ndarray) -> np.ndarray:
        """TCP positions [B, 3] for joint positions [B, n] (forward kinematics)."""
        out = np.empty((len(joints), 3))
        for i, q in enumerate(joints):
            self._data.qpos[self.qpos_adr] = q
            mujoco.mj_kinematics(self.model, self._data)
            out[i] = self._data.site_xpos[self.site]
        return out

    def state_parts(self, batch: MeasuredBatch) -> dict[str, np.ndarray]:
        """The features that depend on the measured states alone (computed once where several commands are judged
        in one state)."""
        if self.kind == "arm":
            return {"joints": np.concatenate([batch.joint_pos, VELOCITY_SCALE * batch.joint_vel], axis=1),
                    "tcp": self.tcp(batch.joint_pos)}
        rotation = rotations(batch.base_quat)
        gravity = -rotation[:, 2, :]  # R^T (0, 0, -1)
        if self.kind == "quadruped":
            return {"base": np.concatenate([gravity, batch.base_ang_vel, to_body(rotation, batch.base_lin_vel),
                                            batch.base_pos[:, 2:3], batch.joint_pos - self.home,
                                            VELOCITY_SCALE * batch.joint_vel], axis=1)}
        return {"base": np.concatenate([gravity, batch.base_ang_vel, batch.base_lin_vel, batch.base_pos], axis=1)}

    def __call__(self, batch: MeasuredBatch, commands: np.ndarray, parts: dict[str, np.ndarray] | None = None
                 ) -> np.ndarray:
        """Features [B, dim] float32 of B measured states and the commands [B, nu] in them (``parts``: the batch's
        ``state_parts``, when already computed)."""
        commands = np.atleast_2d(np.asarray(commands, dtype=np.float64))
        parts = parts if parts is not None else self.state_parts(batch)
        if self.kind == "arm":
            columns = [parts["joints"], commands - batch.joint_pos, parts["tcp"], self.tcp(commands)]
        elif self.kind == "quadruped":
            columns = [parts["base"], commands - self.home]
        else:
            columns = [parts["base"], commands / self.max_thrust]
        return np.concatenate(columns, axis=1).astype(np.float32)


class RiskCritic:
    """A bundle's critic for one robot: ``judge(state)(command)``, the risk in [0, 1]; above ``epsilon`` the safety
    layer runs ``recovery`` instead of the command. Refuses (``BundleError``) a critic whose inputs are not this robot's
    features or whose graph does not take and give what its metadata says."""

    def __init__(self, bundle_path: str | Path, metadata: dict[str, Any], features: RiskFeatures):
        root, critic = Path(bundle_path), metadata["critic"]
        if list(critic["features"]) != features.names:
            raise BundleError(f"bundle {root}: its critic reads {len(critic['features'])} features "
                              f"({critic['features'][:3]}...), this {metadata['robot']} gives {features.dim} "
                              f"({features.names[:3]}...): retrain the critic")
        if critic["recovery"] != RECOVERIES[features.kind]:
            raise BundleError(f"bundle {root}: its critic recovers by {critic['recovery']!r}; a {features.kind} "
                              f"recovers by {RECOVERIES[features.kind]!r}")
        self.session = _session(root / CRITIC_FILE, f"bundle {root}: corrupt {CRITIC_FILE}")
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if [i.name for i in inputs] != [CRITIC_INPUT] or inputs[0].shape[-1] != features.dim or \
                [o.name for o in outputs] != [CRITIC_OUTPUT] or outputs[0].shape[-1] != 1:
            raise BundleError(f"bundle {root}: {CRITIC_FILE} must map {CRITIC_INPUT!r} [batch, {features.dim}] to "
                              f"{CRITIC_OUTPUT!r} [batch, 1]; it has inputs {[(i.name, i.shape) for i in inputs]} "
                              f"and outputs {[(o.name, o.shape) for o in outputs]}")
        self.features, self.joints = features, features.joints
        # one command's features and risk, bound to the graph once: onnxruntime reads and writes these arrays in
        # place on every judgement (``judge``), without run()'s per-call conversions
        self._row, self._risk = np.zeros((1, features.dim), np.float32), np.zeros((1, 1), np.float32)
        self._binding = self.session.io_binding()
        self._binding.bind_cpu_input(CRITIC_INPUT, self._row)
        self._binding.bind_output(CRITIC_OUTPUT, "cpu", 0, np.float32, [1, 1], self._risk.ctypes.data)
        self.epsilon, self.recovery = float(critic["epsilon"]), critic["recovery"]
        self.judges_recovery = bool(critic.get("judges_recovery", False))
        self.metadata, self.recovery_session, self.recovery_command = metadata, None, None
        self._checked_recovery = None
        if "recovery_policy" in critic:
            self.recovery_session = _session(root / RECOVERY_FILE, f"bundle {root}: corrupt {RECOVERY_FILE}")
            check_vector_graph(root, metadata, self.recovery_session, RECOVERY_FILE)  # reads, writes as the policy
            self.recovery_command = np.asarray(critic["recovery_policy"]["command"], dtype=np.float64)
            if self.recovery_command.size != int(metadata.get("command_dim", 0)):
                raise BundleError(f"bundle {root}: critic.recovery_policy.command has {self.recovery_command.size} "
                                  f"values, the task's command {metadata.get('command_dim', 0)}")
            try:  # checked here, before any node starts: the recovery rebuilds the policy's observation
                self._checked_recovery = self.new_recovery()
            except Exception as exc:  # the task's own errors (ObservationError, ConfigError, ...)
                raise BundleError(f"bundle {root}: its critic's recovery policy cannot run: {exc}") from None

    def new_recovery(self) -> Any:
        """The learned recovery for one robot (``robostack.real.recovery_policy.PolicyRecovery``: it keeps that
        robot's past actions); None where the bundle has none. Imported here alone: it needs torch and the task's
        observation terms, which a safety node loads only for a bundle that has one. The one built to check the
        bundle at load goes to the first caller."""
        if self.recovery_session is None:
            return None
        checked, self._checked_recovery = self._checked_recovery, None
        if checked is not None:
            return checked
        from robostack.real.recovery_policy import PolicyRecovery

        return PolicyRecovery(self.recovery_session, self.metadata, self.recovery_command)

    def judge(self, state: RobotState) -> Callable[[np.ndarray], float]:
        """The risk of commands in one measured ``state``, its own features computed once: a tick judges the
        policy's command and, when it engages, the recovery's."""
        batch = MeasuredBatch.of([state], self.joints)
        parts = self.features.state_parts(batch)

        def risk(command: np.ndarray) -> float:
            self._row[:] = self.features(batch, command, parts)
            self.session.run_with_iobinding(self._binding)
            return float(self._risk[0, 0])

        return risk


def _session(path: Path, what: str) -> Any:
    """One onnxruntime session of a small graph, on one thread (the safety node's loop is single-threaded)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BundleError(f"{what}: onnxruntime cannot load it ({exc})") from None


def bundle_critic(bundle_path: str | Path, metadata: dict[str, Any], robot: RobotSpec, robot_config: Any,
                  tcp_site: str | None) -> RiskCritic | None:
    """The bundle's critic for ``robot`` (None where the bundle has none); ``tcp_site``: an arm's TCP (its
    safety config's), which its features need."""
    if "critic" not in metadata:
        return None
    return RiskCritic(bundle_path, metadata, RiskFeatures(robot, robot_config, tcp_site))
