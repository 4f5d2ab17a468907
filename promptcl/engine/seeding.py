"""One seed drives python, numpy and torch; positions in a run get stable seeds of their own."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A stable seed for one (seed, task, epoch, ...) position."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
