"""What a robot's drivers and perception would report about one env of a ``TaskEnv``: tests compare the
deploy side (``robostack.real``), which sees only this, with the simulator."""
from __future__ import annotations

from robostack.real.observation import free_joints
from robostack.real.robot_state import BodyState, Pose, RobotState


def measured_state(env, joint_names: list[str], i: int = 0) -> RobotState:
    """Joints by name; the floating base, the task's object and its fixtures' poses, where the task has them."""
    model = env.default_model
    q, v = env.sim.qpos[i], env.sim.qvel[i]

    def body(joint: int) -> BodyState:
        a, d = model.jnt_qposadr[joint], model.jnt_dofadr[joint]
        return BodyState(q[a:a + 3].copy(), q[a + 3:a + 7].copy(), v[d:d + 3].copy(), v[d + 3:d + 6].copy())

    state = RobotState(joint_position=dict(zip(joint_names, env.joint_pos[i].tolist())),
                       joint_velocity=dict(zip(joint_names, env.joint_vel[i].tolist())))
    base, obj = free_joints(model)
    if base is not None:
        b = body(base)
        state.base_position, state.base_orientation = b.position, b.orientation
        state.base_linear_velocity, state.base_angular_velocity = b.linear_velocity, b.angular_velocity
    if obj is not None:
        state.object = body(obj)
    placed = env.sim.models[i]
    state.fixtures = {name: Pose(placed.body(name).pos.copy(), placed.body(name).quat.copy())
                      for name in env.task.fixtures}
    return state
