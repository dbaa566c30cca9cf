"""Bag conversion (``robostack.workflows.convert``) and replay in simulation (``robostack.workflows.replay``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers.bags import write_go2_bag
from helpers.datasets import EPISODES, as_lerobot_tools_leave_it, write_episodes
from robostack import cli
from robostack.data.dataset import INTERVENTION, DatasetError, DatasetWriter, load_dataset
from robostack.data.features import sim_features, sim_frame
from robostack.workflows.convert import convert_bag
from robostack.workflows.replay import replay


# rclpy's type support imports rosidl_parser -> lark, which imports the deprecated sre_* modules
@pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")
def test_convert_bag_from_recorder_topics(tmp_path):
    pytest.importorskip("rclpy")  # the deploy config names ROS message types
    truth = write_go2_bag(tmp_path / "bag", "/robot1", steps=30)
    data = convert_bag(tmp_path / "bag", tmp_path / "d", task="walk forward", sim_task="go2-walk")
    assert (data.info["robot_type"], data.fps, data.sim_task) == ("go2", 50, "go2-walk")
    assert data.num_episodes == 1 and data.tasks == ["walk forward"]
    episode = data.episode(0)
    # frames from the first command (5 ms after the first state) to the last state: 29
    assert len(episode["action"]) == 29
    names = data.features["observation.state"]["names"]
    assert names[:2] == ["leg0.pos", "leg1.pos"] and names[12] == "leg0.vel" and names[-1] == "base_angular_velocity.z"
    state = episode["observation.state"]
    k = np.arange(29)
    np.testing.assert_allclose(state[:, 0], 0.01 * k, atol=1e-6)
    np.testing.assert_allclose(state[:, 12], 0.5, atol=1e-6)
    column = {name: i for i, name in enumerate(names)}
    np.testing.assert_allclose(state[:, [column[f"base_orientation.{a}"] for a in "wxyz"]],
                               np.tile(truth["orientation"], (29, 1)), atol=1e-6)
    # the body-frame odometry twist came back in the world frame
    np.testing.assert_allclose(state[:, [column[f"base_linear_velocity.{a}"] for a in "xyz"]],
                               np.tile(truth["velocity"], (29, 1)), atol=1e-6)
    np.testing.assert_array_equal(episode["action"], np.repeat(k[:, None], 12, axis=1))  # answer to state k
    assert data.features["action"]["names"][0] == "leg0.target"
    np.testing.assert_allclose(episode["observation.command"][:5], 0.0)
    np.testing.assert_allclose(episode["observation.command"][5:], np.tile([0.4, 0.0, 0.2], (24, 1)), atol=1e-6)
    assert np.flatnonzero(episode[INTERVENTION]).tolist() == list(range(10, 20))
    assert data.episodes[0]["source"] == "intervention" and data.episodes[0]["success"] is None
    assert episode["next.done"].sum() == 1 and episode["next.done"][-1]


def test_convert_bag_that_matches_no_robot(tmp_path):
    pytest.importorskip("rclpy")
    from robostack.real.bag import BagWriter

    with BagWriter(tmp_path / "bag", split_period_s=0) as bag:
        bag.add_topic("/chatter", "std_msgs/msg/String")
    with pytest.raises(DatasetError, match=r"no robot's deploy config matches.*go2: no driver command topic"):
        convert_bag(tmp_path / "bag", tmp_path / "d")


def record_panda(root: Path, steps: int = 25) -> None:
    """Two episodes of panda-reach: the arm waving under recorded controls, then the same states with
    controls that were never applied (replay must tell them apart)."""
    from robostack import sim
    from robostack.config import to_dict

    env = sim.make_env("panda-reach", num_envs=1, play=True, overrides=["sim.num_threads=1"])
    env.reset(seed=1)
    writer = DatasetWriter(root, round(1 / env.control_dt), sim_features(env), env.task.robot,
                           sim_task="panda-reach", sim_task_config=to_dict(env.task_cfg))
    home = env.ctrl.clone()
    frames: dict[str, list] = {}
    for k in range(steps):
        for key, value in sim_frame(env).items():
            frames.setdefault(key, []).append(value[0])
        env.step_controls(home + float(0.3 * np.sin(k / 4)))
        frames.setdefault("action", []).append(env.ctrl[0].numpy().copy())
    env.close()
    frames = {key: np.stack(values) for key, values in frames.items()}
    writer.add_episode(frames, "wave the arm", source="rollout")
    writer.add_episode({**frames, "action": frames["action"] + 0.2}, "wave the arm", source="rollout")


def test_replay_reproduces_a_simulated_episode(tmp_path, capsys):
    """Also after LeRobot's own tools have rewritten the metadata (the simulated task travels with the action
    feature, the episodes' outcome and source with their frames)."""
    record_panda(tmp_path / "sim")
    as_lerobot_tools_leave_it(tmp_path / "sim")
    data = load_dataset(tmp_path / "sim")
    assert [(row["source"], row["success"]) for row in data.episodes] == [("rollout", None)] * 2
    assert data.sim_task == "panda-reach" and data.fps == 50
    assert data.features["observation.state"]["names"][0].endswith(".pos")
    faithful, wrong = replay(data, 0), replay(data, 1)
    assert faithful["replayed_frames"] == 25 and faithful["ended_early_at"] is None
    assert faithful["errors"]["joint_position"]["max"] < 1e-4  # only the float32 rounding of the start
    assert wrong["errors"]["joint_position"]["max"] > 1e-2
    assert cli.main(["data", "replay", str(tmp_path / "sim"), "--episode", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["errors"]["joint_velocity"]["max"] < 1e-2 and report["worst"]["name"] in data.features[
        "observation.state"]["names"]


def test_replay_needs_a_simulated_task(tmp_path, capsys):
    write_episodes(tmp_path / "d", EPISODES[:1])
    assert cli.main(["data", "replay", str(tmp_path / "d"), "--episode", "0"]) == 2
    assert "names no RoboStack task (its action feature's robostack.task)" in capsys.readouterr().err
