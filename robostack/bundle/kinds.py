"""The kinds of bundle, each one ``BundleKindSpec``: how its metadata is checked, how its graph is loaded and how
it acts for robots. Registered when ``robostack.bundle`` is imported; ``load_bundle`` and ``read_metadata`` find a
bundle's kind here from its metadata's ``kind``, and ``policy_node`` runs whichever kind it is given the same way.

* ``actor_critic``: a vector policy, observation vector in, action out (PPO, SAC);
* ``chunk``: a diffusion policy whose graph runs every denoising step of an action chunk; executed step by step
  with its history, query period and temporal ensembling (``robostack.bundle.chunks``);
* ``residual``: a vector policy correcting the action of the bundle in ``base/`` (an actor-critic, or a chunk
  bundle acting in the task's actions), which acts through its own kind's actor;
* ``command_correction``: a rule moving the task command the actor-critic in ``base/`` follows.

An actor runs a bundle for a batch of robots whose observations an ``ObservationSource`` gives: the vector
observation or the measured state as datasets record it. Numpy and onnxruntime only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from robostack import registry
from robostack.bundle.chunks import ChunkExecutor
from robostack.bundle.format import (ACTOR_CRITIC, BASE_DIR, CHUNK, CHUNK_IMAGE, CHUNK_NOISE, CHUNK_OUTPUT, CHUNK_STATE,
                                     COMMAND_CORRECTION, INPUT_NAME, ONNX_FILE, OUTPUT_NAME, RESIDUAL,
                                     RESIDUAL_BASE_TERM, BundleError)
from robostack.bundle.load import ChunkPolicyBundle, CommandCorrectionBundle, PolicyBundle, ResidualPolicyBundle
from robostack.conventions import STATE_KEY
from robostack.specs import BundleKindSpec

Fail = Callable[[str], BundleError]


class ObservationSource(Protocol):
    """What an actor reads for each step, for a robot or a batch ``[B, ...]``: the policy's observation vector,
    the measured state as datasets record it (feature key -> ``[B, dim]``, ``observation.command`` the task's;
    ``state_columns(names)``: where named values are in ``observation.state``), and where there are cameras,
    ``images(keys)``: feature key -> ``[B, H, W, 3]`` uint8. ``offset_command(offset)``: the observation follows the
    task's command plus ``offset`` ``[B, command_dim]`` from now on (``PolicyState.offset_command``)."""

    def observation(self) -> np.ndarray: ...

    def features(self) -> dict[str, np.ndarray]: ...

    def state_columns(self, names: list[str]) -> list[int]: ...

    def offset_command(self, offset: Any) -> None: ...


# ------------------------------------------------------------------------------------------- checks


def check_vector(meta: dict[str, Any], fail: Fail) -> None:
    """An actor-critic bundle: observation terms that add up and follow each other, an action map whose terms
    and control limits fit the actuator list."""
    obs, act = meta["observation"], meta["action"]
    try:
        terms = obs["terms"]
        total = sum(int(t["dim"]) for t in terms)
        offsets_ok = all(int(t["offset_in_vector"]) == sum(int(u["dim"]) for u in terms[:i])
                         for i, t in enumerate(terms))
        obs_dim, act_dim, act_terms = int(obs["dim"]), int(act["dim"]), act["terms"]
        nu = len(act["offset"])
        ids = act["ik"]["actuator_indices"] if act.get("ik") else [t["actuator_index"] for t in act_terms]
        ids_ok = all(0 <= int(i) < nu for i in ids)
        limits_ok = len(act["ctrl_min"]) == nu and len(act["ctrl_max"]) == nu
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"malformed observation/action description ({type(exc).__name__}: {exc})") from None
    if total != obs_dim:
        raise fail(f"observation terms add up to {total} values but observation.dim is {obs_dim}")
    if not offsets_ok:
        raise fail("observation term offsets do not follow the term order")
    if len(act_terms) != act_dim:
        raise fail(f"action.dim is {act_dim} but {len(act_terms)} action terms are listed")
    if not ids_ok or not limits_ok:
        raise fail("action terms or control limits do not match the actuator list")


def check_chunk(meta: dict[str, Any], fail: Fail) -> None:
    """A chunk bundle: named state features that add up, positive chunk sizes, an action of a known kind, and
    the graph's inputs in the order the executor feeds them."""
    try:
        obs, act, chunk = meta["observation"], meta["action"], meta["chunk"]
        terms = obs["terms"]
        total = sum(int(t["dim"]) for t in terms)
        names_ok = all(len(t["names"]) == int(t["dim"]) for t in terms)
        sizes = [int(chunk[k]) for k in ("n_obs_steps", "horizon", "n_action_steps", "num_inference_steps")]
        images = {camera: [int(v) for v in hw] for camera, hw in obs.get("images", {}).items()}
        inputs = list(chunk["inputs"])
        kind = act.get("kind", "controls")
        act_ok = (len(act["names"]) == int(act["dim"]) and kind in ("controls", "task")
                  and (kind == "task" or len(act["ctrl_min"]) == len(act["ctrl_max"]) == int(act["dim"])))
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"malformed chunk policy description ({type(exc).__name__}: {exc})") from None
    if total != int(obs["dim"]) or not names_ok:
        raise fail(f"observation terms add up to {total} values, observation.dim is {obs['dim']}, or a term's names "
                   "do not match its size")
    if min(sizes) < 1 or not act_ok:
        raise fail("chunk sizes must be positive and the action's names and limits must match action.dim")
    expected = [CHUNK_NOISE] + ([CHUNK_STATE] if terms else []) + [CHUNK_IMAGE + camera for camera in images]
    if inputs != expected:
        raise fail(f"chunk.inputs {inputs} should be {expected}")


def check_residual(meta: dict[str, Any], fail: Fail) -> None:
    """A residual bundle: its observation ends with the base's action, its scale is sane, its actions have a
    range (the executed action is clipped to it), its base is named."""
    try:
        terms, obs_dim = meta["observation"]["terms"], int(meta["observation"]["dim"])
        act_dim = int(meta["action"]["dim"])
        low, high = (float(v) for v in meta["action"]["range"])
        total = sum(int(t["dim"]) for t in terms)
        scale, base = float(meta["residual"]["scale"]), meta["base"]
        base_ok = base["path"] == BASE_DIR and isinstance(base["content_hash"], str)
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"malformed residual policy description ({type(exc).__name__}: {exc})") from None
    if total != obs_dim or not terms or terms[-1]["name"] != RESIDUAL_BASE_TERM or int(terms[-1]["dim"]) != act_dim:
        raise fail(f"observation terms add up to {total} values (observation.dim is {obs_dim}) or do not end with "
                   f"the base's action ({RESIDUAL_BASE_TERM}, {act_dim} values)")
    if not 0.0 < scale <= 2.0 or not base_ok:
        raise fail(f"residual.scale must be in (0, 2] (got {scale}) and base must name {BASE_DIR!r} and its hash")
    if not low < high:
        raise fail(f"action.range must be [low, high] with low < high, got {meta['action']['range']}")


def check_command_correction(meta: dict[str, Any], fail: Fail) -> None:
    """A command correction: a setpoint per command component, positive limits, its base named."""
    try:
        block, base = meta[COMMAND_CORRECTION], meta["base"]
        tracks, inputs = list(block["tracks"]), list(block["inputs"])
        rate_limit, offset_limit = [float(v) for v in block["rate_limit"]], float(block["offset_limit"])
        command_dim = int(meta.get("command_dim", 0))
        named = all(isinstance(name, str) for name in tracks + inputs)
        base_ok = base["path"] == BASE_DIR and isinstance(base["content_hash"], str)
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"malformed command correction ({type(exc).__name__}: {exc})") from None
    if not command_dim or len(tracks) != command_dim or len(rate_limit) != command_dim or not named:
        raise fail(f"{COMMAND_CORRECTION}.tracks and .rate_limit need one entry per command component (command_dim "
                   f"{command_dim}), got {len(tracks)} and {len(rate_limit)}")
    if not all(0.0 < v < np.inf for v in rate_limit + [offset_limit]):
        raise fail(f"{COMMAND_CORRECTION}.rate_limit and .offset_limit must be positive and finite, got {rate_limit} "
                   f"and {offset_limit}")
    if not base_ok:
        raise fail(f"base must name {BASE_DIR!r} and its content hash")


RESIDUAL_SHARES = ("task", "robot", "joint_names", "control_rate_hz", "action")  # what a residual and its base agree on
COMMAND_CORRECTION_SHARES = RESIDUAL_SHARES + ("observation", "command_dim", "control_dt")


def check_same_base(where: str, meta: dict[str, Any], base: Any, shares: tuple[str, ...]) -> None:
    """``base`` is the bundle the one whose metadata is ``meta`` was written with (content hash) and agrees with it
    on ``shares``. ``where`` names the bundle in the error."""
    what = meta.get("kind", "bundle").replace("_", " ")
    if base.metadata["content_hash"] != meta["base"]["content_hash"]:
        raise BundleError(f"{where}: {BASE_DIR}/ is not the base this {what} was exported with "
                          f"(content hash {base.metadata['content_hash'][:12]}..., expected "
                          f"{meta['base']['content_hash'][:12]}...)")
    differing = [key for key in shares if base.metadata.get(key) != meta.get(key)]
    if differing:
        first = differing[0]
        raise BundleError(f"{where}: its base ({BASE_DIR}/) differs in {', '.join(differing)} ({first} "
                          f"{base.metadata.get(first)!r}, the {what}'s {meta.get(first)!r})")


def check_residual_base(where: str, meta: dict[str, Any], base: Any) -> None:
    """``base`` fits the residual whose metadata is ``meta``: it is the bundle the residual was written with (content
    hash), an actor-critic (whose observation is the residual's before the base's action) or a chunk bundle acting
    in the task's actions, for the same task, robot, joint order, control rate and actions. ``where`` names the
    residual in the error."""
    if not isinstance(base, PolicyBundle) and not (isinstance(base, ChunkPolicyBundle)
                                                   and base.metadata["action"].get("kind") == "task"):
        raise BundleError(f"{where}: its base is neither an actor-critic bundle nor a chunk bundle acting in the "
                          "task's actions")
    check_same_base(where, meta, base, RESIDUAL_SHARES)
    if isinstance(base, PolicyBundle) and base.metadata["observation"]["terms"] != meta["observation"]["terms"][:-1]:
        raise BundleError(f"{where}: its observation before {RESIDUAL_BASE_TERM} is not its base's "
                          f"({[t['name'] for t in meta['observation']['terms'][:-1]]}, the base's "
                          f"{[t['name'] for t in base.metadata['observation']['terms']]})")


# ------------------------------------------------------------------------------------------ loaders


def _onnx_dim(shape: list[Any], axis: int) -> int | None:
    if len(shape) <= axis:
        return None
    return shape[axis] if isinstance(shape[axis], int) else None


def check_vector_graph(root: Path, meta: dict[str, Any], session: Any, file: str = ONNX_FILE) -> None:
    """One input ``obs`` of observation.dim values and an output ``action`` of action.dim values: the policy's
    graph, or another that reads and writes what it does (``file``: a critic's recovery policy)."""
    check_graph_io(root, session, file, int(meta["observation"]["dim"]), int(meta["action"]["dim"]),
                   "observation.dim", "action.dim")


def check_graph_io(root: Path, session: Any, file: str, obs_dim: int, act_dim: int, obs_says: str,
                   act_says: str) -> None:
    """One input ``obs`` of ``obs_dim`` values and an output ``action`` of ``act_dim`` values (the metadata's
    ``obs_says`` and ``act_says``)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [INPUT_NAME] or OUTPUT_NAME not in [o.name for o in outputs]:
        raise BundleError(f"bundle {root}: {file} must have one input {INPUT_NAME!r} and an output "
                          f"{OUTPUT_NAME!r}, has inputs {[i.name for i in inputs]} and outputs "
                          f"{[o.name for o in outputs]}")
    in_dim = _onnx_dim(inputs[0].shape, 1)
    out_dim = _onnx_dim(next(o for o in outputs if o.name == OUTPUT_NAME).shape, 1)
    if in_dim != obs_dim:
        raise BundleError(f"bundle {root}: {file} takes observations of size {in_dim} but the metadata "
                          f"says {obs_says} = {obs_dim}")
    if out_dim != act_dim:
        raise BundleError(f"bundle {root}: {file} returns actions of size {out_dim} but the metadata "
                          f"says {act_says} = {act_dim}")


def load_vector(root: Path, meta: dict[str, Any], session: Any, base: Any = None) -> PolicyBundle:
    check_vector_graph(root, meta, session)
    return PolicyBundle(root, meta, session)


def load_chunk(root: Path, meta: dict[str, Any], session: Any, base: Any = None) -> ChunkPolicyBundle:
    inputs, outputs = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    if inputs != meta["chunk"]["inputs"] or outputs != [CHUNK_OUTPUT]:
        raise BundleError(f"bundle {root}: {ONNX_FILE} has inputs {inputs} and outputs {outputs}; the metadata says "
                          f"{meta['chunk']['inputs']} and {[CHUNK_OUTPUT]}")
    return ChunkPolicyBundle(root, meta, session)


def load_residual(root: Path, meta: dict[str, Any], session: Any, base: Any) -> ResidualPolicyBundle:
    """Its graph as a vector policy's, and ``base`` the bundle it was written with (``check_residual_base``)."""
    check_residual_base(f"bundle {root}", meta, base)
    check_vector_graph(root, meta, session)
    return ResidualPolicyBundle(root, meta, session, base)


def load_command_correction(root: Path, meta: dict[str, Any], session: Any, base: Any) -> CommandCorrectionBundle:
    """Its rule's graph (the command's error on each tracked value and the inputs in, a rate per component out)
    and ``base``: the actor-critic it was written with, for the same task, robot, observation and actions."""
    check_command_correction_base(f"bundle {root}", meta, base)
    block = meta[COMMAND_CORRECTION]
    n = len(block["tracks"])
    check_graph_io(root, session, ONNX_FILE, n + len(block["inputs"]), n,
                   f"len({COMMAND_CORRECTION}.tracks + .inputs)", f"len({COMMAND_CORRECTION}.tracks)")
    return CommandCorrectionBundle(root, meta, session, base)


def check_command_correction_base(where: str, meta: dict[str, Any], base: Any) -> None:
    if not isinstance(base, PolicyBundle):
        raise BundleError(f"{where}: its base is not an actor-critic bundle (a command correction moves the command "
                          "an actor-critic follows)")
    check_same_base(where, meta, base, COMMAND_CORRECTION_SHARES)


# ------------------------------------------------------------------------------------------- actors


class VectorActor:
    """An actor-critic bundle: the observation vector in, the task's action out."""

    writes_controls = False  # it writes the task's actions, which the task's action map turns into controls

    def __init__(self, bundle: PolicyBundle, source: ObservationSource, num_envs: int = 1, seed: int = 0,
                 base_source: ObservationSource | None = None):
        self.bundle, self.source = bundle, source

    def act(self) -> np.ndarray:
        return np.atleast_2d(self.bundle.act(self.source.observation()))

    def reset(self, env_ids: Any = None) -> None:
        pass


class ChunkActor:
    """A chunk policy (``policy``: ``cfg``, ``image_shapes``, ``predict_chunks``): the measured state as its dataset
    recorded it (``state_keys`` side by side) and camera images where the source renders them, action chunks
    executed by ``ChunkExecutor`` with the policy's history, query period and temporal ensembling; actuator controls
    out (``writes_controls``) or the task's actions. ``chunk_actor`` makes one for a chunk bundle."""

    def __init__(self, policy: Any, source: ObservationSource, state_keys: list[str], query_every: int | None,
                 ensemble_coef: float, writes_controls: bool, num_envs: int = 1, seed: int = 0):
        self.image_keys = list(policy.image_shapes)
        if self.image_keys and not callable(getattr(source, "images", None)):
            raise BundleError(f"the policy reads camera images ({', '.join(self.image_keys)}); this actor's robot "
                              "has no cameras to give them")
        self.source, self.keys, self.writes_controls = source, list(state_keys), writes_controls
        self.executor = ChunkExecutor(policy, num_envs, query_every, ensemble_coef, seed)

    def act(self) -> np.ndarray:
        observation = {}
        if self.keys:
            features = self.source.features()
            observation[STATE_KEY] = np.concatenate([features[key] for key in self.keys], axis=1)
        if self.image_keys:
            observation.update(self.source.images(self.image_keys))
        return self.executor.step(observation)

    def reset(self, env_ids: Any = None) -> None:
        self.executor.reset(env_ids)


def chunk_actor(bundle: ChunkPolicyBundle, source: ObservationSource, num_envs: int = 1, seed: int = 0,
                base_source: ObservationSource | None = None) -> ChunkActor:
    """A chunk bundle's actor, with the settings of its metadata."""
    meta = bundle.metadata
    chunk, keys = meta["chunk"], [term["name"] for term in meta["observation"]["terms"]]
    return ChunkActor(bundle, source, keys, chunk.get("query_every"), chunk.get("ensemble_coef", 0.01),
                      meta["action"].get("kind") == "controls", num_envs, seed)


class ResidualActor:
    """A residual bundle: its base's action, from the base kind's own actor, corrected from the policy observation
    and that action. ``source`` gives the residual's observation, which an actor-critic base reads too (the task's
    policy observation, with the policy's state: past actions, integrals); a chunk base reads the measured state
    from ``base_source`` (default: ``source``)."""

    writes_controls = False  # load_residual checked that the base acts in the task's actions

    def __init__(self, bundle: ResidualPolicyBundle, source: ObservationSource, num_envs: int = 1, seed: int = 0,
                 base_source: ObservationSource | None = None):
        self.bundle, self.source = bundle, source
        base = registry.bundle_kind(bundle.base.metadata.get("kind", ACTOR_CRITIC))
        reads = source if isinstance(bundle.base, PolicyBundle) else base_source or source
        self.base = base.actor(bundle.base, reads, num_envs, seed)
        self.base_action: np.ndarray | None = None

    def act(self) -> np.ndarray:
        base = self.base_action = self.base.act()  # what the base proposed, as logs of the deployment keep it
        correction = self.bundle.act(np.concatenate([np.atleast_2d(self.source.observation()), base], axis=1))
        return self.bundle.executed(base, correction)

    def reset(self, env_ids: Any = None) -> None:
        self.base.reset(env_ids)


class CommandCorrectionActor:
    """A command correction: the actor-critic in its ``base/`` acts on the observation ``source`` builds with the
    command it follows; after each step the correction moves that command's offset (``COMMAND_CORRECTION_RULE``),
    from the measured state and the task's command. ``holding``: a human holds the command (a setpoint takeover):
    the offset stays where it was, so taking over and handing back move nothing by themselves (a bumpless transfer:
    zeroed, it dropped a drone held up by 0.3 m as the pilot took over), and the human's sticks move the command
    from there."""

    writes_controls = False

    def __init__(self, bundle: CommandCorrectionBundle, source: ObservationSource, num_envs: int = 1, seed: int = 0,
                 base_source: ObservationSource | None = None):
        try:
            columns = source.state_columns(bundle.tracks + bundle.inputs)
        except ValueError as exc:
            raise BundleError(f"bundle {bundle.path}: its command correction reads what this robot's measured "
                              f"state does not give ({exc})") from None
        self.bundle, self.source, self.holding = bundle, source, False
        n = len(bundle.tracks)
        self.tracked, self.read = np.array(columns[:n]), np.array(columns[n:], dtype=np.int64)
        self.base = VectorActor(bundle.base, source)
        self.offset = np.zeros((num_envs, len(bundle.tracks)), dtype=np.float32)

    def act(self) -> np.ndarray:
        action = self.base.act()
        if not self.holding:
            features = self.source.features()
            state = features["observation.state"]
            error = features["observation.command"] - state[:, self.tracked]
            rate = self.bundle.rate(np.concatenate([error, state[:, self.read]], axis=1))
            self.offset = self.bundle.moved(self.offset, rate).astype(np.float32)
        self.source.offset_command(self.offset)
        return action

    def reset(self, env_ids: Any = None) -> None:
        self.offset[slice(None) if env_ids is None else env_ids] = 0.0


registry.register(BundleKindSpec(ACTOR_CRITIC, "a vector policy: observation vector in, action out (PPO, SAC)",
                                 check_vector, load_vector, VectorActor))
registry.register(BundleKindSpec(CHUNK, "a diffusion policy: every denoising step of an action chunk in one graph",
                                 check_chunk, load_chunk, chunk_actor))
registry.register(BundleKindSpec(RESIDUAL, "a vector policy correcting the action of the bundle in base/",
                                 check_residual, load_residual, ResidualActor, has_base=True))
registry.register(BundleKindSpec(COMMAND_CORRECTION, "a rule moving the task command the actor-critic in base/ follows",
                                 check_command_correction, load_command_correction, CommandCorrectionActor,
                                 has_base=True))
