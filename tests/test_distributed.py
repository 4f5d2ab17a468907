"""Two CPU processes (torchrun, gloo) train a run as one process does, and their runs resume in one.

One torchrun launch (tests/ddp_worker.py) makes every two-process run these tests compare with
single-process runs made here. The stream: synth-shapes-10, 3 tasks of 3 classes, 23 training
images per class (69 per task), so that a global batch of 16 leaves a last batch of 5, split 3/2.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import promptcl

WORKER = Path(__file__).with_name("ddp_worker.py")
# The worker runs as a script, so the checkout's package must be importable without an install.
ROOT = str(WORKER.parent.parent)
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
}
TEST_SAMPLES = 60  # per task: 3 classes x 20 test images

DATA = {"name": "synth-shapes-10", "task_sizes": [3, 3, 3], "subsample": 23, "augment": False}
# SGD, not Adam: Adam divides the gradient by its own scale, which would hide a gradient that is
# summed instead of averaged over processes, or weighted wrongly on an uneven last batch.
CODA = {
    "name": "coda_prompt", "num_components": 30, "layers": [0, 1], "epochs": 2, "batch_size": 16,
    "optimizer": "sgd", "lr": 0.05, "schedule": "constant",
}  # fmt: skip
HIDE = {
    "name": "hide_prompt", "epochs": 0, "batch_size": 16, "tii_epochs": 2, "crct_epochs": 2,
    "n_centroids": 3, "prompt_layers": [0, 1],
}  # fmt: skip
HASH = {
    "name": "hash", "pool_size": 4, "prompt_layers": [0, 1], "epochs": 2, "batch_size": 16,
    "optimizer": "sgd", "lr": 0.05, "tii_epochs": 1, "crct_epochs": 1, "n_centroids": 2,
}  # fmt: skip
RUNS = {
    "coda": CODA,
    "coda_cached": {**CODA, "query_cache": True},
    "coda_stopped": CODA,
    "simplecil": {"name": "simplecil"},
    "hide": HIDE,
    "hash": HASH,
    "unreduced": {"name": "unreduced_means"},
}


def config(method: dict, out: Path) -> dict:
    return {
        "seed": 0,
        "data": DATA,
        "backbone": {"name": "tiny-vit", "pretrained": False},
        "method": method,
        "train": {"eval_batch_size": 32},
        "output": {"dir": str(out)},
    }


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> Path:
    """The folder of the two-process runs, one per entry of ``RUNS``."""
    out = tmp_path_factory.mktemp("two")
    for name, method in RUNS.items():
        (out / f"{name}.yaml").write_text(yaml.safe_dump(config(method, out / name)))
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(WORKER), str(out)],
        capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def one(name: str, tmp_path: Path):
    return promptcl.run(config(RUNS[name], tmp_path / name), quiet=True)


def matrix(run_dir: Path) -> np.ndarray:
    return np.genfromtxt(run_dir / "accuracy_matrix.csv", delimiter=",", skip_header=1)[:, 1:]


def method_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["method"]


def assert_same_training(a: Path, b: Path) -> None:
    """Two runs that differ only in how the gradient of each global batch was summed.

    DDP averages the two processes' gradients of their half batches (the 3/2 split of the last
    batch weighted by its share), which is the gradient of the global batch up to float rounding
    (~1e-7 relative). Over 10 SGD steps per task the parameters then differ by ~1e-7, and a test
    prediction can only change if its top two logits are that close. Tolerances: parameters within
    1e-5, predictions 98% the same, and each accuracy within one test sample (100/60 points).
    """
    pa, pb = method_state(a), method_state(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], atol=1e-5, rtol=0, msg=k)
    preds = [load_file(str(d / "predictions" / "after_task_2.safetensors")) for d in (a, b)]
    assert torch.equal(preds[0]["targets"], preds[1]["targets"])  # same samples, same order
    agree = (preds[0]["predictions"] == preds[1]["predictions"]).float().mean()
    assert agree >= 0.98
    np.testing.assert_allclose(matrix(a), matrix(b), atol=100 / TEST_SAMPLES + 1e-3)


def test_two_processes_train_like_one_with_the_same_global_batch(two, tmp_path):
    reference = one("coda", tmp_path)
    assert_same_training(two / "coda", reference.run_dir)
    # the runs learned something: chance after the last task is 1/9 (9 classes seen)
    assert reference.metrics["faa"] > 2 * 100 / 9


def test_a_run_checkpointed_by_two_processes_resumes_in_one(two, tmp_path):
    stopped = two / "coda_stopped"
    position = torch.load(stopped / "checkpoint.pt", weights_only=True)["position"]
    assert position == {"task": 1, "phase": 0, "epochs_done": 1}  # stopped in the middle of task 1
    assert not (stopped / "predictions" / "after_task_1.safetensors").exists()
    promptcl.resume(stopped, quiet=True)
    assert_same_training(stopped, two / "coda")
    assert_same_training(stopped, one("coda", tmp_path).run_dir)


def test_end_task_statistics_do_not_depend_on_the_number_of_processes(two, tmp_path):
    """Each process reads half the task's data at the end of a task; the statistics are exactly
    those of one process: SimpleCIL's float64 class sums are summed over processes, HiDe-Prompt
    gathers the features, then fits k-means and trains its task-inference head on all of them."""
    for name in ("simplecil", "hide"):
        single = method_state(one(name, tmp_path).run_dir)
        double = method_state(two / name)
        assert single.keys() == double.keys()
        differ = [k for k in single if not torch.equal(single[k], double[k])]
        assert differ == [], name
        np.testing.assert_array_equal(matrix(two / name), matrix(tmp_path / name))


def test_a_method_that_does_not_reduce_its_statistics_is_stopped(two):
    message = (two / "unreduced.error").read_text()
    assert "different values of ['prototypes']" in message
    assert "all_reduce_sum" in message


def test_hash_counts_expert_activations_over_all_processes(two, tmp_path):
    """Each process routes half of every global batch; the activation counts are summed over
    processes at every step, so they equal one process's counts (every Top-K choice of every
    sample: 3 tasks x 69 samples x 2 epochs x K = 2), and so does the rest of the training."""
    reference = one("hash", tmp_path).run_dir
    counts = method_state(two / "hash")["counts"]
    assert int(counts.sum()) == 3 * 69 * 2 * 2
    assert torch.equal(counts, method_state(reference)["counts"])
    assert_same_training(two / "hash", reference)


def test_the_query_cache_is_shared_so_every_process_holds_and_saves_all_of_it(two, tmp_path):
    """Each process caches the queries of its own slices; at every epoch's end they exchange
    them. Were they not, the processes would end the task with different caches (the trainer
    stops such a run) and the checkpoint would hold half of one."""
    cached = method_state(two / "coda_cached")["query_cache._extra_state"]
    assert len(cached["keys"]) == 3 * 23  # every training sample of the last task
    assert_same_training(two / "coda_cached", one("coda_cached", tmp_path).run_dir)
