"""A bag of several simulated episodes (``robostack deploy --sim --record``) converts into one dataset episode per
``sim/episode`` report, with the takeovers' first frames marked (``robostack.workflows.convert``)."""
from __future__ import annotations

import numpy as np
import pytest

from helpers.bags import write_go2_bag
from robostack.data.dataset import INTERVENTION, TAKEOVER_START, DatasetError
from robostack.workflows.convert import convert_bag

# rclpy's type support imports rosidl_parser -> lark, which imports the deprecated sre_* modules
pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")


def rising_edges(flags: np.ndarray) -> list[int]:
    return np.flatnonzero(flags & ~np.concatenate([[False], flags[:-1]])).tolist()


def test_a_bag_with_episode_reports_is_one_episode_per_report_and_the_rest(tmp_path):
    """Frame k holds step k's state (see ``write_go2_bag``). Episodes end at steps 10 and 22 (reports): the reset
    state published with a report starts the next episode. A takeover from step 8 to 12 goes on into the second
    episode (a takeover start on its first frame); the frames after the last report are an episode cut short."""
    pytest.importorskip("rclpy")
    write_go2_bag(tmp_path / "bag", "/robot1", steps=30, takeovers=((8, 12), (15, 18)), reports={10: True, 22: False})
    data = convert_bag(tmp_path / "bag", tmp_path / "d", task="walk forward")
    assert [(row["length"], row["success"], row["source"]) for row in data.episodes] == [
        (10, True, "intervention"), (12, False, "intervention"), (7, None, "rollout")]
    first_step = 0
    for i, row in enumerate(data.episodes):
        episode = data.episode(i)
        np.testing.assert_allclose(episode["observation.state"][:, 0], 0.01 * np.arange(first_step, first_step
                                                                                        + row["length"]), atol=1e-6)
        np.testing.assert_array_equal(episode["action"][:, 0], np.arange(first_step, first_step + row["length"]))
        assert np.flatnonzero(episode["next.done"]).tolist() == [row["length"] - 1]
        first_step += row["length"]
    flags = [data.episode(i)[INTERVENTION] for i in range(3)]
    assert [np.flatnonzero(f).tolist() for f in flags] == [[8, 9], [0, 1, 5, 6, 7], []]
    starts = [np.flatnonzero(data.episode(i)[TAKEOVER_START]).tolist() for i in range(3)]
    assert starts == [[8], [0, 5], []] == [rising_edges(f) for f in flags]
    assert data.stats[TAKEOVER_START]["count"].tolist() == [29]  # LeRobot reads a feature's stats
    assert data.stats[TAKEOVER_START]["max"].tolist() == [1.0]

    given = convert_bag(tmp_path / "bag", tmp_path / "given", success=True)  # the caller's outcome wins
    assert [row["success"] for row in given.episodes] == [True] * 3


def test_an_episode_cut_short_by_less_than_two_frames_is_left_out(tmp_path):
    pytest.importorskip("rclpy")
    write_go2_bag(tmp_path / "bag", "/robot1", steps=30, takeovers=(), reports={10: False, 28: True})
    data = convert_bag(tmp_path / "bag", tmp_path / "d")
    assert [(row["length"], row["success"], row["source"]) for row in data.episodes] == [
        (10, False, "rollout"), (18, True, "rollout")]  # frame 28 (step 28's reset state) alone is no episode
    assert not data.frames([TAKEOVER_START])[TAKEOVER_START].any()


def test_a_bag_without_episode_reports_is_one_episode(tmp_path):
    pytest.importorskip("rclpy")
    write_go2_bag(tmp_path / "bag", "/robot1", steps=30, takeovers=((10, 20), (22, 25)))
    data = convert_bag(tmp_path / "bag", tmp_path / "d")
    assert data.num_episodes == 1 and data.episodes[0]["length"] == 29 and data.episodes[0]["success"] is None
    episode = data.episode(0)
    assert np.flatnonzero(episode[INTERVENTION]).tolist() == [*range(10, 20), *range(22, 25)]
    assert np.flatnonzero(episode[TAKEOVER_START]).tolist() == [10, 22]


def test_a_bad_episode_report_is_refused_in_one_line(tmp_path):
    pytest.importorskip("rclpy")
    write_go2_bag(tmp_path / "bag", "/robot1", steps=30, reports={10: True, 20: '{"episode": 1}'})
    with pytest.raises(DatasetError, match=r"/robot1/sim/episode: an episode report without a success .*episode"):
        convert_bag(tmp_path / "bag", tmp_path / "d")


def test_a_simulated_deployment_records_the_episode_reports():
    pytest.importorskip("rclpy")
    from robostack.real.graph import SIM_EPISODE, recorded_topics
    from robostack.real.sim_robot_node import EPISODE_TOPIC

    assert SIM_EPISODE[0] == EPISODE_TOPIC
    assert "sim/episode:std_msgs/msg/String" in recorded_topics("cf2", "cf2-hover", sim=True)
    assert not [t for t in recorded_topics("cf2", "cf2-hover") if t.startswith("sim/")]
