"""Rendering a simulated task offscreen: the GL backend on a headless machine, camera frames for policies that
see images, and videos of an evaluation.

Headless machines need an offscreen GL: ``ensure_offscreen_gl`` picks EGL (Mesa's software EGL works without a
GPU) or OSMesa when ``MUJOCO_GL`` is not set. A video is env 0 drawn by MuJoCo's offscreen renderer every
``k``-th control step, ``k`` chosen so the frame rate is at most ``MAX_VIDEO_FPS``, written as an H.264 MP4
(``robostack.data.video``: browsers play it).
"""
from __future__ import annotations

import copy
import ctypes.util
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from robostack.data.video import Mp4Writer

MAX_VIDEO_FPS = 50.0
VIDEO_SIZE = (640, 480)  # width, height (MuJoCo's default offscreen buffer)


def _gl_backend_available(name: str) -> bool:
    if name == "egl":
        return ctypes.util.find_library("EGL") is not None
    if name == "osmesa":
        return ctypes.util.find_library("OSMesa") is not None
    return True


def ensure_offscreen_gl() -> str:
    """Choose an offscreen GL backend for ``mujoco.Renderer`` unless the user set ``MUJOCO_GL``.

    MuJoCo reads ``MUJOCO_GL`` when ``mujoco`` is first imported. Without a display the default (GLFW)
    cannot render, so: set ``MUJOCO_GL`` (EGL, else OSMesa) if it is unset, and if ``mujoco`` was already
    imported with the default, point its renderer at that backend's context. Returns the backend in use.
    """
    chosen = os.environ.get("MUJOCO_GL", "").strip().lower()
    if chosen:
        return chosen
    if sys.platform != "linux" or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return "glfw"
    backend = next((b for b in ("egl", "osmesa") if _gl_backend_available(b)), "egl")
    os.environ["MUJOCO_GL"] = backend
    if backend == "osmesa":
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    gl_mod = sys.modules.get("mujoco.rendering.classic.gl_context")
    if gl_mod is not None and getattr(gl_mod, "_MUJOCO_GL", "") in ("", "glfw", "enable", "enabled", "on", "true",
                                                                     "1"):
        try:  # mujoco is already imported with the GLFW default: swap in the offscreen context class
            if backend == "egl":
                from mujoco.egl import GLContext
            else:
                from mujoco.osmesa import GLContext
            gl_mod.GLContext = GLContext
        except Exception:  # noqa: BLE001 - the renderer will report the real problem when it is created
            pass
    return backend


_GL_HINT = ("offscreen rendering needs EGL or OSMesa: on Debian/Ubuntu run 'apt-get install -y libegl1 "
            "libegl-mesa0 libgl1-mesa-dri' (or 'libosmesa6' with MUJOCO_GL=osmesa), or run scripts/setup.sh")


class RenderError(RuntimeError):
    """Offscreen rendering or video writing is not possible here (the message says how to fix it)."""


def offscreen_renderer(model: Any, width: int, height: int) -> Any:
    """A ``mujoco.Renderer`` for ``model`` on the offscreen GL backend; RenderError says how to get one."""
    backend = ensure_offscreen_gl()
    import mujoco

    try:
        return mujoco.Renderer(model, height=height, width=width)
    except Exception as exc:  # no OpenGL context
        raise RenderError(f"cannot render with MUJOCO_GL={backend}: {exc}; {_GL_HINT}") from None


def camera_renderer(model: Any, camera: str, width: int, height: int, where: str) -> Any:
    """An offscreen renderer for ``model`` after checking it has ``camera`` (ValueError names those it has)."""
    import mujoco

    if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
        names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
        raise ValueError(f"{where} has no camera {camera!r}; it has {names}")
    return offscreen_renderer(model, width, height)


class CameraRenderer:
    """One offscreen renderer for a camera of every env: each env's own model (randomized camera pose and
    lighting) is copied into the renderer's before its frame is drawn."""

    FIELDS = ("cam_pos", "cam_quat", "cam_fovy", "light_pos", "light_dir", "light_diffuse", "light_ambient",
              "light_specular")

    def __init__(self, env: Any, camera: str, shape: tuple[int, int]):
        self.env, self.camera = env, camera
        self.model = copy.copy(env.sim.models[0])  # written to before each frame: not the env's own
        height, width = shape
        self.renderer = camera_renderer(self.model, camera, width, height, f"task {env.task.name!r}")

    def render_all(self) -> np.ndarray:
        frames = []
        for i in range(self.env.num_envs):
            source = self.env.sim.models[i]
            for name in self.FIELDS:
                getattr(self.model, name)[:] = getattr(source, name)
            self.renderer.update_scene(self.env.sim.data_for(i), camera=self.camera)
            frames.append(self.renderer.render())
        return np.stack(frames)

    def close(self) -> None:
        self.renderer.close()


class VideoRecorder:
    """Renders env 0 of a ``TaskEnv`` with a camera that follows the robot, writes an MP4."""

    def __init__(self, env: Any, path: str | os.PathLike, width: int = VIDEO_SIZE[0], height: int = VIDEO_SIZE[1],
                 max_fps: float = MAX_VIDEO_FPS):
        ensure_offscreen_gl()  # before MuJoCo is imported, if it has not been yet
        self.env = env
        self.path = Path(path)
        control_hz = 1.0 / env.control_dt
        self.every = max(1, math.ceil(control_hz / max_fps - 1e-9))
        self.fps = control_hz / self.every
        model = env.default_model
        width = min(width, int(model.vis.global_.offwidth)) // 2 * 2  # H.264 in yuv420p: even sizes
        height = min(height, int(model.vis.global_.offheight)) // 2 * 2
        self.width, self.height = width, height
        self.renderer = offscreen_renderer(model, width, height)
        self.camera = self._camera(model)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.writer = Mp4Writer(self.path, width, height, self.fps)
        except Exception as exc:  # PyAV raises its own (OSError subclasses) and VideoError
            self.renderer.close()
            raise RenderError(f"cannot write an MP4 video to {self.path}: {exc}") from None
        self.steps = 0
        self.frames = 0

    def _camera(self, model: Any) -> Any:
        """A free camera: tracks the floating base, or looks at the middle of a fixed-base arm's bodies."""
        import mujoco

        cam = mujoco.MjvCamera()
        cam.type = mujoco.mjtCamera.mjCAMERA_FREE
        extent = float(model.stat.extent)
        self.track_body = None
        free = [j for j in range(model.njnt) if int(model.jnt_type[j]) == int(mujoco.mjtJoint.mjJNT_FREE)]
        if free:
            self.track_body = int(model.jnt_bodyid[free[0]])
            cam.distance = max(3.0 * extent, 0.5)
            cam.elevation = -20.0
            cam.azimuth = 135.0
        else:
            cam.lookat[:] = model.stat.center
            cam.lookat[2] = max(float(model.stat.center[2]), 0.3)
            cam.distance = 1.5 * extent
            cam.elevation = -25.0
            cam.azimuth = 150.0
        return cam

    def record(self) -> None:
        """Called once per control step (before the policy acts); renders every ``self.every``-th step."""
        if self.steps % self.every == 0:
            data = self.env.sim.data_for(0)
            if self.track_body is not None:
                self.camera.lookat[:] = data.xpos[self.track_body]
            elif self.frames == 0 and data.xpos.shape[0] > 1:  # fixed base: the middle of the robot's bodies
                self.camera.lookat[:] = data.xpos[1:].mean(axis=0)
            self.renderer.update_scene(data, self.camera)
            rgb = self.renderer.render()
            self.writer.write(rgb)
            self.frames += 1
        self.steps += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None
