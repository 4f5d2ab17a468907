"""Checkpoints: a run killed mid-epoch and resumed ends exactly like an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

import promptcl
from promptcl.collectives import tensors
from promptcl.errors import CheckpointError

FINETUNE = {"name": "finetune", "epochs": 3, "batch_size": 8, "lr": 1e-3}
# Augmented, with the query cache: the queries cached in a task's first epoch must survive.
CACHED_CODA = {
    "name": "coda_prompt", "num_components": 30, "layers": [0, 1], "epochs": 3,
    "batch_size": 8, "query_cache": True,
}  # fmt: skip


def config(tiny_run, out, method=FINETUNE):
    return tiny_run(method, data={"augment": True}, output={"dir": str(out)})


# As the reference run in this process (tests/conftest.py): the same thread count, the same floats.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def promptcl_cli(*args):
    return [sys.executable, "-m", "promptcl", "run", *args]


@pytest.mark.parametrize("method", [FINETUNE, CACHED_CODA], ids=["finetune", "cached-coda"])
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tiny_run, tmp_path, method):
    reference = promptcl.run(config(tiny_run, tmp_path / "ref", method), quiet=True)

    cfg = config(tiny_run, tmp_path / "killed", method)
    cfg_file = tmp_path / "killed.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "killed" / "log.jsonl"
    proc = subprocess.Popen(
        promptcl_cli(str(cfg_file), "--quiet"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ONE_THREAD,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        # Wait until task 1 has finished an epoch: the process is then inside a later epoch.
        if log.exists() and any(
            json.loads(line)["task"] == 1 for line in log.read_text().splitlines()
        ):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (
        not (tmp_path / "killed" / "metrics.json").exists()
        or json.loads((tmp_path / "killed" / "metrics.json").read_text())["after_task"] < 2
    )

    done = subprocess.run(
        promptcl_cli("--resume", str(tmp_path / "killed"), "--quiet"),
        capture_output=True,
        env=ONE_THREAD,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    resumed = np.genfromtxt(
        tmp_path / "killed" / "accuracy_matrix.csv", delimiter=",", skip_header=1
    )[:, 1:]
    np.testing.assert_array_equal(resumed, np.round(reference.accuracy, 4))
    state, expected = (
        tensors(torch.load(d / "checkpoint.pt", weights_only=True)["method"])
        for d in (tmp_path / "killed", tmp_path / "ref")
    )
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_resume_of_a_finished_run_changes_nothing(tiny_run, tmp_path):
    first = promptcl.run(config(tiny_run, tmp_path / "r"), quiet=True)
    again = promptcl.resume(tmp_path / "r", quiet=True)
    np.testing.assert_array_equal(first.accuracy, again.accuracy)


def test_corrupt_checkpoint_is_refused_with_a_clear_message(tiny_run, tmp_path):
    promptcl.run(config(tiny_run, tmp_path / "r"), quiet=True)
    ckpt = tmp_path / "r" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        promptcl.resume(tmp_path / "r", quiet=True)


def test_checkpoint_of_another_method_is_refused(tiny_run, tmp_path):
    promptcl.run(config(tiny_run, tmp_path / "r"), quiet=True)
    cfg = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    cfg["method"] = {"name": "linear_probe"}
    (tmp_path / "r" / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match="written by method 'finetune'"):
        promptcl.resume(tmp_path / "r", quiet=True)


def test_checkpoints_hold_only_tensors_and_plain_values(tiny_run, tmp_path):
    promptcl.run(config(tiny_run, tmp_path / "r"), quiet=True)
    payload = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert payload["position"] == {"task": 2, "phase": -1, "epochs_done": 0}
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path / "r"))
