"""Class-incremental scenarios: any labelled dataset becomes a stream of tasks with new classes.

The class order is a seeded permutation or an explicit list; tasks are equal splits, a base task
plus equal increments (vCLIMB 11 + 9x10, TCD 51 + 10x5), or an explicit list of sizes. Labels are
remapped so that task t owns the contiguous range ``[start_t, end_t)`` of new labels: the logits of
the classes seen so far are always a prefix of the head.

A dataset read with a split file that fixes its tasks (a vCLIMB split: ``DatasetPair.task_sizes``)
is learned exactly as the file says: its classes in label order (the file's), its task sizes. The
config may restate that structure but not change it: ``data.shuffle_classes`` must be false, and
``data.num_tasks`` / ``base_classes`` / ``task_sizes`` / ``class_order``, when set, must give the
file's tasks and order; anything else is a ConfigError that says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from promptcl.config import DataConfig
from promptcl.data.base import DatasetPair, LabelledDataset
from promptcl.errors import ConfigError

Part = Literal["all", "train", "val"]  # a class's training samples: all, less or only held-out


def resolve_task_sizes(cfg: DataConfig, num_classes: int, default_tasks: int) -> list[int]:
    """Classes per task from the config: explicit sizes, base + increments, or equal tasks."""
    if cfg.task_sizes is not None:
        sizes = list(cfg.task_sizes)
        if any(s < 1 for s in sizes) or sum(sizes) > num_classes:
            raise ConfigError(
                f"data.task_sizes {sizes} must be positive and sum to at most {num_classes} classes"
            )
        return sizes
    tasks = cfg.num_tasks or default_tasks
    if cfg.base_classes is not None:
        rest, increments = num_classes - cfg.base_classes, tasks - 1
        if increments == 0 or rest <= 0 or rest % increments:
            raise ConfigError(
                f"data.base_classes={cfg.base_classes} leaves {rest} classes that do not split into "
                f"{increments} equal increments; set data.num_tasks accordingly or give data.task_sizes"
            )
        return [cfg.base_classes] + [rest // increments] * increments
    if num_classes % tasks:
        raise ConfigError(
            f"{num_classes} classes do not split into {tasks} equal tasks; "
            "set data.num_tasks to a divisor, or give data.task_sizes explicitly"
        )
    return [num_classes // tasks] * tasks


def resolve_class_order(cfg: DataConfig, num_classes: int, seed: int) -> list[int]:
    """Original labels in the order they are learned (CODA `rand_split`, mammoth `--permute_classes`)."""
    if cfg.class_order is not None:
        order = list(cfg.class_order)
        if sorted(order) != sorted(set(order)) or not set(order) <= set(range(num_classes)):
            raise ConfigError(
                f"data.class_order must list distinct labels in 0..{num_classes - 1}, got {order}"
            )
        return order
    if not cfg.shuffle_classes:
        return list(range(num_classes))
    return np.random.default_rng(seed).permutation(num_classes).tolist()


def resolve_fixed_tasks(cfg: DataConfig, data: DatasetPair) -> tuple[list[int], list[int]]:
    """Task sizes and class order of a dataset whose split file fixes its tasks (see the module
    notes): the file's, after checking that the config does not ask for others."""
    fixed = list(data.task_sizes or [])
    if not fixed or any(s < 1 for s in fixed) or sum(fixed) != data.num_classes:
        raise ValueError(f"task sizes {fixed} do not cover the {data.num_classes} classes")
    source = (
        f"the dataset's split file (data.split_file: {cfg.split_file}) fixes {len(fixed)} tasks"
    )
    asked: object = fixed  # what the config asks for, when it says anything
    if cfg.task_sizes is not None or cfg.base_classes is not None:
        try:
            asked = resolve_task_sizes(cfg, data.num_classes, len(fixed))
        except ConfigError as err:
            asked = str(err)
    elif cfg.num_tasks is not None and cfg.num_tasks != len(fixed):
        asked = f"{cfg.num_tasks} tasks"
    if asked != fixed:
        raise ConfigError(
            f"{source} of sizes {fixed}, but data.num_tasks / base_classes / task_sizes ask "
            f"for {asked}: remove these keys (or give the file's sizes) to run its tasks"
        )
    order = list(range(data.num_classes))
    if cfg.class_order is not None and list(cfg.class_order) != order:
        raise ConfigError(
            f"{source} and its class order; data.class_order cannot reorder them: remove the key"
        )
    if cfg.shuffle_classes:
        raise ConfigError(
            f"{source} and its class order, task by task; set data.shuffle_classes: false to learn "
            "them as the file says (shuffling would mix the file's tasks)"
        )
    return fixed, order


class RemappedSubset(Dataset):
    """Selected samples of a dataset with labels mapped to their position in the class order.

    Items are ``(x, label, index)``: ``index`` is the sample's position in the source dataset, a
    stable key of the sample whatever task or view it is read through.
    """

    def __init__(self, source: LabelledDataset, indices: list[int], label_map: dict[int, int]):
        self.source, self.indices, self.label_map = source, indices, label_map
        self.targets = [label_map[source.targets[i]] for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        x, y = self.source[self.indices[index]]
        return x, self.label_map[int(y)], self.indices[index]


@dataclass
class Scenario:
    """The tasks of a class-incremental run over one dataset pair.

    ``class_order[j]`` is the original label of new label j; ``task_sizes[t]`` the classes of task t.
    ``train_eval`` is the training set seen through test-time transforms (for end-of-task
    statistics such as class prototypes), or None to reuse ``data.train``.

    ``val_fraction`` of each class's training samples (after ``subsample``; at least one when
    the fraction is positive and the class has two) are held out as its validation samples,
    picked by ``val_seed``: the training views leave them out and ``val_view`` reads them
    through the test-time transforms.
    """

    data: DatasetPair
    class_order: list[int]
    task_sizes: list[int]
    train_eval: LabelledDataset | None = None
    subsample: int | None = None
    val_fraction: float = 0.0
    val_seed: int = 0

    @classmethod
    def from_config(
        cls,
        data: DatasetPair,
        cfg: DataConfig,
        seed: int,
        train_eval: LabelledDataset | None = None,
    ) -> Scenario:
        held_out = {"val_fraction": cfg.val_fraction, "val_seed": seed}
        if data.task_sizes is not None:
            sizes, order = resolve_fixed_tasks(cfg, data)
            return cls(data, order, sizes, train_eval, cfg.subsample, **held_out)
        sizes = resolve_task_sizes(cfg, data.num_classes, data.default_tasks)
        order = resolve_class_order(cfg, data.num_classes, seed)
        if len(order) < sum(sizes):
            raise ConfigError(
                f"data.class_order lists {len(order)} classes, the tasks need {sum(sizes)}"
            )
        return cls(data, order[: sum(sizes)], sizes, train_eval, cfg.subsample, **held_out)

    @property
    def num_tasks(self) -> int:
        return len(self.task_sizes)

    @property
    def num_classes(self) -> int:
        return sum(self.task_sizes)

    def class_range(self, task: int) -> tuple[int, int]:
        """New labels [start, end) of a task."""
        start = sum(self.task_sizes[:task])
        return start, start + self.task_sizes[task]

    def class_names(self) -> list[str]:
        """Names in the new label order."""
        return [self.data.class_names[c] for c in self.class_order]

    def _view(
        self, source: LabelledDataset, tasks: range, limit: int | None, part: Part = "all"
    ) -> RemappedSubset:
        label_map = {orig: new for new, orig in enumerate(self.class_order)}
        wanted = {self.class_order[j] for t in tasks for j in range(*self.class_range(t))}
        by_class: dict[int, list[int]] = {}
        for i, y in enumerate(source.targets):
            if y in wanted and (limit is None or len(by_class.get(y, [])) < limit):
                by_class.setdefault(y, []).append(i)
        if part != "all":
            held = {i for y, members in by_class.items() for i in self._held_out(y, members)}
            by_class = {
                y: [i for i in members if (i in held) == (part == "val")]
                for y, members in by_class.items()
            }
        indices = sorted(i for members in by_class.values() for i in members)
        return RemappedSubset(source, indices, label_map)

    def _held_out(self, label: int, members: list[int]) -> list[int]:
        """The validation samples among one class's training samples (original label)."""
        count = round(self.val_fraction * len(members))
        if self.val_fraction > 0 and len(members) > 1:
            count = min(max(count, 1), len(members) - 1)
        if count == 0:
            return []
        generator = torch.Generator().manual_seed(self.val_seed * 1_000_003 + label)
        return [members[k] for k in torch.randperm(len(members), generator=generator)[:count]]

    def train_view(self, task: int, cumulative: bool = False) -> RemappedSubset:
        """Training data of a task (or of tasks 0..task when ``cumulative``, for joint training)."""
        tasks = range(0 if cumulative else task, task + 1)
        return self._view(self.data.train, tasks, self.subsample, "train")

    def train_eval_view(self, task: int) -> RemappedSubset:
        """The same samples as ``train_view(task)``, through test-time transforms."""
        source = self.train_eval or self.data.train
        return self._view(source, range(task, task + 1), self.subsample, "train")

    def val_view(self, task: int) -> RemappedSubset:
        """A task's held-out validation samples (``val_fraction``), through test-time transforms."""
        source = self.train_eval or self.data.train
        return self._view(source, range(task, task + 1), self.subsample, "val")

    def test_view(self, task: int) -> RemappedSubset:
        return self._view(self.data.test, range(task, task + 1), None)

    def test_seen(self, task: int, split: Literal["test", "val"] = "test") -> ConcatDataset:
        """Test (or validation) data of every task seen after ``task``, in task order."""
        view = self.val_view if split == "val" else self.test_view
        return ConcatDataset([view(i) for i in range(task + 1)])
