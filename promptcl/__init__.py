"""promptcl: prompt-based continual learning on frozen foundation models, for images and videos."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from promptcl.config import RunConfig
    from promptcl.engine.trainer import RunResult

__version__ = "0.1.0"


def run(
    config: RunConfig | dict | str | Path | None = None, resume: bool = False, quiet: bool = False
) -> RunResult:
    """Train a method through a class-incremental stream and return its accuracy matrix and metrics.

    ``config`` is a ``RunConfig``, a dict of its sections, or the path of a YAML file; None runs the
    default job. With ``resume`` the run continues from the checkpoint in its ``output.dir``.
    Under ``torchrun`` every process calls this; they train the run together (DDP) and return
    the same result, and process 0 writes the run directory.
    """
    from promptcl import collectives
    from promptcl.config import RunConfig, build_config, load_config
    from promptcl.engine import distributed
    from promptcl.engine.progress import Console
    from promptcl.engine.trainer import Trainer

    if isinstance(config, dict):
        config = build_config(config)
    elif not isinstance(config, RunConfig):
        config = load_config(config)
    with distributed.launched(config.train.device):
        console = Console(quiet=quiet or not collectives.is_main())
        return Trainer(config, console).run(resume=resume)


def resume(run_dir: str | Path, quiet: bool = False) -> RunResult:
    """Continue the run in ``run_dir`` from its last checkpoint, with the config it was started with."""
    from promptcl.config import load_config
    from promptcl.errors import ConfigError

    config_file = Path(run_dir) / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"{run_dir} is not a run directory: it has no config.yaml")
    config = load_config(config_file)
    config.output.dir = Path(run_dir)
    return run(config, resume=True, quiet=quiet)
