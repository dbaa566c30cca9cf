"""The simulated intervener: a human with a gamepad and a deadman, played by the simulator, so that taking over
from a policy (and learning from it) runs and is measured without a person.

``SimulatedHuman`` watches env 0 of a ``TaskEnv`` through its task's ``robostack.sim.intervention.TaskIntervener``
(privileged state). When that says the robot is going wrong, it holds the deadman and moves the sticks as the
intervener's command asks (each component over its stick's full-scale value, the takeover mapping's ``scales``,
as ``teleop_node`` reads them back) and, on an arm, holds the gripper's close or open button; it keeps control
at least ``MIN_TAKEOVER_S`` and lets go once the intervener says the robot is back on track, or when an episode
ends (the robot is put back): one message with nothing held. In between it sends nothing (its hands are off the pad). The values are a ``sensor_msgs/Joy``'s
(axes, buttons), numbered as the joy driver numbers an Xbox pad, for ``teleop_node`` with ``input:=joy``:
``sim_robot_node`` publishes them (``intervener:=true``), so the takeover goes through ``teleop_node`` and the
safety layer as a gamepad's does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robostack import sim
from robostack.teleop.devices import TeleopError
from robostack.teleop.mapping import TAKEOVER_DEADMAN_BUTTON, TAKEOVER_GRIPPER_BUTTONS, TAKEOVER_MAPPINGS

MIN_TAKEOVER_S = 0.5  # a human does not let go the instant things look right


@dataclass(frozen=True)
class PadState:
    """What the simulated human's pad reports: ``sensor_msgs/Joy`` axes and buttons."""

    axes: list[float]
    buttons: list[int]


class SimulatedHuman:
    """Env 0 of ``env`` watched by its task's intervener; ``tick`` after every control step."""

    def __init__(self, env, kind: str):
        spec = sim.task(env.task.name)
        if spec.intervener is None:
            raise TeleopError(f"task {env.task.name!r} has no simulated intervener (tasks with one: "
                              f"{[t.name for t in sim.tasks() if t.intervener is not None]})")
        self.intervener = spec.intervener(env)
        self.mapping = TAKEOVER_MAPPINGS[kind]
        self.axes_count = max(self.mapping.axes) + 1
        self.buttons_count = max(TAKEOVER_DEADMAN_BUTTON, *TAKEOVER_GRIPPER_BUTTONS) + 1
        self.active = False
        self.steps = 0  # control steps into the current takeover
        self.takeovers = 0

    def tick(self, env) -> PadState | None:
        """The pad's state to send after this control step; None: hands off, nothing to send."""
        if not self.active:
            if not bool(self.intervener.going_wrong(env)[0]):
                return None
            self.active, self.steps = True, 0
            self.takeovers += 1
            self.intervener.begin(env, np.array([0]))
        elif int(env.episode_length[0]) == 0 or (  # a new episode: the robot was put back
                self.steps * env.control_dt >= MIN_TAKEOVER_S and bool(self.intervener.back_on_track(env)[0])):
            self.active = False
            return PadState([0.0] * self.axes_count, [0] * self.buttons_count)  # lets go of everything
        self.steps += 1
        command = self.intervener.command(env)[0].detach().cpu().numpy()
        axes = np.zeros(self.axes_count)
        axes[list(self.mapping.axes)] = np.clip(command / np.asarray(self.mapping.scales), -1.0, 1.0)
        buttons = [0] * self.buttons_count
        buttons[TAKEOVER_DEADMAN_BUTTON] = 1
        closed = self.intervener.gripper_closed(env)
        if closed is not None:
            open_button, close_button = TAKEOVER_GRIPPER_BUTTONS
            buttons[close_button if bool(closed[0]) else open_button] = 1
        return PadState(axes.tolist(), buttons)
