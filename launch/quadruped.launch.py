"""ROS 2 launch file: a policy bundle on a go2 (quadruped) behind the safety layer.

    ros2 launch robostack quadruped.launch.py policy:=/path/to/bundle [sim:=true] [teleop:=joy|twist]
        [record:=true record_dir:=DIR]

The node graph is described once in robostack.real.graph.node_graph, which ``robostack deploy`` also runs.
"""
from robostack.real.graph import launch_description


def generate_launch_description():
    return launch_description("quadruped")
