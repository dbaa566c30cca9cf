"""A recovery policy trained with the critic (``critic.recovery_policy``): sealed into the bundle with its critic,
refused when tampered with or when it does not read and write what its policy does, run by the safety layer at the
control rate in place of the scripted recovery, and replaced by the scripted one when it cannot act."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from robostack import registry
from robostack.bundle import BundleError, load_bundle, read_metadata
from robostack.bundle.format import CRITIC_FILE, METADATA_FILE, ONNX_FILE, RECOVERY_FILE, content_hash
from robostack.bundle.write import add_critic
from robostack.policies.safety_critic import RiskNetwork
from robostack.real.critic import RiskFeatures, bundle_critic
from robostack.real.deploy_config import load_deploy_config
from robostack.real.observation import ObservationBuilder
from robostack.real.robot_state import RobotState
from robostack.real.safety import Command, Measurement, safety_config, safety_layer
from robostack.workflows.safety_critic import write_critic_onnx

ROOT = Path(__file__).resolve().parents[2]
GO2 = registry.robot("go2")


def _go2_with_recovery(tmp_path: Path, recovery: Path = ROOT / "bundles" / "go2-walk" / ONNX_FILE,
                       command=(0.0, 0.0, 0.0), epsilon: float = 0.3) -> Path:
    """bundles/go2-walk with a fresh critic (random: it engages everywhere at this epsilon) and ``recovery`` as its
    recovery policy's graph (by default the walking policy itself, which reads and writes what its policy does)."""
    bundle = tmp_path / "go2-walk"
    shutil.copytree(ROOT / "bundles" / "go2-walk", bundle)
    (bundle / CRITIC_FILE).unlink(missing_ok=True)
    features = RiskFeatures(GO2, GO2.load_config())
    torch.manual_seed(0)
    net = RiskNetwork(features.dim, [16], np.zeros(features.dim), np.ones(features.dim)).eval()
    with torch.no_grad():
        net.body[-1].bias.fill_(5.0)  # risk ~0.99 everywhere
    add_critic(bundle, lambda path: write_critic_onnx(net, path),
               {"features": features.names, "epsilon": epsilon, "gamma": 0.95, "recovery": "stand",
                "recovery_policy": {"file": RECOVERY_FILE, "command": list(command)}}, recovery=recovery)
    return bundle


def _critic(bundle: Path):
    return bundle_critic(bundle, read_metadata(bundle), GO2, GO2.load_config(), None)


def _reseal(bundle: Path, change) -> None:
    metadata = json.loads((bundle / METADATA_FILE).read_text())
    change(metadata)
    metadata["content_hash"] = content_hash(bundle, metadata)
    (bundle / METADATA_FILE).write_text(json.dumps(metadata))


def _standing(dz: float = 0.0) -> RobotState:
    joints = GO2.load_config().home_joint_pos()
    names = list(GO2.joint_names)
    return RobotState(joint_position=dict(zip(names, joints + 0.05)), joint_velocity=dict.fromkeys(names, 0.3),
                      base_position=np.array([0.0, 0.0, 0.30 + dz]), base_orientation=np.array([0.99, 0.05, 0.0, 0.0]),
                      base_linear_velocity=np.array([0.4, 0.0, 0.0]), base_angular_velocity=np.array([0.0, 0.2, 0.0]))


def test_the_recovery_is_sealed_with_its_critic_and_a_tampered_or_mismatched_one_is_refused(tmp_path):
    bundle = _go2_with_recovery(tmp_path)
    metadata = read_metadata(bundle)  # verified: the hash covers the recovery
    assert RECOVERY_FILE in metadata["files"]
    critic = _critic(bundle)
    first, second = critic.new_recovery(), critic.new_recovery()  # the first is the one built to check the bundle
    assert first is not None and second is not None and first is not second  # each robot keeps its own past actions

    (bundle / RECOVERY_FILE).write_bytes((bundle / RECOVERY_FILE).read_bytes() + b"\0")
    with pytest.raises(BundleError, match="content hash mismatch"):
        read_metadata(bundle)
    (bundle / RECOVERY_FILE).unlink()
    with pytest.raises(BundleError, match="missing recovery.onnx"):
        read_metadata(bundle)
    (bundle / RECOVERY_FILE).write_bytes(b"not an onnx graph")  # resealed garbage: onnxruntime refuses it
    _reseal(bundle, lambda m: m["files"].update({RECOVERY_FILE: hashlib.sha256(b"not an onnx graph").hexdigest()}))
    with pytest.raises(BundleError, match="corrupt recovery.onnx: onnxruntime cannot load it"):
        _critic(bundle)

    bundle = _go2_with_recovery(tmp_path / "drone", recovery=ROOT / "bundles" / "cf2-hover" / ONNX_FILE)
    with pytest.raises(BundleError, match="recovery.onnx takes observations of size .* the metadata says observation.dim = 48"):
        _critic(bundle)

    bundle = _go2_with_recovery(tmp_path / "command", command=(0.0, 0.0))
    with pytest.raises(BundleError, match="recovery_policy.command has 2 values, the task's command 3"):
        _critic(bundle)

    bundle = _go2_with_recovery(tmp_path / "task")  # its task no longer rebuilds the observation it reads
    _reseal(bundle, lambda m: m["task_config"].update(action_scale=0.5))
    with pytest.raises(BundleError, match="its critic's recovery policy cannot run: .*re-export it"):
        _critic(bundle)

    bundle = _go2_with_recovery(tmp_path / "malformed")
    _reseal(bundle, lambda m: m["critic"]["recovery_policy"].update(command=["fast"]))
    with pytest.raises(BundleError, match="critic.recovery_policy must be"):
        read_metadata(bundle)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return _go2_with_recovery(tmp_path_factory.mktemp("recovery"))


def test_the_layer_runs_the_learned_recovery_at_the_control_rate(bundle):
    layer = _layer(bundle)
    home = GO2.load_config().home_joint_pos()
    state = _standing()
    _, reasons = layer.filter(Command(home, 0.0), Measurement(state, 0.0), 0.0)
    assert reasons[0].startswith("critic: risk 0.99 above 0.30: recovery (learned recovery)"), reasons
    # what the walking policy does at a zero command in this state, from the start of an episode (the command it
    # took over is the default pose: action zero, as after a reset)
    builder = ObservationBuilder(read_metadata(bundle))
    builder.reset(np.zeros(3))
    builder.update(state)
    policy = load_bundle(bundle)
    expected = builder.controls(np.clip(policy.act(builder.observation()[None])[0], -1.0, 1.0))
    np.testing.assert_allclose(layer.executed, expected, atol=1e-6)
    assert not np.allclose(expected, home, atol=1e-3)
    # held between control steps (the layer runs at 500 Hz, the policy at 50), a new action after one
    layer.filter(Command(home, 0.002), Measurement(_standing(0.02), 0.002), 0.002)
    np.testing.assert_array_equal(layer.executed, expected)
    layer.filter(Command(home, 0.02), Measurement(_standing(0.02), 0.02), 0.02)
    assert not np.allclose(layer.executed, expected, atol=1e-6)


def test_a_learned_recovery_that_cannot_act_hands_over_to_the_scripted_one(bundle):
    layer = _layer(bundle)
    layer.learned_recovery.session = _Raising()
    home = GO2.load_config().home_joint_pos()
    safe, reasons = layer.filter(Command(home + 0.1, 0.0), Measurement(_standing(), 0.0), 0.0)
    assert safe is not None and np.isfinite(safe).all()
    assert "recovery (stand; the learned recovery failed: RuntimeError: graph failed)" in reasons[0], reasons
    np.testing.assert_array_equal(layer.executed, home)

    layer = _layer(bundle)
    layer.learned_recovery.session = _Raising(np.full((1, 12), np.nan, dtype=np.float32))
    safe, reasons = layer.filter(Command(home + 0.1, 0.0), Measurement(_standing(), 0.0), 0.0)
    assert "the learned recovery failed: ObservationError" in reasons[0] and np.isfinite(safe).all(), reasons


class _Raising:
    """A recovery graph that fails (or gives ``output``)."""

    def __init__(self, output: np.ndarray | None = None):
        self.output = output

    def run(self, *_args, **_kwargs):
        if self.output is None:
            raise RuntimeError("graph failed")
        return [self.output]


def _layer(bundle: Path):
    cfg = safety_config(load_deploy_config("go2"), "configs/deploy/go2.yaml")
    return safety_layer(GO2, GO2.load_config(), cfg, _critic(bundle))


def test_the_schema_describes_a_bundle_with_a_recovery_policy(bundle):
    import jsonschema

    jsonschema.validate(read_metadata(bundle), json.loads((ROOT / "robostack" / "bundle" / "metadata.schema.json")
                                                          .read_text()))


def _overrides(bag: Path) -> list[dict]:
    from robostack.real.bag import read_messages

    return [json.loads(m.msg.data) for m in read_messages(bag, "mcap", topics=["/safety/override"])]


def test_the_safety_node_runs_the_learned_recovery_over_ros2(bundle, tmp_path, capsys, monkeypatch):
    """The real graph (policy_node, safety_node, sim_robot_node, recorder as processes over DDS) with a critic that
    engages everywhere: the safety node runs the bundle's recovery policy (here the walking policy itself at a zero
    command), says so on safety/override, and the go2 stays up."""
    from robostack.cli import main

    monkeypatch.setenv("ROS_DOMAIN_ID", "47")
    monkeypatch.chdir(tmp_path)
    bag = tmp_path / "bag"
    assert main(["deploy", "--task", "go2-walk", "--policy", str(bundle), "--sim", "--episodes", "1", "--seed", "3",
                 "--disturbance", "sim.episode_length_s=3.0", "--record", str(bag), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["episodes"] == 1 and set(report["exit_codes"].values()) == {0}, report
    critic = [o for o in _overrides(bag) if any(r.startswith("critic: risk") for r in o["reasons"])]
    assert critic and all("recovery (learned recovery)" in o["reasons"][0] for o in critic), critic[:3]
    assert not any("failed" in r for o in critic for r in o["reasons"])
    log = (next((tmp_path / "runs" / "deploy").iterdir()) / "safety_node.log").read_text()
    assert "rad above" not in log and "base height" not in log  # no fall: the envelope never tripped
