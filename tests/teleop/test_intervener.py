"""The simulated intervener (robostack.teleop.intervener): it takes over when the task's rule on privileged state
says the robot goes wrong, holds the deadman while it drives, and hands back once the robot is back on track (or
the episode ends)."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from robostack import sim
from robostack.sim.robots.cf2.tasks import HoverIntervener
from robostack.teleop.devices import TeleopError
from robostack.teleop.intervener import MIN_TAKEOVER_S, SimulatedHuman
from robostack.teleop.mapping import TAKEOVER_DEADMAN_BUTTON, TAKEOVER_GRIPPER_BUTTONS, TAKEOVER_MAPPINGS


def place(env, qpos: dict[int, float] | None = None, steps: int = 50) -> None:
    """Write env 0's joint positions (index: value), zero its velocities, and call it ``steps`` into an episode."""
    for index, value in (qpos or {}).items():
        env.sim.qpos[0, index] = value
    env.sim.qvel[0] = 0.0
    env.sim.forward(np.array([0]))
    env._refresh()  # what the term functions read, as after a step
    env.episode_length[0] = steps


def hold_until_let_go(human: SimulatedHuman, env) -> tuple[int, object]:
    """Ticks until the human lets go; (ticks, the last pad) — the state stays as placed."""
    for tick in range(1, 1000):
        pad = human.tick(env)
        if pad is not None and not pad.buttons[TAKEOVER_DEADMAN_BUTTON]:
            return tick, pad
    raise AssertionError("never let go")


@contextlib.contextmanager
def arm_scene(*overrides: str):
    """panda-lift's env 0 just reset, its simulated human, and the qpos addresses of the cube and the fingers."""
    env = sim.make_env("panda-lift", num_envs=1, play=True, overrides=["sim.num_threads=1", *overrides])
    try:
        env.reset(seed=0)
        model = env.default_model
        fingers = [model.joint(f"finger_joint{i}").qposadr[0] for i in (1, 2)]
        yield env, SimulatedHuman(env, "arm"), model.joint("object").qposadr[0], fingers
    finally:
        env.close()


def test_the_drone_is_taken_over_when_it_strays_and_handed_back_once_settled_at_its_target():
    env = sim.make_env("cf2-hover", num_envs=1, play=True, overrides=["sim.num_threads=1"])
    try:
        env.reset(seed=0)
        target = env.command[0].numpy().astype(float)
        human = SimulatedHuman(env, "drone")
        place(env, {0: target[0], 1: target[1], 2: target[2]})
        assert human.tick(env) is None  # at its target: hands off
        place(env, {0: target[0] + 0.5, 1: target[1], 2: target[2] - 0.2})  # strayed 0.54 m
        pad = human.tick(env)
        assert pad.buttons[TAKEOVER_DEADMAN_BUTTON] == 1 and human.takeovers == 1
        x_axis, _, z_axis = TAKEOVER_MAPPINGS["drone"].axes
        assert pad.axes[x_axis] < -0.5 and pad.axes[z_axis] > 0.2  # the setpoint goes back toward the target
        place(env, {0: target[0], 1: target[1], 2: target[2]})
        ticks, released = hold_until_let_go(human, env)
        # held until the drone has stayed settled SETTLE_S (longer than MIN_TAKEOVER_S), then let go
        assert HoverIntervener.SETTLE_S > MIN_TAKEOVER_S
        assert ticks == round(HoverIntervener.SETTLE_S / env.control_dt) + 1
        assert not any(released.buttons) and not any(released.axes)
        assert human.tick(env) is None and human.takeovers == 1
    finally:
        env.close()


def test_the_arm_is_taken_over_after_a_missed_grasp_with_the_gripper_opened_and_handed_back_once_lifted():
    from robostack.sim.robots.panda.lift import LiftIntervener

    with arm_scene() as (env, human, _, fingers):
        assert human.tick(env) is None  # open gripper above the table: nothing wrong
        place(env, {adr: 0.001 for adr in fingers})  # closed on nothing, far from the cube
        missed_ticks = round(LiftIntervener.MISSED_S / env.control_dt)
        assert all(human.tick(env) is None for _ in range(missed_ticks - 1))  # a twitch it may take back
        pad = human.tick(env)
        open_button, close_button = TAKEOVER_GRIPPER_BUTTONS
        assert pad.buttons[TAKEOVER_DEADMAN_BUTTON] and pad.buttons[open_button] and not pad.buttons[close_button]
        assert max(abs(a) for a in pad.axes) > 0.0  # moving toward the cube
        env.episode_length[0] = 0  # the episode ended and the arm was put back: the human lets go
        assert not any(human.tick(env).buttons)


def test_the_arm_is_taken_over_when_it_hovers_at_the_cube_without_closing_and_the_human_closes_at_once():
    """A grasp that never comes (the TCP at the cube, fingers open) is taken over after ``HOVER_S``; with the cube
    between the fingers the human closes there (not from above the cube); a held cube, or one going up across the
    fingers, is not a hover."""
    from robostack.sim.robots.panda.lift import LiftIntervener
    from robostack.sim.robots.panda.reach import ee_pos

    with arm_scene() as (env, human, cube, fingers):
        hover_ticks = round(LiftIntervener.HOVER_S / env.control_dt)
        stalled_ticks = round(LiftIntervener.STALLED_S / env.control_dt)
        assert stalled_ticks > hover_ticks + 1
        place(env, {adr: 0.025 for adr in fingers})  # fingers at the cube's width: holding it, not hovering
        place(env, dict(zip(range(cube, cube + 3), ee_pos(env)[0].tolist())))  # the cube's centre at the TCP
        assert all(human.tick(env) is None for _ in range(stalled_ticks - 1))
        place(env, {adr: 0.033 for adr in fingers})  # held across its diagonal, going up: in the hand, no hover
        env.sim.qvel[0, env.default_model.joint("object").dofadr[0] + 2] = 0.1
        env.sim.forward(np.array([0]))
        env._refresh()
        assert all(human.tick(env) is None for _ in range(2 * hover_ticks))
        place(env, {adr: 0.04 for adr in fingers})  # wide open, the TCP 1 cm below the cube's centre
        place(env, dict(zip(range(cube, cube + 3), (ee_pos(env)[0] + torch.tensor([0.0, 0.0, 0.01])).tolist())))
        assert all(human.tick(env) is None for _ in range(hover_ticks - 1))
        pad = human.tick(env)
        open_button, close_button = TAKEOVER_GRIPPER_BUTTONS
        assert pad.buttons[TAKEOVER_DEADMAN_BUTTON] and human.takeovers == 1
        assert pad.buttons[close_button] and not pad.buttons[open_button]  # straddling it: closes there, no detour


def test_the_arm_holding_the_cube_without_lifting_it_is_taken_over_and_the_human_lifts():
    """A lift that never comes (the cube held, not rising) is taken over after ``STALLED_S``: held at its centre,
    the human keeps the gripper closed and moves up; pinched by its top edge (3 cm above its centre, as the chunk
    policy did through ROS 2), the human reopens, then goes down to its centre. (The goal is raised so the cube,
    held where the arm starts, is short of it.)"""
    from robostack.sim.robots.panda.lift import LiftExpert, LiftIntervener
    from robostack.sim.robots.panda.reach import ee_pos

    with arm_scene("lift_height=0.5") as (env, human, cube, fingers):
        place(env, {adr: 0.025 for adr in fingers})
        place(env, dict(zip(range(cube, cube + 3), ee_pos(env)[0].tolist())))
        stalled_ticks = round(LiftIntervener.STALLED_S / env.control_dt)
        assert all(human.tick(env) is None for _ in range(stalled_ticks - 1))
        pad = human.tick(env)
        open_button, close_button = TAKEOVER_GRIPPER_BUTTONS
        assert pad.buttons[TAKEOVER_DEADMAN_BUTTON] and pad.buttons[close_button] and not pad.buttons[open_button]
        z_axis = TAKEOVER_MAPPINGS["arm"].axes[2]
        assert pad.axes[z_axis] > 0.5  # straight up, holding on
        assert int(human.intervener.expert.phase[0]) == LiftExpert.LIFT

        env.episode_length[0] = 0  # a new episode: the human lets go
        assert not any(human.tick(env).buttons)
        pinched = (ee_pos(env)[0] - torch.tensor([0.0, 0.0, 0.032])).tolist()
        place(env, {**dict(zip(range(cube, cube + 3), pinched)), **{adr: 0.0275 for adr in fingers}})
        assert all(human.tick(env) is None for _ in range(stalled_ticks - 1))
        pad = human.tick(env)
        assert pad.buttons[TAKEOVER_DEADMAN_BUTTON] and pad.buttons[open_button] and not pad.buttons[close_button]
        assert not any(pad.axes) and human.takeovers == 2  # reopening in place
        place(env, {adr: 0.04 for adr in fingers})
        assert human.tick(env).axes[z_axis] < 0.0  # then down to the cube's centre


def test_the_human_approaches_on_what_the_pad_steers():
    """The pad moves x, y, z and yaw; a tilt of the gripper it cannot correct does not hold the human's approach
    (it did: 2 of 6 takeovers waited there to the episode's end), while the scripted expert, which turns every
    axis, still waits for it."""
    from robostack.sim.robots.panda.lift import LiftExpert, PadLiftExpert

    with arm_scene() as (env, human, _, _):
        assert isinstance(human.intervener.expert, PadLiftExpert)
        tilted = torch.tensor([[0.2, -0.1, 0.01]])  # roll and pitch left over, yaw aligned
        turned = torch.tensor([[0.0, 0.0, 0.2]])
        assert human.intervener.expert.aligned(tilted).item() and not human.intervener.expert.aligned(turned).item()
        assert not LiftExpert(env).aligned(tilted).item()


def test_after_a_grasp_missed_above_the_cube_the_human_goes_straight_down():
    """Fingers closed on nothing 4 cm above the cube, across its faces: the human reopens in place, then
    descends, not back up to the expert's approach point first."""
    from robostack.sim import mdp
    from robostack.sim.robots.panda import manipulation as manip
    from robostack.sim.robots.panda.lift import LiftExpert, LiftIntervener
    from robostack.sim.robots.panda.reach import ee_pos, ee_quat

    with arm_scene() as (env, human, cube, fingers):
        under = (ee_pos(env)[0] - torch.tensor([0.0, 0.0, 0.04])).tolist()
        across = mdp.yaw_quat(manip.heading(ee_quat(env)).numpy())[0].tolist()  # the cube turned to the fingers
        place(env, {**dict(zip(range(cube, cube + 7), under + across)), **{adr: 0.001 for adr in fingers}})
        missed_ticks = round(LiftIntervener.MISSED_S / env.control_dt)
        assert all(human.tick(env) is None for _ in range(missed_ticks - 1))
        pad = human.tick(env)
        open_button, close_button = TAKEOVER_GRIPPER_BUTTONS
        assert pad.buttons[TAKEOVER_DEADMAN_BUTTON] and pad.buttons[open_button]
        assert int(human.intervener.expert.phase[0]) == LiftExpert.DESCEND
        assert not any(pad.axes)  # the fingers open before the hand goes down
        place(env, {adr: 0.04 for adr in fingers})
        assert human.tick(env).axes[TAKEOVER_MAPPINGS["arm"].axes[2]] < 0.0


def test_the_human_loses_patience_with_a_cube_still_on_the_table():
    """Grasps dropped and retried reset every other rule's count; ``PATIENCE_S`` into the episode without the cube
    on its way up, the human takes over anyway, and not while it is going up or held in the fingers (the stall
    rule's to judge: a slow lift)."""
    from robostack.sim.robots.panda.lift import LiftIntervener
    from robostack.sim.robots.panda.reach import ee_pos

    with arm_scene("lift_height=0.5") as (env, human, cube, fingers):
        patience = round(LiftIntervener.PATIENCE_S / env.control_dt)
        resting = {**dict(zip(range(cube, cube + 3), env.sim.qpos[0, cube:cube + 3].tolist())),
                   **{adr: float(env.sim.qpos[0, adr]) for adr in fingers}}
        place(env, {adr: 0.025 for adr in fingers})
        place(env, dict(zip(range(cube, cube + 3), ee_pos(env)[0].tolist())), steps=patience)  # held, not rising
        stalled_ticks = round(LiftIntervener.STALLED_S / env.control_dt)
        assert all(human.tick(env) is None for _ in range(stalled_ticks - 1))
        assert human.tick(env) is not None  # until the stall rule says the lift never comes
        env.episode_length[0] = 0  # a new episode: the human lets go
        human.tick(env)
        place(env, resting, steps=patience - 1)
        assert human.tick(env) is None
        place(env, {cube + 2: env.sim.qpos[0, cube + 2] + 0.03}, steps=patience)  # in the hand, going up
        env.sim.qvel[0, env.default_model.joint("object").dofadr[0] + 2] = 0.1
        env.sim.forward(np.array([0]))
        env._refresh()
        assert human.tick(env) is None
        place(env, steps=patience)  # still on its way nowhere
        pad = human.tick(env)
        assert pad.buttons[TAKEOVER_DEADMAN_BUTTON] and human.takeovers == 2


def test_the_quadruped_is_stood_still_when_it_tilts():
    env = sim.make_env("go2-walk", num_envs=1, play=True, overrides=["sim.num_threads=1"])
    try:
        env.reset(seed=0)
        human = SimulatedHuman(env, "quadruped")
        env.command[0] = 0.0
        place(env)
        assert human.tick(env) is None
        tilted = np.array([np.cos(0.25), np.sin(0.25), 0.0, 0.0])  # 0.5 rad about x
        place(env, dict(zip(range(3, 7), tilted)))
        pad = human.tick(env)
        assert pad.buttons[TAKEOVER_DEADMAN_BUTTON] and not any(pad.axes)  # stand still
        place(env, dict(zip(range(3, 7), [1.0, 0.0, 0.0, 0.0])))
        hold_until_let_go(human, env)
    finally:
        env.close()


def test_a_task_without_a_rule_is_refused_by_name():
    env = sim.make_env("panda-reach", num_envs=1, play=True, overrides=["sim.num_threads=1"])
    try:
        with pytest.raises(TeleopError, match=r"task 'panda-reach' has no simulated intervener \(tasks with one: "):
            SimulatedHuman(env, "arm")
    finally:
        env.close()
