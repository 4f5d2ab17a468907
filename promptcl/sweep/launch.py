"""Running a study's runs: each in a process of its own, locally or as a Slurm job (submitit).

Whatever runs a run (a local worker, a job on a node, a job requeued after a timeout) looks at its
directory first and does what is missing: nothing for a complete run, ``promptcl run --resume``
for one with a checkpoint, a fresh start otherwise (over the files of a run killed before its
first checkpoint, ``output.overwrite``, which replaces a run's files and keeps any other). A run
asking for several GPUs (``slurm.gpus_per_job > 1``) runs under torchrun inside its job. A run
that fails is reported with its log; the other runs go on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from promptcl.errors import ConfigError
from promptcl.report.runs import progress
from promptcl.sweep.study import MANIFEST, Run, Slurm, Study

Executor = Literal["pool", "slurm", "submitit-local"]
LOGS = "logs"


def status(run: Run) -> str:
    """done, resume (it has a checkpoint), restart (started, no checkpoint), blocked (the folder
    holds files that are not a run's) or new."""
    d = run.dir
    if not d.exists():
        return "new"
    done, total, complete = progress(d)
    if complete:
        return "done"
    if (d / "checkpoint.pt").is_file():
        return "resume"
    if (d / "run.json").is_file() or (d / "config.yaml").is_file() or not any(d.iterdir()):
        return "restart"
    return "blocked"


def command(run: Run, what: str, gpus: int = 0) -> list[str]:
    """The command that runs (``what``: new, restart) or resumes (resume) ``run``."""
    launcher = [sys.executable, "-m", "promptcl", "run"]
    if gpus > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launcher += ["--nproc-per-node", str(gpus), "-m", "promptcl", "run"]
    if what == "resume":
        return [*launcher, "--resume", str(run.dir), "--quiet"]
    args = [str(run.config_path.resolve())] if run.config_path else []
    sets = [*run.overrides, f"output.dir={run.dir}"]
    if what == "restart":
        sets.append("output.overwrite=true")
    return [*launcher, *args, *(a for s in sets for a in ("--set", s)), "--quiet"]


@dataclass
class RunJob:
    """What a worker or a Slurm job executes for one run (picklable, for submitit): decide what
    the run needs when it starts, run it in a child process, log to ``log``."""

    run: Run
    log: Path
    threads: int | None = None
    gpus: int = 0

    def __call__(self) -> str:
        what = status(self.run)
        if what == "done":
            return "done"
        if what == "blocked":
            raise RuntimeError(
                f"{self.run.dir} holds files that are not a promptcl run's: move them away"
            )
        env = dict(os.environ)
        if self.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as out:
            out.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {what}\n")
            out.flush()
            cmd = command(self.run, what, self.gpus)
            self._child = child = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env
            )
            try:
                code = child.wait()
            except BaseException:
                _stop(child)
                raise
            finally:
                self._child = None
        if code != 0:
            raise RuntimeError(f"exit status {code}; its output is in {self.log}")
        if status(self.run) != "done":
            raise RuntimeError(f"it ended without finishing; its output is in {self.log}")
        return what

    def stop(self) -> None:
        """Interrupt the run this job is running, if any."""
        child = getattr(self, "_child", None)
        if child is not None:
            _stop(child)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_child"}

    # submitit: on a timeout or preemption the job is requeued and resumes the run.
    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _stop(child: subprocess.Popen) -> None:
    """Interrupt a run as Ctrl-C would (it keeps its checkpoints), then kill it if it lingers
    (a process started in the background ignores SIGINT; its checkpoints are atomic)."""
    if child.poll() is None:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@dataclass
class Outcome:
    run: Run
    state: str  # done (before the sweep), new, resume, restart (what was done), failed, interrupted
    seconds: float = 0.0
    error: str = ""


def write_manifest(study: Study) -> None:
    """``<output>/study.json``: the study's runs with their labels, for ``promptcl report``."""
    from promptcl.engine.run_dir import _write_text

    study.output.mkdir(parents=True, exist_ok=True)
    manifest = {
        "study": study.name,
        "file": str(study.file.resolve()),
        "runs": [run.manifest() for run in study.runs],
    }
    _write_text(study.output / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def sweep(
    study: Study,
    executor: Executor = "pool",
    workers: int | None = None,
    wait_for_jobs: bool = True,
    echo=print,
) -> list[Outcome]:
    """Run what is missing of ``study``; returns one outcome per run."""
    todo: list[Run] = []
    outcomes: dict[str, Outcome] = {}
    for run in study.runs:
        what = status(run)
        if what == "done":
            outcomes[run.name] = Outcome(run, "done")
        elif what == "blocked":
            outcomes[run.name] = Outcome(
                run, "failed", error=f"{run.dir} holds files that are not a run's"
            )
        else:
            todo.append(run)
    write_manifest(study)
    workers = workers or study.spec.workers
    echo(
        f"study {study.name}: {len(study.runs)} runs, {len(study.runs) - len(todo)} finished, "
        f"{len(todo)} to run ({executor}, output {study.output})"
    )
    if executor == "pool":
        ran = _pool(study, todo, workers, echo)
    else:
        ran = _submitit(study, todo, executor, workers, wait_for_jobs, echo)
    outcomes.update({o.run.name: o for o in ran})
    return [outcomes[run.name] for run in study.runs if run.name in outcomes]


def threads_per_run(study: Study, workers: int) -> int:
    return study.spec.threads or max(1, (os.cpu_count() or 1) // workers)


def _pool(study: Study, todo: list[Run], workers: int, echo) -> list[Outcome]:
    threads = threads_per_run(study, workers)
    jobs = {run.name: RunJob(run, study.output / LOGS / f"{run.name}.log", threads) for run in todo}
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    stopping = threading.Event()

    def execute(run: Run) -> Outcome:
        began = time.perf_counter()
        try:
            what = jobs[run.name]()
            outcome = Outcome(run, what, time.perf_counter() - began)
        except Exception as err:  # noqa: BLE001 (one run's failure must not stop the others)
            state = "interrupted" if stopping.is_set() else "failed"
            outcome = Outcome(run, state, time.perf_counter() - began, str(err))
        with lock:
            outcomes.append(outcome)
            echo(_line(outcome, len(outcomes), len(todo)))
        return outcome

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(execute, run) for run in todo]
        pending: set[Future] = set(futures)
        while pending:
            _, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
    except KeyboardInterrupt:
        stopping.set()
        for f in futures:
            f.cancel()
        for job in jobs.values():
            job.stop()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return outcomes


def _line(o: Outcome, n: int, total: int) -> str:
    if o.state == "interrupted":
        return f"[{n}/{total}] {o.run.name}: interrupted after {o.seconds:.0f} s (it resumes)"
    if o.state == "failed":
        return f"[{n}/{total}] {o.run.name}: FAILED after {o.seconds:.0f} s: {o.error}"
    verb = {"resume": "resumed", "restart": "restarted", "new": "ran"}.get(o.state, o.state)
    return f"[{n}/{total}] {o.run.name}: {verb} in {o.seconds:.0f} s"


def _submitit(
    study: Study, todo: list[Run], executor: Executor, workers: int, wait_for_jobs: bool, echo
) -> list[Outcome]:
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            "the Slurm executor needs submitit: pip install 'promptcl[slurm]'"
        ) from None
    slurm = study.spec.slurm
    if executor == "slurm" and slurm is None:
        raise ConfigError("--executor slurm needs a `slurm:` section in the study file")
    gpus = slurm.gpus_per_job if slurm else 0
    if gpus and any(run.config.train.device == "cpu" for run in todo):
        raise ConfigError(
            f"slurm.gpus_per_job is {gpus} but runs of the study train on the CPU: add "
            "`set: [train.device=cuda]` to the study file"
        )
    folder = study.output / "submitit"
    try:
        ex = submitit.AutoExecutor(
            folder=folder, cluster="local" if executor != "slurm" else "slurm"
        )
    except RuntimeError as err:  # no srun: not on a Slurm cluster
        raise ConfigError(
            f"--executor slurm: {err} Run the sweep where Slurm's commands are, or try the jobs "
            "here with --executor submitit-local"
        ) from None
    params: dict[str, Any] = {"name": f"promptcl-{study.name}", "tasks_per_node": 1, "nodes": 1}
    # A job past its time limit is requeued by submitit and resumes its run (RunJob.checkpoint).
    params["timeout_min"] = (slurm or Slurm()).time
    if slurm is not None:
        params["gpus_per_node"] = gpus
        if slurm.cpus_per_task:
            params["cpus_per_task"] = slurm.cpus_per_task
        if slurm.mem_gb:
            params["mem_gb"] = slurm.mem_gb
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(slurm, key):
                params[f"slurm_{key}"] = getattr(slurm, key)
        if slurm.setup:
            params["slurm_setup"] = slurm.setup
        if slurm.additional:
            params["slurm_additional_parameters"] = slurm.additional
    ex.update_parameters(**params)
    threads = (slurm.cpus_per_task if slurm else None) or threads_per_run(study, workers)
    logs = study.output / LOGS
    live: list[tuple[Run, Any, float]] = []
    outcomes: list[Outcome] = []
    queue = list(todo)
    limit = workers if executor == "submitit-local" else len(todo)  # Slurm schedules its own
    try:
        while queue or live:
            while queue and len(live) < limit:
                run = queue.pop(0)
                job = ex.submit(RunJob(run, logs / f"{run.name}.log", threads, gpus))
                echo(f"submitted {run.name}: job {job.job_id}")
                live.append((run, job, time.perf_counter()))
            if not wait_for_jobs:
                queue and echo(f"{len(queue)} runs not submitted")  # (only with a limit)
                return outcomes
            time.sleep(0.5)
            for item in [x for x in live if x[1].done()]:
                live.remove(item)
                run, job, began = item
                try:
                    outcome = Outcome(run, job.result(), time.perf_counter() - began)
                except Exception as err:  # noqa: BLE001
                    outcome = Outcome(run, "failed", time.perf_counter() - began, _last_line(err))
                outcomes.append(outcome)
                echo(_line(outcome, len(outcomes), len(todo)))
    except KeyboardInterrupt:
        for _, job, _ in live:
            job.cancel(check=False)
        raise
    return outcomes


def _last_line(err: Exception) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
