"""The query cache returns exactly what the frozen backbone would compute, once per sample."""

import torch

from promptcl.prompts.query import QueryCache


def test_cache_computes_each_sample_once_and_returns_the_same_values():
    calls = []

    def compute(x):
        calls.append(len(x))
        return x.sum(dim=1, keepdim=True) * 2

    cache = QueryCache()
    x = torch.arange(12.0).view(4, 3)
    first = cache(x, torch.tensor([7, 3, 9, 1]), compute)
    torch.testing.assert_close(first, compute(x))
    calls.clear()
    again = cache(x[[2, 0]], torch.tensor([9, 7]), compute)  # both cached: no computation
    assert calls == []
    torch.testing.assert_close(again, first[[2, 0]])
    mixed = cache(torch.cat([x[:1], torch.ones(1, 3)]), torch.tensor([7, 42]), compute)
    assert calls == [1]  # only the new sample 42 is computed
    torch.testing.assert_close(mixed[1], torch.tensor([6.0]))
    assert (cache.hits, cache.misses, len(cache)) == (3, 5, 5)


def test_training_with_the_cache_gives_the_same_predictions_without_augmentation(
    tiny_run, tmp_path
):
    import numpy as np

    import promptcl

    method = {
        "name": "coda_prompt",
        "num_components": 30,
        "layers": [0, 1],
        "epochs": 2,
        "batch_size": 16,
    }
    results = [
        promptcl.run(
            tiny_run({**method, "query_cache": cache}, output={"dir": str(tmp_path / str(cache))}),
            quiet=True,
        )
        for cache in (False, True)
    ]
    np.testing.assert_array_equal(results[0].accuracy, results[1].accuracy)
