"""A bag as ``recorder_node`` records one, written without ROS processes (the messages the simulated driver
publishes, serialized as rclpy does)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_go2_bag(path: Path, namespace: str, steps: int, takeovers: tuple = ((10, 20),),
                  reports: dict[int, bool | str] | None = None) -> dict:
    """A bag as recorder_node writes one for go2 (the topics of ``recorded_topics``), from the messages the
    simulated driver publishes: state at 50 Hz, each answered 5 ms later by a driver command, a task command
    at step 5 and takeovers from step to step (``takeovers``); ``reports``: step -> success of the simulated
    episodes that end there (sim_robot_node's ``sim/episode`` report, just before that step's state: the reset
    state), or a report's text as it is."""
    from builtin_interfaces.msg import Time
    from geometry_msgs.msg import Twist
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Float64MultiArray, String

    from robostack.real.graph import recorded_topics
    from robostack.real.bag import BagWriter
    from robostack.real.deploy_config import load_deploy_config
    from robostack.real.robot_state import RobotState
    from robostack.real.state import state_messages

    cfg = load_deploy_config("go2")
    joints = [f"leg{i}" for i in range(12)]
    yaw = 0.4
    orientation = np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])
    velocity = np.array([0.5, 0.1, 0.0])  # world frame; odometry carries it in the body frame
    bag = BagWriter(path, split_period_s=0)
    topics = {}
    for entry in recorded_topics("go2", sim=reports is not None):
        topic, msgtype = entry.rsplit(":", 1)
        topics[topic] = topic if topic.startswith("/") else f"{namespace}/{topic}"
        bag.add_topic(topics[topic], msgtype)
    start = 1_000_000_000
    for k in range(steps):
        t = start + k * 20_000_000
        state = RobotState(joint_position={j: 0.01 * k + 0.1 * n for n, j in enumerate(joints)},
                           joint_velocity={j: 0.5 + n for n, j in enumerate(joints)},
                           base_position=np.array([0.01 * k, 0.0, 0.3]), base_orientation=orientation,
                           base_linear_velocity=velocity, base_angular_velocity=np.array([0.0, 0.0, 0.2]))
        stamp = Time(sec=t // 1_000_000_000, nanosec=t % 1_000_000_000)  # measured when the recorder got it
        for offset, (source, msg) in enumerate(state_messages(cfg, state, stamp, joints)):
            bag.write(topics[getattr(cfg.topics, source).topic], serialize_message(msg), t + offset * 1000)
        bag.write(topics[cfg.topics.driver_command.topic],
                  serialize_message(Float64MultiArray(data=[float(k)] * 12)), t + 5_000_000)
        if k == 5:
            command = Twist()
            command.linear.x, command.angular.z = 0.4, 0.2
            bag.write(topics["cmd_vel"], serialize_message(command), t + 1_000_000)
        for first, end in takeovers:
            if k in (first, end):
                bag.write(topics["teleop/intervention"],
                          serialize_message(String(data="start" if k == first else "end")), t + 1_000_000)
        if k in (reports or {}):
            report = reports[k] if isinstance(reports[k], str) else \
                json.dumps({"episode": sorted(reports).index(k), "success": reports[k]})
            bag.write(topics["sim/episode"], serialize_message(String(data=report)), t - 100_000)
    bag.close()
    return {"joints": joints, "orientation": orientation, "velocity": velocity}
