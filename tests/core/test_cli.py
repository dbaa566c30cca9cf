"""The ``robostack`` command line: list, bench sim, train, and how errors reach a person."""
from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from robostack import cli, registry
from robostack.config import ConfigError
from robostack.specs import AlgorithmSpec, BackendSpec, JointLimits, RobotSpec, TaskSpec


@pytest.fixture
def fake_registry(monkeypatch):
    """A registry holding only fake specifications, and nothing that would load the real ones."""
    monkeypatch.setattr(registry, "_SPECS", {kind: {} for kind in registry.KINDS})
    monkeypatch.setattr(cli, "load_catalogue", lambda: None)

    def target(*args):
        return None

    registry.register(RobotSpec(name="toybot", kind="arm", summary="a two-joint toy arm", urdf=Path("toybot.urdf"),
                                config_type=dict, build_spec=target, joint_names=("a", "b"),
                                joint_limits=JointLimits(*np.zeros((4, 2)))))
    registry.register(TaskSpec("toy-reach", "toybot", "reach a point with the toy arm", dict, target))
    registry.register(TaskSpec("toy-hover", "toybot", "hover the toy drone", dict, target))
    registry.register(AlgorithmSpec("ppo", "proximal policy optimization", "reinforcement", dict, "actor_critic",
                                    target, target))
    registry.register(BackendSpec("toysim", "a simulator that does nothing", target))
    return registry


def fake_module(monkeypatch, name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return module


# ----------------------------------------------------------------------------------------------- list


def test_list_text(fake_registry, capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for heading in ("ROBOTS (1)", "TASKS (2)", "ALGORITHMS (1)", "BUNDLE KINDS (0)", "BACKENDS (1)"):
        assert heading in out
    assert "toybot" in out and "a two-joint toy arm" in out
    assert out.index("toy-hover") < out.index("toy-reach")  # sorted by name
    line = next(ln for ln in out.splitlines() if "toysim" in ln)
    assert "a simulator that does nothing" in line


def test_list_json(fake_registry, capsys):
    assert cli.main(["list", "--json"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)  # exactly one JSON document
    assert set(data) == {"robots", "tasks", "algorithms", "bundle_kinds", "backends"}
    assert data["robots"] == [{"name": "toybot", "kind": "arm", "summary": "a two-joint toy arm", "urdf": "toybot.urdf",
                               "joint_names": ["a", "b"]}]
    assert [(t["name"], t["robot"]) for t in data["tasks"]] == [("toy-hover", "toybot"), ("toy-reach", "toybot")]
    assert data["algorithms"] == [{"name": "ppo", "summary": "proximal policy optimization",
                                   "trains_with": "reinforcement", "bundle_kind": "actor_critic"}]


def test_list_empty_kind(monkeypatch, capsys):
    monkeypatch.setattr(registry, "_SPECS", {kind: {} for kind in registry.KINDS})
    monkeypatch.setattr(cli, "load_catalogue", lambda: None)
    assert cli.main(["list"]) == 0
    assert "(none)" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- bench


def test_bench_sim_json(monkeypatch, capsys):
    calls = []

    def bench_sim(task, num_envs, seconds, seed, backend, device, overrides):
        calls.append((task, num_envs, seconds, seed, backend, device, overrides))
        print("warming up...")  # chatter must not spoil the JSON on stdout
        return {"env_steps_per_s": 12345.0, "raw_steps_per_s": 23456.0, "ratio": 0.526, "task": task}

    fake_module(monkeypatch, "robostack.sim.bench", bench_sim=bench_sim)
    assert cli.main(["bench", "sim", "--task", "go2-walk", "--num-envs", "256", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {
        "env_steps_per_s": 12345.0,
        "raw_steps_per_s": 23456.0,
        "ratio": 0.526,
        "task": "go2-walk",
    }
    assert "warming up" in captured.err
    assert calls == [("go2-walk", 256, 10.0, 0, "mujoco", "cpu", [])]
    assert cli.main(["bench", "sim", "--task", "go2-walk", "--num-envs", "16", "--backend", "warp", "--json",
                     "randomization.com_offset.range=[0.0,0.0]"]) == 0
    assert calls[-1] == ("go2-walk", 16, 10.0, 0, "warp", "cpu", ["randomization.com_offset.range=[0.0,0.0]"])


def test_bench_sim_table(monkeypatch, capsys):
    result = {"env_steps_per_s": 12345.6, "raw_steps_per_s": 20000.0, "ratio": 0.617, "num_envs": 8}
    fake_module(monkeypatch, "robostack.sim.bench", bench_sim=lambda **kw: result)
    assert cli.main(["bench", "sim", "--task", "cf2-hover", "--num-envs", "8", "--seconds", "2", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "cf2-hover" in out and "env_steps_per_s" in out and "12,346" in out and "0.617" in out


def test_bench_sim_unknown_task_is_one_line_error(fake_registry, monkeypatch, capsys):
    def bench_sim(task, num_envs, seconds, seed, **backend):
        registry.task(task)  # what the real bench does first
        raise AssertionError("not reached")

    fake_module(monkeypatch, "robostack.sim.bench", bench_sim=bench_sim)
    assert cli.main(["bench", "sim", "--task", "go2-wlak", "--num-envs", "4"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("robostack: error: unknown task 'go2-wlak'")
    assert "toy-hover, toy-reach" in lines[0]
    assert "Traceback" not in captured.err


def test_bench_sim_bad_num_envs(capsys):
    assert cli.main(["bench", "sim", "--task", "x", "--num-envs", "0"]) == 2
    assert "--num-envs must be at least 1" in capsys.readouterr().err


def test_bench_requires_what(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench"])
    assert exit_.value.code == 2
    assert "robostack: error:" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- train


@pytest.fixture
def fake_train(monkeypatch):
    calls = []

    def train(task, algo, overrides, resume, seed, base, backend, run_root):
        calls.append({"task": task, "algo": algo, "overrides": overrides, "resume": resume, "seed": seed,
                      "base": base, **({"backend": backend} if backend else {}),
                      **({"run_root": run_root} if run_root != "runs" else {})})
        return {"task": task, "success_rate": 0.9, "run_dir": "runs/cf2-hover/2024-01-01_000000"}

    fake_module(monkeypatch, "robostack.workflows.train", train=train)
    return calls


def test_train_parses_overrides_and_options(fake_train, capsys):
    argv = ["train", "go2-walk", "ppo.lr=3e-4", "--algo", "sac", "env.num_envs=64", "--seed", "3", "x.y=[1,2]"]
    assert cli.main(argv) == 0
    assert fake_train == [
        {
            "task": "go2-walk",
            "algo": "sac",
            "overrides": ["ppo.lr=3e-4", "env.num_envs=64", "x.y=[1,2]"],
            "resume": None,
            "seed": 3,
            "base": None,
        }
    ]
    assert cli.main(["train", "go2-walk", "--backend", "warp"]) == 0
    assert fake_train[-1]["backend"] == "warp"
    out = capsys.readouterr().out
    assert "success_rate" in out and "runs/cf2-hover/2024-01-01_000000" in out


def test_train_defaults(fake_train):
    assert cli.main(["train", "cf2-hover"]) == 0
    assert fake_train == [{"task": "cf2-hover", "algo": None, "overrides": [], "resume": None, "seed": None,
                           "base": None}]


def test_train_base_trains_a_residual(fake_train):
    assert cli.main(["train", "panda-insert", "--base", "runs/panda-insert/dp", "max_iterations=5"]) == 0
    assert fake_train[0]["base"] == "runs/panda-insert/dp" and fake_train[0]["overrides"] == ["max_iterations=5"]


def test_train_resume_and_json(fake_train, capsys):
    assert cli.main(["train", "cf2-hover", "--resume", "runs/old", "--json", "a=1"]) == 0
    assert fake_train[0]["resume"] == "runs/old" and fake_train[0]["overrides"] == ["a=1"]
    assert json.loads(capsys.readouterr().out)["success_rate"] == 0.9


def test_bench_train_takes_overrides_after_options():
    args = cli.parse_args(["bench", "train", "cf2-hover", "--json", "ppo.entropy_coef=0", "--seed", "2", "task.x=1"])
    assert args.overrides == ["ppo.entropy_coef=0", "task.x=1"] and args.seed == 2 and args.json


def test_train_rejects_unknown_algorithm(fake_train, capsys):
    assert cli.main(["train", "cf2-hover", "--algo", "dqn"]) == 2
    assert capsys.readouterr().err == ("robostack: error: unknown algorithm 'dqn'; known algorithms: "
                                       "command-correction, diffusion, gripper-rule, iql, ppo, rlif, sac, "
                                       "safety-critic\n")
    assert fake_train == []


@pytest.mark.parametrize("argv, message", [
    (["train", "go2-walk", "--algo", "safety-critic"], "--algo safety-critic trains the safety critic of a policy "
     "bundle: give --policy BUNDLE and --out DIR (the bundle with its critic)"),
    (["train", "go2-walk", "--algo", "safety-critic", "--policy", "b", "--out", "o", "--dataset", "d"],
     "--algo safety-critic learns from rollouts of --policy: not with --dataset, --base or --resume"),
    (["train", "go2-walk", "--policy", "b"], "--policy, --out and --disturbance train a safety critic: give --algo "
     "safety-critic"),
    (["bench", "safety", "--task", "go2-walk", "--episodes", "0"], "--episodes must be at least 1, got 0"),
    (["deploy", "--task", "cf2-hover", "--policy", "bundles/cf2-hover", "--disturbance", "a=1"],
     "--disturbance changes the simulated robot: it needs --sim"),
])
def test_safety_critic_usage_errors_are_one_line(argv, message, fake_train, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"robostack: error: {message}\n"
    assert fake_train == []


def test_train_malformed_override(fake_train, capsys):
    assert cli.main(["train", "cf2-hover", "ppo.lr"]) == 2
    assert "robostack: error: override 'ppo.lr' is not of the form key=value" in capsys.readouterr().err
    assert fake_train == []


def test_train_unknown_option(fake_train, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "cf2-hover", "a=1", "--frobnicate"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --frobnicate" in capsys.readouterr().err


def test_train_config_typo_is_one_line_error(monkeypatch, capsys):
    def train(task, algo, overrides, resume, seed, base, backend, run_root):
        raise ConfigError(
            "configs/tasks/go2-walk.yaml + overrides: unknown key 'ppo.lrr'; did you mean 'ppo.lr'?"
            " [from the command-line override 'ppo.lrr=1']"
        )

    fake_module(monkeypatch, "robostack.workflows.train", train=train)
    assert cli.main(["train", "go2-walk", "ppo.lrr=1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "robostack: error: configs/tasks/go2-walk.yaml + overrides: unknown key 'ppo.lrr'; did you mean 'ppo.lr'?"
        " [from the command-line override 'ppo.lrr=1']\n"
    )


def test_train_unknown_task_is_one_line_error(fake_registry, monkeypatch, capsys):
    fake_module(monkeypatch, "robostack.workflows.train", train=lambda task, **kw: registry.task(task))
    assert cli.main(["train", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robostack: error: unknown task 'nope'; known tasks: toy-hover, toy-reach")
    assert err.count("\n") == 1


@pytest.mark.parametrize("exc", [ValueError("num_envs must be positive"), FileNotFoundError(2, "No such file", "runs/x")])
def test_value_and_file_errors_are_one_line(monkeypatch, capsys, exc):
    def train(**kw):
        raise exc

    fake_module(monkeypatch, "robostack.workflows.train", train=train)
    assert cli.main(["train", "cf2-hover"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robostack: error: ") and err.count("\n") == 1


def test_debug_env_shows_traceback(monkeypatch):
    def train(**kw):
        raise ValueError("boom")

    fake_module(monkeypatch, "robostack.workflows.train", train=train)
    monkeypatch.setenv("ROBOSTACK_DEBUG", "1")
    with pytest.raises(ValueError, match="boom"):
        cli.main(["train", "cf2-hover"])


# ------------------------------------------------------------------------------------------ the command


def test_import_is_light():
    code = (
        "import sys, robostack.cli; "
        "heavy = [m for m in ('torch', 'mujoco', 'numpy', 'yaml', 'gymnasium', 'rclpy') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_help_runs_as_module():
    proc = subprocess.run([sys.executable, "-m", "robostack.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for command in ("list", "bench", "train"):
        assert command in proc.stdout
