"""The reward worker pool on a real Ray: built-in rewards in parallel, and a user function that hangs,
raises or kills its process is reported with its name and sample, counted as failed, and the pool
keeps working; a worker killed from outside mid-chunk is replaced and its samples scored again."""

import os
import sys
import time

import pytest

from rayalign.config import RewardConfig, RewardFnConfig
from rayalign.data.tasks import generate, to_row


@pytest.fixture(scope="module")
def pool_factory(ray_local):
    from rayalign.workers.reward import RewardPool

    here = os.path.dirname(__file__)
    ray_local.get(ray_local.remote(lambda: None).remote())  # Ray up
    sys.path.insert(0, here)
    pools = []

    def make(functions, timeout_s=2.0, workers=2):
        cfg = RewardConfig(functions=[RewardFnConfig(**f) for f in functions], num_workers=workers,
                           num_cpus=0.25, timeout_s=timeout_s)
        pools.append(RewardPool(cfg))
        return pools[-1]
    yield make
    for p in pools:
        p.shutdown()


def test_builtin_rewards_in_parallel(pool_factory):
    from rayalign.workers.reward import Sample

    pool = pool_factory([{"name": "letter_count"}, {"name": "format_regex", "weight": 0.5}])
    samples = []
    for ex in generate("letter_count", 10, 3):
        meta = {k: v for k, v in to_row(ex, "prompt").items() if k != "prompt"}
        samples += [Sample(ex.prompt, ex.solution, meta), Sample(ex.prompt, ex.wrong, meta),
                    Sample(ex.prompt, "no idea", meta)]
    scored = pool.score(samples)
    assert [s.reward for s in scored] == [1.5, 0.5, 0.0] * 10  # order kept across the 2 workers
    assert not any(s.failed for s in scored)


def test_hung_crashing_and_dying_functions_are_reported(pool_factory):
    from rayalign.workers.reward import Sample

    pool = pool_factory([{"name": "reward_fns:hang"}, {"name": "reward_fns:crash"}], timeout_s=1.0)
    start = time.time()
    scored = pool.score([Sample("q", "fine"), Sample("q", "slow"), Sample("q", "bad"), Sample("q", "fine too")])
    assert time.time() - start < 30
    assert [s.failed for s in scored] == [False, True, True, False]
    assert scored[0].reward == 1.5 and scored[2].reward == 1.0  # hang ok (1.0) + crash failed (0)
    assert scored[1].failures == ["reward fn 'reward_fns:hang' timed out after 1s on prompt 'q', completion 'slow'"]
    assert scored[2].failures == ["reward fn 'reward_fns:crash' raised ValueError: cannot score this on "
                                  "prompt 'q', completion 'bad'"]
    assert [s.reward for s in pool.score([Sample("q", "fine")] * 4)] == [1.5] * 4  # replaced actor works

    dying = pool_factory([{"name": "reward_fns:die"}], timeout_s=1.0)
    scored = dying.score([Sample("q", "ok"), Sample("q", "die")])
    assert scored[0].reward == 0.25 and not scored[0].failed
    assert scored[1].failed and scored[1].failures[0].startswith("reward worker 1 failed (")
    assert [s.reward for s in dying.score([Sample("q", "ok")] * 2)] == [0.25, 0.25]
    assert scored[1].failed_terms == ["reward worker"] and scored[0].failed_terms == []


def test_a_killed_worker_is_replaced_and_its_samples_scored_again(pool_factory):
    import threading

    import ray

    from rayalign.workers.reward import Sample

    pool = pool_factory([{"name": "reward_fns:slow_length"}], timeout_s=10.0, workers=1)
    victim = pool.actors[0]
    threading.Timer(1.5, lambda: ray.kill(victim)).start()  # mid-chunk: 3 samples take 3 s
    scored = pool.score([Sample("q", "a"), Sample("q", "bb"), Sample("q", "ccc")])
    assert [s.reward for s in scored] == [1.0, 2.0, 3.0] and not any(s.failed for s in scored)
    assert pool.actors[0] is not victim and pool.restarts == 1


def test_nan_rewards_and_wrong_signatures_are_failures_of_their_function(pool_factory):
    """Issue 20: a NaN reward flowed into the weights; fn(prompt, completion) trained on nothing silently."""
    from rayalign.workers.reward import Sample

    pool = pool_factory([{"name": "reward_fns:not_a_number"}, {"name": "reward_fns:two_args"}], workers=1)
    scored = pool.score([Sample("q", "nan please", {"answer": "1"}), Sample("q", "fine", {"answer": "1"})])
    assert scored[0].failed_terms == ["reward_fns:not_a_number", "reward_fns:two_args"]
    assert scored[0].failures[0] == "reward fn 'reward_fns:not_a_number' returned nan on prompt 'q', completion " \
                                    "'nan please'"
    assert "raised TypeError: two_args() got an unexpected keyword argument 'answer'" in scored[1].failures[0]
    assert [s.reward for s in scored] == [0.0, 0.5]  # the failed terms count 0, never NaN
