"""The simulated intervener through ROS 2: ``robostack deploy --sim --intervener scripted`` starts a simulated
human (in sim_robot_node, from privileged state) who takes over with a gamepad through teleop_node and the safety
layer, and hands back; the bag becomes a dataset episode per simulated episode, the takeovers its intervention
frames."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def test_the_simulated_intervener_takes_over_through_teleop_node_and_hands_back(tmp_path, capsys, monkeypatch):
    """The shipped cf2-hover bundle in wind it cannot hold (0.15 N gusts; it trained with 0.01 N): the human takes
    over once the drone strays 0.3 m (teleop/intervention start), steers the setpoint back (the task command,
    which the simulated operator stops sending meanwhile), and lets go (end) at the latest when the episode ends.
    The bag converts into one dataset episode per simulated episode (sim_robot_node's ``sim/episode`` reports)."""
    from robostack.cli import main
    from robostack.data.dataset import INTERVENTION, TAKEOVER_START
    from robostack.real.bag import read_messages
    from robostack.workflows.convert import convert_bag

    monkeypatch.setenv("ROS_DOMAIN_ID", os.environ.get("ROS_DOMAIN_ID", "46"))
    monkeypatch.chdir(tmp_path)
    bag = tmp_path / "bag"
    assert main(["deploy", "--task", "cf2-hover", "--policy", str(ROOT / "bundles" / "cf2-hover"), "--sim",
                 "--episodes", "3", "--intervener", "scripted", "--disturbance",
                 "randomization.wind.range=[-0.15,0.15]", "--disturbance", "randomization.wind.interval_s=[0.3,0.6]",
                 "--record", str(bag), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "teleop_node" in report["nodes"] and set(report["exit_codes"].values()) == {0}, report

    events = [m.msg.data for m in read_messages(bag, "mcap", topics=["/teleop/intervention"])]
    assert events[:1] == ["start"] and events[::2] == ["start"] * len(events[::2]), events
    assert events[1::2] == ["end"] * len(events[::2]), events  # every takeover handed back

    data = convert_bag(bag, tmp_path / "dataset", task="hover in wind")
    flags = data.frames([INTERVENTION])[INTERVENTION]
    assert 0 < flags.sum() < len(flags) and data.episodes[0]["source"] == "intervention"
    reports = [(m.log_time, json.loads(m.msg.data)) for m in read_messages(bag, "mcap", topics=["/sim/episode"])]
    assert [r["episode"] for _, r in reports] == [0, 1, 2]  # the recorder hears the transient-local reports
    assert [row["success"] for row in data.episodes] == [r["success"] for _, r in reports]
    assert np.mean([row["success"] for row in data.episodes]) == report["success_rate"]
    # An episode spans the wall-clock time between its report and the one before on the frame clock: at least
    # its simulated steps (the simulated robot never outpaces its control rate; on a loaded host it falls
    # behind, and 5 s of flight, 500 steps, take more than 500 frames).
    spans = np.diff([t for t, _ in reports]) * data.fps / 1e9
    lengths = [row["length"] for row in data.episodes]
    assert np.all(np.abs(np.array(lengths[1:]) - spans) <= 2), (lengths, spans)
    assert all(n >= r["length"] * data.fps / 100 - 2 for n, (_, r) in zip(lengths[1:], reports[1:])), lengths
    for i in range(data.num_episodes):  # takeover starts: the rising edges of each episode's flags
        episode = data.episode(i, images=False)
        rising = episode[INTERVENTION] & ~np.concatenate([[False], episode[INTERVENTION][:-1]])
        np.testing.assert_array_equal(episode[TAKEOVER_START], rising)
        assert episode["next.done"].tolist() == [False] * (len(rising) - 1) + [True]
    assert data.frames([TAKEOVER_START])[TAKEOVER_START].any()
    commands = data.frames(["observation.command"])["observation.command"]
    target = np.array([0.0, 0.0, 1.0])
    at_target = np.all(np.abs(commands - target) < 1e-6, axis=1)
    # the operator's target while the policy flies, but for the human's last setpoint, which holds until the
    # operator's next command after a hand-back (0.1 s; 0.3 s allowed on a loaded host)
    handed_back = np.flatnonzero(flags[:-1] & ~flags[1:]) + 1
    holding = np.zeros_like(flags)
    for start in handed_back:
        holding[start:start + int(0.3 * data.fps)] = True
    assert at_target[~flags & ~holding].mean() > 0.98, (at_target[~flags].mean(), len(handed_back))
    assert np.abs(commands[flags] - target).max() > 0.05  # the human's setpoint, moved off the operator's target


def test_the_intervener_is_refused_without_a_simulated_robot_or_a_rule(tmp_path, capsys, monkeypatch):
    from robostack.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["deploy", "--task", "cf2-hover", "--policy", str(ROOT / "bundles" / "cf2-hover"),
                 "--intervener", "scripted", "--duration", "1"]) == 2
    assert "--intervener is a simulated human with a gamepad: it needs --sim" in capsys.readouterr().err
    assert main(["deploy", "--task", "panda-reach", "--policy", str(ROOT / "bundles" / "panda-reach"), "--sim",
                 "--intervener", "scripted", "--duration", "1"]) == 2
    assert "task 'panda-reach' has no simulated intervener" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing started
