"""Scenarios: task sizes, class order, label remapping, per-task views."""

import pytest

from promptcl.config import DataConfig
from promptcl.data.base import DatasetPair
from promptcl.data.scenario import Scenario, resolve_task_sizes
from promptcl.errors import ConfigError


class Labels:
    """A dataset whose items are (index, label)."""

    def __init__(self, targets):
        self.targets = list(targets)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return i, self.targets[i]


def pair(num_classes=10, per_class=3):
    targets = [c for c in range(num_classes) for _ in range(per_class)]
    return DatasetPair(
        Labels(targets), Labels(targets[::per_class]), [f"c{c}" for c in range(num_classes)]
    )


@pytest.mark.parametrize(
    "fields, classes, expected",
    [
        ({}, 100, [10] * 10),
        ({"num_tasks": 5}, 100, [20] * 5),
        ({"base_classes": 11, "num_tasks": 10}, 101, [11] + [10] * 9),  # vCLIMB UCF101
        ({"base_classes": 51, "num_tasks": 11}, 101, [51] + [5] * 10),  # TCD UCF101 51 + 10x5
        ({"task_sizes": [3, 2, 2]}, 10, [3, 2, 2]),
    ],
)
def test_task_sizes(fields, classes, expected):
    assert resolve_task_sizes(DataConfig(**fields), classes, 10) == expected


def test_uneven_split_is_an_error_that_says_what_to_set():
    with pytest.raises(ConfigError, match="data.task_sizes"):
        resolve_task_sizes(DataConfig(num_tasks=3), 10, 10)


def test_class_order_seeded_and_explicit():
    data = pair()
    a = Scenario.from_config(data, DataConfig(num_tasks=5), seed=1)
    b = Scenario.from_config(data, DataConfig(num_tasks=5), seed=1)
    c = Scenario.from_config(data, DataConfig(num_tasks=5), seed=2)
    assert a.class_order == b.class_order != c.class_order
    assert sorted(a.class_order) == list(range(10))
    explicit = Scenario.from_config(
        data, DataConfig(num_tasks=5, class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]), 1
    )
    assert explicit.class_order[0] == 9
    with pytest.raises(ConfigError, match="distinct"):
        Scenario.from_config(data, DataConfig(class_order=[0, 0, 1]), 1)


def test_views_remap_labels_to_contiguous_task_ranges():
    data = pair()
    order = [4, 7, 1, 0, 9, 2, 3, 5, 6, 8]
    s = Scenario.from_config(data, DataConfig(task_sizes=[3, 4, 3], class_order=order), seed=0)
    assert s.class_range(1) == (3, 7)
    view = s.train_view(1)
    assert sorted(set(view.targets)) == [3, 4, 5, 6]
    for k in range(len(view)):
        x, label, index = view[k]
        assert x == index  # the Labels dataset's input is its own index
        assert order[label] == data.train.targets[index]  # new label j <-> original class order[j]
    assert set(s.train_view(1, cumulative=True).targets) == set(range(7))
    seen = s.test_seen(2)
    assert len(seen) == 10 and sorted(y for _, y, _ in seen) == list(range(10))
    assert s.class_names()[:2] == ["c4", "c7"]


def test_subsample_caps_samples_per_class():
    s = Scenario.from_config(pair(per_class=5), DataConfig(num_tasks=2, subsample=2), seed=0)
    assert len(s.train_view(0)) == 5 * 2
    assert len(s.test_view(0)) == 5  # test sets are never subsampled


def test_val_fraction_holds_out_a_seeded_share_of_each_class_from_training():
    data = pair(per_class=10)
    s = Scenario.from_config(data, DataConfig(num_tasks=2, val_fraction=0.2), seed=3)
    everything = Scenario.from_config(data, DataConfig(num_tasks=2), seed=3)
    for t in range(2):
        train, val = s.train_view(t), s.val_view(t)
        assert not set(train.indices) & set(val.indices)
        assert sorted(train.indices + val.indices) == everything.train_view(t).indices
        assert sorted(s.train_eval_view(t).indices) == sorted(train.indices)
        assert all(val.targets.count(c) == 2 for c in set(train.targets))  # 0.2 x 10 per class
        assert len(everything.val_view(t)) == 0
    again = Scenario.from_config(data, DataConfig(num_tasks=2, val_fraction=0.2), seed=3)
    other = Scenario.from_config(data, DataConfig(num_tasks=2, val_fraction=0.2), seed=4)
    assert again.val_view(0).indices == s.val_view(0).indices
    assert other.val_view(0).indices != s.val_view(0).indices
    assert len(s.test_seen(1, "val")) == 2 * 10  # validation samples of both tasks' classes


def test_val_fraction_keeps_one_sample_of_each_side():
    s = Scenario.from_config(pair(per_class=3), DataConfig(num_tasks=1, val_fraction=0.01), 0)
    assert len(s.val_view(0)) == 10 and len(s.train_view(0)) == 20
