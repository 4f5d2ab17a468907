"""The run configuration: pydantic models, YAML in, resolved YAML out.

Unknown keys are errors that name the key and suggest the closest valid one. Each method owns a
``MethodConfig`` subclass (registered with the method) whose field defaults are the paper's.

A run config must name its method: no method's hyper-parameters suit every dataset. The one
exception is the default job (``DEFAULT_JOB``, packaged), which ``load_config(None)`` returns.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from promptcl.errors import ConfigError

DEFAULT_JOB = Path(__file__).parent / "configs" / "default_job.yaml"
NO_METHOD = (
    "the config names no method: add e.g. `method: {name: coda_prompt}` (configs/ holds one YAML "
    "per method and benchmark); `promptcl run` with no config runs the default job"
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    name: str = Field("synth-shapes-10", description="registered dataset or benchmark preset")
    root: Path | None = Field(
        None, description="dataset folder (real datasets); None for synthetic ones"
    )
    split_file: Path | None = Field(
        None,
        description="optional train/test split file (ImageNet-R, EuroSAT, RESISC45, CropDisease; "
        "a vCLIMB split for ucf101 / video-folder, which fixes the tasks; breakfast list files)",
    )
    download: bool = Field(False, description="let torchvision download the data (CIFAR-100 only)")
    augment: bool = Field(True, description="random-resized crop + flip on training images")
    crop_scale: tuple[float, float] = Field(
        (0.08, 1.0), description="area range of the random-resized crop (torchvision's default)"
    )
    num_tasks: int | None = Field(
        None, ge=1, description="equal tasks; None = the benchmark's default"
    )
    base_classes: int | None = Field(
        None, ge=1, description="classes of the first task (base + increments)"
    )
    task_sizes: list[int] | None = Field(
        None, description="explicit classes per task, e.g. [11, 10, ...]"
    )
    class_order: list[int] | None = Field(
        None, description="explicit class order; None = seeded permutation"
    )
    shuffle_classes: bool = Field(
        True,
        description="permute the class order with the run seed (false with a split file that "
        "fixes the tasks, e.g. vCLIMB)",
    )
    subsample: int | None = Field(
        None, ge=1, description="keep at most this many train samples per class"
    )
    val_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="hold out this share of each class's training samples as a validation set, "
        "evaluated like the test set and reported beside it (tune on it, not on the test set)",
    )
    verify: Literal["quick", "full", "off"] = Field(
        "quick",
        description="check image and video files before training: quick opens headers, full decodes",
    )
    on_bad_file: Literal["error", "skip"] = Field(
        "error",
        description="a damaged image or video found by verify: stop with its path, or skip it",
    )
    frames: int = Field(8, ge=1, description="video: frames per clip (T)")
    frame_sampler: Literal["segments", "dense"] = Field(
        "segments",
        description="video: TSN segments (one frame from each of T equal segments) or a dense "
        "clip (T frames, frame_stride apart)",
    )
    frame_stride: int = Field(4, ge=1, description="video, dense clips: the sampling rate")
    test_clips: int = Field(
        1, ge=1, description="video: clips per test video (multi-view testing, logits averaged)"
    )
    test_crops: Literal[1, 3] = Field(
        1, description="video: crops per test clip, 1 (centre) or 3 (multi-view testing)"
    )
    official_split: int = Field(
        1, ge=1, le=4, description="video: the official split (UCF101, HMDB51 1-3; Breakfast 1-4)"
    )


class BackboneConfig(Strict):
    name: str = Field("tiny-synth-vit", description="backbone preset (see `promptcl list`)")
    pretrained: bool = Field(True, description="load the preset's pretrained weights")
    weights: Path | None = Field(
        None, description="local weight file instead of the hub / shipped one"
    )
    frame_encoder: Literal["frame-mean", "frame-max", "frame-grid"] | None = Field(
        None,
        description="run an image preset on video clips: frames pooled by mean or max, or the "
        "frame grid of CoSTEP; None = the preset's own modality",
    )
    spatial_frames: int = Field(
        2, ge=0, description="frame-grid: full-resolution frames (N_sp) [inferred default]"
    )
    grid_size: int = Field(
        2, ge=1, description="frame-grid: g x g frames (N_tp = g^2) tiled into one image"
    )
    activation_checkpointing: bool = Field(
        False,
        description="VideoMamba presets: recompute each block in the backward pass instead of "
        "keeping its activations (less memory, about one more forward of compute); other "
        "backbones reject it",
    )


def _preset_name(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


# A method's field naming a frozen auxiliary backbone (``Method.auxiliary_backbones``): in YAML a
# preset name, or a mapping with the fields of BackboneConfig (e.g. a local ``weights`` file). Its
# default is written ``Field(default_factory=lambda: BackboneConfig(name="clip-vit-l14"))``.
AuxiliaryBackbone = Annotated[BackboneConfig, BeforeValidator(_preset_name)]

Schedule = Literal["constant", "cosine", "coda-cosine", "step"]


class MethodConfig(Strict):
    """Hyper-parameters every method has; subclasses add theirs and set the paper's defaults."""

    name: str
    optimizer: Literal["sgd", "adam", "adamw"] = Field("adam", description="optimiser")
    lr: float = Field(1e-3, ge=0, description="base learning rate")
    weight_decay: float = Field(0.0, ge=0, description="weight decay")
    momentum: float = Field(0.9, ge=0, description="SGD momentum (sgd only)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas (adam/adamw only)")
    schedule: Schedule = Field("constant", description="lr schedule, stepped per epoch")
    decay_epochs: int = Field(30, ge=1, description="step schedule: epochs between lr decays")
    decay_rate: float = Field(0.1, gt=0, description="step schedule: lr factor at each decay")
    warmup_epochs: int = Field(
        0, ge=0, description="cosine schedule: epochs of linear warm-up from warmup_lr first"
    )
    warmup_lr: float = Field(1e-6, ge=0, description="cosine schedule: the warm-up's first lr")
    min_lr: float = Field(0.0, ge=0, description="cosine schedule: the lr the decay ends at")
    epochs: int = Field(5, ge=0, description="epochs per task")
    batch_size: int = Field(128, ge=1, description="training batch size")
    grad_clip: float | None = Field(1.0, description="max gradient norm; None = no clipping")
    train_mask: bool = Field(
        True, description="mask the logits of classes outside the current task in training"
    )

    @property
    def task_oracle(self) -> bool:
        """True if the run votes prompts over a test batch (a task oracle, labelled as such)."""
        return False

    @property
    def released_bugs(self) -> list[str]:
        """Bugs of a released code base this run reproduces on purpose, one phrase each; written
        into the run's protocol and console like the task oracle."""
        return []


class TrainConfig(Strict):
    device: str = Field("cpu", description="torch device")
    num_workers: int = Field(0, ge=0, description="data loader workers")
    eval_batch_size: int = Field(256, ge=1, description="evaluation batch size")
    log_every: int = Field(20, ge=1, description="steps between progress-bar updates")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="debug: cut epochs short")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast of forward passes: fp32 (off), bf16, fp16 (CUDA only)"
    )
    compile: bool = Field(False, description="torch.compile the backbone's prompted forward")
    frozen_cache: bool = Field(
        True,
        description="compute each test and plain-view sample's frozen passes once per run "
        "(promptcl.frozen_cache)",
    )
    frozen_cache_mb: float = Field(
        4096, ge=0, description="stop storing frozen passes beyond this many MB"
    )
    frozen_cache_dir: Path | None = Field(
        None, description="keep the frozen-pass cache in memory-mapped files here instead of RAM"
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        import torch

        try:
            torch.device(value)
        except (RuntimeError, ValueError):
            raise ValueError(
                f"{value!r} is not a torch device: use cpu, cuda, cuda:0, ... (or mps)"
            ) from None
        return value

    @model_validator(mode="after")
    def _fp16_needs_cuda(self) -> TrainConfig:
        if self.precision == "fp16" and not self.device.startswith("cuda"):
            raise ValueError(
                f"precision fp16 needs a CUDA device (fp16 autocast with a GradScaler), but device "
                f"is {self.device!r}: use train.precision=bf16 on the CPU (it works, but is usually "
                "slower than fp32 there) or train.precision=fp32"
            )
        return self


class OutputConfig(Strict):
    dir: Path | None = Field(
        None, description="run directory; None = runs/<method>-<data>-seed<seed>"
    )
    checkpoint: bool = Field(True, description="checkpoint after every epoch and task")
    overwrite: bool = Field(False, description="allow reusing a non-empty run directory")
    loggers: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list,
        description="experiment trackers fed with log.jsonl's records and the metrics (extras "
        "promptcl[tensorboard], [wandb], [mlflow]); one that fails warns once, never stops a run",
    )
    project: str = Field(
        "promptcl", description="loggers: the W&B project and MLflow experiment of the run"
    )


class RunConfig(Strict):
    seed: int = Field(0, ge=0, description="drives class order, initialisation, data order")
    data: DataConfig = Field(default_factory=DataConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    method: SerializeAsAny[MethodConfig] = Field(description="the method and its hyper-parameters")
    train: TrainConfig = Field(default_factory=TrainConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("method", mode="before")
    @classmethod
    def _method_from_registry(cls, value: Any) -> MethodConfig:
        if isinstance(value, MethodConfig):
            return value
        if not isinstance(value, dict) or "name" not in value:
            raise ValueError("method needs a `name`, e.g. `method: {name: l2p}`")
        return method_config(value)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def method_class(name: str) -> type[MethodConfig]:
    """The config model a method registered."""
    from promptcl.registry import methods

    return methods.get(name).Config


def method_config(values: dict[str, Any]) -> MethodConfig:
    """Validate a method's hyper-parameters against the config model it registered."""
    config_cls = method_class(values["name"])
    try:
        return config_cls(**values)
    except ValidationError as err:
        raise ConfigError(_invalid(_explain(err, config_cls, prefix="method."))) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML file (None: the default job) and apply ``key.sub=value`` overrides.

    On the default job, an override of ``method.name`` drops the default method's hyper-parameters:
    the named method starts from its own defaults.
    """
    raw = read_yaml(Path(path) if path is not None else DEFAULT_JOB)
    if path is None and any(
        item.partition("=")[0].strip() == "method.name" for item in overrides or []
    ):
        raw["method"] = {}
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        node = raw
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        try:
            node[leaf] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(
                f"override {item!r}: the value is not valid YAML ({_yaml_problem(err)}); quote "
                "strings that hold YAML characters, e.g. --set 'data.root=\"a: b\"'"
            ) from None
    return build_config(raw)


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's sections; ``base: other.yaml`` (relative to the file) is read first and
    the file's own values are merged over it, section by section."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (data, backbone, method, ...)")
    base = raw.pop("base", None)
    if base is None:
        return raw
    base_path = path.parent / str(base)
    if base_path.resolve() in seen:
        raise ConfigError(f"{path}: `base: {base}` leads back to itself")
    return _merge(read_yaml(base_path, (*seen, path.resolve())), raw)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


def _yaml_problem(err: yaml.YAMLError) -> str:
    """Where and what, in one line: "line 3, column 7: mapping values are not allowed here"."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + str(getattr(err, "problem", None) or err).strip()


def build_config(raw: dict[str, Any]) -> RunConfig:
    """Validate every section; all the problems are reported together, not the first alone."""
    raw = dict(raw)
    problems: list[str] = []
    if "method" in raw:  # validated first, so its errors are reported against the method's model
        method = raw["method"]
        if not isinstance(method, dict) or "name" not in method:
            raise ConfigError("method needs a `name`, e.g. `method: {name: l2p}`")
        config_cls = method_class(method["name"])
        try:
            raw["method"] = config_cls(**method)
        except ValidationError as err:
            problems += _explain(err, config_cls, prefix="method.")
            raw["method"] = config_cls(name=method["name"])  # to check the other sections
    try:
        config = RunConfig(**raw)
    except ValidationError as err:
        problems += _explain(err, RunConfig)
    if problems:
        raise ConfigError(_invalid(problems))
    return config


def _invalid(problems: list[str]) -> str:
    return "invalid configuration:\n  " + "\n  ".join(problems)


def _explain(err: ValidationError, root: type[BaseModel], prefix: str = "") -> list[str]:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        where = prefix + ".".join(loc)
        if e["type"] == "missing" and loc == ["method"]:
            lines.append(NO_METHOD)
        elif e["type"] == "extra_forbidden":
            valid = _fields_at(root, loc[:-1])
            close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
            hint = f"did you mean {prefix + '.'.join([*loc[:-1], close[0]])!r}? " if close else ""
            lines.append(f"unknown config key {where!r}: {hint}valid keys here: {', '.join(valid)}")
        else:
            lines.append(f"{where}: {e['msg']}")
    return lines


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
