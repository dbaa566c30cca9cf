"""A tiny registry of what RoboStack can run: robots, tasks, algorithms and simulator backends.

Entries register themselves when their module is imported; ``load_builtins`` imports the built-in ones,
so ``robostack list`` and the CLI see the same catalogue as Python code does. Robots are typed
specifications (``robostack.specs.RobotSpec``) and load on their own (``robot``): a deploy process reads a
robot's specification without importing any task, learner or torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from robostack.specs import RobotSpec


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "robot" | "task" | "algorithm" | "backend" | "expert"
    summary: str
    target: Callable[..., Any]  # what to call to build it
    extra: dict[str, Any] = field(default_factory=dict)


_ENTRIES: dict[tuple[str, str], Entry] = {}
_ROBOTS: dict[str, RobotSpec] = {}

_BUILTIN_ROBOTS = (
    "robostack.sim.robots.panda.model",
    "robostack.sim.robots.go2.model",
    "robostack.sim.robots.cf2.model",
)
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


def register_robot(spec: RobotSpec) -> RobotSpec:
    """Add a robot's specification (its ``model.py`` calls this at import)."""
    known = _ROBOTS.get(spec.name)
    if known is not None and known is not spec:
        raise ValueError(f"robot {spec.name!r} is registered twice")
    _ROBOTS[spec.name] = spec
    return spec


def robots() -> list[RobotSpec]:
    for module in _BUILTIN_ROBOTS:
        importlib.import_module(module)
    return sorted(_ROBOTS.values(), key=lambda spec: spec.name)


def robot(name: str) -> RobotSpec:
    """The registered robot ``name``; loads the robot modules only (no tasks, no torch)."""
    specs = {spec.name: spec for spec in robots()}
    try:
        return specs[name]
    except KeyError:
        raise KeyError(f"unknown robot {name!r}; known robots: {', '.join(specs) or 'none'}") from None


def load_builtins() -> None:
    robots()
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def entries(kind: str) -> list[Entry]:
    load_builtins()
    if kind == "robot":
        return [Entry(s.name, "robot", s.summary, s.build_model, {"kind": s.kind, "urdf": str(s.urdf)})
                for s in robots()]
    return sorted((e for (k, _), e in _ENTRIES.items() if k == kind), key=lambda e: e.name)


def get(kind: str, name: str) -> Entry:
    if kind == "robot":
        raise TypeError("robots are typed specifications: use registry.robot(name)")
    load_builtins()
    try:
        return _ENTRIES[(kind, name)]
    except KeyError:
        known = ", ".join(e.name for e in entries(kind)) or "none"
        raise KeyError(f"unknown {kind} {name!r}; known {kind}s: {known}") from None
