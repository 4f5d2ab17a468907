"""Mixed precision and the compiled backbone: wired from the config, refused where they cannot run."""

import json

import pytest

import promptcl
from promptcl.config import build_config
from promptcl.engine import checkpoint
from promptcl.engine.progress import Console
from promptcl.engine.trainer import Trainer
from promptcl.errors import ConfigError

METHOD = {
    "name": "coda_prompt",
    "num_components": 30,
    "layers": [0, 1],
    "epochs": 1,
    "batch_size": 16,
}


def losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "epoch" in r]


def test_bf16_autocast_trains_close_to_fp32_but_not_identically(tiny_run, tmp_path):
    fp32 = promptcl.run(tiny_run(METHOD), quiet=True)
    bf16 = promptcl.run(
        tiny_run(METHOD, train={"precision": "bf16"}, output={"dir": str(tmp_path / "bf16")}),
        quiet=True,
    )
    a, b = losses(fp32.run_dir), losses(bf16.run_dir)
    assert a != b  # autocast was on: bfloat16 matmuls round differently
    assert a == pytest.approx(b, abs=0.01)


def test_fp16_on_the_cpu_is_refused_with_the_fix(tiny_run):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device.*precision=bf16"):
        build_config(tiny_run(METHOD, train={"precision": "fp16"}))


def test_compile_compiles_the_backbone_and_only_precision_changes_the_run_identity(tiny_run):
    """Only the wiring: compiling on the CPU takes about a minute (measured in `promptcl bench`)."""
    config = build_config(tiny_run(METHOD, train={"compile": True}))
    trainer = Trainer(config, Console(quiet=True))
    assert trainer.method.backbone._compiled_call_impl is not None
    assert "backbone._orig_mod" not in str(list(trainer.method.state_dict()))
    plain = build_config(tiny_run(METHOD))
    assert checkpoint.config_fingerprint(config) == checkpoint.config_fingerprint(plain)
    bf16 = build_config(tiny_run(METHOD, train={"precision": "bf16"}))
    assert checkpoint.config_fingerprint(bf16) != checkpoint.config_fingerprint(plain)
