"""``observation.state`` names (robostack.data.features): a scene's free body is named by its body, not as the
robot's floating base, and the older names of shipped bundles and datasets still read the same values."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from robostack import sim
from robostack.data.dataset import DatasetError
from robostack.data.features import StateMap, same_state_layout, sim_features

ROOT = Path(__file__).resolve().parents[2]
FIELDS = ("position", "orientation", "linear_velocity", "angular_velocity")


def state_names(task: str) -> tuple[list[str], object]:
    env = sim.make_env(task, num_envs=1, play=True)
    try:
        return sim_features(env)["observation.state"]["names"], env.default_model
    finally:
        env.close()


def test_the_cube_is_named_by_its_body_and_the_quadrupeds_base_stays_base():
    lift, model = state_names("panda-lift")
    assert not any(name.startswith("base_") for name in lift)
    assert lift[18:] == [f"object_{field}.{axis}" for field in FIELDS
                         for axis in ("wxyz" if field == "orientation" else "xyz")]
    go2, _ = state_names("go2-walk")
    assert go2[24:27] == ["base_position.x", "base_position.y", "base_position.z"] and len(go2) == 37
    reach, _ = state_names("panda-reach")
    assert all(name.endswith((".pos", ".vel")) for name in reach)  # no free body at all

    state = np.random.default_rng(0).normal(size=(1, model.nq)), np.random.default_rng(1).normal(size=(1, model.nv))
    values = StateMap(model, lift, "lift").read(*state)[0]
    free = model.joint("object")
    np.testing.assert_array_equal(values[18:25], state[0][0, free.qposadr[0]:free.qposadr[0] + 7])


def test_the_shipped_bundles_older_names_read_the_same_values():
    """bundles/panda-lift was exported when the cube was base_*: its names map to the same model addresses, and
    a name of no body is refused with one line naming the free bodies there are."""
    lift, model = state_names("panda-lift")
    metadata = json.loads((ROOT / "bundles/panda-lift/metadata.json").read_text())
    shipped = next(t["names"] for t in metadata["observation"]["terms"] if t["name"] == "observation.state")
    assert shipped != lift and shipped[18] == "base_position.x"
    assert same_state_layout(model, shipped, lift)
    assert not same_state_layout(model, shipped, lift[:18] + lift[19:] + lift[18:19])  # a column moved
    with pytest.raises(DatasetError, match=r"no free body 'cube' \(free bodies: \['object'\]\)"):
        StateMap(model, ["cube_position.x"], "lift")
