#!/usr/bin/env bash
# Create or refresh the repo's .venv: torch (CPU, pinned) first, then robostack in editable mode with its
# test, teleop and warp extras (teleop: pygame, hidapi; warp: mujoco-warp, warp-lang), then the ROS 2 Jazzy
# Python wheels. Idempotent: a second run that finds nothing changed (same pyproject.toml, setup.py, setup.cfg,
# this script, repo path) returns at once, printing nothing.
#
# Offscreen rendering (robostack eval --video) needs an EGL or OSMesa GL library; when neither is found
# (ldconfig), the Debian/Ubuntu packages for Mesa's software EGL are installed with apt-get (as root, or
# with password-less sudo); elsewhere a warning says what to install. Videos are optional: no failure.
#
# Environment: ROBOSTACK_PYTHON=/path/to/python picks the interpreter for a new .venv (default: python3.11,
# else python3); ROBOSTACK_FORCE_SETUP=1 reinstalls even when up to date.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/scripts/$(basename "${BASH_SOURCE[0]}")"
cd "$ROOT"
VENV="$ROOT/.venv"
MARKER="$VENV/.robostack-setup"
TORCH_PIN="torch==2.13.0"  # a local CPU wheel; any other torch spec would download the CUDA build (GBs)
ROS_WHEELS=("ros-jazzy-rclpy[fastrtps]" ros-jazzy-std-msgs ros-jazzy-sensor-msgs ros-jazzy-geometry-msgs
  ros-jazzy-nav-msgs ros-jazzy-trajectory-msgs ros-jazzy-std-srvs ros-jazzy-diagnostic-msgs)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

say() { echo "setup.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

# One setup at a time (test.sh and quickstart.sh both call this): lock this script file itself.
if command -v flock >/dev/null 2>&1; then
  exec 9<"$SELF"
  flock 9
fi

fingerprint() {
  { cat pyproject.toml setup.py "$SELF" 2>/dev/null; [ -f setup.cfg ] && cat setup.cfg; echo "$ROOT"; } |
    sha256sum | cut -d' ' -f1
}
WANT="$(fingerprint)"

GL_PACKAGES=(libegl1 libegl-mesa0 libgl1-mesa-dri)  # Mesa's software EGL: MUJOCO_GL=egl without a GPU
have_offscreen_gl() {
  command -v ldconfig >/dev/null 2>&1 || return 0  # cannot tell (not glibc Linux): do not try to install
  ldconfig -p 2>/dev/null | grep -q -E 'libEGL_mesa\.so|libOSMesa\.so'
}

# Fast path: marker matches and the venv still resolves what we installed (no imports: that is slow).
if [ -z "${ROBOSTACK_FORCE_SETUP:-}" ] && [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$WANT" ] &&
  [ -x "$VENV/bin/robostack" ] && have_offscreen_gl &&
  "$VENV/bin/python" - "$ROOT" >/dev/null 2>&1 <<'PY'
import importlib.util as u, pathlib, sys
spec = u.find_spec("robostack")
assert spec and pathlib.Path(spec.origin).resolve().is_relative_to(pathlib.Path(sys.argv[1]).resolve())
assert all(u.find_spec(m) for m in ("torch", "mujoco", "yaml", "pytest", "rclpy", "sensor_msgs", "onnxruntime",
                                    "onnx", "cv2", "pygame", "hid"))
PY
then
  exit 0
fi

LOG="$(mktemp "${TMPDIR:-/tmp}/robostack-setup.XXXXXX.log")"
run() {  # run "what it does" command...: output to the log, shown only if it fails
  local what="$1"
  shift
  say "$what"
  if ! "$@" >>"$LOG" 2>&1; then
    say "FAILED: $what"
    say "command: $*"
    echo "---- last 40 lines of $LOG ----" >&2
    tail -n 40 "$LOG" >&2
    echo "----" >&2
    die "setup did not finish; fix the problem above and run 'bash scripts/setup.sh' again (full log: $LOG)"
  fi
}

rm -f "$MARKER"

if ! have_offscreen_gl; then
  SUDO=()
  [ "$(id -u)" = 0 ] || SUDO=(sudo -n)
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || sudo -n true >/dev/null 2>&1; }; then
    run "apt-get update (for the offscreen GL packages)" ${SUDO[@]+"${SUDO[@]}"} apt-get update -qq
    run "installing ${GL_PACKAGES[*]} (offscreen rendering for videos)" \
      ${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${GL_PACKAGES[@]}"
  else
    say "warning: no EGL/OSMesa library found; 'robostack eval --video' needs one (Debian/Ubuntu: apt-get install ${GL_PACKAGES[*]})"
  fi
fi
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "" >/dev/null 2>&1; then
  PY="${ROBOSTACK_PYTHON:-}"
  if [ -z "$PY" ]; then
    for candidate in python3.11 python3; do
      if command -v "$candidate" >/dev/null 2>&1; then PY="$candidate"; break; fi
    done
  fi
  [ -n "$PY" ] || die "no python3 found; install Python 3.11 (or set ROBOSTACK_PYTHON)"
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "$PY is Python $("$PY" -c 'import sys; print(sys.version.split()[0])'); RoboStack needs 3.10 or newer (3.11 for the ROS 2 wheels)"
  rm -rf "$VENV"
  say "creating .venv with $PY"
  if ! "$PY" -m venv "$VENV" >>"$LOG" 2>&1 || [ ! -x "$VENV/bin/python" ]; then
    tail -n 20 "$LOG" >&2
    rm -rf "$VENV"
    die "could not create .venv with '$PY -m venv' (on Debian/Ubuntu: apt-get install python3-venv)"
  fi
fi

VPY="$VENV/bin/python"
run "upgrading pip" "$VPY" -m pip install -q --upgrade pip
run "installing $TORCH_PIN (CPU)" "$VPY" -m pip install -q "$TORCH_PIN"
run "installing robostack (editable, with test, teleop and warp extras)" "$VPY" -m pip install -q -e ".[test,teleop,warp]"
run "installing the ROS 2 Jazzy wheels (rclpy and messages)" "$VPY" -m pip install -q "${ROS_WHEELS[@]}"
run "checking the installation" "$VPY" -c "import torch, mujoco, yaml, rclpy, sensor_msgs.msg, onnxruntime, cv2, robostack.cli"
[ -x "$VENV/bin/robostack" ] || die "the robostack command is missing from .venv/bin after install (see $LOG)"

echo "$WANT" >"$MARKER"
rm -f "$LOG"
say "done: .venv is ready (run .venv/bin/robostack --help)"
