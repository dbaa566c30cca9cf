"""The architecture holds (ARCHITECTURE.md): imports run one way (import-linter's contracts in pyproject.toml),
deploy processes load only what they run, and no module grows past the size one person can hold in mind."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("sim", "policies", "real")  # top-level folders of the source tree, robostack.<name> once installed
MAX_LINES = 900
TRAINING = ("robostack.workflows", "robostack.policies")


def test_the_import_contracts_hold():
    """A plain ``lint-imports`` from the repo root: robostack/sim, /policies and /real are links to the top-level
    folders, so import-linter walks the package as setup.py installs it."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout


def loaded_by(module: str, blocked: tuple[str, ...] = ()) -> set[str]:
    """The modules a fresh interpreter holds after importing ``module`` (``blocked`` ones made unimportable)."""
    code = (f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
            f"import {module}\nprint('\\n'.join(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(proc.stdout.split())


def test_the_safety_node_loads_no_learning_stack():
    loaded = loaded_by("robostack.real.safety_node")
    assert not {"torch", "gymnasium", "tqdm", "onnxruntime"} & loaded
    assert not [m for m in loaded if m.startswith(TRAINING) or m.startswith("robostack.sim.task_env")]


def test_the_policy_node_loads_no_training_code_and_needs_no_tqdm():
    """torch's hub imports tqdm whenever it is installed, so tqdm is made unimportable: the node must still load
    (nothing of RoboStack's in its import graph needs tqdm) and load no training module."""
    loaded = loaded_by("robostack.real.policy_node", blocked=("tqdm",))
    assert not [m for m in loaded if m.startswith(TRAINING)]
    assert not [m for m in loaded if m.startswith(("tensorboard", "matplotlib"))]


def test_no_module_is_over_the_size_limit():
    sizes = {path.relative_to(ROOT): len(path.read_text().splitlines())
             for folder in ("robostack", *SUBPACKAGES) for path in (ROOT / folder).rglob("*.py")}
    assert len(sizes) > 50
    assert {path: n for path, n in sizes.items() if n > MAX_LINES} == {}
