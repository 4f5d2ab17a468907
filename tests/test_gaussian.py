"""ClassStats (per-class Gaussian statistics) and head alignment on replayed samples."""

import pytest
import torch
from torch import nn

from promptcl.prompts.gaussian import (
    RIDGE,
    ClassStats,
    kmeans,
    masked_cross_entropy,
    replay_batches,
)


def gaussian_classes(n: int = 400, dim: int = 6, seed: int = 0):
    """Two correlated Gaussian classes (labels 0 and 2), with their true means."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=g)
    means = {0: torch.full((dim,), 3.0), 2: torch.linspace(-4, 4, dim)}
    xs = [torch.randn(n, dim, generator=g) @ mix + means[c] for c in (0, 2)]
    return torch.cat(xs), torch.tensor([0] * n + [2] * n)


@pytest.mark.parametrize("mode", ["covariance", "variance"])
def test_fitted_moments_equal_torch_mean_and_cov(mode):
    x, y = gaussian_classes()
    stats = ClassStats(num_classes=3, dim=6, mode=mode)
    stats.fit(x, y)
    assert stats.fitted.tolist() == [True, False, True]
    for c in (0, 2):
        xc = x[y == c].double()
        cov = torch.cov(xc.T) + RIDGE * torch.eye(6, dtype=torch.float64)
        torch.testing.assert_close(stats.means[c, 0], xc.mean(0).float())
        if mode == "covariance":
            torch.testing.assert_close(stats.cov[c], cov.float())
        else:
            torch.testing.assert_close(stats.var[c, 0], cov.diagonal().float())
    assert stats.counts[:, 0].tolist() == [400, 0, 400]
    torch.testing.assert_close(stats.prototypes(), stats.means[[0, 2], 0])


@pytest.mark.parametrize("mode", ["covariance", "variance"])
def test_samples_have_the_fitted_mean_and_covariance(mode):
    x, y = gaussian_classes()
    stats = ClassStats(3, 6, mode)
    stats.fit(x, y)
    feats, labels = stats.sample(
        [2, 0], per_class=20000, generator=torch.Generator().manual_seed(1)
    )
    assert feats.shape == (40000, 6) and labels.tolist()[::20000] == [2, 0]
    for c in (0, 2):
        s = feats[labels == c]
        fitted = stats.cov[c] if mode == "covariance" else torch.diag(stats.var[c, 0])
        scale = fitted.diagonal().sqrt()
        assert ((s.mean(0) - stats.means[c, 0]).abs() / scale).max() < 0.05
        err = (torch.cov(s.T) - fitted).abs() / (scale[:, None] * scale[None, :])
        assert err.max() < 0.05  # relative to the standard deviations
        if mode == "variance":  # diagonal: no correlation is replayed
            assert err.max() < 0.05 and (fitted - torch.diag(fitted.diagonal())).abs().max() == 0


def test_multi_centroid_finds_well_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[10.0, 0, 0], [-10, 0, 0], [0, 10, 0]])
    x = torch.cat([c + 0.5 * torch.randn(50, 3, generator=g) for c in centres])
    stats = ClassStats(num_classes=2, dim=3, mode="multi-centroid", n_centroids=3)
    stats.fit(x, torch.ones(150, dtype=torch.long))
    assert not stats.fitted[0] and stats.fitted[1]
    # Each true cluster is found once, with its 50 points, mean and variance.
    order = torch.cdist(centres, stats.means[1]).argmin(1)
    assert sorted(order.tolist()) == [0, 1, 2]
    assert stats.counts[1, order].tolist() == [50, 50, 50]
    for k, j in enumerate(order.tolist()):
        members = x[50 * k : 50 * (k + 1)]
        torch.testing.assert_close(stats.means[1, j], members.mean(0))
        torch.testing.assert_close(stats.var[1, j], members.var(0, unbiased=False) + RIDGE)
    # HiDe samples the same number of features per centroid.
    feats, labels = stats.sample([1], per_class=200, generator=torch.Generator().manual_seed(0))
    assert feats.shape == (600, 3) and (labels == 1).all()
    nearest = torch.cdist(feats, centres).argmin(1)
    assert torch.bincount(nearest, minlength=3).tolist() == [200, 200, 200]


def test_kmeans_is_deterministic_and_single_points_are_not_sampled():
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(3))
    a = kmeans(x, 5, torch.Generator().manual_seed(7))
    b = kmeans(x, 5, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # Fewer points than centroids: every point is a cluster of variance 0, which HiDe skips.
    stats = ClassStats(1, 4, "multi-centroid", n_centroids=10)
    stats.fit(x[:3], torch.zeros(3, dtype=torch.long))
    assert stats.counts[0].tolist() == [1, 1, 1] + [0] * 7
    assert not stats.usable.any() and len(stats.prototypes()) == 3
    assert len(stats.components([0])[0]) == 0


def test_statistics_live_in_the_state_dict():
    x, y = gaussian_classes()
    stats = ClassStats(3, 6, "multi-centroid", n_centroids=4)
    stats.fit(x, y)
    fresh = ClassStats(3, 6, "multi-centroid", n_centroids=4)
    fresh.load_state_dict(stats.state_dict())
    for name, buffer in stats.named_buffers():
        assert torch.equal(buffer, getattr(fresh, name)), name


def accuracy(head: nn.Module, stats: ClassStats, classes: list[int]) -> float:
    feats, labels = stats.sample(classes, 500, torch.Generator().manual_seed(123))
    with torch.no_grad():
        pred = head(feats)[:, classes].argmax(1)
    return (torch.tensor(classes)[pred] == labels).float().mean().item()


@pytest.mark.parametrize("mode", ["covariance", "multi-centroid"])
def test_head_alignment_on_replay_learns_the_gaussian_classes(mode):
    torch.manual_seed(0)
    dim, classes = 16, [0, 1, 2, 3]
    g = torch.Generator().manual_seed(0)
    means = 2.0 * torch.randn(4, dim, generator=g)
    x = torch.cat([m + torch.randn(200, dim, generator=g) for m in means])
    stats = ClassStats(6, dim, mode, n_centroids=3)
    stats.fit(x, torch.arange(4).repeat_interleave(200))
    head = nn.Linear(dim, 6)  # two more outputs than classes: they stay out of the softmax
    nn.init.normal_(head.weight, std=1.0)
    before = accuracy(head, stats, classes)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.02, momentum=0.9)
    allowed = torch.tensor(classes)
    losses = []
    for _ in range(10):  # the alignment phase's epochs, as HiDe-Prompt's TAP runs them
        total, seen = 0.0, 0
        for x, y, _ in replay_batches(stats, classes, per_class=128, batch_size=64, generator=g):
            loss = masked_cross_entropy(head(x), y, allowed)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, seen = total + float(loss.detach()) * len(y), seen + len(y)
        losses.append(total / seen)
    after = accuracy(head, stats, classes)
    assert before < 0.6 and after > 0.95
    assert losses[-1] < losses[0] / 3


def test_replay_batches_draw_what_hide_draws():
    """steps_per_epoch batches of batch_size; labels of the classes asked for; components whose
    class is the label."""
    stats = ClassStats(5, 4, "multi-centroid", n_centroids=2)
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(1))
    stats.fit(x, torch.arange(4).repeat_interleave(10), torch.Generator().manual_seed(0))
    batches = list(replay_batches(stats, [0, 2, 3], 6, 4, 3, torch.Generator().manual_seed(0)))
    assert [len(b[1]) for b in batches] == [4, 4, 4]
    labels = torch.cat([b[1] for b in batches])
    assert set(labels.tolist()) <= {0, 2, 3}
    _, comp = stats.components([0, 2, 3])
    assert torch.equal(comp[torch.cat([b[2] for b in batches])] // 2, labels)


def test_masked_cross_entropy_ignores_the_other_classes():
    logits = torch.tensor([[2.0, 9.0, 1.0]])
    expected = torch.nn.functional.cross_entropy(logits[:, [0, 2]], torch.tensor([0]))
    torch.testing.assert_close(
        masked_cross_entropy(logits, torch.tensor([0]), torch.tensor([0, 2])), expected
    )
