"""User reward functions for the reward-pool test, imported by path ('reward_fns:hang')."""

import os
import time


def hang(prompt, completion, **_):
    if "slow" in completion:
        time.sleep(300)
    return 1.0


def crash(prompt, completion, **_):
    if "bad" in completion:
        raise ValueError("cannot score this")
    return 0.5


def die(prompt, completion, **_):
    if "die" in completion:
        os._exit(1)
    return 0.25


def vowel_share(prompt, completion, **_):
    """A dense reward that differs between random completions (so advantages and gradients are not 0)."""
    letters = [c for c in completion.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / max(1, len(letters))


def two_args(prompt, completion):
    """The most likely plugin mistake: no **metadata, so every call raises TypeError."""
    return 1.0


def not_a_number(prompt, completion, **_):
    return float("nan") if "nan" in completion else 0.5


def slow_length(prompt, completion, **_):
    """Takes a second per sample: long enough to kill its worker mid-chunk."""
    time.sleep(1.0)
    return float(len(completion))


def vowel_share_odd_answers(prompt, completion, answer=None, **_):
    """``vowel_share`` where the task's answer is odd, else a flat 0: groups of both kinds, so dynamic sampling
    drops some groups and keeps others."""
    return vowel_share(prompt, completion) if int(answer) % 2 else 0.0
