"""``safety_node``: the safety reflex layer between the policy (or a human) and the robot's driver.

Run::

    python -m robostack.real.safety_node --ros-args -p robot:=go2

Parameters: ``robot`` (panda, go2, cf2: required without a bundle), ``bundle`` (the policy bundle deployed:
checked to fit the robot before anything is published, ``robostack.real.bundle_fit``, and the robot's
configuration, gains and motor limits, comes from it; only its metadata is read), ``config`` (deploy YAML,
default ``configs/deploy/<robot>.yaml``; its ``safety:`` section is ``robostack.real.safety.SafetyConfig``),
``task`` (the deployed task, default the bundle's: its section of the file's ``tasks`` is merged over it).

It alone talks to the driver. It takes the latest command (the human's on ``teleop/command`` while
``teleop/active`` is true, else the policy's on ``policy/command``) and the latest measured state
(``robostack.real.state.StateListener``), passes them through ``robostack.real.safety.SafetyLayer`` and
publishes the result on the driver's command topic: at once when a command of the active source arrives
(so it is not held back up to a period), and on a timer every safety period (``safety.rate_hz``) unless a
command went out since the timer's previous tick. The timer is the watchdog's beat: with no commands
arriving it keeps the driver supplied, and the fallback engages on it.

What the layer changes is published on ``safety/override`` as JSON ``{"reasons": [...], "t": <ROS time,
s>}`` when it changes (the reasons with their measured values masked: a stale command's growing age is
no change), while it persists every ``OVERRIDE_HEARTBEAT_S``, and as an empty list when commands pass
unchanged again; so a fallback at 500 Hz does not flood the topic. Health goes on ``/diagnostics`` at 2 Hz,
with ``fallback_complete`` (the fallback has done what it does: arm holding, quadruped lying, drone landed with
its motors off) and ``state_problems`` (stamps frozen, backward, ahead of this clock, or zero). Its situation
goes on ``safety/status`` (JSON, best effort: at every change and every ``STATUS_PERIOD_S``): the fallback
phase, the command source, ``passes``, whose commands the layer takes now (``policy``, ``teleop`` or null),
and ``recovering``, whether the critic's recovery runs instead of them; the policy node and the simulated robot
wait for ``passes``, and the policy does not integrate what a recovery did not execute.

``true`` on ``safety/estop`` or a call of ``safety/trigger_estop`` latches the e-stop; only ``safety/reset``
clears it (and any latched fallback), and it refuses while the state is stale. Before the first valid state
it publishes no command: there is nothing safe to hold.

It finishes what it started. On SIGINT it takes no more commands, so the fallback brings the robot to rest
(drone: hover, land, motors off; quadruped: stand down; arm: hold), and exits once the fallback is complete,
at a second SIGINT or a SIGTERM, or after ``SHUTDOWN_TIMEOUT_S``; at once if no command ever passed (nothing
was driven). Whatever else stops (the launch system SIGINTs every node at once, and SIGTERMs after its
``sigterm_timeout``), the robot is not left mid-air or half-way down. With ``status_file`` set (``robostack
deploy`` sets it) it writes a JSON line there whenever its situation changes, so a supervisor on this machine
knows when the fallback is complete.

With a ``bundle`` that holds a safety critic (``robostack train TASK --algo safety-critic``), the critic judges
every command, the human's takeover commands too; an engagement is on ``safety/override`` (``critic: risk ...:
recovery (...)``) and the risk on ``/diagnostics`` (``critic_risk``). Without one, nothing changes.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import Trigger

from robostack import registry
from robostack.bundle import read_metadata
from robostack.real.bundle_fit import check_bundle_fits
from robostack.real.critic import bundle_critic
from robostack.real.deploy_config import INTERNAL, load_deploy_config
from robostack.real.executor import init_ros, spin, stop_on_signals
from robostack.real.messages import message_type, set_field
from robostack.real.safety import Command, Measurement, safety_config, safety_layer
from robostack.real.state import StateListener, status_qos, qos_profile

DIAGNOSTICS_PERIOD_S = 0.5
SHUTDOWN_TIMEOUT_S = 30.0  # the longest a stop waits for the fallback: a drone landing from its highest allowed
OVERRIDE_HEARTBEAT_S = 0.5  # a persisting override is repeated this often
STATUS_PERIOD_S = 0.1  # safety/status is repeated this often (best effort: a late or lossy reader catches up)
MEASURED_VALUE = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")  # 104 ms, x=2.500, [11]; not names like joint1, m2


def override_kind(reasons: list[str]) -> tuple[str, ...]:
    """What is overridden, without the measured values in the reasons."""
    return tuple(MEASURED_VALUE.sub("#", reason) for reason in reasons)


class SafetyNode(Node):
    """Topics and services around one ``SafetyLayer``; the layer decides, the node only carries."""

    def __init__(self, **kwargs: Any):
        super().__init__("safety_node", **kwargs)
        self.robot = self.declare_parameter("robot", "").value
        bundle = self.declare_parameter("bundle", "").value
        config = self.declare_parameter("config", "").value
        task = self.declare_parameter("task", "").value  # its section of the deploy config applies too
        metadata = read_metadata(bundle) if bundle else None
        self.robot = self.robot or (metadata["robot"] if metadata else "")
        if not self.robot:
            raise ValueError("parameter 'robot' (panda, go2 or cf2) or 'bundle' is required")
        robot = registry.robot(self.robot)
        source = config or str(robot.deploy_config_file)
        self.deploy = load_deploy_config(robot.name, source, task=task or (metadata["task"] if metadata else None))
        robot_config = (check_bundle_fits(metadata, bundle, robot, self.deploy, source) if metadata
                        else robot.load_config())
        safety = safety_config(self.deploy, source)
        critic = None if metadata is None else bundle_critic(  # trained for this very policy (the bundle's hash)
            bundle, metadata, robot, robot_config, safety.tcp_site)
        self.layer = safety_layer(robot, robot_config, safety, critic)
        self.listener = StateListener(self, self.deploy)
        self.status_file = Path(status) if (status := self.declare_parameter("status_file", "").value) else None
        self.status: dict[str, Any] = {}
        self.status_published_at = -float("inf")  # monotonic s
        self.stopping_since: float | None = None

        self.policy_command: Command | None = None
        self.teleop_command: Command | None = None
        self.teleop_active = False
        self.last_override = ""
        self.last_override_at = -float("inf")  # monotonic s
        self.published_override: tuple[str, ...] = ()  # override_kind of what safety/override last said
        self.published_override_at = -float("inf")  # monotonic s
        self.forwarded_since_tick = False

        driver = self.deploy.topics.driver_command
        self.driver_type = message_type(driver.type)
        self.driver_field = driver.data
        self.driver_publisher = self.create_publisher(self.driver_type, driver.topic, qos_profile(driver.qos))
        self.override_publisher = self.create_publisher(String, INTERNAL["override"][0], 10)
        self.status_publisher = self.create_publisher(String, INTERNAL["status"][0], status_qos())
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, INTERNAL["diagnostics"][0], 10)
        self.create_subscription(Float64MultiArray, INTERNAL["policy_command"][0], self._on_policy, 10)
        self.create_subscription(Float64MultiArray, INTERNAL["teleop_command"][0], self._on_teleop, 10)
        self.create_subscription(Bool, INTERNAL["teleop_active"][0], self._on_teleop_active, 10)
        self.create_subscription(Bool, INTERNAL["estop"][0], self._on_estop, 10)
        self.create_service(Trigger, INTERNAL["estop_service"][0], self._on_trigger_estop)
        self.create_service(Trigger, INTERNAL["reset_service"][0], self._on_reset)
        self.create_timer(self.layer.period, self._tick)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
        self.get_logger().info(f"{type(self.layer).__name__} for the {self.robot} at {self.layer.cfg.rate_hz:g} Hz "
                               f"on {self.resolve_topic_name(driver.topic)}; no command until the state arrives")

    # ----- inputs
    def _on_policy(self, msg: Float64MultiArray) -> None:
        self.policy_command = Command(np.asarray(msg.data, dtype=np.float64), time.monotonic())
        if not self.teleop_active:
            self._forward()

    def _on_teleop(self, msg: Float64MultiArray) -> None:
        self.teleop_command = Command(np.asarray(msg.data, dtype=np.float64), time.monotonic())
        if self.teleop_active:
            self._forward()

    def _on_teleop_active(self, msg: Bool) -> None:
        self.teleop_active = bool(msg.data)

    def _on_estop(self, msg: Bool) -> None:
        if msg.data:  # false does not release it: only the reset service does
            self._estop("topic")

    def _on_trigger_estop(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._estop("service")
        response.success, response.message = True, "e-stop latched until safety/reset"
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self.layer.reset(time.monotonic())
        if response.success:  # rclpy wants one severity per logging call site
            self.get_logger().info(response.message)
        else:
            self.get_logger().warning(response.message)
        return response

    def _estop(self, via: str) -> None:
        if not self.layer.estopped:
            self.get_logger().warning(f"e-stop latched (via {via})")
        self.layer.trigger_estop()

    # ----- the reflex
    @property
    def source(self) -> str:
        return "teleop" if self.teleop_active else "policy"

    @property
    def command(self) -> Command | None:
        return self.teleop_command if self.teleop_active else self.policy_command

    def _forward(self) -> None:
        """A command of the active source goes through the layer to the driver as it arrives."""
        if self._filter_and_publish():
            self.forwarded_since_tick = True

    def _tick(self) -> None:
        """The safety period's beat; silent when a command went out since the previous tick (the driver
        would get it twice)."""
        if self.forwarded_since_tick:
            self.forwarded_since_tick = False
            return
        self._filter_and_publish()

    def _filter_and_publish(self) -> bool:
        """The layer's output for the latest command and state to the driver; False if there is none yet."""
        now = time.monotonic()
        ready = self.listener.ready()
        measurement = Measurement(self.listener.state(), now - self.listener.age(now)) if ready else None
        phase_before = self.layer.fallback_phase
        output, reasons = self.layer.filter(self.command, measurement, now)
        if self.layer.fallback_phase != phase_before:
            self._log_fallback(phase_before, reasons)
        if output is not None:
            msg = self.driver_type()
            set_field(msg, self.driver_field, output.tolist())
            self.driver_publisher.publish(msg)
        self._report_override(reasons, now)
        passing = output is not None and not self.layer.fallback_phase and self.command is not None
        self._write_status(now, self.source if passing else None)
        return output is not None

    def _write_status(self, now: float, passes: str | None) -> None:
        """The node's situation on ``safety/status`` (when it changes, and every ``STATUS_PERIOD_S`` for those who
        join later), and to ``status_file`` when it changes (atomically: a reader never sees half); ``passes``:
        whose commands reach the driver now (None: none, the fallback's or nothing go out)."""
        command = self.command
        status = {"fallback": self.layer.fallback_phase, "complete": self.layer.fallback_complete,
                  "commanded": self.layer.commanded, "source": self.source, "stopping": self.stopping_since is not None,
                  "state_fresh": self.layer.state_age(now) <= self.layer.cfg.state_timeout_s,
                  "command_stale": command is not None and now - command.received > self.layer.cfg.command_timeout_s,
                  "passes": passes, "recovering": self.layer.recovering_since is not None}
        if status != self.status or now - self.status_published_at >= STATUS_PERIOD_S:
            self.status_published_at = now
            self.status_publisher.publish(String(data=json.dumps(status)))
        if status != self.status:
            self.status = status
            if self.status_file is None:
                return
            tmp = self.status_file.with_name(self.status_file.name + ".tmp")
            tmp.write_text(json.dumps(status) + "\n")
            os.replace(tmp, self.status_file)

    def finished(self, signals: list[int]) -> bool:
        """Whether to exit now: never before a stop signal; at SIGTERM or a second SIGINT, at once; at the first
        SIGINT, stop taking commands and let the fallback run, and exit once it is complete (or nothing was
        ever driven) or after ``SHUTDOWN_TIMEOUT_S``."""
        if not signals:
            return False
        if signal.SIGTERM in signals or len(signals) > 1:
            return True
        now = time.monotonic()
        if self.stopping_since is None:
            self.stopping_since = now
            self.layer.stop_commands()
            if self.layer.commanded and not self.layer.fallback_complete:
                self.get_logger().warning("stopping: taking no more commands; finishing the fallback first "
                                          "(SIGINT again or SIGTERM to stop at once)")
        return (not self.layer.commanded or self.layer.fallback_complete
                or now - self.stopping_since > SHUTDOWN_TIMEOUT_S)

    def _report_override(self, reasons: list[str], now: float) -> None:
        """On ``safety/override`` when what is overridden changes, and as a heartbeat while it lasts."""
        if reasons:
            self.last_override, self.last_override_at = "; ".join(reasons), now
        kind = override_kind(reasons)
        if kind == self.published_override and (not reasons or now - self.published_override_at < OVERRIDE_HEARTBEAT_S):
            return
        self.published_override, self.published_override_at = kind, now
        t = self.get_clock().now().nanoseconds * 1e-9
        report = {"reasons": reasons, "t": t}
        if self.layer.recovering_since is not None:
            report["risk"] = self.layer.risk
        self.override_publisher.publish(String(data=json.dumps(report)))

    def _log_fallback(self, phase_before: str, reasons: list[str]) -> None:
        """Fallback changes, at most one a second of each kind: bad commands can toggle it every period
        (``safety/override`` and ``/diagnostics`` carry every change)."""
        if self.layer.fallback_phase:
            self.get_logger().warning("; ".join(reasons), throttle_duration_sec=1.0)
        else:
            self.get_logger().info(f"fallback ({phase_before}) over: passing {self.source} commands",
                                   throttle_duration_sec=1.0)

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        command = self.command
        command_age = now - command.received if command is not None else float("inf")
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: {self.robot} safety layer",
                                  hardware_id=self.robot)
        if self.layer.last_output is None:
            status.level = DiagnosticStatus.ERROR
            missing = self.listener.missing()
            status.message = (f"no valid state yet (waiting for {', '.join(missing)}): publishing no command"
                              if missing else "no valid state yet: publishing no command")
        elif self.layer.latches:
            status.level = DiagnosticStatus.ERROR
            status.message = (f"fallback ({self.layer.fallback_phase}) latched until reset: "
                              f"{'; '.join(self.layer.latches)}")
        elif self.listener.problems and self.layer.fallback_phase:
            status.level = DiagnosticStatus.ERROR
            status.message = f"fallback ({self.layer.fallback_phase}): {'; '.join(self.listener.problems.values())}"
        elif self.layer.fallback_phase:
            status.level, status.message = DiagnosticStatus.WARN, f"fallback: {self.layer.fallback_phase}"
        elif self.layer.recovering_since is not None:
            status.level = DiagnosticStatus.WARN
            status.message = f"recovering: critic risk {self.layer.risk:.2f} above {self.layer.critic.epsilon:.2f}"
        elif now - self.last_override_at < DIAGNOSTICS_PERIOD_S:
            status.level, status.message = DiagnosticStatus.WARN, "limiting commands"
        else:
            status.level, status.message = DiagnosticStatus.OK, f"passing {self.source} commands"
        values = {
            "estop": str(self.layer.estopped).lower(),
            "latched": self.layer.tripped or "",
            "state_age_s": f"{self.layer.state_age(now):.4f}",
            "command_age_s": f"{command_age:.4f}",
            "source": self.source,
            "fallback": self.layer.fallback_phase,
            "fallback_complete": str(self.layer.fallback_complete).lower(),
            "state_problems": "; ".join(self.listener.problems.values()),
            "last_override": self.last_override,
        }
        if self.layer.critic is not None:
            values.update({"critic_risk": f"{self.layer.risk:.4f}",
                           "critic_epsilon": f"{self.layer.critic.epsilon:.4f}",
                           "recovering": str(self.layer.recovering_since is not None).lower()})
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_publisher.publish(array)


def main(args: list[str] | None = None) -> int:
    init_ros(args)
    node = None
    try:
        with stop_on_signals() as stop:
            try:
                node = SafetyNode()
            except (ValueError, ImportError, KeyError) as exc:  # a bad parameter, bundle, config, robot or site
                print(f"safety_node: error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
                return 2
            spin(node, stop, until=lambda: node.finished(stop))
            return 0
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
