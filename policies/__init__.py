"""RoboStack policies: learning algorithms, one file each, each registering its ``AlgorithmSpec``.

Importing this package stays light (no torch); ``load`` imports every module of it, so every algorithm it
holds is registered: a new algorithm is a new file here (and its recipe section), nothing else.
"""
from __future__ import annotations

import importlib
import pkgutil


def load() -> None:
    """Import every module of this package: each algorithm registers itself."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
