"""What the engine does after a task's first phase, for unit tests that drive a method by hand:
the first phase's finish, every later phase (prepare, epochs on its own batches, finish), then
``end_task``. The trainer does the same with checkpoints, logs and several processes."""

import torch

from promptcl.engine.optim import build_optimizer, build_schedule
from promptcl.engine.step import Stepper


def finish_task(method, task, loader) -> None:
    method.eval()
    for i, phase in enumerate(method.phases(task)):
        groups = phase.param_groups() if i > 0 and phase.epochs else []
        if groups:
            with torch.no_grad():
                if phase.prepare is not None:
                    phase.prepare(loader)
            optimizer = build_optimizer(groups, phase.optim)
            schedule = build_schedule(optimizer, phase.optim, phase.epochs)
            step = Stepper(
                phase.step, optimizer, "fp32", phase.optim.grad_clip, torch.device("cpu")
            )
            for epoch in range(phase.epochs):
                for batch in phase.batches(epoch):
                    step(batch)
                schedule.step()
        if phase.finish is not None:
            with torch.no_grad():
                phase.finish(loader)
    method.end_task(task, loader)
