"""RoboStack's nodes join DDS over UDP (robostack.real.executor.init_ros): Fast DDS's shared-memory transport can
block a writer for its 1 s healthy check on a dead reader's port, and no dead peer may stall the safety layer.
(The deployed graph over LOCALHOST discovery: tests/real/test_deploy.py's policy-SIGKILL test checks no node maps
shared memory.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from robostack.real.executor import udp_only_environment

NODE = """
import json, os
from robostack.real.executor import init_ros
init_ros([])
import rclpy
from std_msgs.msg import String
node = rclpy.create_node("transport_probe")
node.create_publisher(String, "transport_probe", 10).publish(String(data="x"))
maps = open(f"/proc/{os.getpid()}/maps").read().splitlines()
print(json.dumps({"shared_memory": sorted({l.split()[-1] for l in maps if "/dev/shm/fastrtps" in l}),
                  "range": os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE")}))
"""


def test_the_transport_is_udp_unless_the_user_configured_fast_dds():
    assert udp_only_environment({}) == {"FASTDDS_BUILTIN_TRANSPORTS": "UDPv4"}
    localhost = udp_only_environment({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"})
    assert localhost["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET"  # rmw_fastrtps's LOCALHOST forces shared memory
    assert localhost["FASTRTPS_DEFAULT_PROFILES_FILE"].endswith("configs/dds/loopback_udp.xml")
    assert os.path.isfile(localhost["FASTRTPS_DEFAULT_PROFILES_FILE"])
    for chosen in ({"FASTDDS_BUILTIN_TRANSPORTS": "SHM"}, {"FASTRTPS_DEFAULT_PROFILES_FILE": "/x.xml"},
                   {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}):
        assert udp_only_environment(chosen) == {}


@pytest.mark.parametrize("discovery", ["SUBNET", "LOCALHOST"])
def test_a_node_maps_no_shared_memory(discovery):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTDDS_", "FASTRTPS_"))}
    env.update(ROS_AUTOMATIC_DISCOVERY_RANGE=discovery, ROS_DOMAIN_ID="45")
    done = subprocess.run([sys.executable, "-c", NODE], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"shared_memory": [], "range": "SUBNET"}
