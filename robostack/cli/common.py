"""What every ``robostack`` subcommand shares: its two error kinds and how it prints and checks options."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

DEVICE_HELP = "cpu or cuda (cuda:N): where learning, the envs' tensors and the warp backend's physics run"
NPROC_HELP = ("data-parallel ranks on this machine, started by torchrun's engine (gloo on CPUs, NCCL on GPUs; "
              "num_envs is per rank; several machines: torchrun ... -m robostack.cli train, see README) (default: 1)")
EXPERT_NOISE_HELP = ("scripted: noise (standard deviation, in normalized actions) on the expert's executed motion, "
                     "not on the recorded actions: demonstrations of recovering (default: 0)")


class UsageError(ValueError):
    """A command line that parses but makes no sense (reported like any other error, exit code 2)."""


class Failure(RuntimeError):
    """A command that ran but could not finish (a deployment whose node died): one line, exit code 1."""


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")) or value == 0:
            return str(value)
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def _print_table(title: str, result: dict[str, Any], first: Sequence[str], out: TextIO) -> None:
    keys = [k for k in first if k in result] + [k for k in result if k not in first]
    width = max([len(k) for k in keys] + [1])
    out.write(title + "\n")
    for key in keys:
        out.write(f"  {key:<{width}}  {_fmt(result[key])}\n")


@contextlib.contextmanager
def _stdout_to_stderr(enabled: bool):
    """With --json, stdout carries exactly one JSON object: anything the callee prints goes to stderr."""
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _require_positive(args: argparse.Namespace, *options: str, count: bool = True) -> None:
    """Refuse a count option (``--num-envs``...) below 1, or with ``count=False`` a quantity (``--seconds``...)
    not above 0 (NaN too); an option left unset (None) passes."""
    for option in options:
        value = getattr(args, option[2:].replace("-", "_"))
        if value is not None and not (value >= 1 if count else value > 0):
            raise UsageError(f"{option} must be {'at least 1' if count else 'positive'}, got {value}")


def _report(args: argparse.Namespace, out: TextIO, title: str, result: dict[str, Any], first: Sequence[str]) -> int:
    """A command's result: one JSON object with ``--json``, else a table under ``title`` (``first`` keys on top)."""
    if args.json:
        out.write(json.dumps(result, default=str) + "\n")
    else:
        _print_table(title, result, first, out)
    return 0


def _intervention_algo(algo: str | None, offline: bool) -> str:
    """The algorithm that learns from interventions, from ``--algo`` and ``--offline`` (default rlif; --offline:
    iql, the logs alone); whether it does learn from them is the workflow's check."""
    if offline and algo not in (None, "iql"):
        raise UsageError(f"--offline learns with iql, from the logs alone: not with --algo {algo}")
    return "iql" if offline else algo or "rlif"
