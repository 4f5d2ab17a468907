"""`promptcl bench`: a method measured next to its floor, in a table and a JSON file."""

import json

import torch
import yaml
from typer.testing import CliRunner

from promptcl.cli import app
from promptcl.config import build_config
from promptcl.engine.bench import bench

CODA = {"name": "coda_prompt", "num_components": 30, "layers": [0, 1], "batch_size": 16}


def test_bench_cli_prints_the_ratio_and_writes_json(tiny_run, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run(CODA)))
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        app,
        ["bench", str(cfg), "--set", "method.query_cache=true", "--steps", "2", "--rounds", "2",
         "--warmup", "1", "--json", str(out)],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "ratio to floor" in result.output and "coda_prompt + query cache" in result.output
    saved = json.loads(out.read_text())
    assert saved["query_cache"] is True and saved["batch_size"] == 16
    for who in ("floor", "method"):
        row = saved["results"][who]
        assert row["train_samples_per_s"] > 0 and row["eval_samples_per_s"] > 0
    assert saved["train_ratio"] > 0 and saved["eval_ratio"] > 0
    # the cache was filled before timing (4 classes x 24 samples: 6 batches, at most 4 kept),
    # so every timed step found its queries there
    assert saved["cache"]["misses"] == 4 * 16
    # warmup + rounds x steps + memory pass, and the step that records the prompt structure
    assert saved["cache"]["hits"] == (1 + 2 * 2 + 2 + 1) * 16
    # the structural floor has CODA-Prompt's prefixes: length 8 split into keys and values
    assert saved["prompt_structure"] == {"prefix": {"0": 4, "1": 4}}
    assert "ratio to structural floor" in result.output and "cached)" in result.output
    assert saved["train_ratio_structural"] > 0 and saved["eval_ratio_cached_structural"] > 0
    # the frozen-pass cache read every timed test image: one batch of the 80 test images
    frozen = saved["frozen_cache"]
    assert frozen["filled"] == 80 and frozen["misses"]["test"] == 0
    assert frozen["hits"]["test"] == (1 + 2 * 2 + 2) * 80


def test_the_structural_floor_has_the_methods_prompt_tokens_and_prefixes(tiny_run):
    from promptcl.backbones.base import LayerPrompts
    from promptcl.build import build_backbone
    from promptcl.engine.bench import StructuralFloor, prompt_structure, record_prompts

    l2p = bench(
        build_config(tiny_run({"name": "l2p", "batch_size": 8})), steps=1, rounds=1, warmup=0
    )
    assert l2p["prompt_structure"] == {"tokens": {0: 5 * 5}}  # top-5 prompts of length 5
    backbone = build_backbone(build_config(tiny_run({"name": "l2p"})).backbone)
    calls = [
        LayerPrompts(tokens={0: torch.zeros(2, 3, 64)}),
        LayerPrompts(
            prefix={1: (torch.zeros(2, 4, 64), torch.zeros(2, 4, 64))},
            value={1: torch.zeros(2, 64)},
        ),
    ]
    structure = prompt_structure(calls)
    assert structure == {
        "tokens": {0: 3},
        "prefix": {1: 4},
        "residual": [],
        "value": [1],
        "hook": False,
    }
    floor = StructuralFloor(backbone, 4, structure)
    x = torch.rand(2, 3, backbone.image_size, backbone.image_size)
    (seen,) = record_prompts(backbone, lambda: floor.predict(x))
    assert seen.tokens[0].shape[1:] == (3, 64) and seen.prefix[1][0].shape == (2, 4, 64)
    assert seen.value[1].shape == (2, 64)


def test_a_training_free_method_is_measured_at_prediction_only(tiny_run):
    result = bench(build_config(tiny_run({"name": "simplecil"})), steps=1, rounds=1, warmup=0)
    assert result["train_ratio"] is None
    assert result["results"]["method"]["train_samples_per_s"] is None
    assert result["eval_ratio"] > 0
