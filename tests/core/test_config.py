"""robostack.config: YAML to typed dataclasses, overrides, and the errors a person sees."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

from robostack import config as cfgmod
from robostack.config import (
    ConfigError,
    apply_overrides,
    config_path,
    from_dict,
    load_config,
    load_yaml,
    to_dict,
)


@dataclass
class PPO:
    lr: float = 3e-4
    epochs: int = 5
    clip: float = 0.2


@dataclass
class Reward:
    scales: dict[str, float] = field(default_factory=dict)
    alive_bonus: float | None = None


@dataclass
class Task:
    name: str
    num_envs: int = 16
    backend: Literal["mujoco", "pybullet"] = "mujoco"
    randomize: bool = False
    target: tuple[float, float] = (0.0, 0.0)
    pose: tuple[float, float, str] = (0.0, 0.0, "up")
    gains: tuple[float, ...] = ()
    joints: list[str] = field(default_factory=list)
    ppo: PPO = field(default_factory=PPO)
    reward: Reward = field(default_factory=Reward)
    note: Optional[str] = None
    seed: int | None = None


def write(tmp_path: Path, text: str, name: str = "task.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------ load_yaml


def test_load_yaml_reads_mapping(tmp_path):
    path = write(tmp_path, "name: go2\nnum_envs: 8\nppo:\n  lr: 1e-3\n")
    data = load_yaml(path)
    assert data == {"name": "go2", "num_envs": 8, "ppo": {"lr": 1e-3}}
    assert isinstance(data["ppo"]["lr"], float)  # plain YAML 1.1 would read '1e-3' as a string


def test_load_yaml_empty_file_is_empty_mapping(tmp_path):
    assert load_yaml(write(tmp_path, "# nothing here\n")) == {}


def test_load_yaml_missing_file_names_path(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as err:
        load_yaml(path)
    assert str(path) in str(err.value)


def test_load_yaml_syntax_error_names_path_and_line(tmp_path):
    path = write(tmp_path, "name: go2\nnum_envs: 8\nppo:\n  lr: [1, 2\n  epochs: 3\n")
    with pytest.raises(ConfigError) as err:
        load_yaml(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "invalid YAML" in msg
    assert f"{path}:5:" in msg or f"{path}:4:" in msg  # the line the parser stopped on


def test_load_yaml_top_level_must_be_mapping(tmp_path):
    path = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping") as err:
        load_yaml(path)
    assert str(path) in str(err.value)


def test_load_yaml_duplicate_key(tmp_path):
    path = write(tmp_path, "name: a\nnum_envs: 1\nname: b\n")
    with pytest.raises(ConfigError, match="duplicate key 'name'") as err:
        load_yaml(path)
    assert f"{path}:3:" in str(err.value)


# ------------------------------------------------------------------------------------------ from_dict


def test_from_dict_builds_nested_typed_dataclasses():
    task = from_dict(
        Task,
        {
            "name": "go2-walk",
            "num_envs": 64,
            "backend": "pybullet",
            "randomize": True,
            "target": [1, 2.5],
            "pose": [1, 2, "down"],
            "gains": [1, 2, 3.5],
            "joints": ["hip", "knee"],
            "ppo": {"lr": 1, "epochs": 3},
            "reward": {"scales": {"alive": 1, "torque": -0.01}, "alive_bonus": 2},
            "note": "hello",
        },
        "task.yaml",
    )
    assert task.name == "go2-walk" and task.num_envs == 64 and task.backend == "pybullet"
    assert task.randomize is True
    assert task.target == (1.0, 2.5) and all(isinstance(v, float) for v in task.target)
    assert task.pose == (1.0, 2.0, "down")
    assert task.gains == (1.0, 2.0, 3.5) and isinstance(task.gains, tuple)
    assert task.joints == ["hip", "knee"]
    assert task.ppo == PPO(lr=1.0, epochs=3, clip=0.2)
    assert isinstance(task.ppo.lr, float)  # int accepted for float, stored as float
    assert task.reward.scales == {"alive": 1.0, "torque": -0.01}
    assert task.reward.alive_bonus == 2.0
    assert task.note == "hello" and task.seed is None


def test_from_dict_missing_keys_keep_defaults():
    task = from_dict(Task, {"name": "x"}, "task.yaml")
    assert task == Task(name="x")
    assert task.ppo is not Task(name="y").ppo  # default factories, not shared objects


def test_from_dict_missing_required_key():
    with pytest.raises(ConfigError, match="missing required key 'name'") as err:
        from_dict(Task, {"num_envs": 4}, "task.yaml")
    assert "task.yaml" in str(err.value)


def test_unknown_key_suggests_close_match():
    with pytest.raises(ConfigError) as err:
        from_dict(Task, {"name": "x", "num_env": 4}, "configs/tasks/go2-walk.yaml")
    msg = str(err.value)
    assert "unknown key 'num_env'" in msg
    assert "did you mean 'num_envs'" in msg
    assert "configs/tasks/go2-walk.yaml" in msg
    assert err.value.key == "num_env"


def test_nested_unknown_key_names_dotted_path_and_file():
    with pytest.raises(ConfigError) as err:
        from_dict(Task, {"name": "x", "ppo": {"lrr": 0.1}}, "configs/tasks/go2-walk.yaml")
    msg = str(err.value)
    assert "unknown key 'ppo.lrr'" in msg
    assert "did you mean 'ppo.lr'" in msg
    assert "configs/tasks/go2-walk.yaml" in msg


def test_unknown_key_without_close_match_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        from_dict(Task, {"name": "x", "ppo": {"zzzz": 1}}, "t.yaml")
    msg = str(err.value)
    assert "did you mean" not in msg
    assert "lr, epochs, clip" in msg


def test_wrong_type_names_key_expected_and_value():
    with pytest.raises(ConfigError) as err:
        from_dict(Task, {"name": "x", "ppo": {"epochs": "many"}}, "t.yaml")
    msg = str(err.value)
    assert "'ppo.epochs'" in msg and "must be int" in msg and "'many'" in msg and "t.yaml" in msg
    assert err.value.key == "ppo.epochs"


def test_float_is_not_int():
    with pytest.raises(ConfigError, match="'num_envs' must be int, got 4.5"):
        from_dict(Task, {"name": "x", "num_envs": 4.5}, "t.yaml")


def test_int_accepted_for_float():
    assert from_dict(PPO, {"lr": 1}, "t.yaml").lr == 1.0


@pytest.mark.parametrize("value", [1, 0, "true", "yes", None])
def test_bool_only_accepts_real_booleans(value):
    with pytest.raises(ConfigError, match="'randomize' must be bool"):
        from_dict(Task, {"name": "x", "randomize": value}, "t.yaml")


def test_bool_is_not_int_or_float():
    with pytest.raises(ConfigError, match="'num_envs' must be int"):
        from_dict(Task, {"name": "x", "num_envs": True}, "t.yaml")
    with pytest.raises(ConfigError, match="'ppo.lr' must be float"):
        from_dict(Task, {"name": "x", "ppo": {"lr": False}}, "t.yaml")


def test_tuple_length_is_checked():
    with pytest.raises(ConfigError) as err:
        from_dict(Task, {"name": "x", "target": [1.0, 2.0, 3.0]}, "t.yaml")
    msg = str(err.value)
    assert "'target'" in msg and "expected 2 items, got 3" in msg


def test_tuple_element_types_are_checked():
    with pytest.raises(ConfigError, match=r"'target\[1\]' must be float, got 'b'"):
        from_dict(Task, {"name": "x", "target": [1.0, "b"]}, "t.yaml")
    with pytest.raises(ConfigError, match=r"'pose\[2\]' must be str"):
        from_dict(Task, {"name": "x", "pose": [1, 2, 3]}, "t.yaml")
    with pytest.raises(ConfigError, match=r"'gains\[0\]' must be float"):
        from_dict(Task, {"name": "x", "gains": ["x"]}, "t.yaml")


def test_tuple_needs_a_list():
    with pytest.raises(ConfigError, match="'target' must be tuple"):
        from_dict(Task, {"name": "x", "target": 1.0}, "t.yaml")


def test_literal_values():
    with pytest.raises(ConfigError) as err:
        from_dict(Task, {"name": "x", "backend": "isaac"}, "t.yaml")
    msg = str(err.value)
    assert "'backend' must be one of 'mujoco', 'pybullet'" in msg and "'isaac'" in msg


def test_literal_does_not_confuse_bool_and_int():
    @dataclass
    class Mode:
        level: Literal[0, 1, 2] = 0

    assert from_dict(Mode, {"level": 2}, "t.yaml").level == 2
    with pytest.raises(ConfigError):
        from_dict(Mode, {"level": True}, "t.yaml")


def test_list_and_dict_elements_are_checked():
    with pytest.raises(ConfigError, match=r"'joints\[1\]' must be str"):
        from_dict(Task, {"name": "x", "joints": ["a", 2]}, "t.yaml")
    with pytest.raises(ConfigError, match="'reward.scales.alive' must be float"):
        from_dict(Task, {"name": "x", "reward": {"scales": {"alive": "lots"}}}, "t.yaml")
    with pytest.raises(ConfigError, match="'reward.scales' must be dict"):
        from_dict(Task, {"name": "x", "reward": {"scales": [1, 2]}}, "t.yaml")


def test_optional_accepts_none_and_checks_the_rest():
    task = from_dict(Task, {"name": "x", "note": None, "seed": None, "reward": {"alive_bonus": None}}, "t.yaml")
    assert task.note is None and task.seed is None and task.reward.alive_bonus is None
    assert from_dict(Task, {"name": "x", "seed": 3}, "t.yaml").seed == 3
    with pytest.raises(ConfigError, match=r"'seed' must be int \| None, got 'abc'"):
        from_dict(Task, {"name": "x", "seed": "abc"}, "t.yaml")


def test_nested_dataclass_needs_mapping():
    with pytest.raises(ConfigError, match="'ppo' must be a mapping"):
        from_dict(Task, {"name": "x", "ppo": 3}, "t.yaml")


def test_string_annotations_resolve():
    # this module uses ``from __future__ import annotations``: every annotation above is a string
    assert isinstance(Task.__annotations__["num_envs"], str)
    assert from_dict(Task, {"name": "x", "num_envs": 2}, "t.yaml").num_envs == 2


# ------------------------------------------------------------------------------------------ overrides


def test_overrides_nested_and_typed():
    data = {"name": "x", "ppo": {"lr": 0.1}}
    out = apply_overrides(
        data, ["ppo.lr=0.5", "ppo.epochs=3", "randomize=true", "target=[1,2]", "note=hi", "num_envs=1e3"], "t.yaml"
    )
    assert out["ppo"] == {"lr": 0.5, "epochs": 3}
    assert out["randomize"] is True and out["target"] == [1, 2] and out["note"] == "hi"
    assert out["num_envs"] == 1000.0  # 1e3 parses as a float; from_dict will then refuse it for an int
    assert data == {"name": "x", "ppo": {"lr": 0.1}}  # the input is not modified


def test_override_creates_missing_mappings():
    assert apply_overrides({}, ["a.b.c=1"], "t.yaml") == {"a": {"b": {"c": 1}}}


def test_override_value_may_contain_equals():
    assert apply_overrides({}, ["note=a=b"], "t.yaml") == {"note": "a=b"}


@pytest.mark.parametrize("bad", ["ppo.lr", "=3", "a..b=1", ".a=1"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError, match="override"):
        apply_overrides({}, [bad], "t.yaml")


def test_override_through_a_scalar_is_an_error():
    with pytest.raises(ConfigError, match="'num_envs' is a value"):
        apply_overrides({"num_envs": 4}, ["num_envs.x=1"], "t.yaml")


def test_override_with_bad_yaml_value():
    with pytest.raises(ConfigError, match="cannot parse the value"):
        apply_overrides({}, ["joints=[a, b"], "t.yaml")


# ---------------------------------------------------------------------------------------- load_config


def test_load_config_with_overrides(tmp_path):
    path = write(tmp_path, "name: go2\nppo:\n  lr: 3e-4\n")
    task = load_config(Task, path, ["ppo.epochs=9", "target=[1, 2]"])
    assert task.name == "go2" and task.ppo.lr == pytest.approx(3e-4) and task.ppo.epochs == 9
    assert task.target == (1.0, 2.0)
    assert load_config(Task, path).ppo.epochs == 5


def test_load_config_unknown_override_key_says_it_came_from_the_command_line(tmp_path):
    path = write(tmp_path, "name: go2\n")
    with pytest.raises(ConfigError) as err:
        load_config(Task, path, ["ppo.lrr=0.1"])
    msg = str(err.value)
    assert f"{path} + overrides" in msg
    assert "unknown key 'ppo.lrr'" in msg and "did you mean 'ppo.lr'" in msg
    assert "command-line override 'ppo.lrr=0.1'" in msg


def test_load_config_wrong_typed_override(tmp_path):
    path = write(tmp_path, "name: go2\n")
    with pytest.raises(ConfigError) as err:
        load_config(Task, path, ["num_envs=lots"])
    assert "'num_envs' must be int" in str(err.value) and "override 'num_envs=lots'" in str(err.value)


def test_load_config_error_in_file_names_file_only(tmp_path):
    path = write(tmp_path, "name: go2\nnum_env: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(Task, path)
    assert f"{path}: unknown key 'num_env'" in str(err.value)
    assert "override" not in str(err.value)


# --------------------------------------------------------------------------------------- to_dict, path


def test_to_dict_round_trips_through_yaml(tmp_path):
    task = Task(name="x", target=(1.0, 2.0), gains=(3.0,), joints=["a"], reward=Reward(scales={"a": 1.0}))
    data = to_dict(task)
    assert data["target"] == [1.0, 2.0] and data["gains"] == [3.0] and data["ppo"]["lr"] == 3e-4
    text = yaml.safe_dump(data)  # plain YAML types only: safe_dump refuses tuples
    path = write(tmp_path, text, "round.yaml")
    assert load_config(Task, path) == task


def test_config_path_finds_repo_configs(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    (root / "configs" / "tasks").mkdir(parents=True)
    (root / "configs" / "tasks" / "go2-walk.yaml").write_text("name: go2\n")
    monkeypatch.setattr(cfgmod, "_REPO_ROOT", root)
    assert config_path("tasks", "go2-walk.yaml") == root / "configs" / "tasks" / "go2-walk.yaml"
    with pytest.raises(ConfigError, match="did you mean go2-walk.yaml"):
        config_path("tasks", "go2-wlak.yaml")


def test_config_path_falls_back_to_installed_share(tmp_path, monkeypatch):
    monkeypatch.setattr(cfgmod, "_REPO_ROOT", tmp_path / "no-repo")
    prefix = tmp_path / "prefix"
    (prefix / "share" / "robostack" / "configs" / "train").mkdir(parents=True)
    target = prefix / "share" / "robostack" / "configs" / "train" / "ppo.yaml"
    target.write_text("lr: 1\n")
    monkeypatch.setattr(cfgmod.sys, "prefix", str(prefix))
    assert config_path("train", "ppo.yaml") == target
    with pytest.raises(ConfigError, match="no config file configs/train/sac.yaml"):
        config_path("train", "sac.yaml")
