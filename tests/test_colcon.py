"""RoboStack as a ROS 2 ament_python package: ``colcon build`` and ``colcon build --symlink-install``.

colcon-common-extensions comes from the package index into a venv of its own, cached in
``.venv/colcon-<python>`` (the first run installs it, ~10 s; later runs reuse it). The working tree is copied
into a temporary workspace (``src/robostack``), built both ways, and checked: console scripts in
``lib/robostack``, package.xml, launch files, configs and URDFs under ``share/robostack``, and, in the
environment the install's ``setup.sh`` gives, robostack and its subpackages imported from the install (the
build folder for a symlink install), never from this checkout, with the configs they read found there too.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COLCON_VENV = ROOT / ".venv" / f"colcon-py{sys.version_info.major}.{sys.version_info.minor}"  # .venv: gitignored
EXECUTABLES = ("robostack", "policy_node", "safety_node", "sim_robot_node", "recorder_node", "teleop_node")
SUBPACKAGES = ("sim", "real", "policies")
ROBOTS = sorted(p.parent.name for p in ROOT.glob("sim/robots/*/*.urdf"))
CONFIGS = sorted(p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*") if p.is_file())
# Variables that would leak this session's Python or ROS setup into the builds and the checks.
SCRUB = ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "VIRTUAL_ENV", "AMENT_PREFIX_PATH", "COLCON_PREFIX_PATH",
         "CMAKE_PREFIX_PATH", "ROS_PACKAGE_PATH", "COLCON_DEFAULTS_FILE", "PIP_REQUIRE_VIRTUALENV")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    env.update(extra)
    return env


def _tail(text: str, n: int = 60) -> str:
    return "\n".join(text.splitlines()[-n:])


def _colcon() -> Path:
    """colcon from a venv of its own (cached), made by the interpreter this suite's .venv was made from."""
    COLCON_VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(COLCON_VENV.parent / f"{COLCON_VENV.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs at once: one installs, the other waits and reuses it
        return _make_colcon_venv()


def _make_colcon_venv() -> Path:
    colcon = COLCON_VENV / "bin" / "colcon"
    marker = COLCON_VENV / ".complete"
    if marker.is_file() and colcon.is_file():
        return colcon
    shutil.rmtree(COLCON_VENV, ignore_errors=True)
    base = getattr(sys, "_base_executable", None) or sys.executable
    steps = [[base, "-m", "venv", str(COLCON_VENV)]]
    python = str(COLCON_VENV / "bin" / "python")
    # A fresh 3.11 venv has setuptools 65.5 (Ubuntu 24.04's colcon runs with 68); 3.12's has none: pin 68's line.
    setuptools = [] if sys.version_info < (3, 12) else ["setuptools<69"]
    steps.append([python, "-m", "pip", "install", "-q", "colcon-common-extensions", *setuptools])
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True, env=_env(PIP_DISABLE_PIP_VERSION_CHECK="1"))
        if done.returncode:
            shutil.rmtree(COLCON_VENV, ignore_errors=True)
            pytest.fail("could not install colcon-common-extensions from the package index into "
                        f"{COLCON_VENV} (this test needs it to check the ROS 2 build; is PyPI reachable?)\n"
                        f"command: {' '.join(cmd)}\n{_tail(done.stdout + done.stderr)}", pytrace=False)
    marker.write_text("ok\n")
    return colcon


def _copy_working_tree(dest: Path) -> None:
    """The files git would commit now (tracked and new, not ignored), as they are on disk."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True)
    if listed.returncode == 0:
        for rel in filter(None, listed.stdout.split("\0")):
            src = ROOT / rel
            if src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
    else:  # not a git checkout: everything but what .gitignore names
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "install", "log", "runs", "__pycache__", "*.egg-info", ".pytest_cache", "*.pyc"))


@pytest.fixture(scope="module")
def colcon() -> Path:
    return _colcon()


@pytest.fixture(scope="module")
def workspaces(colcon, tmp_path_factory) -> dict[str, Path]:
    """Two workspaces with this working tree in src/robostack: one built plain, one with --symlink-install."""
    out = {}
    for mode, args in (("plain", []), ("symlink", ["--symlink-install"])):
        ws = tmp_path_factory.mktemp(f"ws-{mode}")
        _copy_working_tree(ws / "src" / "robostack")
        done = subprocess.run([str(colcon), "build", "--packages-select", "robostack", *args],
                              cwd=ws, capture_output=True, text=True,
                              env=_env(COLCON_HOME=str(ws / ".colcon")))  # no user colcon defaults
        log = ws / "log" / "latest_build" / "robostack" / "stdout_stderr.log"
        assert done.returncode == 0, (f"colcon build {' '.join(args)} failed:\n{_tail(done.stdout + done.stderr)}\n"
                                      f"---- {log}:\n{_tail(log.read_text()) if log.is_file() else '(none)'}")
        out[mode] = ws
    return out


def _installed_env(ws: Path) -> dict[str, str]:
    """The environment ``. install/setup.sh`` gives (colcon's per-package hooks: PYTHONPATH, AMENT_PREFIX_PATH)."""
    dump = "import json, os; print(json.dumps(dict(os.environ)))"
    done = subprocess.run(["sh", "-c", '. "$1/install/setup.sh" && "$2" -c "$3"', "sh", str(ws), sys.executable, dump],
                          capture_output=True, text=True, env=_env())
    assert done.returncode == 0, _tail(done.stdout + done.stderr)
    return json.loads(done.stdout.splitlines()[-1])


CHECK = r"""
import importlib.util, json, sys
import robostack, robostack.real.policy_node
from robostack.config import config_path
from ament_index_python.packages import get_package_share_directory
mods = ["robostack"] + ["robostack." + s for s in sys.argv[1].split(",")] + ["robostack.real.policy_node"]
mods += ["robostack.sim.robots." + r for r in sys.argv[2].split(",")]
for m in mods:
    __import__(m)
bare = importlib.util.find_spec("sim")
print(json.dumps({
    "files": {m: sys.modules[m].__file__ for m in mods},
    "bare_sim": None if bare is None else {"origin": bare.origin, "path": list(bare.submodule_search_locations or [])},
    "bare_sim_env": importlib.util.find_spec("sim.env") is not None if bare is not None else False,
    "configs": {c: str(config_path(*c.split("/"))) for c in sys.argv[3].split(",")},
    "share": get_package_share_directory("robostack"),
}))
"""


def _under(path: str | Path, root: Path) -> bool:
    return Path(path).resolve().is_relative_to(root.resolve())


@pytest.mark.parametrize("mode", ["plain", "symlink"])
def test_colcon_install_layout(workspaces, mode):
    ws = workspaces[mode]
    prefix = ws / "install" / "robostack"
    for name in EXECUTABLES:
        script = prefix / "lib" / "robostack" / name
        assert script.is_file() and os.access(script, os.X_OK), f"{script} missing (ros2 run looks there)"
    share = prefix / "share" / "robostack"
    assert (share / "package.xml").is_file()
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "robostack").is_file()
    launch = sorted(p.name for p in (share / "launch").glob("*.launch.py"))
    assert launch == sorted(p.name for p in ROOT.glob("launch/*.launch.py")) and launch
    assert sorted(p.name for p in (share / "urdf").glob("*.urdf")) == [f"{r}.urdf" for r in ROBOTS]
    assert {"panda", "go2", "cf2"} <= set(ROBOTS)
    installed = sorted(p.relative_to(share / "configs").as_posix() for p in (share / "configs").rglob("*")
                       if p.is_file())
    assert installed == CONFIGS, "every file under configs/ (any subfolder) must be installed"
    for sub in ("robots", "tasks", "train", "deploy"):
        assert any(c.startswith(sub + "/") for c in installed)
    # a symlink install points back into the workspace, never at this checkout
    for path in [*share.rglob("*"), *(prefix / "lib").rglob("*")]:
        assert _under(path, ws), f"{path} resolves outside the workspace"


@pytest.mark.parametrize("mode", ["plain", "symlink"])
def test_colcon_install_imports_and_configs(workspaces, mode, tmp_path):
    ws = workspaces[mode]
    env = _installed_env(ws)
    share = ws / "install" / "robostack" / "share" / "robostack"
    # This suite's Python has RoboStack's dependencies (and an editable robostack of this checkout, which the
    # install's PYTHONPATH must win over); run it outside the checkout so the current folder adds nothing.
    done = subprocess.run([sys.executable, "-c", CHECK, ",".join(SUBPACKAGES), ",".join(ROBOTS), ",".join(CONFIGS)],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, _tail(done.stdout + done.stderr)
    got = json.loads(done.stdout.splitlines()[-1])
    files = got["files"]
    for name, file in files.items():
        assert not _under(file, ROOT), f"{name} imported from this checkout ({file}), not from the {mode} install"
        assert _under(file, ws), f"{name} imported from {file}, outside the workspace"
    if mode == "plain":
        site = next((ws / "install" / "robostack" / "lib").glob("python3*/site-packages"))
        for name, file in files.items():
            assert _under(file, site / "robostack"), f"{name}: {file} is not in {site}/robostack"
        assert got["bare_sim"] is None, "a bare `sim` package is installed"
    else:
        # robostack from the build folder's link; sim/real/policies beside its target (robostack/__init__.py)
        assert Path(files["robostack"]).parent == ws / "build" / "robostack" / "robostack"
        for sub in SUBPACKAGES:
            assert _under(files[f"robostack.{sub}"], ws / "src" / "robostack" / sub)
        # colcon mirrors data files (sim/robots/*/*.urdf) into the build folder, which is on PYTHONPATH: at most
        # an empty namespace there, never the sim package itself
        assert got["bare_sim"] is None or got["bare_sim"]["origin"] is None
        assert not got["bare_sim_env"], "`import sim.env` works: a bare sim package is importable"
    assert Path(got["share"]) == share
    for rel, path in got["configs"].items():
        assert not _under(path, ROOT), f"config {rel} read from this checkout: {path}"
        if mode == "plain":
            assert Path(path) == share / "configs" / rel
        else:
            assert _under(path, ws)

    # the command line, as `python -m`, and a console script from lib/robostack (its entry point metadata)
    listed = subprocess.run([sys.executable, "-m", "robostack.cli", "list", "--json"], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert listed.returncode == 0, _tail(listed.stdout + listed.stderr)
    catalogue = json.loads(listed.stdout)
    assert {r["name"] for r in catalogue["robots"]} >= set(ROBOTS)
    assert {"panda-reach", "go2-walk", "cf2-hover"} <= {t["name"] for t in catalogue["tasks"]}
    for robot in catalogue["robots"]:
        if "urdf" in robot:
            assert not _under(robot["urdf"], ROOT) and _under(robot["urdf"], ws), robot
    script = ws / "install" / "robostack" / "lib" / "robostack" / "robostack"
    version = subprocess.run([sys.executable, str(script), "--version"], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
    assert version.returncode == 0 and "0.1.0" in version.stdout + version.stderr, _tail(version.stdout + version.stderr)


def test_package_xml_is_a_valid_format3_manifest(colcon):
    """Checked with catkin_pkg (colcon-ros's parser): format 3, ament_python, and what the launch files start."""
    code = ("import json, sys; from catkin_pkg.package import parse_package; p = parse_package(sys.argv[1]); "
            "p.validate(); print(json.dumps({'format': p.package_format, 'name': p.name, "
            "'build_type': p.get_build_type(), 'exec': sorted(d.name for d in p.exec_depends)}))")
    done = subprocess.run([str(colcon.parent / "python"), "-c", code, str(ROOT / "package.xml")],
                          capture_output=True, text=True, env=_env())
    assert done.returncode == 0, _tail(done.stdout + done.stderr)
    manifest = json.loads(done.stdout)
    assert manifest["format"] == 3 and manifest["name"] == "robostack" and manifest["build_type"] == "ament_python"
    # rclpy nodes of this package (and the messages they speak), robot_state_publisher for the URDFs, the joy
    # driver for teleop, the launch system
    assert {"rclpy", "std_msgs", "sensor_msgs", "geometry_msgs", "nav_msgs", "std_srvs", "diagnostic_msgs",
            "rcl_interfaces", "ament_index_python", "robot_state_publisher", "joy", "launch",
            "launch_ros"} <= set(manifest["exec"])
