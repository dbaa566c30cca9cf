"""``robostack eval``: evaluate a trained run (torch checkpoint) or a policy bundle (onnxruntime), optionally
recording a video of env 0.

    from robostack.eval_policy import eval_policy
    result = eval_policy("bundles/cf2", episodes=20, video="cf2.mp4")

The episodes are counted by ``robostack.evaluate.evaluate`` (fixed per-env quotas, no bias towards short
episodes). The env is the task's ``play`` variant (randomization off) unless ``randomized``; its task
overrides come from the run (``config.yaml`` / checkpoint) or from the bundle's metadata.

Video: MuJoCo's offscreen renderer draws env 0 every ``k``-th control step, ``k`` chosen so the frame rate is
at most ``MAX_VIDEO_FPS``; frames go to an MP4 (OpenCV, mp4v). Headless machines need an offscreen GL:
``ensure_offscreen_gl`` picks EGL (Mesa's software EGL works without a GPU) or OSMesa when ``MUJOCO_GL``
is not set.
"""
from __future__ import annotations

import ctypes.util
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

MAX_VIDEO_FPS = 50.0
IMITATION_ALGO = "diffusion"  # the algo of a run learned from a dataset (robostack.imitation)
VIDEO_SIZE = (640, 480)  # width, height (MuJoCo's default offscreen buffer)


# ------------------------------------------------------------------------------------- offscreen GL


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


class VideoRecorder:
    """Renders env 0 of a ``TaskEnv`` with a camera that follows the robot, writes an MP4."""

    def __init__(self, env: Any, path: str | os.PathLike, width: int = VIDEO_SIZE[0], height: int = VIDEO_SIZE[1],
                 max_fps: float = MAX_VIDEO_FPS):
        ensure_offscreen_gl()  # before MuJoCo is imported, if it has not been yet
        import cv2

        self.env = env
        self.path = Path(path)
        control_hz = 1.0 / env.control_dt
        self.every = max(1, math.ceil(control_hz / max_fps - 1e-9))
        self.fps = control_hz / self.every
        model = env.default_model
        width = min(width, int(model.vis.global_.offwidth))
        height = min(height, int(model.vis.global_.offheight))
        self.width, self.height = width, height
        self.renderer = offscreen_renderer(model, width, height)
        self.camera = self._camera(model)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
        if not self.writer.isOpened():
            self.renderer.close()
            raise RenderError(f"OpenCV cannot write an MP4 video to {self.path}")
        self._cv2 = cv2
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
            self.writer.write(self._cv2.cvtColor(rgb, self._cv2.COLOR_RGB2BGR))
            self.frames += 1
        self.steps += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None


# ----------------------------------------------------------------------------------------- policies


def _is_bundle(path: Path) -> bool:
    from robostack.bundle import is_bundle

    return is_bundle(path)


def is_imitation_run(path: Path) -> bool:
    """A diffusion run folder (``robostack.imitation``), told by its config without importing torch."""
    import yaml

    config = path / "config.yaml"
    return config.is_file() and (yaml.safe_load(config.read_text()) or {}).get("algo") == IMITATION_ALGO


def load_policy(source: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> dict[str, Any]:
    """What ``eval_policy`` needs: ``kind`` ("bundle" | "run"), ``task``, ``task_config`` (the full config it
    trained with), ``algo`` and a ``make_policy(env) -> (obs dict -> action tensor)``; with ``controls`` true
    the policy's output is actuator controls (a diffusion run: ``robostack.imitation``); a ``wrap_env(env)``
    that is not None gives the env the policy acts in (a residual run: ``robostack.residual``)."""
    path = Path(source)
    if is_imitation_run(path):
        from robostack.imitation import load_imitation_run

        if checkpoint is not None:
            raise ValueError(f"{path} is a diffusion run: it keeps one checkpoint, give no --checkpoint")
        return load_imitation_run(path)
    if _is_bundle(path):
        from robostack.bundle import load_bundle

        bundle = load_bundle(path)
        meta = bundle.metadata
        if meta.get("kind") == "chunk":
            from robostack.imitation import chunk_bundle_policy

            return chunk_bundle_policy(bundle)
        wrap_env = None
        if meta.get("kind") == "residual":  # its base acts in the env, its graph gives the corrections
            from robostack.imitation import chunk_bundle_policy
            from robostack.residual import env_wrapper

            wrap_env = env_wrapper(chunk_bundle_policy(bundle.base), bundle.scale)

        def make_bundle_policy(env: Any) -> Callable[[dict[str, Any]], Any]:
            import torch

            obs_dim = int(env.observation_spaces["policy"].shape[-1])
            if obs_dim != bundle.obs_dim or env.action_dim != bundle.action_dim:
                raise ValueError(f"bundle {path} expects {bundle.obs_dim} observations and {bundle.action_dim} "
                                 f"actions, the env has {obs_dim} and {env.action_dim}")

            def policy(obs: dict[str, Any]) -> Any:
                action = bundle.act(obs["policy"].detach().cpu().numpy())
                return torch.from_numpy(action).to(env.device)

            return policy

        return {"kind": "bundle", "task": meta["task"], "robot": meta["robot"], "algo": meta.get("algo"),
                "task_config": meta["task_config"],
                "make_policy": make_bundle_policy, "bundle": bundle, "wrap_env": wrap_env}

    from robostack.bundle import load_run

    run = load_run(path, checkpoint)
    residual = run.train_config.get("residual") or {}
    wrap_env = None
    if residual.get("base"):  # a residual on a frozen base (robostack.residual): the base acts in the env
        from robostack.residual import env_wrapper, load_base

        wrap_env = env_wrapper(load_base(residual["base"], run.task), residual["scale"])

    def make_run_policy(env: Any) -> Callable[[dict[str, Any]], Any]:
        import torch

        module = run.policy_module(env)

        def policy(obs: dict[str, Any]) -> Any:
            with torch.no_grad():
                return module(obs["policy"].to("cpu", torch.float32)).to(env.device)

        return policy

    return {"kind": "run", "task": run.task, "algo": run.algo, "task_config": run.task_config,
            "make_policy": make_run_policy, "run": run, "wrap_env": wrap_env}


def eval_policy(source: str | os.PathLike, episodes: int, randomized: bool = False,
                video: str | os.PathLike | None = None, num_envs: int | None = None, seed: int = 0,
                checkpoint: str | os.PathLike | None = None) -> dict[str, Any]:
    """Evaluate a run folder / checkpoint or a bundle for ``episodes`` episodes; returns ``evaluate``'s
    result (success_rate, mean_return, ..., ``metric/<name>``) plus what was evaluated."""
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    if num_envs is not None and num_envs < 1:
        raise ValueError(f"num_envs must be at least 1, got {num_envs}")
    if video is not None:
        ensure_offscreen_gl()  # before MuJoCo is imported, if it has not been yet
    loaded = load_policy(source, checkpoint)
    if loaded.get("cameras"):
        ensure_offscreen_gl()

    from robostack import sim
    from robostack.evaluate import evaluate

    n = num_envs or min(episodes, 32)
    env = sim.make_env(loaded["task"], num_envs=n, seed=seed, play=not randomized, config=loaded["task_config"])
    recorder = policy = None
    try:
        if loaded.get("wrap_env") is not None:
            env = loaded["wrap_env"](env)
        policy = loaded["make_policy"](env)
        if video is not None:
            recorder = VideoRecorder(env, video)
            inner = policy

            def policy(obs: dict[str, Any]) -> Any:  # noqa: F811 - the recording wrapper
                recorder.record()
                return inner(obs)

        result = evaluate(env, policy, episodes, seed=seed, controls=loaded.get("controls", False))
    finally:
        if recorder is not None:
            recorder.close()
        if hasattr(policy, "close"):
            policy.close()
        env.close()

    out: dict[str, Any] = {"source": str(source), "kind": loaded["kind"], "task": loaded["task"],
                           "algo": loaded["algo"], "randomized": bool(randomized), "num_envs": n, "seed": seed}
    out.update(result)
    if recorder is not None:
        out.update({"video": str(video), "video_frames": recorder.frames, "video_fps": recorder.fps})
    return out
