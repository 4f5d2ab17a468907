"""Golden runs: the accuracy matrix and a checksum of the final method state of every registered
method on the reduced stream of ``tests/synth_stream.py``, and of the default job.

They were recorded before the "Foundation, second floor" refactor (issue 10) and must stay
bit-for-bit identical on the machine kind they were recorded on (same torch, same CPU capability,
one thread): ``tests/test_golden.py`` holds that. Re-record only for a change that is meant to
alter results, and say why in the commit:

    python tests/golden/record.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # synth_stream
from synth_stream import synth_run  # noqa: E402

GOLDEN = HERE / "runs.json"
SHORT = {"epochs": 1, "batch_size": 16}
TII = {"tii_epochs": 2, "crct_epochs": 2}
STAR = {
    "first_replay_epochs": 1,
    "second_replay_epochs": 1,
    "replay_samples": 16,
    "first_em_iters": 10,
}
# One short run per registered method; l2p-augmented covers the random crop and flip.
RUNS: dict[str, tuple[dict, dict]] = {
    "finetune": ({"name": "finetune", "lr": 1e-4, **SHORT}, {}),
    "joint": ({"name": "joint", "lr": 1e-4, **SHORT}, {}),
    "linear_probe": ({"name": "linear_probe", **SHORT}, {}),
    "simplecil": ({"name": "simplecil"}, {}),
    "clip_zeroshot": ({"name": "clip_zeroshot"}, {"backbone": "tiny-synth-clip"}),
    "l2p": ({"name": "l2p", **SHORT}, {}),
    "l2p-augmented": ({"name": "l2p", **SHORT}, {"augment": True}),
    "dualprompt": ({"name": "dualprompt", **SHORT}, {}),
    "coda_prompt": (
        {"name": "coda_prompt", "num_components": 30, "query_cache": True, **SHORT},
        {},
    ),
    "hide_prompt": ({"name": "hide_prompt", **SHORT, **TII}, {}),
    "hash": ({"name": "hash", **SHORT, **TII}, {}),
    "tppt": (
        {"name": "tppt", "variant": "VT", "num_components": 30, **SHORT},
        {"backbone": "tiny-synth-clip"},
    ),
    "costep": ({"name": "costep", "width": 32, "timesteps": 100, "replay_epochs": 2, **SHORT}, {}),
    "star_prompt": (
        {"name": "star_prompt", "clip_backbone": "tiny-synth-clip", **SHORT, **STAR},
        {},
    ),
    # A video method: SynthMotion clips, 2 tasks of 4 classes, on the small VideoMamba's
    # architecture with random weights (a golden run must not depend on a shipped file).
    "ssp": (
        {"name": "ssp", "inner_dim": 32, "attn_dim": 32, "warmup_epochs": 0, **SHORT},
        {
            "backbone": {"name": "tiny-synth-videomamba", "pretrained": False},
            "data": {"name": "synth-motion-5", "subsample": 8, "task_sizes": [4, 4]},
        },
    ),
}
DEFAULT_JOB = "default-job"


def machine() -> dict[str, str]:
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def config_of(name: str, out: Path) -> dict:
    if name == DEFAULT_JOB:
        from promptcl.config import load_config

        return load_config(None, [f"output.dir={out}"])
    method, opts = RUNS[name]
    data = {**({"augment": True} if opts.get("augment") else {}), **opts.get("data", {})}
    config = synth_run(method, out, **data)
    if "backbone" in opts:
        backbone = opts["backbone"]
        config["backbone"] = backbone if isinstance(backbone, dict) else {"name": backbone}
    return config


def record(name: str, workdir: Path) -> dict:
    import promptcl
    from promptcl.collectives import tensors

    out = workdir / name
    result = promptcl.run(config_of(name, out), quiet=True)
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["method"]
    return {
        "accuracy": [[None if a != a else float(a) for a in row] for row in result.accuracy],
        "state": {k: tensor_digest(v) for k, v in sorted(tensors(state).items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)  # as the test suite runs (tests/conftest.py)
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {"runs": {}}
    golden["machine"] = machine()
    names = args.only or [*RUNS, DEFAULT_JOB]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            golden["runs"][name] = record(name, Path(tmp))
            print(name, len(golden["runs"][name]["state"]), "tensors", flush=True)
    GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")


if __name__ == "__main__":
    main()
