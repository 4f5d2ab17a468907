"""What the report reads from a run's final checkpoint: the method's tensors (through the engine's
checkpoint loader, which checks that the checkpoint is the run's own), and the method rebuilt from
them for the t-SNE of its instance prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from promptcl.errors import PromptCLError


def load_checkpoint(run_dir: Path) -> tuple[Any, dict[str, Any]] | None:
    """(the run's config, its checkpoint payload), or None if the run has no checkpoint."""
    from promptcl.config import load_config
    from promptcl.engine import checkpoint

    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file() or not (Path(run_dir) / "config.yaml").is_file():
        return None
    config = load_config(Path(run_dir) / "config.yaml")
    payload = checkpoint.load(
        path,
        config.method.name,
        checkpoint.config_fingerprint(config),
        checkpoint.run_identity(config),
    )
    return config, payload


def load_method_state(run_dir: Path) -> dict[str, torch.Tensor] | None:
    loaded = load_checkpoint(run_dir)
    return None if loaded is None else loaded[1]["method"]


def rebuild(run_dir: Path):
    """The run's parts (``promptcl.build.build_run``) with the method in its final state: its
    tasks begun in order, as a resumed run replays them, then the checkpoint's state loaded.
    None if the run has no checkpoint."""
    from promptcl.build import build_run
    from promptcl.methods.base import Task

    loaded = load_checkpoint(run_dir)
    if loaded is None:
        return None
    config, payload = loaded
    parts = build_run(config, torch.device("cpu"))
    scenario, method = parts.scenario, parts.method
    done = payload["position"]["task"]
    for t in range(done + 1):
        method.begin_task(Task(t, *scenario.class_range(t), scenario.num_tasks))
    missing, unexpected = method.load_state_dict(payload["method"], strict=False)
    frozen = tuple(method.frozen_state_prefixes())
    if unexpected or any(not k.startswith(frozen) for k in missing):
        raise PromptCLError(f"the checkpoint of {run_dir} does not fit its method")
    method.eval()
    return parts
