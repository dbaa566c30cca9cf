"""A bundle is usable without RoboStack: its metadata follows the JSON Schema shipped in the repository, each
observation term states its definition, the ONNX graph carries the same contract in its metadata_props, and
the go2-walk observation rebuilt from a MuJoCo state with numpy, the metadata and the schema alone equals
RoboStack's."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = ROOT / "bundles"
SHIPPED = ["cf2-hover", "go2-walk", "panda-reach", "panda-lift", "panda-insert", "panda-insert/base"]
SCHEMA_FILE = ROOT / "robostack" / "bundle" / "metadata.schema.json"


def schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


@pytest.mark.parametrize("bundle", SHIPPED)
def test_shipped_bundles_follow_the_schema_and_their_graph_carries_the_contract(bundle):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema())
    meta = json.loads((BUNDLES / bundle / "metadata.json").read_text())
    jsonschema.validate(meta, schema())
    assert all(term["definition"]["quantity"] and term["definition"]["units"] for term in meta["observation"]["terms"])
    props = {p.key: p.value for p in onnx.load(str(BUNDLES / bundle / "policy.onnx")).metadata_props}
    embedded = json.loads(props["robostack.contract"])
    for key in ("robot", "task", "observation", "action", "joint_names", "actuators", "control_rate_hz"):
        assert embedded[key] == meta[key], key
    assert "task_config" not in embedded and "training" not in embedded


def test_the_schema_refuses_a_term_without_its_definition():
    jsonschema = pytest.importorskip("jsonschema")
    meta = json.loads((BUNDLES / "go2-walk" / "metadata.json").read_text())
    del meta["observation"]["terms"][2]["definition"]
    with pytest.raises(jsonschema.ValidationError, match="'definition' is a required property"):
        jsonschema.validate(meta, schema())


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Body-to-world rotation of a (w, x, y, z) quaternion."""
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def rebuild_observation(meta: dict, measured: dict) -> np.ndarray:
    """A robot integrator's code: the observation vector from the metadata's term definitions and what the robot
    measures (base pose and twist as MuJoCo's free joint holds them: position and linear velocity in the world
    frame, angular velocity in the base frame; joint positions and velocities by name; the task command; the
    policy's previous action). Numpy only; it dispatches on each term's definition, never on its name."""
    rotation = quat_to_matrix(measured["base_orientation"])
    to_frame = {"world": np.eye(3), "base": rotation.T}
    joints = meta["joint_names"]
    default = dict(zip(joints, meta["default_joint_pos"]))
    quantities = {
        "linear velocity of the base": lambda d: to_frame[d["frame"]] @ measured["base_linear_velocity_world"],
        "angular velocity of the base (what a gyroscope on it measures)":
            lambda d: measured["base_angular_velocity_base"],  # the gyroscope is on the base
        "unit vector along gravity": lambda d: to_frame[d["frame"]] @ np.array([0.0, 0.0, -1.0]),
        "commanded base velocity": lambda d: measured["command"],
        "joint positions": lambda d: np.array([measured["joint_position"][j] - default[j] for j in joints]),
        "joint velocities": lambda d: np.array([measured["joint_velocity"][j] for j in joints]),
        "the policy's previous action": lambda d: measured["previous_action"],
    }
    parts = []
    for term in meta["observation"]["terms"]:
        definition = term["definition"]
        assert definition["frame"] in ("", "world", "base")
        if definition["quantity"] == "joint positions":
            assert definition["reference"].startswith("minus default_joint_pos")
        value = np.asarray(quantities[definition["quantity"]](definition), dtype=np.float64)
        assert value.shape == (term["dim"],), term["name"]
        parts.append(term.get("scale", 1.0) * value)
    return np.concatenate(parts)


def test_go2_walk_observation_rebuilt_from_the_metadata_alone_matches_robostack():
    """MuJoCo states along a rollout of the shipped go2-walk policy (play: no noise); at each, RoboStack's own
    observation against the one ``rebuild_observation`` makes from the metadata (validated by the schema)."""
    jsonschema = pytest.importorskip("jsonschema")
    import torch

    from robostack import sim

    meta = json.loads((BUNDLES / "go2-walk" / "metadata.json").read_text())
    jsonschema.validate(meta, schema())
    env = sim.make_env("go2-walk", num_envs=1, seed=3, play=True, config=meta["task_config"],
                       overrides=["sim.num_threads=1"])
    from robostack.bundle import load_bundle

    policy = load_bundle(BUNDLES / "go2-walk")
    obs, _ = env.reset(seed=3)
    model = env.default_model
    previous = np.zeros(policy.action_dim)
    compared = 0
    for step in range(60):
        env.command[0] = torch.tensor([0.6, 0.2, -0.4])
        obs = env.observe()["policy"][0].numpy()
        data = env.sim.data_for(0)
        measured = {
            "base_orientation": data.qpos[3:7].copy(),
            "base_linear_velocity_world": data.qvel[0:3].copy(),
            "base_angular_velocity_base": data.qvel[3:6].copy(),
            "joint_position": {j: data.qpos[model.joint(j).qposadr[0]] for j in meta["joint_names"]},
            "joint_velocity": {j: data.qvel[model.joint(j).dofadr[0]] for j in meta["joint_names"]},
            "command": env.command[0].numpy().astype(np.float64),
            "previous_action": previous,
        }
        np.testing.assert_allclose(rebuild_observation(meta, measured), obs, atol=1e-6)
        compared += 1
        action = policy.act(obs)
        previous = action.astype(np.float64)
        obs, _, terminated, truncated, _ = env.step(torch.as_tensor(action)[None])
        assert not (terminated or truncated)
    assert compared == 60
