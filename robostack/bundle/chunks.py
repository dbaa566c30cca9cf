"""Running a chunk (diffusion) policy one control step at a time for a batch of robots: observation history,
chunk queries, temporal ensembling. Numpy only: a deployed chunk bundle runs it on the robot, and the imitation
workflow runs a policy in training the same way."""
from __future__ import annotations

import math
from typing import Any

import numpy as np


class ChunkExecutor:
    """Runs a chunk policy one control step at a time for a batch of robots: observation history, chunk
    queries, temporal ensembling.

    Per robot, it keeps the last ``n_obs_steps`` observations (the first one of an episode repeated, as in
    training), queries the policy every ``query_every`` steps of that robot's episode (default
    ``n_action_steps``: plain receding horizon) and keeps each chunk's ``n_action_steps`` actions from the query
    step on. The action at a step is the weighted mean over the kept chunks that cover it, weights
    ``exp(-ensemble_coef * i)`` with ``i = 0`` for the oldest chunk (ACT's temporal ensembling);
    ``query_every = 1`` ensembles ``n_action_steps`` chunks. Robots restart their episodes independently
    (``reset(ids)``); those that query at a step are sampled together in one batch.

    ``policy`` is anything with ``cfg`` (``n_obs_steps``, ``n_action_steps``) and ``predict_chunks``.
    """

    def __init__(self, policy: Any, num_envs: int = 1, query_every: int | None = None, ensemble_coef: float = 0.01,
                 seed: int = 0):
        self.policy, self.num_envs = policy, num_envs
        self.n_obs_steps, self.n_action_steps = policy.cfg.n_obs_steps, policy.cfg.n_action_steps
        self.query_every = query_every or self.n_action_steps
        if not 1 <= self.query_every <= self.n_action_steps:
            raise ValueError(f"query_every must be in 1..n_action_steps = {self.n_action_steps} (a larger value "
                             f"leaves steps without actions), got {self.query_every}")
        self.ensemble_coef = ensemble_coef
        self.generator = np.random.default_rng(seed)  # the chunks' initial noise
        self.history: dict[str, np.ndarray] = {}  # key -> [num_envs, n_obs_steps, ...]
        self.t = np.zeros(num_envs, dtype=np.int64)  # steps into each robot's episode
        # Pending actions by steps from now: the weighted sum over the chunks covering that step, and the sum of
        # their weights. A new chunk enters with weight 1 after the older ones are scaled by exp(coef): the
        # ratios are ACT's, and the numbers stay bounded (a chunk leaves after n_action_steps steps).
        self.weighted = np.zeros((num_envs, self.n_action_steps, 0), dtype=np.float32)
        self.weights = np.zeros((num_envs, self.n_action_steps))

    def reset(self, env_ids: Any = None) -> None:
        """Forget those robots' history and pending chunks (all by default): their episodes start over."""
        ids = slice(None) if env_ids is None else np.asarray(env_ids, dtype=np.int64)
        self.t[ids] = 0
        self.weighted[ids] = 0.0
        self.weights[ids] = 0.0

    def step(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        """The actions ``[num_envs, act_dim]`` for this step, given this step's observation of every robot
        (``[num_envs, ...]`` per key)."""
        observation = {key: np.asarray(value) for key, value in observation.items()}
        for key, value in observation.items():
            if value.shape[0] != self.num_envs:
                raise ValueError(f"observation {key!r} has {value.shape[0]} rows for {self.num_envs} robots")
        starting = self.t == 0
        for key, value in observation.items():
            if key not in self.history:
                self.history[key] = np.repeat(value[:, None], self.n_obs_steps, axis=1)
            history = self.history[key]
            history[:, :-1] = history[:, 1:]
            history[:, -1] = value
            history[starting] = value[starting, None]
        querying = np.flatnonzero(self.t % self.query_every == 0)
        if len(querying):
            chunks = self.policy.predict_chunks({key: h[querying] for key, h in self.history.items()},
                                                generator=self.generator)
            first = self.n_obs_steps - 1  # the chunk starts at the oldest observation
            executed = chunks[:, first:first + self.n_action_steps]
            if self.weighted.shape[-1] != executed.shape[-1]:
                self.weighted = np.zeros((self.num_envs, self.n_action_steps, executed.shape[-1]), np.float32)
            decay = math.exp(self.ensemble_coef)
            self.weighted[querying] = self.weighted[querying] * decay + executed
            self.weights[querying] = self.weights[querying] * decay + 1.0
        action = self.weighted[:, 0] / self.weights[:, :1]
        for pending in (self.weighted, self.weights):  # one step on: what was next is now current
            pending[:, :-1] = pending[:, 1:]
            pending[:, -1] = 0.0
        self.t += 1
        return action.astype(np.float32)
