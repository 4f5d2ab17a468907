"""Atomic checkpoints of tensors and plain values, loaded with ``weights_only=True``.

A checkpoint holds the method's state_dict, the optimiser and schedule, the RNG states of python,
numpy and torch, the position in the stream and the accuracy matrix so far, plus an identity (the
method name, the settings that shape the run and their hash) so that a checkpoint of another run
is refused, naming each setting that differs, instead of silently loaded.
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


# Settings that do not change what a run computes: where it reads and writes, its device and
# loaders, how it reports, whether files are verified. A run may be resumed with other values
# (and with another number of processes).
HARMLESS = {
    "output": True,
    "data": {"root", "download", "verify"},
    "train": {
        "device",
        "num_workers",
        "log_every",
        "compile",
        "eval_batch_size",
        "frozen_cache",
        "frozen_cache_mb",
        "frozen_cache_dir",
    },
}


def run_identity(config: RunConfig) -> dict[str, Any]:
    """The settings that change what a run computes, as plain values.

    Settings left at their defaults are left out, so a field added in a later version (with a
    default that keeps the old behaviour) does not stop older runs from resuming. The evaluation
    batch size matters only to a task oracle (a vote over each test batch)."""
    exclude = {k: set(v) if isinstance(v, set) else v for k, v in HARMLESS.items()}
    if config.method.task_oracle:
        exclude["train"] -= {"eval_batch_size"}
    identity = config.model_dump(mode="json", exclude=exclude, exclude_defaults=True)
    identity["method_name"] = config.method.name  # a default of its own class, so named here
    return identity


def config_fingerprint(config: RunConfig) -> str:
    """A short hash of ``run_identity``."""
    text = json.dumps(run_identity(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def identity_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``key: saved -> now`` for every setting that differs (a missing one is its default)."""

    def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    a, b = flat(saved), flat(now)
    return [
        f"{key}: {a.get(key, '(default)')!r} -> {b.get(key, '(default)')!r}"
        for key in sorted(a.keys() | b.keys())
        if a.get(key, "(default)") != b.get(key, "(default)")
    ]


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
        readable(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def readable(path: Path) -> None:
    """Give a file the permissions of any new file (the umask), not mkstemp's 0600."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def load(
    path: Path, method_name: str, fingerprint: str, identity: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Load and check a checkpoint; every failure names the file and what to do."""
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: the run never finished an epoch; start it again"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's own message advises weights_only=False: never right here
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a promptcl checkpoint ({type(err).__name__}); "
            "it cannot be resumed. Start the run again (output.overwrite=true replaces it)."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a promptcl checkpoint (format {FORMAT_VERSION})")
    if payload["method_name"] != method_name:
        raise CheckpointError(
            f"checkpoint {path} was written by method {payload['method_name']!r}, "
            f"not {method_name!r}: resume with the run's own config.yaml, or use a new output.dir"
        )
    if payload["fingerprint"] != fingerprint:
        saved = payload.get("identity")
        differ = (
            identity_differences(json.loads(saved), identity)
            if saved is not None and identity is not None
            else [f"fingerprint {payload['fingerprint']} != {fingerprint}"]
        )
        raise CheckpointError(
            f"checkpoint {path} belongs to a run with another configuration:\n  "
            + "\n  ".join(differ)
            + "\nresume with the run's own config.yaml, or use a new output.dir"
        )
    return payload
