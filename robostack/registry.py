"""A tiny registry of what RoboStack can run: robots, tasks, algorithms and simulator backends.

Entries register themselves when their module is imported; ``load_builtins`` imports the built-in ones,
so ``robostack list`` and the CLI see the same catalogue as Python code does.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "robot" | "task" | "algorithm" | "backend" | "expert"
    summary: str
    target: Callable[..., Any]  # what to call to build it
    extra: dict[str, Any] = field(default_factory=dict)


_ENTRIES: dict[tuple[str, str], Entry] = {}

_BUILTIN_MODULES = (
    "robostack.sim.robots.panda.tasks",
    "robostack.sim.robots.panda.lift",
    "robostack.sim.robots.panda.insert",
    "robostack.sim.robots.go2.tasks",
    "robostack.sim.robots.cf2.tasks",
    "robostack.sim.mujoco_backend",
    "robostack.policies",
)


def register(kind: str, name: str, summary: str, **extra: Any) -> Callable[[Callable], Callable]:
    """Decorator: ``@register("task", "go2-walk", "...")`` on the function that builds it."""

    def wrap(target: Callable) -> Callable:
        key = (kind, name)
        if key in _ENTRIES and _ENTRIES[key].target is not target:
            raise ValueError(f"{kind} {name!r} is registered twice")
        _ENTRIES[key] = Entry(name, kind, summary, target, dict(extra))
        return target

    return wrap


def load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def entries(kind: str) -> list[Entry]:
    load_builtins()
    return sorted((e for (k, _), e in _ENTRIES.items() if k == kind), key=lambda e: e.name)


def get(kind: str, name: str) -> Entry:
    load_builtins()
    try:
        return _ENTRIES[(kind, name)]
    except KeyError:
        known = ", ".join(e.name for e in entries(kind)) or "none"
        raise KeyError(f"unknown {kind} {name!r}; known {kind}s: {known}") from None
