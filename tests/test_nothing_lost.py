"""Nothing lost, nothing silently wrong: run directories that belong to promptcl, exact resume
through any interruption, fingerprints that name what differs, and errors written for people."""

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import promptcl
from promptcl.cli import app
from promptcl.collectives import tensors
from promptcl.config import build_config, load_config
from promptcl.engine import checkpoint
from promptcl.engine.progress import Console
from promptcl.engine.step import Stepper
from promptcl.engine.trainer import Trainer
from promptcl.errors import CheckpointError, ConfigError, DataError

SIMPLE = {"name": "linear_probe", "epochs": 1, "batch_size": 16}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# -- the run directory ------------------------------------------------------------------------
def test_a_finished_run_without_checkpoints_is_refused_and_left_byte_identical(tiny_run):
    config = tiny_run(SIMPLE, output={"checkpoint": False})
    first = promptcl.run(config, quiet=True)
    before = snapshot(first.run_dir)
    assert "run.json" in before and "checkpoint.pt" not in before
    with pytest.raises(ConfigError, match="holds an earlier run"):
        promptcl.run(config, quiet=True)
    assert snapshot(first.run_dir) == before


def test_a_folder_of_other_files_is_refused_and_overwrite_keeps_them(tiny_run, tmp_path):
    out = tmp_path / "mine"
    (out / "predictions").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes")
    (out / "predictions" / "after_task_7.safetensors").write_bytes(b"old run")
    with pytest.raises(ConfigError, match=r"holds files \(notes.txt, predictions\)"):
        promptcl.run(tiny_run(SIMPLE, output={"dir": str(out)}), quiet=True)
    assert (out / "notes.txt").read_text() == "my notes"
    promptcl.run(tiny_run(SIMPLE, output={"dir": str(out), "overwrite": True}), quiet=True)
    assert (out / "notes.txt").read_text() == "my notes"  # not a run's file: kept
    predictions = sorted(p.name for p in (out / "predictions").iterdir())
    assert predictions == [f"after_task_{t}.safetensors" for t in range(3)]  # the old one went


def test_files_are_readable_json_is_valid_and_modes_follow_the_umask(tiny_run):
    result = promptcl.run(tiny_run(SIMPLE), quiet=True)
    metrics = json.loads(
        (result.run_dir / "metrics.json").read_text(), parse_constant=lambda c: 1 / 0
    )
    assert metrics["skipped_files"] == 0 and "faa" in metrics
    umask = os.umask(0)
    os.umask(umask)
    for path in (result.run_dir / "checkpoint.pt", result.run_dir / "predictions" / "after_task_0.safetensors"):  # fmt: skip
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_an_unwritable_run_directory_is_refused_before_any_training(tiny_run, monkeypatch):
    config = build_config(tiny_run(SIMPLE))
    promptcl.run(config, quiet=True)
    write_bytes = Path.write_bytes

    def unwritable(path, data):  # root writes anywhere: fail the directory's write probe instead
        if path.name.startswith(".write-test"):
            raise PermissionError(13, "Permission denied")
        return write_bytes(path, data)

    steps = []
    monkeypatch.setattr(Path, "write_bytes", unwritable)
    monkeypatch.setattr(Stepper, "__call__", lambda *a, **k: steps.append(1))
    with pytest.raises(ConfigError, match="is not writable"):
        promptcl.resume(config.output.dir, quiet=True)
    with pytest.raises(ConfigError, match="is not writable"):
        promptcl.run(config.model_copy(update={"output": config.output.model_copy(update={"overwrite": True})}), quiet=True)  # fmt: skip
    assert steps == []


def test_an_output_dir_below_a_file_is_named(tiny_run, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        promptcl.run(tiny_run(SIMPLE, output={"dir": str(tmp_path / "file" / "run")}), quiet=True)


# -- resume -----------------------------------------------------------------------------------
def test_harmless_changes_resume_and_a_real_difference_is_named(tiny_run, tmp_path):
    config = tiny_run({**SIMPLE, "epochs": 2})
    promptcl.run(config, quiet=True)
    run_dir = Path(config["output"]["dir"])
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved["train"]["eval_batch_size"] = 64
    saved["data"]["root"] = str(tmp_path / "moved")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    promptcl.resume(run_dir, quiet=True)  # accepted
    saved["method"]["lr"] = 0.5
    saved["data"]["subsample"] = 12
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(CheckpointError) as err:
        promptcl.resume(run_dir, quiet=True)
    assert "method.lr: '(default)' -> 0.5" in str(err.value)
    assert "data.subsample: 24 -> 12" in str(err.value)


def test_a_random_bytes_checkpoint_gets_promptcls_advice_not_torchs(tiny_run):
    result = promptcl.run(tiny_run(SIMPLE), quiet=True)
    (result.run_dir / "checkpoint.pt").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="corrupt") as err:
        promptcl.resume(result.run_dir, quiet=True)
    assert "weights_only" not in str(err.value)


def test_resuming_a_finished_run_says_it_is_complete(tiny_run, capsys):
    result = promptcl.run(tiny_run(SIMPLE), quiet=True)
    promptcl.resume(result.run_dir)
    assert "the run is complete" in capsys.readouterr().err


CACHED_CODA = {  # augmented and cached: the cache must travel with the checkpoint
    "name": "coda_prompt", "num_components": 30, "layers": [0, 1], "epochs": 2,
    "batch_size": 16, "query_cache": True,
}  # fmt: skip


class Killed(BaseException):
    """A kill: nothing after it runs in this process."""


def test_a_run_killed_at_random_moments_in_a_row_resumes_to_the_uninterrupted_result(
    tiny_run, tmp_path, monkeypatch
):
    """Augmented CODA-Prompt with the query cache, killed five times: in training steps, while a
    checkpoint is half written, inside end_task; resumed after each kill."""
    from promptcl.methods.coda_prompt import CodaPrompt

    def config(out: Path) -> dict:
        return tiny_run(CACHED_CODA, data={"augment": True}, output={"dir": str(out)})

    reference = promptcl.run(config(tmp_path / "ref"), quiet=True)
    step, save, end_task = Stepper.__call__, checkpoint.torch.save, CodaPrompt.end_task
    calls: dict[str, int] = {}
    kill_at: dict[str, int] = {}

    def count(kind: str) -> None:
        calls[kind] = calls.get(kind, 0) + 1
        if calls[kind] == kill_at.get(kind):
            raise Killed

    def killing_step(self, *args, **kwargs):
        count("step")
        return step(self, *args, **kwargs)

    def killing_save(payload, f, *args, **kwargs):
        if calls.get("save", 0) + 1 == kill_at.get("save"):
            f.write(b"half a checkpoint")  # then dies while writing
        count("save")
        return save(payload, f, *args, **kwargs)

    def killing_end_task(self, task, loader):
        end_task(self, task, loader)
        count("end_task")

    monkeypatch.setattr(Stepper, "__call__", killing_step)
    monkeypatch.setattr(checkpoint.torch, "save", killing_save)
    monkeypatch.setattr(CodaPrompt, "end_task", killing_end_task)
    rng = random.Random(0)
    out = tmp_path / "killed"
    moments = [  # 3 tasks x 2 epochs x 6 steps
        {"step": rng.randint(7, 18)},  # in task 1 (task 0 is checkpointed)
        {"save": 2},  # while writing a checkpoint: the one before it stays
        {"step": rng.randint(2, 6)},  # again in task 1
        {"end_task": 1},  # inside end_task
        {"step": rng.randint(1, 12)},  # in task 2
    ]
    for i, moment in enumerate(moments):
        calls.clear()
        kill_at.clear()
        kill_at.update(moment)
        with pytest.raises(Killed):
            promptcl.resume(out, quiet=True) if i else promptcl.run(config(out), quiet=True)
    kill_at.clear()
    resumed = promptcl.resume(out, quiet=True)
    np.testing.assert_array_equal(resumed.accuracy, reference.accuracy)
    state, expected = (
        tensors(torch.load(d / "checkpoint.pt", weights_only=True)["method"])
        for d in (out, tmp_path / "ref")
    )
    assert "query_cache._extra_state.values" in state  # the cache is checkpointed
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


# -- errors for people ------------------------------------------------------------------------
def test_yaml_syntax_errors_name_the_file_or_the_override(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method:\n  name: l2p\n  lr: [0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML: line \d+, column \d+"):
        load_config(bad)
    with pytest.raises(ConfigError, match="override 'method.lr=\\[0.1': the value is not valid"):
        load_config(None, ["method.lr=[0.1"])


def test_every_misspelled_key_is_reported_with_a_negative_seed_and_a_bad_device():
    with pytest.raises(ConfigError) as err:
        build_config(
            {
                "seed": -1,
                "data": {"nmae": "x"},
                "method": {"name": "l2p", "lrr": 1},
                "train": {"device": "cdua"},
            }
        )
    message = str(err.value)
    for part in ("'data.nmae'", "'method.lrr'", "seed: Input should be greater than or equal to 0", "'cdua' is not a torch device"):  # fmt: skip
        assert part in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only machine")
def test_cuda_on_a_machine_without_it_is_named(tiny_run):
    config = build_config(tiny_run(SIMPLE, train={"device": "cuda"}))
    with pytest.raises(ConfigError, match="no CUDA device: set train.device=cpu"):
        Trainer(config, Console(quiet=True))


def test_ctrl_c_tells_how_to_resume(tiny_run, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(promptcl, "run", interrupted)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_run(SIMPLE)))
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 130
    assert f"promptcl run --resume {tmp_path / 'run'}" in result.output


def test_damaged_files_left_out_are_counted_in_the_log_and_the_metrics(tmp_path):
    from PIL import Image

    for split, n in (("train", 6), ("test", 3)):
        for c, name in enumerate(("ant", "bee")):
            for i in range(n):
                path = tmp_path / "data" / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((16, 16, 3), 40 * c + i, dtype=np.uint8)).save(path)
    bad = tmp_path / "data" / "train" / "bee" / "5.png"
    bad.write_bytes(bad.read_bytes()[:30])  # a truncated PNG
    config = {
        "data": {"name": "folder", "root": str(tmp_path / "data"), "num_tasks": 1},
        "backbone": {"name": "tiny-vit", "pretrained": False},
        "method": {"name": "simplecil"},
        "output": {"dir": str(tmp_path / "run")},
    }
    with pytest.raises(DataError, match="5.png"):  # named before any training
        promptcl.run(config, quiet=True)
    config["data"]["on_bad_file"] = "skip"
    config["output"]["overwrite"] = True
    with pytest.warns(UserWarning, match="1"):
        result = promptcl.run(config, quiet=True)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["skipped_files"] == 1
    first = json.loads((result.run_dir / "log.jsonl").read_text().splitlines()[0])
    assert first == {"skipped_files": 1, "paths": [str(bad)]}
