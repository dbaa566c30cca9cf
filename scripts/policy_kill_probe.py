"""SIGKILL the policy process of a simulated cf2-hover deployment N times and print, per run, how long after the
policy's last command the safety layer's hover fallback was reported and the longest gaps in the driver's
commands and the odometry from 0.5 s before to 1.2 s after the kill (a stalled node shows as a gap of ~1 s).

    .venv/bin/python scripts/policy_kill_probe.py 14 [VAR=value ...]

VAR=value pairs go into the nodes' environment (e.g. FASTDDS_BUILTIN_TRANSPORTS=SHM to put shared memory back).
"""
from __future__ import annotations

import json
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from robostack.real.graph import node_graph, started_graph  # noqa: E402
from tests.real.test_deploy import GraphMonitor, wait_until  # noqa: E402


def longest_gap_ms(stamps: list[int], killed: int) -> float:
    window = np.array([t for t in stamps if killed - 500_000_000 <= t <= killed + 1_200_000_000])
    return round(float(np.diff(window).max()) * 1e-6, 1) if len(window) > 2 else float("nan")


def main(runs: int, extra_env: dict[str, str]) -> None:
    for run in range(runs):
        namespace, domain_id = f"/kill_probe_{uuid.uuid4().hex[:6]}", 60 + run % 20
        env = {"ROS_DOMAIN_ID": str(domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", **extra_env}
        monitor = GraphMonitor(namespace, domain_id)
        logs = Path(tempfile.mkdtemp(prefix="kill_probe_"))
        try:
            nodes = node_graph(ROOT / "bundles" / "cf2-hover", sim=True, randomize=False)
            with started_graph(nodes, env=env, log_dir=logs, namespace=namespace) as procs:
                wait_until(lambda: monitor.policy_flying_for(1.5), 60, "1.5 s of the policy flying", procs)
                procs["policy_node"].send_signal(signal.SIGKILL)
                killed = time.time_ns()
                time.sleep(1.5)
        finally:
            monitor.close()
        last = max(monitor.policy)
        fallback = next((t for t, reasons in monitor.overrides if t > last and "fallback: hover" in reasons), None)
        print(json.dumps({"run": run, "fallback_ms": None if fallback is None else round((fallback - last) * 1e-6, 1),
                          "driver_gap_ms": longest_gap_ms([t for t, _ in monitor.driver], killed),
                          "odometry_gap_ms": longest_gap_ms([t for t, _ in monitor.height], killed),
                          "logs": str(logs), **extra_env}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), dict(arg.split("=", 1) for arg in sys.argv[2:]))
