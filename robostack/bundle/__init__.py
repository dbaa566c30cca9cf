"""The policy bundle: the one artifact deployment consumes.

A bundle is a directory::

    policy.onnx     input "obs" float32 [batch, obs_dim] (the raw "policy" observation, exactly as the env
                    builds it), output "action" float32 [batch, action_dim] in [-1, 1]; the observation
                    normalization and the action bounding are part of the graph
    policy.pt       the same module as TorchScript
    metadata.json   everything deploy code needs to build that observation and apply that action

``metadata.json`` (``format_version`` 1)::

    format_version, robot, task, algo, created, robostack_version
    observation     {dim, terms: [{name, dim, scale, offset_in_vector[, integral: {of, limit, dt}]}]}
                    (policy group, in order; an ``integral`` term is the running sum of dt x the quantity
                    ``of`` over the episode, clipped to +-limit, zero at the episode's start)
    action          {dim, range: [-1, 1],
                     terms: [{index, actuator, actuator_index, joint, scale, offset}],  (one per action dim;
                            with ik: [{index, ee_axis, scale}])
                     actuators: [names], offset: [per actuator], ctrl_min/ctrl_max: [per actuator, null =
                     unlimited], relative, ik: null | {site, joints, actuator_indices, damping}, formula}
    actuators       [{name, joint, type ("position" | "motor" | ...), gear, ctrl_range, kp, kd}]
    joint_names     actuated joints in actuator order (the joint_pos / joint_vel observation order)
    default_joint_pos
    pd_gains        {kp: [per actuator], kd: [per actuator]} (null for actuators that are not PD servos)
    control_rate_hz, control_dt, physics_dt, decimation, max_episode_length
    task_config     the task's full config as trained (YAML + overrides): evaluation and deployment rebuild
                    the task's terms from it, not from the current YAML file
    training        {task_overrides, train_config, run_dir, checkpoint, iteration, env_steps, wall_s}
    files           {"policy.onnx": sha256, "policy.pt": sha256}
    content_hash    sha256 over the two files' bytes and the canonical JSON of the metadata without this field

Any kind may also carry a safety critic trained for its policy: ``critic.onnx`` (metadata ``critic``: features,
epsilon, the policy's file hashes) and, where one was trained, its recovery policy ``recovery.onnx``
(``critic.recovery_policy``: the policy's own "obs" -> "action" contract, run with its task command); ``files`` and
``content_hash`` then cover them too (``robostack.bundle.write.add_critic``).

Applying an action ``a`` (deploy side, see ``PolicyBundle.controls``)::

    ctrl = base; ctrl[terms[i].actuator_index] += terms[i].scale * clip(a[i], -1, 1); clip to ctrl limits

where ``base`` is ``action.offset``, or with ``action.relative`` the previous step's ``ctrl`` (``offset`` at
the start of an episode): a relative action integrates into the joint targets. With ``action.ik`` the action
is an end-effector displacement (``scale`` m, then rad, per step, world frame) and the change of the listed
joints' targets is ``J^T (J J^T + damping^2 I)^-1 (scale * a)`` with ``J`` the site Jacobian (``sim.ik``).

A chunk bundle (``"kind": "chunk"``: a diffusion policy, ``robostack.workflows.export.export_chunk``) has the
same three files; its graph runs every denoising step of one action chunk::

    policy.onnx     inputs "noise" [batch, horizon, action_dim] (standard normal), "observation_state"
                    [batch, n_obs_steps, dim] and "observation_images_<camera>" [batch, n_obs_steps, 3, H, W]
                    in [0, 1]; output "chunk" [batch, horizon, action_dim]
    metadata        observation {dim, terms: [{name, dim, names, offset_in_vector}], images: {camera: [H, W]}}
                    (the state: dataset features side by side), action {kind: "controls", dim, names,
                    actuators, ctrl_min, ctrl_max} (absolute controls, whatever the graph learned them relative
                    to) or {kind: "task", dim, names, range, ik: {site, ee_step}} (the task's end-effector steps
                    and gripper command, in [-1, 1]; ee_step: m and rad per unit), chunk {n_obs_steps, horizon,
                    n_action_steps, num_inference_steps, query_every, ensemble_coef, inputs}, and robot, task,
                    joint_names, control rate, task_config, training, files and content_hash as above

A residual bundle (``"kind": "residual"``: ``robostack.workflows.export.write_residual_bundle``) is a vector
policy that corrects the bundle kept in ``base/``: an actor-critic, or a chunk bundle acting in the task's actions,
of the same task, robot, joint order, control rate and actions; the base acts through its own kind's actor::

    policy.onnx     input "obs" [batch, obs_dim]: the task's policy observation (an actor-critic base's own
                    observation), then the base's action; output "action" [batch, action_dim]: the correction
                    in [-1, 1]
    metadata        observation {dim, terms: [..., {name: "base_action", dim: action_dim}]}, action (the
                    base's), residual {scale, executed}: the executed action is clip(base action + scale *
                    half_range * clip(correction, -1, 1), low, high) with [low, high] = action.range
                    (``format.residual_executed``); base {path: "base", content_hash: the base bundle's}

A command correction (``"kind": "command_correction"``: ``robostack.workflows.export.write_command_correction``)
moves the task command the actor-critic bundle in ``base/`` follows (a drone's setpoint), as a pilot aiming off
would; the base's motor commands are its own::

    policy.onnx     input "obs" [batch, n + k]: the task command less the state values it is a setpoint of
                    (command_correction.tracks, n = command_dim), then k more (command_correction.inputs), all
                    from the measured state as datasets record it; output "action" [batch, n]: the rate of the
                    command's offset
    metadata        observation and action (the base's), command_correction {tracks, inputs, rate_limit,
                    offset_limit, rule} (``format.COMMAND_CORRECTION_RULE``), base {path, content_hash}

Modules: ``format`` (names, hashing, reading and checking the metadata, the contract), ``load`` (the loaded
bundles and ``load_bundle``), ``kinds`` (each kind's checks, loader and actor, registered), ``chunks`` (running a
chunk policy step by step), ``describe`` (what a task states in the metadata), ``write`` (writing a bundle, with
its graph's contract). Loading needs only numpy and onnxruntime; describing and writing import MuJoCo, onnx and
torch when called (the exporters are workflows: ``robostack.workflows.export``).
"""
from __future__ import annotations

from robostack.bundle import kinds  # noqa: F401  (registers the bundle kinds)
from robostack.bundle.format import (
                                     ACTOR_CRITIC,
                                     BASE_DIR,
                                     CHUNK,
                                     COMMAND_CORRECTION,
                                     FORMAT_VERSION,
                                     HASHED_FILES,
                                     METADATA_FILE,
                                     ONNX_FILE,
                                     RESIDUAL,
                                     RESIDUAL_BASE_TERM,
                                     TORCHSCRIPT_FILE,
                                     BundleError,
                                     content_hash,
                                     is_bundle,
                                     read_metadata,
)
from robostack.bundle.load import (
                                     ChunkPolicyBundle,
                                     CommandCorrectionBundle,
                                     LoadedBundle,
                                     PolicyBundle,
                                     ResidualPolicyBundle,
                                     VectorPolicyBundle,
                                     load_bundle,
)

__all__ = ["ACTOR_CRITIC", "BASE_DIR", "CHUNK", "COMMAND_CORRECTION", "FORMAT_VERSION", "HASHED_FILES",
           "METADATA_FILE", "ONNX_FILE", "RESIDUAL", "RESIDUAL_BASE_TERM", "TORCHSCRIPT_FILE", "BundleError",
           "ChunkPolicyBundle", "CommandCorrectionBundle", "LoadedBundle", "PolicyBundle", "ResidualPolicyBundle",
           "VectorPolicyBundle", "content_hash", "is_bundle", "load_bundle", "read_metadata"]
