"""Studies: a sweep killed midway and run again finishes only what was missing, a failing run
does not stop the others, submitit's local executor makes the same run directories as the local
pool, and a study file's mistakes are named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from promptcl.cli import app
from promptcl.errors import ConfigError
from promptcl.sweep import command, load_study, status, sweep

# The reduced stream of the end-to-end tests (random tiny ViT, 3 tasks of 4 classes).
BASE = {
    "seed": 0,
    "data": {"name": "synth-shapes-10", "task_sizes": [4, 4, 4], "subsample": 24, "augment": False},
    "backbone": {"name": "tiny-vit", "pretrained": False},
    "method": {"name": "finetune", "epochs": 6, "batch_size": 8, "lr": 1e-3},
    "train": {"eval_batch_size": 128},
}
ENTRIES = [
    {"name": "ncm", "path": "base.yaml", "set": ["method.name=simplecil"]},
    # fails when it builds its data: no CIFAR-100 there
    {"name": "broken", "path": "base.yaml", "set": ["data.name=cifar100", "data.root=/nowhere"]},
    {"name": "ft", "path": "base.yaml"},  # the run the kill interrupts
    {"name": "probe", "path": "base.yaml", "set": ["method.name=linear_probe", "method.epochs=1"]},
]


def write_study(folder: Path, output: str, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(BASE))
    study = {"configs": ENTRIES, "seeds": [0], "output": output, "threads": 1, **extra}
    path = folder / f"{output}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def quiet(*args) -> None:
    pass


@pytest.fixture(scope="module")
def killed_and_rerun(tmp_path_factory):
    """The study swept by `promptcl sweep`, killed (the sweep and its run, SIGKILL) while the
    third run trains, then swept again."""
    folder = tmp_path_factory.mktemp("study")
    path = write_study(folder, "pool")
    study = load_study(path)
    ncm, broken, ft, probe = study.runs
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "promptcl", "sweep", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # its own process group: the kill reaches the run it started
    )
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if (ft.dir / "checkpoint.pt").is_file():  # an epoch of it is behind it (atomic write)
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {
        "states": [status(r) for r in study.runs],
        "ncm": mtimes(ncm.dir),
        "ft": mtimes(ft.dir),
    }
    outcomes = sweep(load_study(path), echo=quiet)
    return study, before, outcomes


def test_a_killed_sweep_run_again_finishes_only_what_was_missing(killed_and_rerun):
    study, before, outcomes = killed_and_rerun
    ncm, broken, ft, probe = study.runs
    assert before["states"] == ["done", "new", "resume", "new"]
    assert [o.state for o in outcomes] == ["done", "failed", "resume", "new"]
    assert all(status(r) == "done" for r in (ncm, ft, probe))
    assert mtimes(ncm.dir) == before["ncm"]  # the finished run's files are untouched
    # The interrupted run was resumed, not started again: its first files are the same ones.
    assert (ft.dir / "run.json").stat().st_mtime_ns == before["ft"]["run.json"]
    assert "resume" in (study.output / "logs" / f"{ft.name}.log").read_text()
    manifest = json.loads((study.output / "study.json").read_text())
    assert [r["label"] for r in manifest["runs"]] == ["ncm", "broken", "ft", "probe"]


def test_a_failing_run_is_reported_and_the_others_go_on(killed_and_rerun):
    study, _, outcomes = killed_and_rerun
    failed = [o for o in outcomes if o.state == "failed"]
    assert [o.run.label for o in failed] == ["broken"]
    log = study.output / "logs" / f"{failed[0].run.name}.log"
    assert str(log) in failed[0].error
    assert "cifar" in log.read_text().lower()  # its own error, kept in its log


def test_submitit_local_executor_makes_the_same_run_directories(killed_and_rerun, tmp_path):
    pytest.importorskip("submitit", reason="the Slurm extra: pip install 'promptcl[slurm]'")
    pool, _, _ = killed_and_rerun
    path = write_study(pool.file.parent, "submitit")
    outcomes = sweep(load_study(path), executor="submitit-local", workers=3, echo=quiet)
    assert [o.state for o in outcomes] == ["new", "failed", "new", "new"]
    jobs = load_study(path)
    for a, b in zip(pool.runs, jobs.runs, strict=True):
        assert a.name == b.name
        if a.label == "broken":
            assert not b.dir.exists()
            continue
        assert (b.dir / "accuracy_matrix.csv").read_text() == (
            a.dir / "accuracy_matrix.csv"
        ).read_text()
        config_a, config_b = (yaml.safe_load((r.dir / "config.yaml").read_text()) for r in (a, b))
        assert config_a.pop("output")["dir"] != config_b.pop("output")["dir"]
        assert config_a == config_b


def test_run_folders_follow_config_row_and_seed(tmp_path):
    path = write_study(tmp_path, "grid", overrides={"a": [], "b": ["method.lr=0.01"]})
    raw = yaml.safe_load(path.read_text())
    raw["seeds"] = [0, 1]
    path.write_text(yaml.safe_dump(raw))
    names = [r.name for r in load_study(path).runs]
    assert names == [r.name for r in load_study(path).runs]  # deterministic
    assert len(set(names)) == len(names) == 4 * 2 * 2
    assert names[0].startswith("ncm-a-synth-shapes-10-seed0-")
    # A setting that changes the run changes its folder; where it runs does not.
    raw["set"] = ["method.batch_size=4"]
    path.write_text(yaml.safe_dump(raw))
    assert [r.name for r in load_study(path).runs][0] != names[0]
    raw["set"] = ["train.eval_batch_size=64"]
    path.write_text(yaml.safe_dump(raw))
    assert [r.name for r in load_study(path).runs][0] == names[0]


def test_unknown_study_key_is_named_with_the_fix(tmp_path):
    path = write_study(tmp_path, "typo", seed=[1])
    with pytest.raises(ConfigError, match=r"unknown study key 'seed': did you mean 'seeds'"):
        load_study(path)
    raw = yaml.safe_load(path.read_text())
    del raw["seed"]
    raw["configs"][0]["sett"] = []
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"'configs.0.sett': did you mean 'set'"):
        load_study(path)
    raw["configs"][0].pop("sett")
    raw["slurm"] = {"partiton": "gpu"}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"'slurm.partiton': did you mean 'partition'"):
        load_study(path)


def test_dry_run_lists_the_runs_and_runs_nothing(tmp_path):
    path = write_study(tmp_path, "dry")
    result = CliRunner().invoke(app, ["sweep", str(path), "--dry-run"], terminal_width=300)
    assert result.exit_code == 0, result.output
    for run in load_study(path).runs:
        assert f"new      {run.name}" in result.output
    assert "4 runs: 4 new" in result.output
    assert not (tmp_path / "dry").exists()


def test_gpus_per_job_with_cpu_runs_is_refused_before_submitting(tmp_path):
    path = write_study(tmp_path, "gpu", slurm={"gpus_per_job": 2})
    with pytest.raises(ConfigError, match=r"train.device=cuda"):
        sweep(load_study(path), executor="slurm", echo=quiet)


def test_slurm_jobs_carry_the_study_resources_and_run_torchrun(tmp_path, monkeypatch):
    """Submitted to a stand-in sbatch (no Slurm here): one job per run, with the study's
    resources, and the job runs the run under torchrun with its GPUs."""
    pytest.importorskip("submitit", reason="the Slurm extra: pip install 'promptcl[slurm]'")
    import pickle

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "srun").write_text("#!/bin/sh\nexit 0\n")
    n = tmp_path / "n"
    (bin_ / "sbatch").write_text(
        f'#!/bin/sh\necho x >> {n}; k=$(wc -l < {n}); cp "$1" {tmp_path}/sbatch-$k.sh\n'
        'echo "Submitted batch job 10$k"\n'
    )
    for f in bin_.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:{os.environ['PATH']}")
    slurm = {"partition": "gpu", "gpus_per_job": 2, "time": 30, "setup": ["module load cuda"]}
    path = write_study(tmp_path, "slurm", slurm=slurm, set=["train.device=cuda"])
    study = load_study(path)
    assert sweep(study, executor="slurm", wait_for_jobs=False, echo=quiet) == []
    scripts = sorted(tmp_path.glob("sbatch-*.sh"))
    assert len(scripts) == len(study.runs) == 4
    text = scripts[0].read_text()
    for line in ("--partition=gpu", "--gpus-per-node=2", "--time=30", "module load cuda"):
        assert line in text
    job = pickle.loads((study.output / "submitit" / "101_submitted.pkl").read_bytes()).function
    assert job.run.name == study.runs[0].name and job.gpus == 2
    assert "torch.distributed.run" in command(job.run, "new", job.gpus)


def test_several_gpus_run_under_torchrun(tmp_path):
    run = load_study(write_study(tmp_path, "cmd")).runs[0]
    assert command(run, "new", gpus=1)[1:4] == ["-m", "promptcl", "run"]
    multi = command(run, "resume", gpus=4)
    assert multi[1:3] == ["-m", "torch.distributed.run"]
    assert multi[multi.index("--nproc-per-node") + 1] == "4"
    assert multi[-3:] == ["--resume", str(run.dir), "--quiet"]
