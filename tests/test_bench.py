"""`promptcl bench`: a method measured next to its floor, in a table and a JSON file."""

import json

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
    assert saved["cache"]["hits"] == (1 + 2 * 2 + 2) * 16  # warmup + rounds x steps + memory pass


def test_a_training_free_method_is_measured_at_prediction_only(tiny_run):
    result = bench(build_config(tiny_run({"name": "simplecil"})), steps=1, rounds=1, warmup=0)
    assert result["train_ratio"] is None
    assert result["results"]["method"]["train_samples_per_s"] is None
    assert result["eval_ratio"] > 0
