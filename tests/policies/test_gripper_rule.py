"""The gripper rule learned from takeovers (robostack.policies.gripper_rule): it closes where the steps that went
right closed, leaves out what the policy did before a takeover, changes nothing else, and refuses what it cannot
learn."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from robostack.policies.gripper_rule import GripperRuleConfig, fit_gripper_rule
from robostack.policies.rlif import RLIFConfig


def buffers(n: int = 2000, scale: float = 2.0, closes_where=lambda d: d < 0.3, wrong_before: int = 0):
    """Observations [distance to the object, noise], actions [move, gripper] in [-1, 1]; the base moves by 0.5 and
    opens; what was executed closes where ``closes_where``. With ``wrong_before``, the policy hovers open at the
    object (distance 0.1, where it is never otherwise) for that many steps before each of 10 takeovers, which then
    close there."""
    generator = torch.Generator().manual_seed(0)
    obs = torch.stack([torch.rand(n, generator=generator), torch.randn(n, generator=generator)], dim=1)
    base = torch.tensor([0.5, -1.0]).repeat(n, 1)
    executed = torch.stack([torch.full((n,), 0.5), torch.where(closes_where(obs[:, 0]), 1.0, -1.0)], dim=1)
    rewards, human = torch.zeros(n), torch.zeros(n, dtype=torch.bool)
    if wrong_before:
        obs[:, 0] = 0.2 + 0.8 * obs[:, 0]  # elsewhere the policy stays away from the object
        for start in range(100, n, n // 10):
            obs[start - wrong_before:start, 0] = 0.1
            executed[start - wrong_before:start, 1] = -1.0  # the policy's own open command at the object
            rewards[start - 1] = -1.0
            human[start:start + 20] = True
            obs[start:start + 20, 0] = 0.1
            executed[start:start + 20, 1] = 1.0  # the human closes there
    residual = ((executed - base) / scale).clamp(-1.0, 1.0)
    online = {"policy_obs": torch.cat([obs, base], dim=1), "actions": residual, "rewards": rewards}
    return online, {k: v[human] if wrong_before else v for k, v in online.items()}


def test_the_rule_closes_where_the_steps_that_went_right_closed_and_leaves_the_rest_alone():
    online, prior = buffers()
    rule, losses = fit_gripper_rule(online, prior, RLIFConfig(scale=2.0, gripper=GripperRuleConfig(updates=1500)))
    assert losses["accuracy"] > 0.97
    module = rule.export_module()
    near, far = torch.tensor([[0.1, 0.0, 0.5, -1.0]]), torch.tensor([[0.8, 0.0, 0.5, -1.0]])
    assert module(near).tolist() == [[0.0, 1.0]]  # the gripper closed, the motion untouched
    assert module(far).tolist() == [[0.0, 0.0]]


def test_what_the_policy_did_before_a_takeover_is_left_out():
    """The policy hovering open at the object before each takeover, where only the human closes: left in, its
    steps outnumber the human's and teach the rule to stay open; left out (the default window), the rule closes as
    the human did."""
    online, prior = buffers(closes_where=lambda d: d < 0.0, wrong_before=80)  # closes only at the takeovers
    cfg = RLIFConfig(scale=2.0, gripper=GripperRuleConfig(updates=1500))
    near = torch.tensor([[0.1, 0.0, 0.5, -1.0]])
    rule, _ = fit_gripper_rule(online, prior, cfg)
    assert rule.export_module()(near).tolist() == [[0.0, 1.0]]
    kept_in = dataclasses.replace(cfg, gripper=dataclasses.replace(cfg.gripper, before_takeover_steps=0))
    rule, _ = fit_gripper_rule(online, prior, kept_in)
    assert rule.export_module()(near).tolist() == [[0.0, 0.0]]


def test_the_rule_reads_only_its_columns():
    online, prior = buffers()
    cfg = RLIFConfig(scale=2.0, gripper=GripperRuleConfig(updates=500))
    rule, _ = fit_gripper_rule(online, prior, dataclasses.replace(cfg, gripper=dataclasses.replace(cfg.gripper,
                                                                                                   columns=(0,))))
    module = rule.export_module()
    assert module(torch.tensor([[0.1, 1e6, 0.5, -1.0]])).tolist() == [[0.0, 1.0]]  # the noise column is not read


def test_what_the_rule_cannot_learn_is_refused_in_one_line():
    online, prior = buffers(scale=0.5)
    with pytest.raises(ValueError, match=r"needs scale >= 2 .* got scale=0.5"):
        fit_gripper_rule(online, prior, RLIFConfig(scale=0.5, gripper=GripperRuleConfig(updates=10)))
    online, prior = buffers(closes_where=lambda d: d < 0.0)
    with pytest.raises(ValueError, match=r"never close the gripper"):
        fit_gripper_rule(online, prior, RLIFConfig(scale=2.0, gripper=GripperRuleConfig(updates=10)))
    online, _ = buffers()
    with pytest.raises(ValueError, match=r"no human step"):
        fit_gripper_rule(online, {k: v[:0] for k, v in online.items()},
                         RLIFConfig(scale=2.0, gripper=GripperRuleConfig(updates=10)))
