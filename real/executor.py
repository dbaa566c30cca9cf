"""How RoboStack's nodes join DDS (over UDP), stop on SIGINT/SIGTERM (all of them) and spin (the control
path's on an events executor: ``policy_node``, ``safety_node``).

rclpy's events executor (C++, in ``rclpy.experimental`` since Jazzy's rclpy 7.1.4) spends less time per
callback than rclpy's Python executors: ``robostack bench deploy --task cf2-hover`` on the 2-core reference
machine, loaded by a training run, sustained 289 and 319 of 500 Hz (p99 4.7 and 3.7 ms) with it in policy
and safety node against 232 and 243 Hz (p99 6.5 and 6.7 ms) with the single-threaded executor, runs
alternating. It cannot deliver message info (a callback taking ``(msg, info)`` raises SystemError in rclpy
7.1.5), so these nodes do not ask for it; and rclpy's signal handler does not reach its spin, so SIGINT and
SIGTERM only set a flag (``stop_on_signals``) that the spin loop checks every 0.1 s.

Every node joins DDS through ``init_ros``, which keeps Fast DDS's shared-memory transport out of it unless the
user configured Fast DDS (``FASTDDS_BUILTIN_TRANSPORTS``, ``FASTRTPS_DEFAULT_PROFILES_FILE``): a process that dies
(SIGKILL, a crash) leaves its shared-memory receive ports registered, and a writer that finds one unhealthy
rebuilds it and waits ``healthy_check_timeout_ms`` (1 s) for the dead listener inside ``publish``. After a policy
SIGKILL that froze the simulated robot's odometry and the safety node's tick for about 1 s in 1 of 14 runs, 0 of 14
over UDP (``scripts/policy_kill_probe.py``, BENCHMARKS.md): a dead peer must never stall the safety layer. A
process that announces UDP locators only is reached over UDP by every other process's writers too (a robot's
driver), so none of them can block on it either. rmw_fastrtps's LOCALHOST discovery range always adds the
shared-memory transport, so on that range the node joins with ``configs/dds/loopback_udp.xml`` instead: the same
loopback-only unicast discovery, over UDP. The cost: ~0.03 ms more per message at the median on the control path
(BENCHMARKS.md), and more for large messages (camera images, fragmented over UDP); a recorder of high-rate images
may be given shared memory back (``FASTDDS_BUILTIN_TRANSPORTS=DEFAULT`` in its environment), never the safety node.
"""
from __future__ import annotations

import contextlib
import os
import signal
from typing import Any, Callable, Iterator, Mapping

from robostack.config import config_path


def init_ros(args: list[str] | None) -> None:
    """``rclpy.init`` for a RoboStack node process: Fast DDS over UDP only unless the environment configures Fast
    DDS (see the module docstring), and no rclpy signal handler (``stop_on_signals`` takes SIGINT and SIGTERM)."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    os.environ.update(udp_only_environment(os.environ))
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)


def udp_only_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The variables that keep a Fast DDS participant started with ``env`` off shared memory (none where the
    user configured Fast DDS or chose another RMW)."""
    if env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") != "rmw_fastrtps_cpp" or any(
            key in env for key in ("FASTDDS_BUILTIN_TRANSPORTS", "FASTRTPS_DEFAULT_PROFILES_FILE",
                                   "FASTDDS_DEFAULT_PROFILES_FILE")):
        return {}
    if env.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "").upper() == "LOCALHOST":
        return {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",
                "FASTRTPS_DEFAULT_PROFILES_FILE": str(config_path("dds", "loopback_udp.xml"))}
    return {"FASTDDS_BUILTIN_TRANSPORTS": "UDPv4"}


def control_executor(context: Any = None) -> Any:
    """An events executor, or rclpy's single-threaded one where rclpy predates it."""
    try:
        from rclpy.experimental import EventsExecutor
    except ImportError:
        from rclpy.executors import SingleThreadedExecutor

        return SingleThreadedExecutor(context=context)
    return EventsExecutor(context=context)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """SIGINT and SIGTERM append to the yielded list instead of interrupting: rclpy's own handler (initialise
    it with ``SignalHandlerOptions.NO``) would shut the context down under a callback that may be taking a
    message, which can raise instead of stopping cleanly."""
    stop: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: stop.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def spin(node: Any, stop: list[int], executor: Any = None, until: Callable[[], bool] | None = None) -> None:
    """Spin ``node`` on ``executor`` (default: the control executor) until ``stop`` holds a signal (or, given
    ``until``, until it returns true: checked at least every 0.1 s) or rclpy shuts down."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    executor = executor if executor is not None else control_executor(node.context)
    executor.add_node(node)
    finished = until if until is not None else lambda: bool(stop)
    try:
        while not finished() and rclpy.ok(context=node.context):
            executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:
        pass
    finally:
        executor.shutdown()
