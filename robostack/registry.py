"""The catalogue of what RoboStack can run: typed specifications (``robostack.specs``) by kind and name.

Core, and nothing more than storage: a specification registers itself where it is declared (a robot's
``model.py``, a task module, an algorithm's file in ``policies/``, a backend module, ``robostack.bundle``), and
the layer that owns a kind discovers its own (``robostack.sim.robots`` its robot folders and their tasks,
``robostack.policies.load`` its algorithms, ``robostack.sim.load_backends`` its backends). So a deploy process
that asks for a robot loads the robots' models and nothing else; ``robostack list`` loads everything.
"""
from __future__ import annotations

from typing import TypeVar

from robostack.specs import AlgorithmSpec, BackendSpec, BundleKindSpec, RobotSpec, TaskSpec

Spec = TypeVar("Spec", RobotSpec, TaskSpec, AlgorithmSpec, BundleKindSpec, BackendSpec)
KINDS: dict[type, str] = {RobotSpec: "robot", TaskSpec: "task", AlgorithmSpec: "algorithm",
                          BundleKindSpec: "bundle kind", BackendSpec: "backend"}
_SPECS: dict[type, dict[str, object]] = {kind: {} for kind in KINDS}
# who registers each kind: named when a lookup finds none registered at all
_OWNERS = {RobotSpec: "importing robostack.sim", TaskSpec: "robostack.sim.task(name)",
           AlgorithmSpec: "robostack.policies.load()", BundleKindSpec: "importing robostack.bundle",
           BackendSpec: "robostack.sim.load_backends()"}


def register(spec: Spec) -> Spec:
    """Add a specification (its module calls this at import); the same name twice is an error."""
    specs = _SPECS[type(spec)]
    known = specs.get(spec.name)
    if known is not None and known is not spec:
        raise ValueError(f"{KINDS[type(spec)]} {spec.name!r} is registered twice")
    specs[spec.name] = spec
    return spec


def registered(kind: type[Spec]) -> list[Spec]:
    """Every registered specification of ``kind``, by name."""
    return sorted(_SPECS[kind].values(), key=lambda spec: spec.name)


def _get(kind: type[Spec], name: str) -> Spec:
    try:
        return _SPECS[kind][name]
    except KeyError:
        label = KINDS[kind]
        known = ", ".join(sorted(_SPECS[kind])) or f"none yet ({_OWNERS[kind]} registers them)"
        raise KeyError(f"unknown {label} {name!r}; known {label}s: {known}") from None


def robot(name: str) -> RobotSpec:
    return _get(RobotSpec, name)


def task(name: str) -> TaskSpec:
    return _get(TaskSpec, name)


def algorithm(name: str) -> AlgorithmSpec:
    return _get(AlgorithmSpec, name)


def bundle_kind(name: str) -> BundleKindSpec:
    return _get(BundleKindSpec, name)


def backend(name: str) -> BackendSpec:
    return _get(BackendSpec, name)
