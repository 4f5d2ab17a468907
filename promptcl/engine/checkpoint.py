"""Atomic checkpoints of tensors and plain values, loaded with ``weights_only=True``.

A checkpoint holds the method's state_dict, the optimiser and schedule, the RNG states of python,
numpy and torch, the position in the stream and the accuracy matrix so far, plus an identity (the
method name and a hash of the config that shapes the run) so that a checkpoint of another run is
refused instead of silently loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from promptcl.config import RunConfig
from promptcl.errors import CheckpointError

FORMAT_VERSION = 1


def config_fingerprint(config: RunConfig) -> str:
    """Hash of everything that changes what a run computes (not where it writes, its device, or
    how many processes run it: a run may be resumed with another world size).

    Settings left at their defaults are not hashed, so a field added in a later version (with a
    default that keeps the old behaviour) does not stop older runs from resuming."""
    ignored = {"device", "num_workers", "log_every", "compile"}
    shaping = config.model_dump(
        mode="json", exclude={"output": True, "train": ignored}, exclude_defaults=True
    )
    shaping["method_name"] = config.method.name  # a default of its own class, so named here
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "gauss": gauss,
        },
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a temp file in the same folder, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT_VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path, method_name: str, fingerprint: str) -> dict[str, Any]:
    """Load and check a checkpoint; every failure names the file and what to do."""
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: the run never finished an epoch; start it again"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a promptcl checkpoint ({type(err).__name__}: {err}). "
            "Delete it to restart the run from scratch."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a promptcl checkpoint (format {FORMAT_VERSION})")
    if payload["method_name"] != method_name:
        raise CheckpointError(
            f"checkpoint {path} was written by method {payload['method_name']!r}, "
            f"not {method_name!r}: resume with the run's own config.yaml, or use a new output.dir"
        )
    if payload["fingerprint"] != fingerprint:
        raise CheckpointError(
            f"checkpoint {path} belongs to a run with another configuration "
            f"(fingerprint {payload['fingerprint']} != {fingerprint}): resume with the run's own "
            "config.yaml, or use a new output.dir"
        )
    return payload
