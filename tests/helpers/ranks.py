"""A data-parallel training rank for tests: joins a gloo group, trains PPO or SAC on its own cf2-hover envs for two
iterations and saves what the test compares (run by ``torch.multiprocessing.spawn``)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist


def flat_state(alg) -> torch.Tensor:
    from robostack.policies.distributed import algorithm_modules

    return torch.cat([t.detach().reshape(-1).double() for m in algorithm_modules(alg)
                      for t in [*m.parameters(), *m.buffers()]])


def train_rank(rank: int, world: int, port: int, algo: str, out_dir: str, average: bool) -> None:
    import robostack.sim
    from robostack.policies import distributed
    from robostack.policies.ppo import PPOConfig, PPOLearner
    from robostack.policies.sac import SACConfig, SACLearner

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    if not average:  # the control: ranks that do not exchange gradients
        distributed.average_gradients = lambda parameters: None
    torch.manual_seed(rank)
    env = robostack.sim.make_env("cf2-hover", num_envs=16, seed=100 + rank)
    if algo == "ppo":
        learner = PPOLearner(env, PPOConfig(num_steps_per_env=8, num_learning_epochs=2, num_mini_batches=2,
                                            actor_hidden=(32, 32), critic_hidden=(32, 32)), "cpu")
    else:
        learner = SACLearner(env, SACConfig(num_steps_per_env=4, batch_size=64, buffer_size=4096, learning_starts=0,
                                            actor_hidden=(32, 32), critic_hidden=(32, 32), normalize_obs=True), "cpu")
    distributed.broadcast_state(learner.alg)
    initial = flat_state(learner.alg)
    learner.alg.train_mode()
    obs, _ = env.reset(seed=100 + rank)
    reward_sum = 0.0
    for _ in range(2):
        with torch.inference_mode():
            for _ in range(learner.num_steps_per_env):
                obs, reward, *_ = learner.env_step(env, obs)
                reward_sum += float(reward.sum())
            learner.end_rollout(obs)
        learner.update()
    in_sync = distributed.parameters_in_sync(learner.alg)
    normalizer = learner.alg.actor_critic.policy_normalizer if algo == "ppo" else learner.alg.critic_normalizer
    torch.save({"state": flat_state(learner.alg), "initial": initial, "reward_sum": reward_sum, "in_sync": in_sync,
                "normalizer_count": float(normalizer.count), "rows": 2 * 16 * learner.num_steps_per_env},
               Path(out_dir) / f"rank{rank}.pt")
    env.close()
    dist.destroy_process_group()
