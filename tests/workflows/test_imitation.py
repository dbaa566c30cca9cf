"""Learning from demonstrations (``robostack.imitation``): a dataset written by ``robostack teleop`` trains a
diffusion policy as it is (``robostack train TASK --dataset``), and the run evaluates in its task."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from robostack import cli, sim
from robostack.bundle import BundleError, ChunkPolicyBundle, load_bundle
from robostack.config import ConfigError
from robostack.data.dataset import DatasetError, load_dataset
from robostack.data.features import sim_features, sim_frame
from robostack.workflows.imitation import dataset_episodes, joint_columns, train_imitation, vector_observations
from robostack.conventions import ACTION_KEY, STATE_KEY
from robostack.policies.diffusion import DiffusionPolicy
from robostack.sim.robots.panda import insert, manipulation

from helpers.measured import measured_state

TINY = ["diffusion.num_steps=30", "diffusion.warmup_steps=5", "diffusion.batch_size=16",
        "diffusion.mlp_hidden=[32, 32]", "eval_episodes=2", "eval_num_envs=2"]
CONTROLS = ["action_key=action", "relative_actions=true"]  # actuator controls, offsets from the joints


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    out = tmp_path_factory.mktemp("imitation") / "demos"
    assert cli.main(["teleop", "--task", "panda-lift", "--device", "scripted", "--out", str(out),
                     "--episodes", "3", "--randomized", "--json"]) == 0
    return out


def test_simulated_frames_carry_the_scene_state():
    env = sim.make_env("panda-insert", num_envs=2, seed=0)
    try:
        env.reset(seed=0)
        names = sim_features(env)["observation.environment_state"]["names"]
        assert names[:3] == ["object_pos.x", "object_pos.y", "object_pos.z"] and names[-1] == "hole_quat.z"
        state = sim_frame(env)["observation.environment_state"]
        assert state.shape == (2, 14)
        np.testing.assert_allclose(state[:, :3], manipulation.object_pos(env).numpy(), atol=1e-6)
        np.testing.assert_allclose(state[:, 7:10], insert.hole_pos(env).numpy(), atol=1e-6)
        assert not np.allclose(state[0, 7:10], state[1, 7:10])  # each env's own sampled hole
    finally:
        env.close()


@pytest.fixture(scope="module")
def trained(demos, tmp_path_factory):
    """``robostack train panda-lift --dataset DEMOS`` (tiny recipe): its JSON summary, run_dir made absolute."""
    workdir, before = tmp_path_factory.mktemp("train"), os.getcwd()
    out = io.StringIO()
    os.chdir(workdir)  # the run folder goes to ./runs
    try:
        with contextlib.redirect_stdout(out):
            assert cli.main(["train", "panda-lift", "--dataset", str(demos), "--json", *TINY]) == 0
    finally:
        os.chdir(before)
    summary = json.loads(out.getvalue())
    return {**summary, "run_dir": workdir / summary["run_dir"]}


def test_teleop_dataset_trains_a_diffusion_policy_without_conversion(demos, trained, capsys):
    data = load_dataset(demos)
    assert vector_observations(data) == ["observation.state", "observation.command", "observation.ee_pose",
                                         "observation.environment_state"]
    assert trained["algo"] == "diffusion" and trained["demonstrations"] == 3
    assert trained["frames"] == data.num_frames and np.isfinite(trained["final_loss"])
    assert trained["episodes"] == 2 and 0.0 <= trained["success_rate"] <= 1.0  # it ran in the task

    run = trained["run_dir"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["task_config"] == data.sim_task_config  # the task as the data was recorded in
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [25, 30]
    width = sum(data.features[key]["shape"][0] for key in saved["state_keys"])
    checkpoint = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert len(checkpoint["policy"]["stats"][STATE_KEY]["min"]) == width

    assert cli.main(["eval", str(run), "--episodes", "2", "--randomized", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["algo"] == "diffusion" and result["randomized"] and result["episodes"] == 2


def test_chunk_bundle_of_task_actions_runs_in_the_task(trained, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert cli.main(["export", str(trained["run_dir"]), "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    action = load_bundle(out).metadata["action"]
    assert action["kind"] == "task" and action["names"] == ["x", "y", "z", "rx", "ry", "rz", "gripper"]
    assert action["ik"] == {"site": "ee", "ee_step": [0.02, 0.05]}  # configs/tasks/panda-lift.yaml
    assert cli.main(["eval", str(out), "--episodes", "2", "--json"]) == 0  # through the task's action map
    assert json.loads(capsys.readouterr().out)["episodes"] == 2


def test_chunk_bundle_of_controls_gives_the_runs_chunks(demos, tmp_path, capsys):
    run_dir = Path(train_imitation("panda-lift", demos, [*TINY, *CONTROLS, "eval_episodes=0"], run_root=str(tmp_path),
                                   progress=False)["run_dir"])
    out = tmp_path / "bundle"
    assert cli.main(["export", str(run_dir), "--out", str(out), "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["kind"] == "chunk" and exported["task"] == "panda-lift"
    bundle = load_bundle(out)
    assert isinstance(bundle, ChunkPolicyBundle) and bundle.metadata["chunk"]["horizon"] == 16
    assert bundle.metadata["action"]["names"][0] == "joint1.target"

    run_policy = DiffusionPolicy.from_checkpoint(torch.load(run_dir / "checkpoints" / "last.pt",
                                                            weights_only=False)["policy"])
    assert run_policy.action_reference == list(range(9))  # each control from its joint's position
    rng = np.random.default_rng(0)
    histories = {STATE_KEY: rng.uniform(-1, 1, (3, 2, bundle.state_dim)).astype(np.float32)}  # a batch of 3
    expected = run_policy.predict_chunks(histories, np.random.default_rng(1))
    np.testing.assert_allclose(bundle.predict_chunks(histories, np.random.default_rng(1)), expected, atol=1e-4)

    assert cli.main(["eval", str(out), "--episodes", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "bundle" and result["episodes"] == 2
    assert cli.main(["bench", "policy", str(out), "--iterations", "5", "--json"]) == 0
    timing = json.loads(capsys.readouterr().out)
    assert timing["kind"] == "chunk" and timing["chunk_covers_ms"] == pytest.approx(
        1000.0 * run_policy.cfg.n_action_steps / bundle.control_rate_hz)
    assert 0 < timing["latency_ms"]["p50"] <= timing["latency_ms"]["p99"] <= timing["latency_ms"]["max"]

    metadata = json.loads((out / "metadata.json").read_text())
    metadata["chunk"]["inputs"] = ["noise"]
    (out / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(BundleError, match=r"chunk.inputs \['noise'\] should be \['noise', 'observation_state'\]"):
        load_bundle(out)


def test_dataset_episodes_concatenate_the_chosen_state_and_skip_failures(demos):
    data = load_dataset(demos)
    episodes = dataset_episodes(data, ["observation.state", "observation.environment_state"])
    first = data.episode(0, images=False)
    np.testing.assert_array_equal(
        episodes[0][STATE_KEY], np.concatenate([first["observation.state"], first["observation.environment_state"]], 1))
    np.testing.assert_array_equal(episodes[0][ACTION_KEY], first["action"])
    columns = joint_columns(data.features)
    assert [data.features["observation.state"]["names"][c] for c in columns[:2]] == ["joint1.pos", "joint2.pos"]
    data.episodes[1] = {**data.episodes[1], "success": False}
    assert len(dataset_episodes(data, ["observation.state"])) == 2
    assert len(dataset_episodes(data, ["observation.state"], successful_only=False)) == 3
    with pytest.raises(DatasetError, match=r"no feature 'observation.joints'.*no camera 'wrist'"):
        dataset_episodes(data, ["observation.joints"], cameras=["wrist"])


def test_learning_from_a_dataset_names_what_is_wrong(demos, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "panda-lift", "--algo", "diffusion"]) == 2
    assert "give --dataset DATASET" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="diffusion recipe: it learns from demonstrations"):
        from robostack.workflows.train import train

        train("panda-lift", progress=False)
    assert cli.main(["train", "panda-insert", "--dataset", str(demos), *TINY]) == 2
    assert "recorded in task 'panda-lift', not 'panda-insert'" in capsys.readouterr().err
    assert cli.main(["train", "panda-lift", "--dataset", str(demos), "state_keys=[observation.velocity]"]) == 2
    assert "no feature 'observation.velocity'" in capsys.readouterr().err
    assert cli.main(["train", "panda-lift", "--dataset", str(demos), "relative_actions=true", *TINY]) == 2
    assert "with action_key 'teleop.action' set relative_actions=false" in capsys.readouterr().err


def test_a_camera_policy_trains_and_sees_each_envs_randomized_camera(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)  # teleop and eval pick an offscreen backend themselves
    monkeypatch.delenv("DISPLAY", raising=False)
    demos = tmp_path / "demos"
    assert cli.main(["teleop", "--task", "panda-lift", "--device", "scripted", "--out", str(demos),
                     "--camera", "scene", "--randomized", "--json"]) == 0
    capsys.readouterr()
    small_encoder = ["cameras=[scene]", "diffusion.image_channels=[8, 8]", "diffusion.num_keypoints=4",
                     "diffusion.image_feature_dim=8", "diffusion.n_groups=4", "diffusion.image_pool=2"]
    summary = train_imitation("panda-lift", demos, [*TINY, *small_encoder, "eval_episodes=0"],
                              run_root=str(tmp_path), progress=False)
    from robostack.workflows.acting import load_policy

    loaded = load_policy(summary["run_dir"])
    env = sim.make_env("panda-lift", num_envs=2, seed=3, config=loaded.task_config)
    try:
        obs, _ = env.reset(seed=3)
        policy = loaded.make_policy(env)
        renderer = policy.source.renderers["observation.images.scene"]
        frames = renderer.render_all()
        assert frames.shape == (2, 120, 160, 3) and frames.std() > 1
        assert not np.allclose(env.sim.models[0].cam_pos, env.sim.models[1].cam_pos)  # randomized per env
        drawn_last = renderer.model  # holds the camera of the env it drew last
        np.testing.assert_array_equal(drawn_last.cam_pos, env.sim.models[1].cam_pos)
        assert policy(obs).shape == (2, env.action_dim)  # the chunk comes from state and image
        policy.close()
    finally:
        env.close()

    # its chunk bundle: ONNX and TorchScript give the run's chunks (the encoder's center crop, not a random one)
    assert cli.main(["export", summary["run_dir"], "--out", str(tmp_path / "bundle"), "--json"]) == 0
    bundle = load_bundle(tmp_path / "bundle")
    run_policy = DiffusionPolicy.from_checkpoint(
        torch.load(Path(summary["run_dir"]) / "checkpoints" / "last.pt", weights_only=False)["policy"])
    rng = np.random.default_rng(0)
    histories = {STATE_KEY: rng.standard_normal((2, 2, bundle.state_dim)).astype(np.float32),
                 "observation.images.scene": rng.integers(0, 256, (2, 2, 120, 160, 3), dtype=np.uint8)}
    expected = run_policy.predict_chunks(histories, np.random.default_rng(1))
    np.testing.assert_allclose(bundle.predict_chunks(histories, np.random.default_rng(1)), expected, atol=1e-4)
    scripted = torch.jit.load(str(tmp_path / "bundle" / "policy.pt"))
    noise = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 16, bundle.act_dim), dtype=np.float32))
    images = torch.from_numpy(histories["observation.images.scene"]).movedim(-1, -3).float() / 255.0
    with torch.no_grad():
        chunk = scripted(noise, torch.from_numpy(histories[STATE_KEY]), images)
    np.testing.assert_allclose(chunk.numpy(), expected, atol=1e-4)


def test_policy_node_runs_a_chunk_bundle_as_the_simulation_does(trained, tmp_path, capsys):
    """The deploy side rebuilds the recorded features from measured joints, the cube's pose and the goal, and
    executes the same chunks (same noise) as the simulator's chunk policy, step for step."""
    from robostack.bundle.kinds import ChunkActor
    from robostack.real.policy_node import PolicyRunner
    from robostack.workflows.acting import load_policy

    out = tmp_path / "bundle"
    assert cli.main(["export", str(trained["run_dir"]), "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    runner = PolicyRunner(str(out))
    assert isinstance(runner.actor, ChunkActor) and runner.builder.has_object
    env = sim.make_env("panda-lift", num_envs=1, seed=4, play=True, config=runner.bundle.metadata["task_config"])
    try:
        obs, _ = env.reset(seed=4)
        policy = load_policy(out).make_policy(env)
        for step in range(20):  # past two chunk queries (8 steps each)
            expected = policy(obs)[0].numpy()
            runner.set_command(env.command[0].numpy())
            runner.builder.update(measured_state(env, runner.builder.joint_names))
            # 1e-7 through the first chunk; then the arm moves and the simulator's sensors (ee pose, cube) lag
            # its state by a physics substep (tests/real/test_observation.py): 5e-4 by step 20
            np.testing.assert_allclose(runner.actor.act()[0], expected, atol=2e-3, err_msg=f"step {step}")
            obs, *_ = env.step(torch.as_tensor(expected)[None])
    finally:
        env.close()
    state = measured_state(env, runner.builder.joint_names)
    state.object = None
    with pytest.raises(ValueError, match=r"task 'panda-lift' has an object: state.object.position must be 3 values"):
        runner.builder.update(state)
