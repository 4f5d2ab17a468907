"""A study file: a grid of runs (configs x override rows x seeds), each in its own run directory.

    name: offline-world                 # optional; default: the file's name
    configs:                            # the run configs (paths relative to this file) ...
      - ../configs/l2p_synth-shapes-10.yaml
      - {path: ../configs/hash_synth-shapes-10.yaml, name: hash}
      - {name: finetune, set: [method.name=finetune, method.epochs=3]}   # no path: the default job
    # ... or a pattern over methods x benchmarks:
    # configs: ../configs/{method}_{benchmark}.yaml
    # methods: [l2p, dualprompt]
    # benchmarks: [cifar100, imagenet-r]
    seeds: [1993, 1996, 1997]
    overrides:                          # rows: every config runs once per row (none: one row)
      full: []
      no-hdr: [method.hdr=none]
    set: [train.device=cuda]            # applied to every run
    output: ../runs/offline-world       # relative to this file
    workers: 1                          # local worker processes
    threads: null                       # torch threads per run; null: the cores / workers
    slurm: {partition: gpu, gpus_per_job: 1, time: 120}

A run's overrides are applied in this order: ``set``, the entry's ``set``, the row's, then the
seed. Its directory, ``<output>/<label>[-<row>]-<benchmark>-seed<seed>-<fingerprint>``, follows
from what it computes (the fingerprint hashes the settings that shape the run, as a checkpoint's
identity does), so running the study again finds it, and a config changed since gets a new one.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from promptcl.config import RunConfig, load_config
from promptcl.errors import ConfigError

MANIFEST = "study.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Entry(_Strict):
    path: Path | None = Field(None, description="a run config (YAML); none: the default job")
    name: str | None = Field(None, description="the label in reports and in folder names")
    set: list[str] = Field(default_factory=list, description="overrides of this entry's runs")


class Slurm(_Strict):
    partition: str | None = Field(None, description="Slurm partition")
    gpus_per_job: int = Field(0, ge=0, description="GPUs of one job; > 1 runs torchrun inside it")
    cpus_per_task: int | None = Field(None, ge=1, description="CPU cores of a job")
    mem_gb: float | None = Field(None, gt=0, description="memory of a job")
    time: int = Field(120, ge=1, description="time limit of a job, minutes")
    account: str | None = Field(None, description="Slurm account")
    qos: str | None = Field(None, description="Slurm QOS")
    constraint: str | None = Field(None, description="Slurm constraint (node features)")
    setup: list[str] = Field(
        default_factory=list, description="shell lines run before a job (module load, ...)"
    )
    additional: dict[str, Any] = Field(
        default_factory=dict, description="other sbatch options, e.g. {exclusive: true}"
    )


class StudyFile(_Strict):
    name: str | None = Field(None, description="the study's name; default: the file's stem")
    configs: list[Entry] | str = Field(
        description="run configs (paths or entries), or a pattern with {method} and {benchmark}"
    )
    methods: list[str] = Field(default_factory=list, description="{method} values of a pattern")
    benchmarks: list[str] = Field(
        default_factory=list, description="{benchmark} values of a pattern"
    )
    seeds: list[int] = Field([0], min_length=1, description="a run per seed")
    overrides: dict[str, list[str]] = Field(
        default_factory=dict, description="named rows of overrides; every config runs per row"
    )
    set: list[str] = Field(default_factory=list, description="overrides of every run")
    output: Path = Field(description="folder of the study's run directories")
    workers: int = Field(1, ge=1, description="runs at a time on this machine")
    threads: int | None = Field(None, ge=1, description="torch threads per run")
    slurm: Slurm | None = Field(None, description="how `--executor slurm` submits a job per run")

    @model_validator(mode="after")
    def _pattern_needs_values(self) -> StudyFile:
        if isinstance(self.configs, str):
            if "{method}" not in self.configs or not self.methods:
                raise ValueError(
                    "a configs pattern needs {method} in it and a list of `methods` (and "
                    "`benchmarks` if it has {benchmark})"
                )
            if ("{benchmark}" in self.configs) != bool(self.benchmarks):
                raise ValueError("`benchmarks` and {benchmark} in the configs pattern go together")
        elif self.methods or self.benchmarks:
            raise ValueError("`methods` and `benchmarks` expand a configs pattern (a string)")
        return self


@dataclass
class Run:
    """One run of a study."""

    name: str  # the run directory's name inside the study's output
    label: str  # what the report calls it: the entry's label, and the row's name
    row: str
    seed: int
    benchmark: str
    config_path: Path | None  # None: the default job
    overrides: list[str]  # without output.dir
    config: RunConfig = field(repr=False)

    @property
    def dir(self) -> Path:
        assert self.config.output.dir is not None
        return self.config.output.dir

    def manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "row": self.row,
            "seed": self.seed,
            "benchmark": self.benchmark,
            "config": str(self.config_path) if self.config_path else None,
            "overrides": self.overrides,
        }


@dataclass
class Study:
    name: str
    file: Path
    spec: StudyFile
    output: Path
    runs: list[Run]


def load_study(path: str | Path) -> Study:
    """Read a study file and expand it into its runs (every config is loaded and checked)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping (configs, seeds, output, ...)")
    if isinstance(raw.get("configs"), list):  # a bare path is an entry with a path
        raw["configs"] = [{"path": c} if isinstance(c, str) else c for c in raw["configs"]]
    try:
        spec = StudyFile(**raw)
    except ValidationError as err:
        raise ConfigError(f"invalid study file {path}:\n  " + "\n  ".join(_explain(err))) from None
    here = path.resolve().parent
    output = (here / spec.output).resolve()
    runs = []
    for entry, label in _entries(spec, here):
        rows = spec.overrides or {"": []}
        for row, row_set in rows.items():
            for seed in spec.seeds:
                runs.append(_run(entry, label, row, row_set, seed, spec, output))
    _check_unique(runs)
    return Study(spec.name or path.stem, path, spec, output, runs)


def _entries(spec: StudyFile, here: Path) -> list[tuple[Entry, str | None]]:
    """(entry with an absolute path, its label or None to derive it from the config)."""
    if isinstance(spec.configs, str):
        pattern = spec.configs
        out = []
        for method in spec.methods:
            for benchmark in spec.benchmarks or [""]:
                file = pattern.replace("{method}", method).replace("{benchmark}", benchmark)
                out.append((Entry(path=here / file), method))
        return out
    out = []
    for entry in spec.configs:
        if entry.path is not None:
            entry = entry.model_copy(update={"path": here / entry.path})
        out.append((entry, entry.name))
    return out


def _run(
    entry: Entry,
    label: str | None,
    row: str,
    row_set: list[str],
    seed: int,
    spec: StudyFile,
    output: Path,
) -> Run:
    from promptcl.engine.checkpoint import config_fingerprint

    overrides = [*spec.set, *entry.set, *row_set, f"seed={seed}"]
    where = f"{entry.path or 'the default job'}" + (f", row {row!r}" if row else "")
    try:
        config = load_config(entry.path, overrides)
    except ConfigError as err:
        raise ConfigError(f"study run ({where}, seed {seed}): {err}") from None
    label = label or _label(entry.path, config)
    full = f"{label}/{row}" if row else label
    parts = [label, row, config.data.name, f"seed{seed}", config_fingerprint(config)[:8]]
    name = _safe("-".join(p for p in parts if p))
    config.output.dir = output / name
    return Run(name, full, row, seed, config.data.name, entry.path, overrides, config)


def _label(path: Path | None, config: RunConfig) -> str:
    """The config file's name less its benchmark (``hash_synth-shapes-10_hdr`` -> ``hash_hdr``),
    or the method's name for the default job."""
    if path is None:
        return config.method.name
    stem = path.stem.replace(f"_{config.data.name}", "").replace(config.data.name, "")
    return stem.strip("_-") or config.method.name


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", name)


def _check_unique(runs: list[Run]) -> None:
    seen: dict[str, Run] = {}
    labels: dict[tuple[str, str, int], Run] = {}
    for run in runs:
        key = (run.label, run.benchmark, run.seed)
        if key in labels:
            first = labels[key]
            raise ConfigError(
                f"two runs of the study are both called {run.label!r} on {run.benchmark} "
                f"(seed {run.seed}): {first.config_path or 'the default job'} and "
                f"{run.config_path or 'the default job'}; give the entries names "
                "(`{path: ..., name: ...}`)"
            )
        labels[key] = run
        if run.name in seen:
            raise ConfigError(f"two runs of the study share the folder {run.name}")
        seen[run.name] = run


def _explain(err: ValidationError) -> list[str]:
    """One line per problem; an unknown key names the closest valid one and the valid keys."""
    lines = []
    for e in err.errors():
        # (pydantic names the member of a union it tried: list[Entry], str)
        loc = [str(p) for p in e["loc"] if not re.fullmatch(r"list\[.*\]|str|Entry", str(p))]
        if e["loc"][0] == "configs" and "str" in map(str, e["loc"]):
            continue  # a list of entries was given: the error against the pattern form is noise
        where = ".".join(loc)
        if e["type"] == "extra_forbidden":
            model: type[BaseModel] = StudyFile
            if loc[0] == "slurm":
                model = Slurm
            elif loc[0] == "configs":
                model = Entry
            valid = list(model.model_fields)
            close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            lines.append(f"unknown study key {where!r}: {hint}valid keys here: {', '.join(valid)}")
        elif e["type"] == "missing":
            lines.append(
                f"the study file needs {where!r} ({StudyFile.model_fields[loc[0]].description})"
            )
        else:
            lines.append(f"{where}: {e['msg']}")
    return lines
