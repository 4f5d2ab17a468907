"""Reports from run directories: the table's numbers against hand-computed ones, incomplete and
task-oracle runs flagged, the figures (Hash's expert counts, the t-SNE of instance prompts) and
the HTML page rendered in headless Chromium."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import promptcl
from promptcl.cli import app
from promptcl.report import find_runs, rows, write_report
from promptcl.report.plots import expert_counts
from promptcl.report.table import latex, markdown, to_csv
from promptcl.report.tsne import NoPrompts, instance_prompts

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ORACLE = "task-oracle (batch-wise prompt voting at test time)"
PLAIN = "class-incremental (no task identity at test time)"


def fake_run(
    folder: Path,
    method: str,
    seed: int,
    faa: float,
    caa: float = 40.0,
    fm: float = 10.0,
    bwf: float = 5.0,
    seconds: tuple[float, ...] = (1.0, 2.0, 3.0),
    done: int = 3,
    protocol: str = PLAIN,
    T: int = 3,
    **method_keys,
) -> Path:
    """A run directory written by hand: T tasks, ``done`` of them evaluated."""
    d = folder / f"{method}-seed{seed}"
    d.mkdir(parents=True)
    config = {
        "seed": seed,
        "data": {"name": "synth-shapes-10", "task_sizes": [12 // T] * T},
        "method": {"name": method, **method_keys},
        "output": {"dir": str(d)},
    }
    (d / "run.json").write_text(json.dumps({"run_id": f"{method}{seed}", "promptcl": "0.1.0"}))
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    A = np.full((T, T), np.nan)
    for t in range(done):
        A[: t + 1, t] = [faa + 10 * (t - i) for i in range(t + 1)]  # any numbers
    header = "task," + ",".join(f"after_task_{j}" for j in range(T))
    lines = [f"{i}," + ",".join("" if np.isnan(a) else f"{a:.4f}" for a in A[i]) for i in range(T)]
    if done:
        (d / "accuracy_matrix.csv").write_text("\n".join([header, *lines]) + "\n")
        metrics = {"after_task": done - 1, "protocol": protocol, "faa": faa, "caa": caa}
        metrics |= {"fm": fm, "vclimb_bwf": bwf}
        (d / "metrics.json").write_text(json.dumps(metrics))
    log = [{"task": 0, "phase": "train", "epoch": 0, "seconds": 99.0}]  # an epoch record
    for t, s in enumerate(seconds[:done]):
        log.append({"task": t, "seconds": {"train": s / 2, "evaluate": s / 4, "end_task": s / 4}})
    (d / "log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n")
    return d


@pytest.fixture
def runs(tmp_path) -> Path:
    """l2p: 3 complete seeds and an incomplete one; coda: 2 seeds; dualprompt: incomplete only."""
    f = tmp_path / "runs"
    fake_run(f, "l2p", 0, faa=50, caa=40, fm=10, bwf=5, seconds=(1, 2, 3))
    fake_run(f, "l2p", 1, faa=60, caa=44, fm=12, bwf=5, seconds=(2, 2, 2))
    fake_run(f, "l2p", 2, faa=70, caa=48, fm=17, bwf=8, seconds=(3, 3, 6))
    fake_run(f, "l2p", 3, faa=0, caa=0, fm=90, bwf=90, seconds=(50,), done=1)  # killed
    fake_run(f, "coda_prompt", 0, faa=41, protocol=ORACLE)
    fake_run(f, "coda_prompt", 1, faa=43, protocol=ORACLE)
    fake_run(f, "dualprompt", 0, faa=30, done=2)
    return f


def test_table_means_and_stds_equal_hand_computed_values(runs):
    table = {row.label: row for row in rows(find_runs([runs]))}
    l2p = table["l2p"]
    # By hand: FAA 50, 60, 70 -> mean 60, sample std sqrt((100 + 0 + 100) / 2) = 10.
    assert l2p.stat("faa") == pytest.approx((60.0, 10.0))
    assert l2p.stat("caa") == pytest.approx((44.0, 4.0))  # 40, 44, 48
    assert l2p.stat("fm") == pytest.approx((13.0, math.sqrt((9 + 1 + 16) / 2)))  # 10, 12, 17
    assert l2p.stat("vclimb_bwf") == pytest.approx((6.0, math.sqrt(3)))  # 5, 5, 8
    # Seconds: each run's task records summed (6, 6, 12; the epoch record is not counted).
    assert l2p.stat("seconds") == pytest.approx((8.0, math.sqrt((4 + 4 + 16) / 2)))
    md = markdown(list(table.values()))
    assert "| l2p | synth-shapes-10 | 3 of 4 | 60.00 ± 10.00 | 44.00 ± 4.00 | 13.00 ± 3.61 |" in md
    csv_rows = to_csv(list(table.values())).splitlines()
    assert csv_rows[0].startswith("method,benchmark,task_oracle,seeds_complete,seeds_total,faa_")
    assert next(x for x in csv_rows if x.startswith("l2p,")).startswith(
        "l2p,synth-shapes-10,False,3,4,60.0,10.0,44.0,4.0,13.0,"
    )
    assert "l2p & synth-shapes-10 & 3 of 4 & $60.00 \\pm 10.00$ & $44.00 \\pm 4.00$" in latex(
        list(table.values())
    )


def test_an_incomplete_run_is_flagged_and_never_averaged_in(runs):
    table = {row.label: row for row in rows(find_runs([runs]))}
    l2p = table["l2p"]
    assert [r.seed for r in l2p.incomplete] == [3]
    assert l2p.note == "seed 3 incomplete (1/3 tasks)"
    assert l2p.values("faa") == [50.0, 60.0, 70.0]  # not the killed run's 0
    dual = table["dualprompt"]
    assert dual.stat("faa")[0] != dual.stat("faa")[0]  # NaN: nothing complete
    line = next(x for x in markdown([dual]).splitlines() if x.startswith("| dualprompt"))
    assert line.count("incomplete") == 6  # five metrics and the note
    assert "seed 0 incomplete (2/3 tasks)" in line


def test_task_oracle_runs_are_marked(runs):
    table = {row.label: row for row in rows(find_runs([runs]))}
    assert table["coda_prompt"].method == "coda_prompt (task-oracle)"
    assert table["l2p"].method == "l2p"
    assert "| coda_prompt (task-oracle) |" in markdown(list(table.values()))
    assert "task-oracle" in table["coda_prompt"].note


def test_runs_of_one_method_with_other_settings_are_kept_apart(tmp_path):
    fake_run(tmp_path / "a", "hash", 0, faa=50, hdr="top-k")
    fake_run(tmp_path / "b", "hash", 0, faa=40, hdr="none")
    labels = [row.label for row in rows(find_runs([tmp_path]))]
    assert labels == ["hash (method.hdr=top-k)", "hash (method.hdr=none)"]


def test_a_setting_at_its_default_missing_from_an_older_config_is_no_difference(tmp_path):
    fake_run(tmp_path / "a", "l2p", 0, faa=50)  # written before decay_rate existed, say
    fake_run(tmp_path / "b", "l2p", 1, faa=60, decay_rate=0.1)  # its default, written out
    fake_run(tmp_path / "c", "l2p", 2, faa=70, decay_rate=0.1, prompt_length=7)
    labels = [row.label for row in rows(find_runs([tmp_path]))]
    assert labels == ["l2p (method.prompt_length=5)", "l2p (method.prompt_length=7)"]


def test_a_one_task_run_is_a_level_on_the_accuracy_figure(runs):
    from promptcl.report.plots import accuracy_curves

    fake_run(runs, "joint", 0, faa=80, T=1, done=1, seconds=(5,))
    (plot,) = accuracy_curves(rows(find_runs([runs])))
    ax = plot.figure.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "joint (one task)" in legend
    (level,) = [line for line in ax.get_lines() if line.get_label() == "joint (one task)"]
    assert set(level.get_ydata()) == {80.0}


def test_a_study_manifest_names_the_rows_and_lists_unstarted_runs(runs):
    manifest = {
        "study": "s",
        "runs": [
            {"name": "l2p-seed0", "label": "L2P/full", "seed": 0, "benchmark": "synth-shapes-10"},
            {"name": "never", "label": "L2P/full", "seed": 5, "benchmark": "synth-shapes-10"},
        ],
    }
    (runs / "study.json").write_text(json.dumps(manifest))
    records = find_runs([runs])
    assert [(r.label, r.status) for r in records] == [
        ("L2P/full", "complete"),
        ("L2P/full", "not started"),
    ]
    assert rows(records)[0].note == "seed 5 not started"


def test_report_writes_tables_figures_and_a_page_with_every_image(runs, tmp_path):
    out = tmp_path / "report"
    (out / "figures").mkdir(parents=True)
    for name in ("gone.png", "gone.svg", "mine.png"):  # an earlier report's figure, a user's file
        (out / "figures" / name).write_bytes(b"")
    (out / "figures" / "report-figures.json").write_text('["gone"]')
    result = CliRunner().invoke(app, ["report", str(runs), "-o", str(out), "--no-tsne"])
    assert result.exit_code == 0, result.output
    assert "| l2p | synth-shapes-10 | 3 of 4 | 60.00 ± 10.00" in result.output
    for name in ("comparison.md", "comparison.csv", "comparison.tex", "report.html"):
        assert (out / name).stat().st_size > 0
    assert (out / "figures" / "mine.png").exists()
    assert not (out / "figures" / "gone.svg").exists()
    stems = {p.stem for p in (out / "figures").glob("*.png")} - {"mine"}
    assert stems == {p.stem for p in (out / "figures").glob("*.svg")}
    assert stems == {
        "accuracy_curves_synth-shapes-10",
        "accuracy_matrices_synth-shapes-10",
        "old_new_synth-shapes-10",
    }
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert 'src="http' not in page and "<script" not in page  # self-contained
    assert page.count('<tr class="incomplete" data-method=') == 1  # dualprompt: nothing complete
    assert page.count('<td class="note partial">seed 3 incomplete') == 1  # l2p: one seed


# --- from real runs: Hash's expert counts, instance prompts -------------------------------------

HASH = {"name": "hash", "epochs": 1, "batch_size": 16, "tii_epochs": 1, "crct_epochs": 1}
HASH["prompt_layers"] = [0, 1]  # tiny-vit has 2 blocks


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """Two tiny Hash runs (seeds) and a fine-tuning run on the reduced stream."""
    folder = tmp_path_factory.mktemp("real")
    data = {"name": "synth-shapes-10", "task_sizes": [4, 4, 4], "subsample": 24, "augment": False}
    for method, seed in ((HASH, 0), (HASH, 1), ({"name": "finetune", "epochs": 1}, 0)):
        config = {
            "seed": seed,
            "data": data,
            "backbone": {"name": "tiny-vit", "pretrained": False},
            "method": method,
            "train": {"eval_batch_size": 128},
            "output": {"dir": str(folder / f"{method['name']}-{seed}")},
        }
        promptcl.run(config, quiet=True)
    return folder


def test_expert_counts_are_each_tasks_top_k_choices(real_runs):
    counts = expert_counts(real_runs / "hash-0")
    assert counts.shape == (3, 8)  # tasks x experts
    # Every training sample of a task (4 classes x 24) picks top_k = 2 experts, for 1 epoch.
    assert counts.sum(1).tolist() == [4 * 24 * 2] * 3
    assert expert_counts(real_runs / "finetune-0") is None


def test_instance_prompts_per_test_sample_or_a_reason(real_runs):
    vectors, tasks, classes = instance_prompts(real_runs / "hash-0", per_class=2)
    assert vectors.shape[0] == len(tasks) == len(classes) == 12 * 2
    assert tasks.tolist() == [t for t in range(3) for _ in range(8)]
    assert [c // 4 for c in classes] == tasks.tolist()  # each class in its own task
    # 2 blocks x 10 prefix tokens (5 keys + 5 values) of width 64 (tiny-vit), mixed per sample.
    assert vectors.shape[1] == 2 * 10 * 64
    assert len(np.unique(vectors.round(5), axis=0)) > 3  # not one prompt for everyone
    with pytest.raises(NoPrompts, match="no prompts"):
        instance_prompts(real_runs / "finetune-0")


def render(page: Path, shot: Path) -> tuple[list, int, list[str]]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        failed: list[str] = []
        tab.on("requestfailed", lambda request: failed.append(request.url))
        tab.goto(page.as_uri(), wait_until="load")
        tab.screenshot(path=str(shot), full_page=True)
        images = tab.eval_on_selector_all(
            "img", "imgs => imgs.map(i => [i.alt, i.complete && i.naturalWidth > 0])"
        )
        methods = tab.eval_on_selector_all("table.comparison tbody tr", "rows => rows.length")
        browser.close()
    return images, methods, failed


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_the_html_page_renders_every_image_and_one_row_per_method(runs, real_runs, tmp_path):
    out = tmp_path / "report"
    made = write_report([runs, real_runs], out)
    assert "expert_activation_hash_synth-shapes-10" in made.figures
    assert "tsne_hash" in made.figures
    assert any(s.startswith("t-SNE of finetune") for s in made.skipped)
    shots = Path(os.environ.get("PROMPTCL_SCREENSHOTS", tmp_path))
    images, methods, failed = render(made.html, shots / "report.png")
    assert failed == []
    assert len(images) == len(made.figures) == 5  # 3 over all runs, 2 of Hash
    assert [alt for alt, ok in images if not ok] == []
    assert methods == len({(r.label, r.benchmark) for r in made.records}) == 5
