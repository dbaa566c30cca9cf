"""``robostack train TASK --algo safety-critic`` and ``robostack bench safety`` end to end, small: the bundle it
writes carries a sealed critic the safety node can load, the report has every figure the benchmark promises, and
the closed loop labels violations from the task's state."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from robostack import registry
from robostack.bundle import load_bundle
from robostack.real.critic import bundle_critic
from robostack.workflows.safety_critic import (MAX_EPSILON, SafeLoop, ViolationConfig, contract_differences, engaged_share,
                                              next_epsilon)

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["num_envs=4", "episodes_per_disturbance=4", "nominal_episodes=4", "episode_length_s=1.0", "train.steps=200",
         "train.batch_size=256", "train.torch_threads=1"]


def test_train_then_bench_a_safety_critic(tmp_path, capsys):
    from robostack.cli import main

    out = tmp_path / "cf2-critic"
    assert main(["train", "cf2-hover", "--algo", "safety-critic", "--policy", str(ROOT / "bundles" / "cf2-hover"),
                 "--out", str(out), "--json", "--disturbance", "randomization.wind.range=[-0.3,0.3]", *SMALL]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["bundle"] == str(out) and 0.0 < summary["epsilon"] < 1.0
    bundle = load_bundle(out)  # verified: the hash covers the critic
    critic_meta = bundle.metadata["critic"]
    assert critic_meta["judges_recovery"] and critic_meta["recovery"] == "level"
    assert all("randomization.wind.range=[-0.3,0.3]" in shifts for shifts in critic_meta["training"]["disturbances"]
               .values())
    robot = registry.robot("cf2")
    assert bundle_critic(out, bundle.metadata, robot, robot.load_config(), None).epsilon == summary["epsilon"]
    report_dir = Path(f"{out}.critic-training")
    assert (report_dir / "critic.png").stat().st_size > 10_000 and list(report_dir.glob("events.out.tfevents.*"))

    plot = tmp_path / "tradeoff.png"
    assert main(["bench", "safety", "--task", "cf2-hover", "--policy", str(out), "--episodes", "4", "--json",
                 "--sweep", str(plot), *SMALL]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("episodes", "violations_hard_only", "violations_with_critic", "violation_reduction",
                "success_nominal_hard_only", "success_nominal_with_critic", "false_trigger_rate", "critic_p99_ms",
                "wall_s"):
        assert key in report, key
    assert report["episodes"] >= 4 and 0.0 <= report["false_trigger_rate"] <= 1.0 and report["critic_p99_ms"] > 0
    epsilons = [point["epsilon"] for point in report["sweep"]]
    assert len(epsilons) == 5 and epsilons == sorted(epsilons) and summary["epsilon"] in epsilons
    assert plot.stat().st_size > 10_000


def test_violations_are_labelled_from_the_task_state():
    """Nothing is flagged at an episode's start; a drone whose motors are cut (by a control filter, as the safety
    layer is one) hits the ground at speed: a violation, judged before the episode's reset."""
    loop = SafeLoop(ROOT / "bundles" / "cf2-hover", 2, 0, ["max_distance=5.0"],
                    violation=ViolationConfig(min_height=0.03, max_ground_speed=0.5,
                                              geofence=[[-2.0, -2.0, -0.1], [2.0, 2.0, 2.5]]))
    try:
        env = loop.env
        env.reset(0)
        assert not loop.violations().any()
        crashed = np.zeros(2, dtype=bool)

        def judge() -> None:  # after the step, before an ended episode is reset
            crashed[:] |= loop.violations()

        for _ in range(150):
            env.step(torch.zeros(2, env.action_dim), control_filter=torch.zeros_like, before_reset=judge)
        assert crashed.all()
    finally:
        loop.close()


def test_engaged_share_counts_the_minimum_hold_and_episode_ends():
    risk = np.array([[0.1], [0.9], [0.1], [0.1], [0.1], [0.9], [0.1]])
    steps = {"active": np.ones((7, 1), dtype=bool), "done": np.array([[0], [0], [0], [0], [0], [1], [0]], dtype=bool)}
    # engaged at step 1 for 3 steps (1, 2, 3), then at step 5 where the episode ends: 4 of 7
    assert engaged_share(risk, steps, 0.5, hold_steps=3) == 4 / 7
    assert engaged_share(risk, steps, 0.95, hold_steps=3) == 0.0


def test_epsilon_rises_by_the_closed_loops_overshoot_where_the_recording_no_longer_tells():
    assert next_epsilon(0.0, 0.06, 1.0) == 0.06  # the first check: the offline choice
    assert next_epsilon(0.06, 0.08, 2.0) == 0.08  # the offline choice for a lower budget rises: it is taken
    assert next_epsilon(0.06, 0.062, 1.125) == pytest.approx(0.072)  # it stalls: a fifth up for a small overshoot
    assert next_epsilon(0.06, 0.062, 3.0) == pytest.approx(0.18)  # and as much as the overshoot for a large one
    assert next_epsilon(0.5, 0.3, 4.0) == MAX_EPSILON


def test_a_recovery_policy_is_trained_with_the_critic_and_sealed_into_the_bundle(tmp_path, capsys):
    """``recovery_policy.train``: the go2's walking policy fine-tuned (a PPO run started from the bundle) into its
    recovery, exported with the critic; the second round's rollouts and the safety layer run it."""
    from robostack.bundle.format import RECOVERY_FILE
    from robostack.cli import main

    out = tmp_path / "go2-critic"
    recovery = ["recovery_policy.train=true", "recovery_policy.command=[0.0,0.0,0.0]",
                "recovery_policy.overrides=[num_envs=8,max_iterations=2,ppo.num_steps_per_env=8,save_interval=0]"]
    assert main(["train", "go2-walk", "--algo", "safety-critic", "--policy", str(ROOT / "bundles" / "go2-walk"),
                 "--out", str(out), "--json", *SMALL, *recovery]) == 0
    summary = json.loads(capsys.readouterr().out)
    bundle = load_bundle(out)
    learned = bundle.metadata["critic"]["recovery_policy"]
    assert learned["command"] == [0.0, 0.0, 0.0] and learned["training"]["iterations"] == 2
    assert RECOVERY_FILE in bundle.metadata["files"]
    run = Path(learned["training"]["run_dir"])
    config = (run / "config.yaml").read_text()
    assert f"init: {(ROOT / 'bundles' / 'go2-walk').resolve()}" in config
    robot = registry.robot("go2")
    critic = bundle_critic(out, bundle.metadata, robot, robot.load_config(), None)
    assert critic.epsilon == summary["epsilon"] and critic.new_recovery() is not None


def test_a_recovery_must_keep_the_policys_contract():
    """A recovery runs in the policy's place: any part of its contract but the format version and the kind (absent
    from older bundles) that its training changed is named."""
    shipped = load_bundle(ROOT / "bundles" / "go2-walk").metadata
    recovery = json.loads(json.dumps(shipped))
    recovery.update(kind="actor_critic", format_version=shipped.get("format_version", 0) + 1)
    assert contract_differences(shipped, recovery) == []
    recovery["control_rate_hz"] = 100.0
    recovery["pd_gains"] = {"kp": [1.0], "kd": [0.1]}
    assert contract_differences(shipped, recovery) == ["pd_gains", "control_rate_hz"]
