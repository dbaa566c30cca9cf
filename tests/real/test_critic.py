"""The safety critic in a bundle and on the robot: its features from measured states, the export and load round
trip (the same risk as the trained network), and the refusals: a critic sealed for another policy, one that reads
another robot's features, a corrupt graph; ``robostack deploy`` refuses them before any node starts."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

from robostack import registry
from robostack.bundle import BundleError, load_bundle, read_metadata
from robostack.bundle.format import CRITIC_FILE, METADATA_FILE, content_hash
from robostack.bundle.write import add_critic
from robostack.policies.safety_critic import RiskNetwork
from robostack.real.critic import MeasuredBatch, RiskFeatures, bundle_critic, rotations, to_body
from robostack.real.robot_state import RobotState
from robostack.workflows.safety_critic import write_critic_onnx

ROOT = Path(__file__).resolve().parents[2]


def drone_state(position=(0.1, -0.2, 1.0), quat=(1.0, 0.0, 0.0, 0.0), velocity=(0.5, 0.0, 0.0)) -> RobotState:
    return RobotState(base_position=np.array(position, dtype=float), base_orientation=np.array(quat, dtype=float),
                      base_linear_velocity=np.array(velocity, dtype=float), base_angular_velocity=np.zeros(3))


def test_body_frame_of_a_yawed_and_a_rolled_body():
    yaw90 = np.array([[np.cos(np.pi / 4), 0.0, 0.0, np.sin(np.pi / 4)]])  # about z: world x is body -y
    np.testing.assert_allclose(to_body(rotations(yaw90), np.array([[1.0, 0.0, 0.0]])), [[0.0, -1.0, 0.0]],
                               atol=1e-12)
    roll90 = np.array([[np.cos(np.pi / 4), np.sin(np.pi / 4), 0.0, 0.0]]) * 3.0  # not normalized: normalized first
    np.testing.assert_allclose(-rotations(roll90)[:, 2, :], [[0.0, -1.0, 0.0]], atol=1e-12)  # gravity in the body


def test_drone_features_are_what_it_measures_and_its_motor_fractions():
    robot = registry.robot("cf2")
    features = RiskFeatures(robot, robot.load_config())
    max_thrust = robot.build_model().actuator_ctrlrange[:, 1]
    x = features(MeasuredBatch.of([drone_state()], robot.joint_names), max_thrust * 0.5)
    assert x.shape == (1, features.dim) and x.dtype == np.float32
    named = dict(zip(features.names, x[0]))
    assert named["gravity_z"] == -1.0 and named["linear_velocity_x"] == 0.5 and named["position_y"] == -0.2
    assert [named[f"motor_{i}"] for i in range(4)] == [0.5] * 4
    tilted = drone_state(quat=(0.9, 0.1, -0.2, 0.3))  # alone (the robot's path) as in a batch (training's)
    pair = features(MeasuredBatch.of([drone_state(), tilted], robot.joint_names), np.stack([max_thrust * 0.5] * 2))
    np.testing.assert_array_equal(pair[1], features(MeasuredBatch.of([tilted], robot.joint_names), max_thrust * 0.5)[0])


@pytest.mark.parametrize("name", ["go2", "panda"])
def test_a_states_features_computed_once_serve_every_command_judged_in_it(name):
    """A tick judges the policy's command and the recovery's in one state (``RiskCritic.judge``): the state's
    part is computed once, and each command's features are what they would be alone, where the names say, and
    what the batch path that labels the training rollouts gives."""
    robot = registry.robot(name)
    features = RiskFeatures(robot, robot.load_config(), "ee" if name == "panda" else None)
    rng = np.random.default_rng(0)
    joints = features.home + rng.uniform(-0.1, 0.1, len(features.home))
    base = {} if name == "panda" else dict(base_position=np.array([0.0, 0.0, 0.3]),
                                           base_orientation=np.array([1.0, 0.0, 0.0, 0.0]),
                                           base_linear_velocity=np.zeros(3), base_angular_velocity=np.zeros(3))
    state = RobotState(joint_position=dict(zip(features.joints, joints)),
                       joint_velocity=dict.fromkeys(features.joints, 0.5), **base)
    batch = MeasuredBatch.of([state], features.joints)
    parts = features.state_parts(batch)
    for command in (features.home, joints + 0.05):
        x = features(batch, command, parts)
        np.testing.assert_array_equal(x, features(batch, command))
        pair = MeasuredBatch.of([state, state], features.joints)  # the batch path (training) gives the same row
        np.testing.assert_array_equal(features(pair, np.stack([command, command]))[1], x[0])
        named = dict(zip(features.names, x[0]))
        reference = joints if name == "panda" else features.home
        np.testing.assert_allclose([named[f"{j}.target"] for j in features.joints], command - reference, atol=1e-6)
        assert named[f"{features.joints[0]}.pos"] == pytest.approx(joints[0] - (0.0 if name == "panda" else
                                                                                 features.home[0]), abs=1e-6)
        if name == "panda":
            np.testing.assert_allclose([named[f"target_tcp_{a}"] for a in "xyz"], features.tcp(command[None])[0],
                                       atol=1e-6)


def _critic_bundle(tmp_path: Path, task: str = "cf2-hover") -> tuple[Path, RiskNetwork, RiskFeatures]:
    bundle = tmp_path / task
    shutil.copytree(ROOT / "bundles" / task, bundle)
    (bundle / CRITIC_FILE).unlink(missing_ok=True)
    metadata = json.loads((bundle / METADATA_FILE).read_text())
    metadata.pop("critic", None)
    metadata["files"] = {k: v for k, v in metadata["files"].items() if k != CRITIC_FILE}
    metadata["content_hash"] = content_hash(bundle, metadata)
    (bundle / METADATA_FILE).write_text(json.dumps(metadata))
    robot = registry.robot(load_bundle(bundle).robot)
    features = RiskFeatures(robot, robot.load_config())
    torch.manual_seed(0)
    net = RiskNetwork(features.dim, [16], np.zeros(features.dim), np.ones(features.dim)).eval()
    add_critic(bundle, lambda path: write_critic_onnx(net, path),
               {"features": features.names, "epsilon": 0.3, "gamma": 0.97, "recovery": "level"})
    return bundle, net, features


def test_export_and_load_round_trip_gives_the_networks_risk(tmp_path):
    bundle, net, features = _critic_bundle(tmp_path)
    before = read_metadata(ROOT / "bundles" / "cf2-hover")
    metadata = read_metadata(bundle)  # sealed: the hash covers the critic
    assert metadata["content_hash"] != before["content_hash"] and CRITIC_FILE in metadata["files"]
    assert metadata["critic"]["policy_files"]["policy.onnx"] == before["files"]["policy.onnx"]
    jsonschema.validate(metadata, json.loads((ROOT / "robostack" / "bundle" / "metadata.schema.json").read_text()))
    critic = bundle_critic(bundle, metadata, registry.robot("cf2"), registry.robot("cf2").load_config(), None)
    assert critic.epsilon == 0.3
    rng = np.random.default_rng(1)
    for _ in range(5):
        state = drone_state(rng.normal(0, 1, 3), rng.normal(0, 1, 4), rng.normal(0, 1, 3))
        command = rng.uniform(0.0, 0.15, 4)
        x = features(MeasuredBatch.of([state], []), command)
        with torch.no_grad():
            expected = float(net(torch.as_tensor(x))[0, 0])
        assert critic.judge(state)(command) == pytest.approx(expected, abs=1e-6)
    # the policy's own files and actions are untouched
    assert (bundle / "policy.onnx").read_bytes() == (ROOT / "bundles" / "cf2-hover" / "policy.onnx").read_bytes()
    without = {k: v for k, v in before.items() if k != "critic"}
    assert bundle_critic(ROOT / "bundles" / "cf2-hover", without, registry.robot("cf2"),
                         registry.robot("cf2").load_config(), None) is None


def _reseal(bundle: Path, change) -> None:
    metadata = json.loads((bundle / METADATA_FILE).read_text())
    change(metadata)
    metadata["content_hash"] = content_hash(bundle, metadata)
    (bundle / METADATA_FILE).write_text(json.dumps(metadata))


def test_a_critic_trained_for_another_policy_is_refused(tmp_path):
    bundle, _, _ = _critic_bundle(tmp_path)
    _reseal(bundle, lambda m: m["critic"]["policy_files"].update({"policy.onnx": "0" * 64}))
    with pytest.raises(BundleError, match="its critic was trained for another policy"):
        read_metadata(bundle)


def test_a_critic_of_other_features_or_a_corrupt_graph_is_refused(tmp_path):
    bundle, _, _ = _critic_bundle(tmp_path)
    _reseal(bundle, lambda m: m["critic"].update(features=m["critic"]["features"][:-1] + ["motor_9"]))
    with pytest.raises(BundleError, match="its critic reads 16 features"):
        bundle_critic(bundle, read_metadata(bundle), registry.robot("cf2"), registry.robot("cf2").load_config(), None)

    bundle, _, _ = _critic_bundle(tmp_path / "corrupt")
    (bundle / CRITIC_FILE).write_bytes(b"not an onnx graph")
    with pytest.raises(BundleError, match="content hash"):  # the seal sees it first
        read_metadata(bundle)
    _reseal(bundle, lambda m: m["files"].update({CRITIC_FILE: hashlib.sha256(b"not an onnx graph").hexdigest()}))
    with pytest.raises(BundleError, match="corrupt critic.onnx"):  # resealed garbage: onnxruntime refuses it
        bundle_critic(bundle, read_metadata(bundle), registry.robot("cf2"), registry.robot("cf2").load_config(), None)


def test_a_critic_graph_giving_more_than_one_risk_per_row_is_refused(tmp_path):
    """The node binds one risk value per judgement: a graph of another output width never reaches it."""
    bundle, _, features = _critic_bundle(tmp_path)

    def two_risks(path: Path) -> None:
        torch.onnx.export(torch.nn.Linear(features.dim, 2), (torch.zeros(1, features.dim),), str(path), dynamo=False,
                          input_names=["features"], output_names=["risk"], dynamic_axes={"features": {0: "batch"}})

    add_critic(bundle, two_risks, read_metadata(bundle)["critic"])
    with pytest.raises(BundleError, match=r"must map 'features' \[batch, 16\] to 'risk' \[batch, 1\]"):
        bundle_critic(bundle, read_metadata(bundle), registry.robot("cf2"), registry.robot("cf2").load_config(), None)


def test_robostack_deploy_refuses_a_mismatched_critic_before_any_node_starts(tmp_path, capsys, monkeypatch):
    from robostack.cli import main

    bundle, _, _ = _critic_bundle(tmp_path)
    _reseal(bundle, lambda m: m["critic"].update(recovery="stand"))  # a quadruped's recovery on a drone
    monkeypatch.chdir(tmp_path)
    assert main(["deploy", "--task", "cf2-hover", "--policy", str(bundle), "--sim"]) == 2
    err = capsys.readouterr().err
    assert "its critic recovers by 'stand'; a drone recovers by 'level'" in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()  # nothing started, no logs


def _overrides(bag: Path) -> list[dict]:
    from robostack.real.bag import read_messages

    return [json.loads(m.msg.data) for m in read_messages(bag, "mcap", topics=["/safety/override"])]


@pytest.mark.parametrize("with_critic", [True, False])
def test_a_disturbed_rehearsal_engages_the_critics_recovery_over_ros2(with_critic, tmp_path, capsys, monkeypatch):
    """The shipped cf2-hover bundle with its critic, through the real graph (policy_node, safety_node,
    sim_robot_node, recorder as processes over DDS) under gusts far beyond its training range: the safety node
    engages the critic's recovery (on safety/override, with the risk above epsilon, in the bag) and the policy
    gets the drone back afterwards. The same bundle without its critic: no critic anywhere, as before."""
    from robostack.cli import main

    bundle = ROOT / "bundles" / "cf2-hover"
    epsilon = read_metadata(bundle)["critic"]["epsilon"]
    if not with_critic:
        bundle = tmp_path / "plain"
        shutil.copytree(ROOT / "bundles" / "cf2-hover", bundle)
        (bundle / CRITIC_FILE).unlink()
        _reseal(bundle, lambda m: (m.pop("critic"), m["files"].pop(CRITIC_FILE)))
    monkeypatch.setenv("ROS_DOMAIN_ID", "44" if with_critic else "45")
    monkeypatch.chdir(tmp_path)
    bag = tmp_path / "bag"
    assert main(["deploy", "--task", "cf2-hover", "--policy", str(bundle), "--sim", "--episodes", "4", "--seed", "3",
                 "--disturbance", "randomization.wind.range=[-0.3,0.3]", "--disturbance",
                 "randomization.wind.interval_s=[0.2,0.4]", "--record", str(bag), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["episodes"] == 4 and set(report["exit_codes"].values()) == {0}, report
    overrides = _overrides(bag)
    critic = [o for o in overrides if any(r.startswith("critic: risk") for r in o["reasons"])]
    if with_critic:
        assert critic, overrides[:5]
        assert all(o["risk"] > epsilon or o["risk"] != o["risk"] for o in critic)
        assert all("recovery (level and hold)" in o["reasons"][0] for o in critic)
        assert overrides[-1]["reasons"] == [] or not overrides[-1]["reasons"][0].startswith("critic"), overrides[-3:]
    else:
        assert not critic and not any("risk" in o for o in overrides)
