"""Every shipped bundle commands what it commanded before the architecture change (issue 17): the runner of
``policy_node`` (observation rebuilt from the measured state by the task's own terms, the bundle's actor, the
action map) on a recorded sequence of measured states gives the recorded controls.

``shipped_commands.json.gz`` was recorded with the code of commit 10398a7 (the last before the change): 40 control
steps of each shipped bundle in its randomized task (seed 3), the state as the robot's drivers would report it,
the task command, and the actuator controls the runner sent.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from robostack.real.policy_node import PolicyRunner
from robostack.real.robot_state import BodyState, Pose, RobotState

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = json.loads(gzip.decompress((Path(__file__).with_name("shipped_commands.json.gz")).read_bytes()))


def body(values: list[float] | None) -> BodyState | None:
    return None if values is None else BodyState(*np.split(np.asarray(values), [3, 7, 10]))


def recorded_state(record: dict, k: int) -> RobotState:
    names = record["joint_names"]
    base = body(record["base"][k])
    return RobotState(
        joint_position=dict(zip(names, record["joint_position"][k])),
        joint_velocity=dict(zip(names, record["joint_velocity"][k])),
        **({} if base is None else dict(base_position=base.position, base_orientation=base.orientation,
                                        base_linear_velocity=base.linear_velocity,
                                        base_angular_velocity=base.angular_velocity)),
        object=body(record["object"][k]),
        fixtures={name: Pose(np.asarray(v[:3]), np.asarray(v[3:])) for name, v in record["fixtures"][k].items()})


@pytest.mark.parametrize("task", sorted(REFERENCE))
def test_a_shipped_bundle_commands_what_it_did_before(task):
    record = REFERENCE[task]
    runner = PolicyRunner(str(ROOT / "bundles" / task))
    runner.executed = True  # as when the safety layer passes its commands
    got = []
    with torch.inference_mode():
        for k in range(len(record["controls"])):
            runner.set_command(record["command"][k])
            for builder in runner.builders:
                builder.update(recorded_state(record, k))
            if k:
                runner.builder.integrate()
            action = runner.actor.act()[0]
            got.append(runner.controls_for(action))
    np.testing.assert_allclose(np.array(got), np.array(record["controls"]), rtol=0, atol=1e-6)
