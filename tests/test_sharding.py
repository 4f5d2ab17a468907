"""Which samples each process reads: W processes together read the global batches of one."""

import pytest
import torch
from torch.utils.data import DataLoader

from promptcl import collectives
from promptcl.config import build_config
from promptcl.engine.progress import Console
from promptcl.engine.sharding import ShardedBatches, contiguous_shard, shard_sizes, shuffled_order
from promptcl.engine.trainer import Trainer
from promptcl.errors import ConfigError


def test_shuffled_order_is_the_order_of_a_shuffled_dataloader():
    for seed in (0, 7, 2**40 + 3):
        loader = DataLoader(
            range(53), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed)
        )
        assert shuffled_order(53, seed) == [i for batch in loader for i in batch.tolist()]
    assert sorted(shuffled_order(53, 1)) == list(range(53))


@pytest.mark.parametrize("world", [2, 3, 4])
def test_processes_together_read_the_global_batches_of_one(world):
    order = shuffled_order(69, 5)
    single = list(ShardedBatches(order, 16))
    assert [len(b) for b in single] == [16, 16, 16, 16, 5]
    ranks = [list(ShardedBatches(order, 16, world, r)) for r in range(world)]
    for step, batch in enumerate(single):
        assert sum((ranks[r][step] for r in range(world)), []) == batch


def test_an_uneven_last_batch_is_weighted_and_an_empty_share_is_filled():
    order = list(range(20))
    # global batches 8, 8, 4 over 3 processes: the last one splits 2/1/1
    shares = [ShardedBatches(order, 8, 3, r).shares() for r in range(3)]
    assert shares[0] == pytest.approx([3 * 3 / 8, 3 * 3 / 8, 3 * 2 / 4])
    assert shares[2] == pytest.approx([3 * 2 / 8, 3 * 2 / 8, 3 * 1 / 4])
    assert sum(s[2] for s in shares) == pytest.approx(3)  # the average weight is 1
    # 2 samples left for 4 processes: processes 2 and 3 read the batch's first sample, weight 0
    order = list(range(10))
    filled = ShardedBatches(order, 8, 4, 3, fill_empty=True)
    assert list(filled) == [[6, 7], [8]] and filled.shares() == [1.0, 0.0]
    assert filled.positions() == [6, 7]
    assert list(ShardedBatches(order, 8, 4, 3)) == [[6, 7]]


def test_contiguous_shards_cover_the_dataset_in_order():
    assert shard_sizes(10, 3) == [4, 3, 3]
    assert [list(contiguous_shard(10, 3, r)) for r in range(3)] == [
        [0, 1, 2, 3], [4, 5, 6], [7, 8, 9]
    ]  # fmt: skip


def test_a_global_batch_that_does_not_split_among_the_processes_is_refused(tiny_run, monkeypatch):
    monkeypatch.setattr(collectives, "world_size", lambda: 4)
    config = build_config(tiny_run({"name": "linear_probe", "batch_size": 30}))
    with pytest.raises(ConfigError, match=r"batch_size=30 .* multiple of 4 \(e.g. 28\)"):
        Trainer(config, Console(quiet=True))
