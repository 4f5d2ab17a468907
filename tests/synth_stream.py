"""The reduced offline stream on which the prompt methods' end-to-end tests compare with the bounds.

synth-shapes-10 cut to 3 tasks of 10 classes with 20 training images per class, tiny-synth-vit.
"""

from pathlib import Path

STREAM = {"name": "synth-shapes-10", "task_sizes": [10, 10, 10], "subsample": 20, "augment": False}


def synth_run(method: dict, out: Path | str, **data) -> dict:
    """A run config of ``method`` on the stream (``data`` overrides, e.g. ``augment=True``)."""
    return {
        "seed": 0,
        "data": {**STREAM, **data},
        "backbone": {"name": "tiny-synth-vit"},
        "method": method,
        "train": {"eval_batch_size": 256},
        "output": {"dir": str(out)},
    }
