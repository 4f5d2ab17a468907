"""Golden runs: every registered method, and the default job, compute what they computed before
the "Foundation, second floor" refactor, bit for bit (``tests/golden/record.py`` made them).

The record holds the accuracy matrix and a sha256 of every tensor of the final method state.
Tensors that did not exist when it was recorded (new state, such as a generator's) are not
compared. On another machine kind (torch version or CPU capability) float results may differ in
the last bits, so there the state is not compared and the accuracy matrix must agree to 0.5 points.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "golden"))
from record import DEFAULT_JOB, GOLDEN, RUNS, machine, record  # noqa: E402

RECORDED = json.loads(GOLDEN.read_text())
SAME_MACHINE = RECORDED["machine"] == machine()


def test_every_registered_method_has_a_golden_run():
    from promptcl.registry import methods

    built_in = {n for n in methods.names() if methods.get(n).__module__.startswith("promptcl.")}
    assert built_in <= {name.split("-")[0] for name in RUNS}
    assert set(RECORDED["runs"]) == {*RUNS, DEFAULT_JOB}


@pytest.mark.parametrize("name", [*RUNS, DEFAULT_JOB])
def test_golden_run_is_reproduced(name, tmp_path):
    golden = RECORDED["runs"][name]
    now = record(name, tmp_path)
    expected = np.array(golden["accuracy"], dtype=float)
    if not SAME_MACHINE:
        np.testing.assert_allclose(np.array(now["accuracy"], dtype=float), expected, atol=0.5)
        return
    assert now["accuracy"] == golden["accuracy"]
    differ = [k for k, digest in golden["state"].items() if now["state"].get(k) != digest]
    assert not differ, f"{name}: these tensors of the final state changed: {differ}"
    assert torch.get_num_threads() == 1  # as recorded
