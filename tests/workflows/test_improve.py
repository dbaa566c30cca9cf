"""The intervention loop: a round through the real ROS 2 graph (simulated human, recorder, bag, dataset), the
correction it learns, resuming, and learning from a dataset with ``train --interventions`` (RLIF and IQL)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_a_takeovers_command_is_replaced_by_the_tasks_until_the_task_commands_again():
    from robostack.workflows.interventions import task_commands

    target, human = [0.0, 0.0, 1.0], [0.0, 0.0, 1.3]
    commands = np.array([target, target, human, human, human, human, target, target, human])
    flags = np.array([0, 0, 1, 1, 0, 0, 0, 0, 1], dtype=bool)  # handed back at 4; the task commands again at 6
    episode = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1])  # episode 1 starts taken over: no task command seen
    out = task_commands(commands, flags, episode)
    assert np.allclose(out[:8], target)
    assert np.allclose(out[8], human)


def test_a_recorded_state_row_is_the_robot_state_it_came_from():
    from robostack.real.robot_state import BodyState, RobotState
    from robostack.workflows.convert import _state_vector
    from robostack.workflows.interventions import robot_state

    state = RobotState({"a": 0.1, "b": -0.2}, {"a": 1.0, "b": 2.0}, np.array([1.0, 2.0, 3.0]),
                       np.array([1.0, 0.0, 0.0, 0.0]), np.array([0.1, 0.2, 0.3]), np.array([-0.1, -0.2, -0.3]),
                       object=BodyState(np.array([0.5, 0.1, 0.12]), np.array([0.0, 0.0, 0.0, 1.0]),
                                        np.array([0.0, 0.2, 0.0]), np.array([0.3, 0.0, 0.0])))
    names, values = _state_vector(state, "cube")
    assert names[-13:-10] == ["cube_position.x", "cube_position.y", "cube_position.z"]  # as simulated data names it
    back = robot_state(names, values)
    assert back.joint_position == state.joint_position and back.joint_velocity == state.joint_velocity
    for field in ("base_position", "base_orientation", "base_linear_velocity", "base_angular_velocity"):
        assert np.allclose(getattr(back, field), getattr(state, field))
    for field in ("position", "orientation", "linear_velocity", "angular_velocity"):
        assert np.allclose(getattr(back.object, field), getattr(state.object, field))
    assert robot_state(*_state_vector(RobotState({"a": 0.1}, {"a": 1.0}))).object is None


def test_each_frame_takes_the_action_behind_its_command_the_humans_on_its_takeover_frames():
    from robostack.data.dataset import DatasetError
    from robostack.data.features import BASE_ACTION, TASK_ACTION
    from robostack.workflows.convert import _task_actions

    ms = 1_000_000
    policy = [(t * 20 * ms, np.array([[t, t, t], [-t, -t, -t]], dtype=float)) for t in range(5)]  # executed; base
    human = [(61 * ms, np.array([[9.0, 9.0, 9.0]]))]
    flags = np.array([False, False, False, True, True])
    until = np.array([10, 30, 50, 70, 90]) * ms  # each frame's command deadline
    out = _task_actions(policy, human, flags, until, Path("bag"))
    assert out[TASK_ACTION][:, 0].tolist() == [0, 1, 2, 9, 9]  # the human's on the flagged frames once they sent one
    assert out[BASE_ACTION][:, 0].tolist() == [0, -1, -2, -3, -4]  # the policy's base proposed on every frame
    flags[2] = True  # flagged before the human's first action: the policy's
    assert _task_actions(policy, human, flags, until, Path("bag"))[TASK_ACTION][2, 0] == 2
    with pytest.raises(DatasetError, match="policy/action must hold two rows"):
        _task_actions([(0, np.zeros((1, 3)))], [], flags, until, Path("bag"))
    with pytest.raises(DatasetError, match="teleop/action must hold one row of the policy's 3 actions"):
        _task_actions(policy, [(0, np.zeros((1, 4)))], flags, until, Path("bag"))


def test_one_round_of_the_loop_runs_through_ros2_learns_a_correction_and_resumes(tmp_path, capsys, monkeypatch):
    """cf2-hover 60 % heavier: 2 episodes deployed through the ROS 2 graph with the simulated human, the bag
    converted, the pilot's stick rule learned as a command correction and evaluated; a rerun resumes."""
    from robostack.bundle import load_bundle
    from robostack.cli import main
    from robostack.data.dataset import INTERVENTION, load_dataset
    from robostack.workflows.interventions import LoggedSteps
    from robostack.real.observation import ObservationBuilder

    monkeypatch.setenv("ROS_DOMAIN_ID", "81")
    out = tmp_path / "loop"
    argv = ["improve", "--task", "cf2-hover", "--rounds", "1", "--episodes-per-round", "2", "--eval-episodes", "8",
            "--shift", "randomization.link_mass.range=[1.6,1.6]",  # sags farther than the human's 0.3 m: takeovers
            "--out", str(out), "--json", "rlif.updates=40", "rlif.hidden=[32,32]", "rlif.batch_size=64"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rounds"] == 1 and len(report["interventions_per_episode"]) == 1
    assert 0.0 <= report["success_before"] <= 0.5  # the shipped bundle sags under the shift
    round_dir = out / "round-0"
    data = load_dataset(round_dir / "dataset")
    assert data.num_episodes >= 2 and data.sim_task == "cf2-hover"
    flags = data.frames([INTERVENTION])[INTERVENTION]
    assert report["intervened_steps"] == int(flags.sum()) > 0  # the human took over
    learned = load_bundle(report["bundle"])
    assert learned.metadata["kind"] == "command_correction"  # the learner of configs/improve/cf2-hover.yaml
    assert learned.metadata["training"]["held_frames"] > 0
    assert (out / "rounds.png").stat().st_size > 1000

    # the rebuilt observations are the policy's: where it flew, the base acts as the commands executed (median gap
    # 0.007 on a quiet host; 0.05 under load, where a command can come after the next state is logged; a rebuild
    # that ran four episodes together, without the policy's resets, was off by 0.5 on average)
    base = load_bundle(ROOT / "bundles" / "cf2-hover")
    steps = LoggedSteps(ObservationBuilder(base.metadata), [data])
    gap = np.abs(base.act(steps.obs) - steps.actions).max(axis=1)[~steps.human]
    assert np.median(gap) < 0.1, np.median(gap)

    deployed_at = (round_dir / "deploy.json").stat().st_mtime
    assert main(argv) == 0  # finished steps are not redone
    assert json.loads(capsys.readouterr().out)["per_round"] == report["per_round"]
    assert (round_dir / "deploy.json").stat().st_mtime == deployed_at

    # the same data through train --interventions, with its default learner (RLIF's SAC)
    assert main(["train", "cf2-hover", "--interventions", str(round_dir / "dataset"), "--policy",
                 str(ROOT / "bundles" / "cf2-hover"), "--out", str(tmp_path / "rlif"), "--json", "updates=30"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert load_bundle(summary["bundle"]).metadata["training"]["algo"] == "rlif"
    assert summary["human_steps"] == report["intervened_steps"]
    # another loop's settings in the same folder are refused
    assert main(argv[:-3] + ["rlif.updates=41"]) == 2
    assert "holds a loop with other settings (rlif)" in capsys.readouterr().err

    # a deployment that did not finish (no deploy.json): its bag is kept aside, the round deploys and learns again
    (round_dir / "deploy.json").unlink()
    trained_at = (round_dir / "train.json").stat().st_mtime
    assert main(argv) == 0
    capsys.readouterr()
    assert (round_dir / "deploy-unfinished-0" / "bag" / "metadata.yaml").is_file()
    assert (round_dir / "deploy.json").is_file() and (round_dir / "train.json").stat().st_mtime > trained_at


def test_a_diffusion_policy_acting_by_end_effector_steps_is_corrected_from_its_logged_actions(tmp_path, capsys,
                                                                                               monkeypatch):
    """panda-lift's chunk bundle, whose controls do not give its actions: a round through the ROS 2 graph logs the
    policy's actions and its proposals (``policy/action``) and the cube, and the correction is a residual over the
    chunk bundle, learned from them and evaluated."""
    from robostack.bundle import load_bundle
    from robostack.cli import main
    from robostack.data.dataset import INTERVENTION, DatasetError, load_dataset
    from robostack.data.features import BASE_ACTION, TASK_ACTION
    from robostack.real.observation import ObservationBuilder
    from robostack.workflows.interventions import LoggedSteps

    monkeypatch.setenv("ROS_DOMAIN_ID", "63")
    out = tmp_path / "loop"
    assert main(["improve", "--task", "panda-lift", "--rounds", "1", "--episodes-per-round", "2", "--eval-episodes",
                 "4", "--algo", "iql", "--out", str(out), "--json", "rlif.iql.num_updates=30",
                 "rlif.iql.batch_size=64"]) == 0
    report = json.loads(capsys.readouterr().out)
    data = load_dataset(out / "round-0" / "dataset")
    names = data.features["observation.state"]["names"]
    assert "object_position.z" in names and data.features[TASK_ACTION]["shape"] == [7]
    frames = data.frames([TASK_ACTION, BASE_ACTION, INTERVENTION])
    policy_frames = ~frames[INTERVENTION].astype(bool)
    assert policy_frames.any()  # where the chunk policy acted, it executed what it proposed (no exploration)
    assert np.array_equal(frames[TASK_ACTION][policy_frames], frames[BASE_ACTION][policy_frames])
    assert np.abs(frames[TASK_ACTION]).max() <= 1.0 and len(np.unique(frames[TASK_ACTION][:, -1])) > 1  # gripper
    learned = load_bundle(report["bundle"])
    assert learned.metadata["kind"] == "residual" and learned.base.metadata["kind"] == "chunk"
    assert learned.metadata["training"]["algo"] == "iql" and 0.0 <= report["success_after"] <= 1.0
    assert learned.metadata["training"]["updates"] == 30  # iql's own count, from its section
    steps = LoggedSteps(ObservationBuilder(load_bundle(ROOT / "bundles" / "panda-lift").metadata), [data])
    assert steps.base is not None and len(steps.obs) == data.num_frames
    # a recording without the policy's actions (a bag of another recorder): one line naming what is missing
    features = {k: v for k, v in data.features.items() if k not in (TASK_ACTION, BASE_ACTION)}
    plain = SimpleNamespace(features=features, info=data.info, root="plain", num_episodes=1)
    with pytest.raises(DatasetError, match="plain: lacks action.task, the policy's actions: task 'panda-lift' acts"):
        LoggedSteps(steps.builder, [plain])
    # a fit of no update would put an untrained correction on the bundle: refused, nothing written
    assert main(["train", "panda-lift", "--interventions", str(out / "round-0" / "dataset"), "--offline", "--out",
                 str(tmp_path / "unfitted"), "iql.num_updates=0"]) == 2
    assert "the iql fit ran no update" in capsys.readouterr().err and not (tmp_path / "unfitted").exists()


def test_learning_from_interventions_refuses_what_it_cannot_use(tmp_path, capsys):
    from robostack.cli import main
    from robostack.cli.common import _intervention_algo

    assert main(["train", "cf2-hover", "--interventions", str(tmp_path / "none")]) == 2
    assert "give --interventions DATASET and --out DIR" in capsys.readouterr().err
    assert main(["train", "go2-walk", "--interventions", str(tmp_path / "none"), "--policy",
                 str(ROOT / "bundles" / "cf2-hover"), "--out", str(tmp_path / "b")]) == 2
    assert "cf2-hover" in capsys.readouterr().err  # the bundle is another task's
    assert main(["train", "panda-reach", "--interventions", str(tmp_path / "none"), "--policy",
                 str(ROOT / "bundles" / "panda-reach"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err
    assert main(["train", "panda-insert", "--interventions", str(tmp_path / "none"), "--policy",
                 str(ROOT / "bundles" / "panda-insert"), "--out", str(tmp_path / "b")]) == 2  # correct its base
    err = capsys.readouterr().err
    assert "a 'residual' bundle, itself a correction of the bundle in its base/" in err, err
    # a gripper rule reading a term the task's observation lacks, refused before anything is deployed
    assert main(["improve", "--task", "panda-lift", "--out", str(tmp_path / "rule"), "rlif.gripper.inputs=[tcp_pos, "
                 "cube_pos]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "task 'panda-lift''s policy observation has no term(s) ['cube_pos']" in err, err
    assert not (tmp_path / "rule").exists()
    from robostack.bundle import load_bundle
    from robostack.real.observation import ObservationBuilder

    builder = ObservationBuilder(load_bundle(ROOT / "bundles" / "panda-lift").metadata)
    width = len(builder.observation())
    assert builder.term_columns(["joint_pos", "last_action"]) == [*range(7), *range(width - 7, width)]
    assert main(["improve", "--task", "panda-reach", "--out", str(tmp_path / "reach")]) == 2
    assert "task 'panda-reach' has no simulated intervener" in capsys.readouterr().err
    # the algorithms that learn from interventions, and --offline as iql's other name
    assert main(["improve", "--task", "cf2-hover", "--algo", "sac", "--out", str(tmp_path / "sac")]) == 2
    assert ("algorithm 'sac' does not learn from interventions (those that do: ['command-correction', "
            "'gripper-rule', 'iql', 'rlif'])") in capsys.readouterr().err
    assert not (tmp_path / "sac").exists()  # refused before anything was deployed
    # a command correction needs to know what the command sets: go2-walk's loop does not say
    assert main(["improve", "--task", "go2-walk", "--algo", "command-correction", "--out", str(tmp_path / "cc")]) == 2
    assert "command.tracks names 0 state values; the task's command has 3 components" in capsys.readouterr().err
    assert not (tmp_path / "cc").exists()
    assert main(["improve", "--task", "cf2-hover", "--out", str(tmp_path / "cc"),
                 "rlif.command.inputs=[base_height.z]"]) == 2
    assert "base_height.z" in capsys.readouterr().err
    assert not (tmp_path / "cc").exists()
    assert main(["train", "cf2-hover", "--interventions", str(tmp_path / "none"), "--offline", "--algo", "rlif",
                 "--out", str(tmp_path / "b")]) == 2
    assert "--offline learns with iql, from the logs alone: not with --algo rlif" in capsys.readouterr().err
    assert main(["train", "cf2-hover", "--algo", "iql"]) == 2  # no logs given
    assert "give --interventions DATASET and --out DIR" in capsys.readouterr().err
    assert [_intervention_algo(a, o) for a, o in ((None, False), (None, True), ("iql", True))] == ["rlif", "iql", "iql"]


def test_the_loop_deploys_with_its_exploration_noise():
    from robostack.real.graph import node_graph

    def policy_parameters(std: float) -> dict:
        nodes = node_graph(ROOT / "bundles" / "cf2-hover", sim=True, episodes=1, intervener=True, exploration_std=std)
        return next(n for n in nodes if n.name == "policy_node").parameters

    assert policy_parameters(0.1)["exploration_std"] == 0.1
    assert "exploration_std" not in policy_parameters(0.0)  # as before: a plain deployment


def test_a_recorded_rehearsal_logs_the_policys_actions_and_waits_until_the_recorder_hears_them(tmp_path):
    from robostack.real.graph import node_graph

    def parameters(record) -> dict:
        return {n.name: n.parameters for n in node_graph(ROOT / "bundles" / "panda-lift", sim=True, episodes=1,
                                                          intervener=True, record=record)}

    recorded = parameters(tmp_path / "bag")
    assert recorded["policy_node"]["publish_action"] is True
    assert "policy/action" in recorded["sim_robot_node"]["await_recorded"]
    assert {"/policy/action:std_msgs/msg/Float64MultiArray", "/teleop/action:std_msgs/msg/Float64MultiArray"} <= {
        "/" + t.lstrip("/") for t in recorded["recorder_node"]["topics"]}
    assert "publish_action" not in parameters(None)["policy_node"]  # nothing to log for
