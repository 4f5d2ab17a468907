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
    kind: Annotated[
        str,
        typer.Argument(
            help="vit (tiny-synth-vit), clip (tiny-synth-clip) or videomamba (tiny-synth-videomamba)"
        ),
    ],
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


@app.command()
def sweep(
    study: Annotated[Path, typer.Argument(help="study file (YAML): configs x rows x seeds")],
    workers: Annotated[
        int | None, typer.Option(min=1, help="runs at a time here (default: the study's)")
    ] = None,
    executor: Annotated[
        str,
        typer.Option(help="pool (worker processes here), slurm, or submitit-local (test a setup)"),
    ] = "pool",
    dry_run: Annotated[bool, typer.Option(help="list the runs and what each needs")] = False,
    wait: Annotated[bool, typer.Option(help="slurm: wait for the jobs to end")] = True,
) -> None:
    """Run a study: every run in its own directory; finished runs are skipped, interrupted ones
    resumed, so running it again finishes what is missing."""
    import signal

    from promptcl.sweep import command, load_study, status
    from promptcl.sweep import sweep as run_sweep

    if executor not in ("pool", "slurm", "submitit-local"):
        raise typer.BadParameter(f"--executor is pool, slurm or submitit-local, not {executor!r}")
    try:
        loaded = load_study(study)
        if dry_run:
            gpus = loaded.spec.slurm.gpus_per_job if loaded.spec.slurm and executor != "pool" else 0
            states = [status(r) for r in loaded.runs]
            for r, what in zip(loaded.runs, states, strict=True):
                typer.echo(f"{what:8} {r.name}  ({r.label}, seed {r.seed})")
                if what not in ("done", "blocked"):
                    typer.echo("         $ " + " ".join(command(r, what, gpus)))
            typer.echo(
                f"{len(states)} runs: "
                + ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states))
                + f"; output {loaded.output}"
            )
            return
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the runs as Ctrl-C
        outcomes = run_sweep(loaded, executor, workers, wait)  # type: ignore[arg-type]
    except PromptCLError as err:
        Console(stderr=True).print(f"[red]error:[/] {err}", highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        Console(stderr=True).print(
            "[yellow]interrupted:[/] finished runs are kept and interrupted ones keep their "
            f"checkpoints; run `promptcl sweep {study}` again to finish what is missing",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(130) from None
    if executor == "slurm" and not wait:
        typer.echo(
            "jobs submitted; `promptcl sweep` of the same file again (or with --dry-run) shows "
            "what is finished, and submits only what is missing"
        )
        return
    failed = [o for o in outcomes if o.state == "failed"]
    done = sum(o.state != "failed" for o in outcomes)
    typer.echo(
        f"{done} of {len(loaded.runs)} runs finished; report: promptcl report {loaded.output}"
    )
    if failed:
        typer.echo(f"{len(failed)} failed:")
        for o in failed:
            typer.echo(f"  {o.run.name}: {o.error}")
        raise typer.Exit(1)


@app.command()
def report(
    paths: Annotated[
        list[Path], typer.Argument(help="run directories, study outputs or folders of runs")
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="folder of the report")] = Path("report"),
    tsne: Annotated[
        bool, typer.Option(help="t-SNE of the instance prompts (rebuilds each method once)")
    ] = True,
    title: Annotated[str | None, typer.Option(help="the HTML page's title")] = None,
) -> None:
    """Compare runs from their directories: a table (Markdown, CSV, LaTeX) of FAA, CAA, FM, BWF
    and seconds (mean and std over seeds), figures (PNG, SVG) and one self-contained HTML page."""
    from promptcl.report import write_report

    try:
        made = write_report(paths, out, tsne=tsne, title=title, echo=typer.echo)
    except (PromptCLError, FileNotFoundError) as err:
        Console(stderr=True).print(f"[red]error:[/] {err}", highlight=False)
        raise typer.Exit(2) from None
    typer.echo((made.out / "comparison.md").read_text())
    for line in made.skipped:
        typer.echo(f"not drawn: {line}")
    typer.echo(f"{len(made.figures)} figures in {made.out / 'figures'}; page: {made.html}")


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
