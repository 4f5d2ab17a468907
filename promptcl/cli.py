"""The command line: a thin layer over the Python API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

import promptcl
from promptcl.errors import PromptCLError

app = typer.Typer(add_completion=False, no_args_is_help=False, help=__doc__)


@app.command()
def run(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="run config (YAML); none = the default job (CODA-Prompt, synth-shapes-10)"
        ),
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override: key.sub=value")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue the run in this directory")] = None,
    quiet: Annotated[bool, typer.Option(help="print only the final metrics")] = False,
) -> None:
    """Train a method task by task and write a run directory (config, accuracy matrix, metrics, logs).

    Several processes: `torchrun --nproc-per-node N -m promptcl run CONFIG`.
    """
    from promptcl.config import load_config
    from promptcl.engine.run_dir import default_run_dir

    run_dir = resume
    try:
        if resume is not None:
            if config is not None or set_:
                raise typer.BadParameter(
                    "--resume takes the run's own config; give no CONFIG or --set"
                )
            result = promptcl.resume(resume, quiet=quiet)
        else:
            loaded = load_config(config, set_)
            run_dir = loaded.output.dir or default_run_dir(loaded)
            result = promptcl.run(loaded, quiet=quiet)
    except PromptCLError as err:
        Console(stderr=True).print(f"[red]error:[/] {err}", highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        where = f" {run_dir}" if run_dir is not None else " RUN_DIR"
        Console(stderr=True).print(
            "[yellow]interrupted:[/] the run keeps what it checkpointed (after every epoch); "
            f"continue it with `promptcl run --resume{where}`",
            highlight=False,
            soft_wrap=True,  # a path broken over lines cannot be pasted
        )
        raise typer.Exit(130) from None
    from promptcl.engine.distributed import env_rank

    if env_rank() == 0:  # under torchrun, one process speaks
        metrics = "  ".join(f"{k.upper()} {v:.2f}" for k, v in result.metrics.items())
        typer.echo(f"{metrics}\nrun directory: {result.run_dir}")


@app.command()
def bench(
    config: Annotated[
        Path | None, typer.Argument(help="run config (YAML), as for `run`; none = the default job")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override: key.sub=value")] = None,
    steps: Annotated[int, typer.Option(min=1, help="timed steps per round")] = 10,
    warmup: Annotated[int, typer.Option(min=0, help="untimed steps before timing")] = 3,
    rounds: Annotated[int, typer.Option(min=1, help="interleaved rounds of floor and method")] = 5,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the result here")] = None,
) -> None:
    """Training and evaluation samples/s and peak memory of a method, next to its backbone's bare
    forward + backward (the floor) measured in the same run, as a ratio."""
    import json

    from promptcl.config import load_config
    from promptcl.engine.bench import bench as measure
    from promptcl.engine.bench import table

    try:
        result = measure(load_config(config, set_), steps=steps, warmup=warmup, rounds=rounds)
    except PromptCLError as err:
        Console(stderr=True).print(f"[red]error:[/] {err}", highlight=False)
        raise typer.Exit(2) from None
    Console().print(table(result))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2))
        typer.echo(f"wrote {json_path}")


@app.command()
def pretrain(
    kind: Annotated[str, typer.Argument(help="vit (tiny-synth-vit) or clip (tiny-synth-clip)")],
    out: Annotated[Path | None, typer.Option(help="weight file to write")] = None,
    epochs: Annotated[int, typer.Option(help="epochs over the pretraining split")] = 10,
    per_class: Annotated[int, typer.Option(help="training images per pretraining class")] = 200,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Pretrain a small backbone of the offline world from scratch (reproduces the shipped weights)."""
    from promptcl.pretrain import PRESET
    from promptcl.pretrain import pretrain as run_pretraining

    if kind not in PRESET:
        raise typer.BadParameter(f"kind must be one of {sorted(PRESET)}, got {kind!r}")
    out = out or Path(f"{PRESET[kind]}.safetensors")
    scores = run_pretraining(kind, out, epochs=epochs, per_class=per_class, seed=seed)  # type: ignore[arg-type]
    typer.echo(
        f"wrote {out}: test accuracy {scores['test_accuracy']:.1f}% in {scores['seconds']:.0f}s"
    )
    typer.echo(f"use it with `backbone.weights: {out}` or copy it over the shipped file")


@app.command("list")
def list_components() -> None:
    """Show the registered methods, backbones and datasets."""
    from promptcl.registry import backbones, datasets, methods

    table = Table("kind", "name", "description")
    for kind, registry in (("method", methods), ("backbone", backbones), ("dataset", datasets)):
        for name in registry.names():
            table.add_row(kind, name, registry.describe(name))
    Console().print(table)


if __name__ == "__main__":
    app()
