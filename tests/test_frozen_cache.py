"""The run's cache of frozen passes: each test and plain-view sample is computed once per run,
and every method computes exactly what it computes without the cache."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from interrupt import StopAt

import promptcl
from promptcl.collectives import tensors
from promptcl.config import build_config
from promptcl.engine.trainer import Trainer
from promptcl.frozen_cache import FrozenCache, KeyedLoader

sys.path.insert(0, str(Path(__file__).parent / "golden"))
from record import RUNS, config_of  # noqa: E402


def doubling(calls):
    def compute(x):
        calls.append(len(x))
        return x * 2

    return compute


# -- the store ----------------------------------------------------------------------------------
def test_a_bound_batch_computes_only_the_samples_not_seen_before():
    calls = []
    cache = FrozenCache({"test": 10, "plain": 10})
    x = torch.arange(8.0).view(4, 2)
    with cache.bind("test", torch.tensor([7, 3, 9, 1])):
        first = cache(x, doubling(calls), "query")
    assert calls == [4]
    torch.testing.assert_close(first, x * 2)
    with cache.bind("test", torch.tensor([9, 5, 7])):  # 9 and 7 stored, 5 new
        again = cache(torch.stack([x[2], torch.ones(2), x[0]]), doubling(calls), "query")
    assert calls == [4, 1]
    torch.testing.assert_close(again, torch.stack([x[2] * 2, torch.full((2,), 2.0), x[0] * 2]))
    assert cache.stats()["hits"] == {"test": 2, "plain": 0}
    assert cache.stats()["misses"] == {"test": 5, "plain": 0}
    with cache.bind("plain", torch.tensor([7])):  # another view: index 7 is another sample
        cache(torch.ones(1, 2), doubling(calls), "query")
    with cache.bind("test", torch.tensor([7])):  # another pass of the same sample
        cache(torch.ones(1, 2), doubling(calls), "clip")
    assert calls == [4, 1, 1, 1]


def test_nothing_bound_or_another_batch_is_computed_every_time():
    calls = []
    cache = FrozenCache({"test": 10})
    x = torch.ones(3, 2)
    for _ in range(2):
        cache(x, doubling(calls), "query")
    with cache.bind("test", torch.tensor([0, 1, 2])):
        cache(x, doubling(calls), "query")
        cache(x[:2], doubling(calls), "query")  # not the bound batch: uncached
    assert calls == [3, 3, 3, 2]


def test_rows_computed_under_autocast_never_answer_a_full_precision_pass():
    calls = []
    cache = FrozenCache({"test": 4})
    x = torch.rand(2, 3)
    with cache.bind("test", torch.tensor([0, 1])):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cache(x, doubling(calls), "query")
        full = cache(x, doubling(calls), "query")
    assert calls == [2, 2] and full.dtype == torch.float32


def test_beyond_the_memory_limit_new_samples_are_computed_and_not_stored():
    calls = []
    cache = FrozenCache({"test": 100}, limit_mb=3 * 4 / 2**20)  # room for three float32 rows
    x = torch.arange(5.0).view(5, 1)
    with cache.bind("test", torch.arange(5)):
        cache(x, doubling(calls), "query")
        out = cache(x, doubling(calls), "query")
    assert calls == [5, 2] and cache.bytes == 12
    torch.testing.assert_close(out, x * 2)


def test_multi_view_batches_key_each_view_of_each_sample(tmp_path):
    calls = []
    cache = FrozenCache({"test": 3 * 2})
    x = torch.arange(6.0).view(6, 1)  # 3 samples x 2 views, sample-major
    with cache.bind("test", torch.tensor([2, 0, 1]), views_per_sample=2):
        cache(x, doubling(calls), "query")
    with cache.bind("test", torch.tensor([1, 2]), views_per_sample=2):
        out = cache(torch.zeros(4, 1), doubling(calls), "query")
    assert calls == [6]
    torch.testing.assert_close(out, torch.tensor([[8.0], [10.0], [0.0], [2.0]]))


def test_a_disk_cache_keeps_rows_in_memory_mapped_files_that_close_removes(tmp_path):
    calls = []
    cache = FrozenCache({"test": 1000}, directory=tmp_path)
    x = torch.rand(4, 3, dtype=torch.float64)
    with cache.bind("test", torch.tensor([999, 0, 5, 6])):
        cache(x, doubling(calls), "query")
        out = cache(x, doubling(calls), "query")
    assert calls == [4]
    torch.testing.assert_close(out, x * 2, rtol=0, atol=0)
    (folder,) = tmp_path.iterdir()
    assert [f.stat().st_size for f in folder.iterdir()] == [1000 * 3 * 8]
    cache.close()
    assert list(tmp_path.iterdir()) == []


def test_a_keyed_loader_binds_each_batch_while_it_is_held():
    cache = FrozenCache({"plain": 10})
    batches = [(torch.ones(2, 1), torch.zeros(2), torch.tensor([3, 4]))]
    seen = []
    for _, _, index in KeyedLoader(batches, cache, "plain"):
        seen.append((cache._bound[0], cache._bound[1].tolist(), index.tolist()))
    assert seen == [("plain", [3, 4], [3, 4])] and cache._bound is None


# -- in runs ------------------------------------------------------------------------------------
# Joint training (a trained backbone, like fine-tuning) and augmented L2P (whose augmented training
# views are never cached) add nothing over fine-tuning and L2P.
@pytest.mark.parametrize("name", [n for n in RUNS if n not in ("joint", "l2p-augmented")])
def test_every_method_computes_the_same_with_and_without_the_cache(name, tmp_path):
    results, states = [], []
    for cached in (False, True):
        config = config_of(name, tmp_path / str(cached))
        config["data"]["subsample"] = 8
        config["train"]["frozen_cache"] = cached
        results.append(promptcl.run(config, quiet=True))
        saved = torch.load(tmp_path / str(cached) / "checkpoint.pt", weights_only=True)
        states.append(tensors(saved["method"]))
    np.testing.assert_array_equal(results[0].accuracy, results[1].accuracy)
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        torch.testing.assert_close(states[1][key], states[0][key], rtol=0, atol=0, msg=key)


def test_each_test_image_is_computed_once_per_run(tmp_path):
    """SimpleCIL's only passes are frozen: with the cache the run computes each training image
    once (prototypes) and each test image once, however often it is evaluated; without it,
    each test image once per evaluation that reads it."""
    rows = {}
    for cached in (False, True):
        config = build_config(config_of("simplecil", tmp_path / str(cached)))
        config.train.frozen_cache = cached
        trainer = Trainer(config)
        backbone = trainer.method.backbone
        computed: list[int] = []

        def counted(x, prompts=None, encode=backbone.encode, computed=computed):
            computed.append(len(x))
            return encode(x, prompts)

        backbone.encode = counted
        trainer.run()
        rows[cached] = sum(computed)
    train, test = 30 * 20, [len(trainer.scenario.test_view(t)) for t in range(3)]
    assert rows[True] == train + sum(test)
    assert rows[False] == train + 3 * test[0] + 2 * test[1] + test[2]
    records = [
        json.loads(line)
        for line in (tmp_path / "True" / "log.jsonl").read_text().splitlines()
        if '"frozen_cache"' in line
    ]
    assert [r["frozen_cache"]["misses"]["test"] for r in records] == test
    assert [r["frozen_cache"]["hits"]["test"] for r in records] == [0, test[0], sum(test[:2])]
    assert [r["frozen_cache"]["misses"]["plain"] for r in records] == [200, 200, 200]


def test_a_run_resumed_mid_task_rebuilds_the_cache_and_ends_as_the_uninterrupted_one(tmp_path):
    """HiDe-Prompt: test passes, the plain view in end_task and its task-inference phases."""
    reference = promptcl.run(config_of("hide_prompt", tmp_path / "ref"), quiet=True)
    config = build_config(config_of("hide_prompt", tmp_path / "cut"))
    with pytest.raises(KeyboardInterrupt):  # in task 1's task-inference phase, after its epoch 0
        Trainer(config, StopAt(task=1, phase="tii", epoch=1)).run()
    resumed = promptcl.resume(tmp_path / "cut", quiet=True)
    np.testing.assert_array_equal(resumed.accuracy, reference.accuracy)


def test_a_cache_with_no_room_left_computes_every_time():
    calls = []
    cache = FrozenCache({"test": 10, "plain": 10}, limit_mb=4 * 4 / 2**20)  # four float32 rows
    with cache.bind("test", torch.arange(4)):
        cache(torch.ones(4, 1), doubling(calls), "query")  # fills the limit
    for _ in range(2):
        with cache.bind("plain", torch.arange(2)):
            cache(torch.ones(2, 1), doubling(calls), "query")
    assert calls == [4, 2, 2] and cache.bytes == 16
