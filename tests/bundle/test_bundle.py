"""Policy bundle (export, load, rejections), ``robostack export`` / ``robostack eval`` and the eval video.

One toy-size cf2-hover run (2 PPO iterations of 16 envs, small networks) is trained once for the module.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from robostack import sim
from robostack.bundle import FORMAT_VERSION, BundleError, PolicyBundle, content_hash, load_bundle
from robostack.bundle.describe import describe_env
from robostack.bundle.format import SCHEMA_FILE
from robostack.workflows.export import export_bundle
from robostack.workflows.runs import load_run
from robostack.cli import main

TASK = "cf2-hover"
TOY = ["max_iterations=2", "num_envs=16", "eval_episodes=2", "ppo.num_steps_per_env=8", "torch_threads=1",
       "ppo.actor_hidden=[32,32]", "ppo.critic_hidden=[32,32]"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from robostack.workflows.train import train

    threads = torch.get_num_threads()
    try:
        summary = train(TASK, overrides=TOY, run_root=str(tmp_path_factory.mktemp("runs")), progress=False)
    finally:
        torch.set_num_threads(threads)
    return Path(summary["run_dir"])


@pytest.fixture(scope="module")
def bundle_dir(run_dir, tmp_path_factory) -> Path:
    return export_bundle(run_dir, tmp_path_factory.mktemp("export") / "cf2")


@pytest.fixture
def copy(bundle_dir, tmp_path) -> Path:
    """A private copy of the bundle to damage."""
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


def _metadata(path: Path) -> dict:
    return json.loads((path / "metadata.json").read_text())


def _write_metadata(path: Path, meta: dict, rehash: bool = True) -> None:
    if rehash:
        meta["content_hash"] = content_hash(path, meta)
    (path / "metadata.json").write_text(json.dumps(meta, indent=2))


def _real_observations(steps: int = 10, num_envs: int = 8) -> np.ndarray:
    """Policy observations from the training variant (noise, randomized starts) under random actions."""
    env = sim.make_env(TASK, num_envs=num_envs, seed=5, play=False)
    try:
        obs, _ = env.reset(seed=5)
        rows = [obs["policy"].numpy().copy()]
        gen = torch.Generator().manual_seed(0)
        for _ in range(steps):
            obs, *_ = env.step(torch.rand(num_envs, env.action_dim, generator=gen) * 2 - 1)
            rows.append(obs["policy"].numpy().copy())
    finally:
        env.close()
    return np.concatenate(rows).astype(np.float32)


# ------------------------------------------------------------------------------------ export / load


def test_bundle_layout(bundle_dir):
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["metadata.json", "policy.onnx", "policy.pt"]
    meta = _metadata(bundle_dir)
    assert meta["format_version"] == FORMAT_VERSION == 1
    assert (meta["robot"], meta["task"], meta["algo"]) == ("cf2", TASK, "ppo")
    assert meta["content_hash"] == content_hash(bundle_dir)
    for key in ("created", "robostack_version", "training", "pd_gains", "joint_names", "default_joint_pos",
                "control_rate_hz", "physics_dt", "decimation"):
        assert key in meta


def test_an_exported_bundle_states_its_robot_configuration_term_definitions_and_contract(bundle_dir):
    """What deployment and a reader without RoboStack need: the robot configuration it trained with (in its
    task config), a definition per observation term, the schema's shape, and the contract inside the graph."""
    import onnx

    meta = _metadata(bundle_dir)
    assert meta["task_config"]["robot"] == {"torque_to_thrust": 0.005964552, "max_thrust": 0.15,
                                            "motor_time_constant": 0.02, "default_height": 1.0}
    definitions = {t["name"]: t["definition"] for t in meta["observation"]["terms"]}
    assert definitions["position_error"] == {"quantity": "target position minus the base's position", "units": "m",
                                             "frame": "world", "reference": "", "components": "x, y, z"}
    assert "running integral" in definitions["position_error_integral"]["quantity"]
    assert definitions["action_history"]["components"].startswith("newest first")
    import jsonschema
    jsonschema.validate(meta, json.loads(SCHEMA_FILE.read_text()))
    props = {p.key: json.loads(p.value) for p in onnx.load(str(bundle_dir / "policy.onnx")).metadata_props}
    assert props["robostack.contract"]["observation"] == meta["observation"]


def test_a_graph_whose_contract_differs_from_the_metadata_is_refused(copy):
    from robostack.bundle.write import embed_contract

    meta = _metadata(copy)
    other = json.loads(json.dumps(meta))
    other["control_rate_hz"] = 50.0
    embed_contract(copy / "policy.onnx", other)
    meta["files"]["policy.onnx"] = __import__("hashlib").sha256((copy / "policy.onnx").read_bytes()).hexdigest()
    _write_metadata(copy, meta)
    with pytest.raises(BundleError, match="the contract in policy.onnx's metadata_props differs from metadata.json"):
        load_bundle(copy)


def test_onnx_matches_torch_on_real_observations(run_dir, bundle_dir):
    obs = _real_observations()
    bundle = load_bundle(bundle_dir)
    onnx_actions = bundle.act(obs)

    run = load_run(run_dir)
    env = run.make_env(num_envs=1)
    try:
        module = run.policy_module(env)
    finally:
        env.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still what deploy loads
        scripted = torch.jit.load(str(bundle_dir / "policy.pt"))
    with torch.no_grad():
        torch_actions = module(torch.from_numpy(obs)).numpy()
        script_actions = scripted(torch.from_numpy(obs)).numpy()

    assert onnx_actions.shape == (obs.shape[0], 4) and onnx_actions.dtype == np.float32
    np.testing.assert_allclose(onnx_actions, torch_actions, atol=1e-5, rtol=0)
    np.testing.assert_allclose(script_actions, torch_actions, atol=1e-5, rtol=0)
    assert np.all(np.abs(onnx_actions) <= 1.0)
    # one observation -> one action; batch of 1 and a single vector agree
    np.testing.assert_allclose(bundle.act(obs[3]), onnx_actions[3], atol=1e-6)
    assert bundle.act(obs[3]).shape == (4,)


def test_load_bundle_imports_neither_torch_nor_mujoco(bundle_dir):
    code = (
        "import sys, json, numpy as np\n"
        "from robostack.bundle import load_bundle\n"
        f"b = load_bundle({str(bundle_dir)!r}, robot='cf2')\n"
        "a = b.act(np.zeros(b.obs_dim, np.float32))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mujoco', 'robostack.sim'))\n"
        "print(json.dumps({'heavy': heavy, 'action': a.tolist(),\n"
        "                  'sim': [m for m in sys.modules if m.startswith('robostack.sim')]}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["heavy"] == [] and out["sim"] == []
    assert len(out["action"]) == 4


def test_metadata_matches_env(bundle_dir):
    meta = _metadata(bundle_dir)
    env = sim.make_env(TASK, num_envs=2, play=True)
    try:
        env.reset(seed=0)
        task, model = env.task, env.default_model
        obs = meta["observation"]
        assert obs["dim"] == env.observation_spaces["policy"].shape[0] == 37
        assert [t["name"] for t in obs["terms"]] == list(task.observations["policy"])
        assert sum(t["dim"] for t in obs["terms"]) == obs["dim"]
        for t in obs["terms"]:
            assert t["dim"] == task.observations["policy"][t["name"]].func(env).shape[-1]
            assert t["scale"] == task.observations["policy"][t["name"]].scale
        slices = load_bundle(bundle_dir).observation_slices()
        assert slices["angular_velocity"] == slice(15, 18) and slices["action_history"] == slice(18, 34)
        integral = obs["terms"][-1]
        assert integral["name"] == "position_error_integral" and slices[integral["name"]] == slice(34, 37)
        assert integral["integral"] == {"of": "position_error_near_target", "limit": 0.5, "dt": env.control_dt}
        assert "integral" not in obs["terms"][0]
        assert meta["action"]["relative"] is False
        act = meta["action"]
        assert act["dim"] == env.action_dim == 4
        assert [t["actuator"] for t in act["terms"]] == ["m1", "m2", "m3", "m4"]
        assert all(t["joint"] is None for t in act["terms"])  # the drone's motors drive sites, not joints
        np.testing.assert_allclose([t["scale"] for t in act["terms"]], task.action.scale)
        np.testing.assert_allclose(act["offset"], task.action.offset)
        np.testing.assert_allclose(act["ctrl_min"], model.actuator_ctrlrange[:, 0])
        np.testing.assert_allclose(act["ctrl_max"], model.actuator_ctrlrange[:, 1])
        assert meta["joint_names"] == [] and meta["default_joint_pos"] == []
        assert meta["pd_gains"] == {"kp": [None] * 4, "kd": [None] * 4}
        assert meta["control_rate_hz"] == pytest.approx(1.0 / env.control_dt) == pytest.approx(100.0)
        assert meta["physics_dt"] == model.opt.timestep and meta["decimation"] == task.sim.decimation
        tr = meta["training"]
        assert tr["iteration"] == 2 and tr["env_steps"] == 2 * 16 * 8 and tr["train_config"]["num_envs"] == 16

        # deploy-side control mapping == what the simulator applies
        bundle = load_bundle(bundle_dir)
        a = torch.tensor([[-1.0, -0.3, 0.4, 1.0], [0.2, 0.0, -0.9, 0.7]])
        np.testing.assert_allclose(bundle.controls(a.numpy()), env._controls(a).numpy(), atol=1e-6)
    finally:
        env.close()


def test_relative_action_controls_match_the_env():
    """With relative actions the arm integrates actions into joint targets; the bundle's mapping does the same."""
    from robostack.bundle import PolicyBundle

    env = sim.make_env("panda-reach", num_envs=2, seed=0, play=True,
                       overrides=["action_mode=joint_relative", "action_scale=0.05", "target_limits=null"])
    try:
        env.reset(seed=0)
        facts = describe_env(env)
        assert facts["action"]["relative"] is True
        bundle = PolicyBundle(Path("panda"), facts, session=None)
        previous = None
        for a in ([0.5] * 7, [-1.0] * 7, [0.0] * 7, [1.0, 0.2, -0.3, 0.0, 0.0, 1.0, -1.0]):
            action = torch.tensor([a, a])
            env.step(action)
            previous = bundle.controls(action[0].numpy(), previous)
            np.testing.assert_allclose(previous, env.ctrl_target[0].numpy(), atol=1e-5)
        home = np.asarray(facts["action"]["offset"])
        np.testing.assert_allclose(bundle.controls(np.zeros(7)), home)  # no previous: from the offset
        with pytest.raises(BundleError, match="previous controls"):
            bundle.controls(np.zeros(7), np.zeros(3))
    finally:
        env.close()


def test_a_bundle_trained_under_target_limits_states_them_and_needs_the_state_for_controls():
    from robostack.bundle import PolicyBundle

    env = sim.make_env("go2-walk", num_envs=1, play=True)
    try:
        facts = describe_env(env)
    finally:
        env.close()
    limits = facts["action"]["target_limits"]
    assert set(limits) == {"lower", "upper", "max_velocity", "max_lead", "damping_lead"}
    assert all(len(v) == 12 for v in limits.values())
    with pytest.raises(BundleError, match="limited at the measured joint state"):
        PolicyBundle(Path("go2"), facts, session=None).controls(np.zeros(12))


@pytest.mark.parametrize("task", ["go2-walk", "panda-reach"])
def test_describe_env_joints_and_gains(task):
    env = sim.make_env(task, num_envs=1, play=True)
    try:
        env.reset(seed=0)
        facts = describe_env(env)
        model = env.default_model
        joints = [model.joint(int(model.actuator_trnid[i, 0])).name for i in range(model.nu)]
        assert facts["joint_names"] == joints
        np.testing.assert_allclose(facts["default_joint_pos"], env.task.default_joint_pos)
        np.testing.assert_allclose(facts["pd_gains"]["kp"], model.actuator_gainprm[:, 0])
        np.testing.assert_allclose(facts["pd_gains"]["kd"], -model.actuator_biasprm[:, 2])
        assert facts["control_rate_hz"] == pytest.approx(50.0)
        assert facts["observation"]["dim"] == env.observation_spaces["policy"].shape[0]
        moved = [joints[i] for i in env.task.action.actuator_ids]
        if env.task.action.ik is None:
            assert [t["joint"] for t in facts["action"]["terms"]] == moved
        else:  # panda-reach: end-effector steps moving the seven arm joints
            ik = facts["action"]["ik"]
            assert [joints[i] for i in ik["actuator_indices"]] == moved == ik["joints"] and ik["site"] == "ee"
            assert [t["ee_axis"] for t in facts["action"]["terms"]] == ["x", "y", "z", "rx", "ry", "rz"]
        assert len(facts["action"]["offset"]) == model.nu  # undriven actuators (panda's fingers) too
        assert all(a["type"] == "position" for a in facts["actuators"])
    finally:
        env.close()


# ---------------------------------------------------------------------------------------- rejections


def test_reject_missing_files(copy):
    for name in ("policy.onnx", "policy.pt", "metadata.json"):
        broken = Path(shutil.copytree(copy, copy.parent / f"no-{name}"))
        (broken / name).unlink()
        with pytest.raises(BundleError, match=f"missing {name}"):
            load_bundle(broken)
    with pytest.raises(BundleError, match="no such directory"):
        load_bundle(copy.parent / "nothing-here")


def test_reject_metadata_not_json(copy):
    (copy / "metadata.json").write_text("{ not json")
    with pytest.raises(BundleError, match="corrupt metadata.json: not valid JSON"):
        load_bundle(copy)


def test_reject_modified_files(copy):
    data = bytearray((copy / "policy.pt").read_bytes())
    data[-10] ^= 0xFF
    (copy / "policy.pt").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="content hash mismatch: files were modified"):
        load_bundle(copy)


def test_reject_modified_metadata(copy):
    meta = _metadata(copy)
    meta["action"]["terms"][0]["scale"] *= 2
    _write_metadata(copy, meta, rehash=False)
    with pytest.raises(BundleError, match="content hash mismatch: files were modified"):
        load_bundle(copy)


def test_reject_corrupt_onnx(copy):
    (copy / "policy.onnx").write_bytes(b"this is not an onnx model")
    _write_metadata(copy, _metadata(copy))  # consistent hash: the ONNX itself must be refused
    with pytest.raises(BundleError, match="corrupt policy.onnx"):
        load_bundle(copy)


def test_reject_other_format_version(copy):
    meta = _metadata(copy)
    meta["format_version"] = 2
    _write_metadata(copy, meta)
    with pytest.raises(BundleError, match="bundle format 2, this RoboStack reads 1"):
        load_bundle(copy)


def test_reject_other_robot(bundle_dir):
    with pytest.raises(BundleError, match="bundle made for cf2, not panda"):
        load_bundle(bundle_dir, robot="panda")
    assert load_bundle(bundle_dir, robot="cf2").robot == "cf2"


def test_reject_dims_disagreeing_with_onnx(copy):
    meta = _metadata(copy)
    dim, last = meta["observation"]["dim"], meta["observation"]["terms"][-1]["dim"]
    meta["observation"]["terms"][-1]["dim"] = last + 1
    meta["observation"]["dim"] = dim + 1
    _write_metadata(copy, meta)
    with pytest.raises(BundleError, match=f"takes observations of size {dim} but the metadata says "
                                          f"observation.dim = {dim + 1}"):
        load_bundle(copy)

    meta = _metadata(copy)
    meta["observation"]["dim"] = dim  # terms now add up to dim + 1
    _write_metadata(copy, meta)
    with pytest.raises(BundleError, match=f"observation terms add up to {dim + 1} values but observation.dim is {dim}"):
        load_bundle(copy)

    meta["observation"]["terms"][-1]["dim"] = last
    meta["action"]["terms"] = meta["action"]["terms"][:3]
    meta["action"]["dim"] = 3
    _write_metadata(copy, meta)
    with pytest.raises(BundleError, match="returns actions of size 4 but the metadata says action.dim = 3"):
        load_bundle(copy)


def test_bundle_carries_its_task_config_and_eval_uses_it(copy):
    from robostack.config import to_dict
    from robostack.workflows.evaluate import eval_policy

    meta = _metadata(copy)
    assert meta["task_config"] == json.loads(json.dumps(to_dict(sim.load_task_config(TASK))))
    meta["task_config"]["sim"]["episode_length_s"] = 0.05  # 5 control steps, whatever the YAML says
    _write_metadata(copy, meta)
    assert eval_policy(copy, episodes=2, num_envs=2)["mean_length"] == 5.0
    del meta["task_config"]
    _write_metadata(copy, meta)
    with pytest.raises(BundleError, match="missing field 'task_config'"):
        load_bundle(copy)


def test_act_validates_input(bundle_dir):
    bundle = load_bundle(bundle_dir)
    assert isinstance(BundleError("x"), ValueError)
    with pytest.raises(BundleError, match=r"shape \[37\] or \[batch, 37\], got \[36\]"):
        bundle.act(np.zeros(36))
    with pytest.raises(BundleError, match=r"got \[2, 3, 37\]"):
        bundle.act(np.zeros((2, 3, 37)))
    obs = np.zeros((2, 37))
    obs[1, 16] = np.nan
    with pytest.raises(BundleError, match=r"non-finite .*\(1, 16\).*angular_velocity"):
        bundle.act(obs)
    assert bundle.act(np.zeros((5, 37), np.float64)).shape == (5, 4)  # float64 is accepted (cast)


# ------------------------------------------------------------------------------------------------ CLI


def _json_stdout(capsys) -> dict:
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    return json.loads(lines[0])


def test_cli_export(run_dir, tmp_path, capsys):
    out_dir = tmp_path / "b"
    assert main(["export", str(run_dir), "--out", str(out_dir), "--checkpoint", "last.pt", "--json"]) == 0
    result = _json_stdout(capsys)
    assert result["bundle"] == str(out_dir) and result["obs_dim"] == 37 and result["action_dim"] == 4
    assert load_bundle(out_dir).metadata["content_hash"] == result["content_hash"]
    # a folder holding something else is refused, in one line
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    assert main(["export", str(run_dir), "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds other files" in err


@pytest.mark.parametrize("which", ["bundle", "run"])
def test_cli_eval_json(which, run_dir, bundle_dir, capsys):
    source = bundle_dir if which == "bundle" else run_dir
    assert main(["eval", str(source), "--episodes", "4", "--json"]) == 0
    result = _json_stdout(capsys)
    assert result["kind"] == which and result["episodes"] == 4 and result["randomized"] is False
    assert 0.0 <= result["success_rate"] <= 1.0 and math.isfinite(result["mean_return"])
    assert "metric/position_error" in result


def test_cli_eval_bundle_and_run_agree(run_dir, bundle_dir, capsys):
    results = []
    for source in (bundle_dir, run_dir):
        assert main(["eval", str(source), "--episodes", "2", "--num-envs", "2", "--seed", "3", "--randomized",
                     "--json"]) == 0
        results.append(_json_stdout(capsys))
    assert results[0]["randomized"] is True
    assert results[0]["mean_length"] == results[1]["mean_length"]
    assert results[0]["mean_return"] == pytest.approx(results[1]["mean_return"], rel=1e-3, abs=1e-3)


def test_cli_eval_bad_bundle_is_one_line_error(copy, capsys):
    (copy / "policy.onnx").unlink()
    assert main(["eval", str(copy), "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing policy.onnx" in err


def test_cli_eval_video(bundle_dir, tmp_path, monkeypatch, capsys):
    import cv2

    monkeypatch.delenv("MUJOCO_GL", raising=False)  # the code must pick an offscreen backend itself
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    video = tmp_path / "eval.mp4"
    assert main(["eval", str(bundle_dir), "--episodes", "2", "--num-envs", "2", "--video", str(video),
                 "--json"]) == 0
    result = _json_stdout(capsys)
    assert video.is_file() and video.stat().st_size > 0
    assert result["video_fps"] == pytest.approx(50.0)  # 100 Hz control, every 2nd step

    cap = cv2.VideoCapture(str(video))
    try:
        assert cap.isOpened()
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        cap.release()
    assert (width, height) == (640, 480) and frames[0].shape == (480, 640, 3)
    assert abs(len(frames) - result["video_frames"]) <= 1
    # 2 envs, one episode each: the batch steps max(length) times, between mean and 2 x mean length
    every = 2
    lo, hi = math.ceil(result["mean_length"] / every), math.ceil(2 * result["mean_length"] / every)
    assert lo <= result["video_frames"] <= hi
    assert max(float(f.std()) for f in frames) > 1.0  # not a blank image


def test_sac_run_exports_and_evaluates(tmp_path, capsys):
    """The bundle is built from the checkpoint's algo: a SAC run exports through the same path."""
    from robostack.workflows.train import train

    threads = torch.get_num_threads()
    try:
        summary = train(TASK, algo="sac", run_root=str(tmp_path / "runs"), progress=False, overrides=[
            "max_iterations=3", "num_envs=8", "eval_episodes=1", "torch_threads=1", "sac.num_steps_per_env=2",
            "sac.batch_size=16", "sac.learning_starts=8", "sac.buffer_size=1000", "sac.actor_hidden=[32,32]",
            "sac.critic_hidden=[32,32]"])
    finally:
        torch.set_num_threads(threads)
    bundle = load_bundle(export_bundle(summary["run_dir"], tmp_path / "sac-bundle"))
    assert bundle.metadata["algo"] == "sac" and bundle.metadata["training"]["iteration"] == 3

    run = load_run(summary["run_dir"])
    env = run.make_env(num_envs=1)
    try:
        module = run.policy_module(env)
    finally:
        env.close()
    obs = _real_observations(steps=3, num_envs=4)
    with torch.no_grad():
        expected = module(torch.from_numpy(obs)).numpy()
    np.testing.assert_allclose(bundle.act(obs), expected, atol=1e-5, rtol=0)

    assert main(["eval", str(bundle.path), "--episodes", "2", "--json"]) == 0
    result = _json_stdout(capsys)
    assert result["algo"] == "sac" and result["episodes"] == 2


# Shipped bundles whose play-variant success (BENCHMARKS.md) leaves room for misses in 16 episodes.
MIN_PLAY_SUCCESS = {"panda-lift": 0.75}  # 0.935 of 200


def test_shipped_bundles_load_and_succeed_on_their_tasks():
    """Every shipped bundle loads (hash checked), matches the task it stores, and still does its job: a small
    play-variant evaluation through onnxruntime (the 1000-episode figures are in BENCHMARKS.md)."""
    from robostack.workflows.evaluate import eval_policy

    root = Path(__file__).resolve().parents[2] / "bundles"
    shipped = sorted(p for p in root.iterdir() if p.is_dir())
    assert {p.name for p in shipped} >= {"cf2-hover", "go2-walk", "panda-reach", "panda-lift", "panda-insert"}
    for path in shipped:
        bundle = load_bundle(path)  # verifies the content hash
        assert bundle.task == path.name
        if isinstance(bundle, PolicyBundle):  # an actor-critic's observation is the task's policy group
            env = sim.make_env(bundle.task, num_envs=2, play=True, config=bundle.metadata["task_config"])
            try:
                obs, _ = env.reset(seed=0)
                assert bundle.obs_dim == env.observation_spaces["policy"].shape[0]
                assert bundle.action_dim == env.action_dim
                assert [t["name"] for t in bundle.metadata["observation"]["terms"]] == list(
                    env.task.observations["policy"])
                action = bundle.act(obs["policy"].numpy())
                assert action.shape == (2, env.action_dim) and np.all(np.abs(action) <= 1.0)
            finally:
                env.close()
        result = eval_policy(path, episodes=16, num_envs=16, seed=7)
        assert result["success_rate"] >= MIN_PLAY_SUCCESS.get(path.name, 0.9), (path.name, result)


def test_a_task_config_with_an_infinity_is_refused_naming_it(tmp_path):
    """JSON metadata would hold it as null, which the task rebuilt from the bundle may read otherwise."""
    from robostack.bundle.write import write_bundle

    def never(path: Path) -> None:
        raise AssertionError("nothing is written")

    metadata = {"task": "panda-lift", "task_config": {"target_limits": {"prismatic_velocity_scale": math.inf}}}
    with pytest.raises(BundleError, match=r"task_config\.target_limits\.prismatic_velocity_scale is not finite"):
        write_bundle(tmp_path / "bundle", metadata, never, never)
    assert not (tmp_path / "bundle").exists()
