"""``robostack train TASK --init BUNDLE``: a PPO run that starts from a bundle's policy (its actor and observation
normalizer), as the safety critic's recovery policy is fine-tuned; refused for another task or architecture."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robostack import sim
from robostack.bundle import load_bundle
from robostack.config import ConfigError, build_config, config_path, load_yaml
from robostack.policies.ppo import PPO
from robostack.workflows.train import train_config_type, warm_start

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "cf2-hover"


def _ppo(overrides=()):
    cfg = build_config(train_config_type(), load_yaml(config_path("train", "cf2-hover.yaml")), "recipe", list(overrides))
    env = sim.make_env("cf2-hover", num_envs=2, seed=0, config=load_bundle(BUNDLE).metadata["task_config"])
    try:
        return PPO.from_env(env, cfg.ppo, "cpu")
    finally:
        env.close()


def test_a_run_started_from_a_bundle_acts_as_the_bundle_does():
    alg = _ppo()
    obs = torch.randn(16, alg.actor_critic.actor[0].in_features)
    before = alg.actor_critic.act_inference(obs)
    warm_start(alg, BUNDLE, "cf2-hover")
    exported = torch.jit.load(str(BUNDLE / "policy.pt"))
    with torch.no_grad():
        torch.testing.assert_close(alg.actor_critic.act_inference(obs), exported(obs))
        assert not torch.allclose(before, exported(obs))


def test_init_from_another_task_or_architecture_is_refused():
    with pytest.raises(ConfigError, match="a ppo bundle of go2-walk is needed"):
        warm_start(_ppo(), BUNDLE, "go2-walk")
    with pytest.raises(ConfigError, match=r"its actor \(0.weight \(\d+, 37\)"):
        warm_start(_ppo(["ppo.actor_hidden=[32,32]"]), BUNDLE, "cf2-hover")


def test_init_is_refused_for_another_algorithm_before_anything_is_written(tmp_path):
    from robostack.workflows.train import train

    with pytest.raises(ConfigError, match="init starts a ppo run from a bundle's policy, not a 'sac' run"):
        train("cf2-hover", algo="sac", overrides=[f"init={BUNDLE}"], run_root=str(tmp_path))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flags, clash", [(["--resume", "runs/x"], "--resume"),
                                          (["--algo", "safety-critic"], "--algo safety-critic"),
                                          (["--dataset", "data/x"], "--dataset")])
def test_init_is_a_usage_error_beside_what_does_not_start_a_run_from_it(flags, clash, capsys, tmp_path):
    from robostack.cli import main

    assert main(["train", "cf2-hover", "--init", str(BUNDLE), "--run-root", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err == ("robostack: error: --init starts a reinforcement learning run from a bundle's policy: not with "
                   f"{clash}\n"), err
    assert not any(tmp_path.iterdir())
