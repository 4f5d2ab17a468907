"""Learning-rate schedules and the run identity that decides whether a checkpoint may resume."""

import math

import torch

from promptcl.config import build_config, method_config
from promptcl.engine.checkpoint import config_fingerprint
from promptcl.engine.optim import build_optimizer, build_schedule


def lrs(method: dict, epochs: int) -> list[float]:
    """The lr of each epoch, as the trainer steps the schedule once per epoch."""
    cfg = method_config({"name": "finetune", "lr": 1.0, **method})
    optimizer = build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))]}], cfg)
    schedule = build_schedule(optimizer, cfg)
    out = []
    for _ in range(epochs):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return out


def test_step_schedule_decays_after_epoch_30_as_the_official_timm_call_does():
    """HiDe-Prompt's engine calls ``StepLRScheduler.step(epoch)`` after each epoch: epochs 0..30
    run at the base lr, 31..60 at 0.1 of it, then 0.01."""
    got = lrs({"schedule": "step", "epochs": 70, "decay_epochs": 30, "decay_rate": 0.1}, 70)
    assert got[:31] == [1.0] * 31
    assert all(abs(lr - 0.1) < 1e-12 for lr in got[31:61])
    assert all(abs(lr - 0.01) < 1e-12 for lr in got[61:])


def test_cosine_with_warm_up_follows_videomaes_scheduler_at_epoch_starts():
    """A linear rise from warmup_lr over the warm-up epochs, then cosine from lr down to min_lr;
    without them, the plain half cosine."""
    plain = lrs({"schedule": "cosine", "epochs": 4}, 4)
    expected = [1.0, 0.5 * (1 + 2**-0.5), 0.5, 0.5 * (1 - 2**-0.5)]
    assert all(abs(a - b) < 1e-12 for a, b in zip(plain, expected, strict=True)), plain
    cfg = {"schedule": "cosine", "epochs": 6, "warmup_epochs": 2, "warmup_lr": 0.1, "min_lr": 0.2}
    got = lrs(cfg, 6)
    expected = [0.1, 0.55] + [0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert all(abs(a - b) < 1e-12 for a, b in zip(got, expected, strict=True)), got


def test_settings_at_their_defaults_do_not_change_the_run_identity():
    base = {"method": {"name": "hide_prompt", "epochs": 5}}
    explicit = {"method": {"name": "hide_prompt", "epochs": 5, "decay_rate": 0.1}}  # the default
    assert config_fingerprint(build_config(base)) == config_fingerprint(build_config(explicit))
    other = {"method": {"name": "hide_prompt", "epochs": 5, "schedule": "cosine"}}
    assert config_fingerprint(build_config(base)) != config_fingerprint(build_config(other))
    # every field of both methods at its default: still two runs
    assert config_fingerprint(build_config({"method": {"name": "hash"}})) != config_fingerprint(
        build_config({"method": {"name": "hide_prompt"}})
    )
