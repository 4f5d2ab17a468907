"""The command line: run, list, and errors printed for people (no tracebacks)."""

import json

import yaml
from typer.testing import CliRunner

from promptcl.cli import app

runner = CliRunner()


def test_list_shows_every_kind():
    result = runner.invoke(app, ["list"], terminal_width=200)
    assert result.exit_code == 0
    for name in (
        "simplecil",
        "finetune",
        "joint",
        "linear_probe",
        "tiny-vit",
        "vit-b16-in21k",
        "clip-vit-l14",
        "cifar100",
        "imagenet-r",
        "synth-shapes-10",
    ):
        assert name in result.output


def test_run_with_overrides_writes_metrics(tiny_run, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run({"name": "simplecil"})))
    out = tmp_path / "cli-run"
    result = runner.invoke(
        app, ["run", str(cfg), "--set", f"output.dir={out}", "--set", "seed=3", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert "FAA" in result.output
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 3
    assert "faa" in json.loads((out / "metrics.json").read_text())


def test_misspelled_key_is_a_clean_error(tiny_run, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run({"name": "simplecil", "epohcs": 1})))
    result = runner.invoke(app, ["run", str(cfg)])
    assert result.exit_code == 2
    assert "unknown config key 'method.epohcs'" in result.output
    assert "did you mean 'method.epochs'" in result.output
    assert "Traceback" not in result.output


def test_missing_dataset_root_is_a_clean_error(tiny_run, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            tiny_run({"name": "simplecil"}, data={"name": "cub200", "root": str(tmp_path / "nope")})
        )
    )
    result = runner.invoke(app, ["run", str(cfg)], terminal_width=400)
    assert result.exit_code == 2
    assert "CUB_200_2011" in result.output and "data.root" in result.output


def test_default_job_runs_coda_prompt(tmp_path):
    """`promptcl run` with no CONFIG, cut to 2 tasks of 10 classes and 2 steps per epoch here."""
    out = tmp_path / "default"
    cut = ["data.task_sizes=[10, 10]", "method.epochs=1", "train.max_steps_per_epoch=2"]
    args = ["run", "--set", f"output.dir={out}", *[a for c in cut for a in ("--set", c)]]
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "FAA" in result.output and "CAA" in result.output and "FM" in result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (
        saved["method"]["name"] == "coda_prompt" and saved["backbone"]["name"] == "tiny-synth-vit"
    )
    assert len((out / "accuracy_matrix.csv").read_text().splitlines()) == 3  # header + 2 tasks
