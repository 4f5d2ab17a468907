"""Per-class Gaussian feature statistics and head alignment on replayed samples.

HiDe-Prompt's task-adaptive prediction (TAP; Wang et al., NeurIPS 2023; official code
thu-ml/HiDe-Prompt ``engines/hide_promtp_wtp_and_tap_engine.py``: ``_compute_mean`` and
``train_task_adaptive_prediction``), NoRGa (same code) and STAR-Prompt's second-level replay all
store a Gaussian model of each class's features and later retrain a head on samples drawn from
it, since the old images are gone. ``ClassStats`` is that store; ``replay_batches`` draws the
retraining's batches.

The three storage modes of HiDe's ``--ca_storage_efficient_method``:

- ``covariance``:     mean and full covariance ``torch.cov + 1e-4 I``; samples N(mu, Sigma).
- ``variance``:       mean and the diagonal of that covariance (its ``+1e-4`` included).
- ``multi-centroid``: k-means with ``n_centroids`` clusters per class (HiDe's default, 10); each
                      cluster keeps its mean and its population variance (``np.var``). Samples are
                      drawn per cluster from N(mu_k, diag(var_k) + 1e-4 I); clusters whose variance
                      is all zero (e.g. a single point) are skipped, as in the official code.

HiDe draws the *same number of samples per cluster* (not per class); ``counts`` keeps each
cluster's size. STAR-Prompt's mode:

- ``mixture``:        a diagonal mixture of ``n_centroids`` Gaussians fitted by EM
                      (``promptcl.prompts.mixture``); ``counts`` holds each component's weight
                      times the class's sample count, and ``sample`` draws ``per_class`` samples
                      per *class*, each from a component chosen by weight. Everything is held in buffers whose shapes are fixed at construction, so the
statistics are part of ``state_dict()`` and survive checkpoints.

Several processes: ``fit`` must see the same features on every process (gather them with
``promptcl.collectives.all_gather_cat``, as HiDe-Prompt does); the k-means and the
alignment are then identical everywhere, and nothing here communicates.

Departure: the official code clusters with scikit-learn's ``KMeans`` (random k-means++ restarts,
no fixed seed); ``kmeans`` below is a small deterministic k-means++ / Lloyd in torch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from promptcl.prompts.mixture import Likelihood, fit_diagonal_mixture

Mode = Literal["covariance", "variance", "multi-centroid", "mixture"]
RIDGE = 1e-4  # added to every sampling covariance (official ``torch.eye(...) * 1e-4``)


class ClassStats(nn.Module):
    """Gaussian statistics of ``num_classes`` classes of ``dim``-wide features.

    Buffers (C classes, K components: 1, or ``n_centroids`` for multi-centroid; D = dim):
        means   (C, K, D)  component means
        var     (C, K, D)  sampling variances (variance / multi-centroid), ridge included
        cov     (C, D, D)  sampling covariances (covariance mode only), ridge included
        counts  (C, K)     samples per component (0: the component does not exist)
        usable  (C, K)     components that are sampled
        fitted  (C,)       classes with statistics
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        mode: Mode = "multi-centroid",
        n_centroids: int = 10,
        em_iters: int = 200,
        likelihood: Likelihood = "official",
    ):
        super().__init__()
        if mode not in ("covariance", "variance", "multi-centroid", "mixture"):
            raise ValueError(f"unknown ClassStats mode {mode!r}")
        self.mode: Mode = mode
        self.em_iters, self.likelihood = em_iters, likelihood  # mixture mode only
        K = n_centroids if mode in ("multi-centroid", "mixture") else 1
        self.register_buffer("means", torch.zeros(num_classes, K, dim))
        if mode == "covariance":
            self.register_buffer("cov", torch.zeros(num_classes, dim, dim))
        else:
            self.register_buffer("var", torch.zeros(num_classes, K, dim))
        self.register_buffer("counts", torch.zeros(num_classes, K))
        self.register_buffer("usable", torch.zeros(num_classes, K, dtype=torch.bool))
        self.register_buffer("fitted", torch.zeros(num_classes, dtype=torch.bool))

    @property
    def num_components(self) -> int:
        return self.means.shape[1]

    # -- fitting ------------------------------------------------------------------------------
    @torch.no_grad()
    def fit(
        self, features: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> None:
        """Fit (or refit) the classes present in ``labels`` from ``features`` (N, D)."""
        features = features.detach().to(torch.float64)
        labels = labels.to(features.device)
        for c in labels.unique().tolist():
            x = features[labels == c]  # (n_c, D)
            self.means[c] = 0
            self.counts[c] = 0
            self.usable[c] = False
            if self.mode == "multi-centroid":
                self._fit_centroids(c, x, generator)
            elif self.mode == "mixture":
                self._fit_mixture(c, x, generator)
            else:
                mean = x.mean(0)
                cov = torch.cov(x.T) if len(x) > 1 else torch.zeros(x.shape[1], x.shape[1])
                cov = cov.to(x) + RIDGE * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
                self.means[c, 0] = mean.to(self.means)
                if self.mode == "covariance":
                    self.cov[c] = cov.to(self.cov)
                else:
                    self.var[c, 0] = cov.diagonal().to(self.var)
                self.counts[c, 0] = len(x)
                self.usable[c, 0] = True
            self.fitted[c] = True

    def _fit_centroids(self, c: int, x: Tensor, generator: torch.Generator | None) -> None:
        assign, centres = kmeans(x, self.num_components, generator)  # (n,), (K', D)
        self.var[c] = 0
        for k in range(len(centres)):
            members = x[assign == k]  # (n_k, D)
            if len(members) == 0:
                continue
            var = members.var(0, unbiased=False)  # np.var: population variance
            self.means[c, k] = members.mean(0).to(self.means)
            self.var[c, k] = (var + RIDGE).to(self.var)
            self.counts[c, k] = len(members)
            self.usable[c, k] = bool(var.mean() > 0)  # official: ``if var.mean() == 0: continue``

    def _fit_mixture(self, c: int, x: Tensor, generator: torch.Generator | None) -> None:
        K = self.num_components
        weights, means, var = fit_diagonal_mixture(x, K, self.em_iters, self.likelihood, generator)
        self.means[c] = means.to(self.means)
        self.var[c] = var.to(self.var)
        self.counts[c] = (weights * len(x)).to(self.counts)
        self.usable[c] = weights > 0

    # -- reading ------------------------------------------------------------------------------
    def prototypes(self, classes: Tensor | Sequence[int] | None = None) -> Tensor:
        """Means of every existing component of ``classes`` (default: all fitted), (P, D)."""
        exists = self.counts > 0  # (C, K)
        if classes is None:
            exists = exists & self.fitted[:, None]
        else:
            keep = torch.zeros_like(self.fitted)
            keep[torch.as_tensor(classes, dtype=torch.long, device=keep.device)] = True
            exists = exists & keep[:, None]
        return self.means[exists]

    def components(self, classes: Tensor | Sequence[int]) -> tuple[Tensor, Tensor]:
        """Usable components of ``classes``: their class labels (P,) and flat ids c*K + k (P,)."""
        classes = torch.as_tensor(classes, dtype=torch.long, device=self.usable.device)
        missing = classes[~self.fitted[classes]]
        if len(missing):
            raise ValueError(f"no statistics for classes {missing.tolist()}")
        usable = self.usable[classes]  # (n, K)
        rows, k = usable.nonzero(as_tuple=True)
        labels = classes[rows]
        return labels, labels * self.num_components + k

    def draw(self, component: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One Gaussian sample per flat component id in ``component`` (N,) -> (N, D)."""
        D = self.means.shape[-1]
        eps = torch.randn(len(component), D, generator=generator).to(self.means.device)
        mean = self.means.flatten(0, 1)[component]  # (N, D)
        if self.mode != "covariance":
            return mean + eps * self.var.flatten(0, 1)[component].sqrt()
        out = torch.empty_like(eps)
        cls = component // self.num_components
        for c in cls.unique().tolist():
            rows = cls == c
            L = torch.linalg.cholesky(self.cov[c])  # (D, D), like MultivariateNormal's scale_tril
            out[rows] = mean[rows] + eps[rows] @ L.T
        return out

    def sample(
        self,
        classes: Tensor | Sequence[int],
        per_class: int,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``per_class`` samples per usable component (per centroid for multi-centroid) of each
        class, as in HiDe: features (N, D), labels (N,), grouped by class. In mixture mode,
        ``per_class`` samples per class, each from a component drawn by weight."""
        if self.mode == "mixture":
            return self._sample_mixture(classes, per_class, generator)
        labels, comp = self.components(classes)
        comp = comp.repeat_interleave(per_class)
        return self.draw(comp, generator), labels.repeat_interleave(per_class)

    def _sample_mixture(
        self, classes: Tensor | Sequence[int], per_class: int, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        classes = torch.as_tensor(classes, dtype=torch.long, device=self.counts.device)
        self.components(classes)  # raises for classes without statistics
        weights = self.counts[classes].cpu()  # (n, K)
        picked = torch.multinomial(weights, per_class, replacement=True, generator=generator)
        comp = classes[:, None] * self.num_components + picked.to(classes.device)  # (n, per_class)
        return self.draw(comp.flatten(), generator), classes.repeat_interleave(per_class)


@torch.no_grad()
def kmeans(
    x: Tensor,
    k: int,
    generator: torch.Generator | None = None,
    iters: int = 300,
    tol: float = 1e-4,
) -> tuple[Tensor, Tensor]:
    """Deterministic k-means (k-means++ seeding, Lloyd iterations) of ``x`` (N, D).

    Returns the assignment (N,) and the centres (min(k, N), D). ``tol`` is relative to the mean
    per-feature variance of ``x`` (scikit-learn's convention); empty clusters are re-seeded with
    the point farthest from its centre. With N <= k every point is its own cluster.
    """
    N = len(x)
    if N <= k:
        return torch.arange(N, device=x.device), x.clone()
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    # k-means++: each new centre is drawn with probability proportional to D(x)^2.
    first = torch.randint(N, (1,), generator=generator).item()
    centres = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)  # (N,)
    for _ in range(1, k):
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1 / N)
        i = torch.multinomial(probs.cpu().float(), 1, generator=generator).item()
        centres.append(x[i])
        d2 = torch.minimum(d2, ((x - x[i]) ** 2).sum(1))
    C = torch.stack(centres)  # (k, D)
    threshold = tol * x.var(0, unbiased=False).mean()
    assign = torch.zeros(N, dtype=torch.long, device=x.device)
    for _ in range(iters):
        dist = torch.cdist(x, C)  # (N, k)
        assign = dist.argmin(1)
        new = torch.zeros_like(C).index_add_(0, assign, x)
        size = torch.bincount(assign, minlength=k)
        new = new / size.clamp(min=1)[:, None]
        own = dist.gather(1, assign[:, None]).squeeze(1)  # (N,) distance to own centre
        for j in (size == 0).nonzero().flatten().tolist():  # re-seed empty clusters
            far = own.argmax()
            new[j], own[far] = x[far], 0
        shift = ((new - C) ** 2).sum(1).sum()
        C = new
        if shift <= threshold:
            break
    assign = torch.cdist(x, C).argmin(1)
    return assign, C


def replay_batches(
    stats: ClassStats,
    classes: Tensor | Sequence[int],
    per_class: int,
    batch_size: int | None = None,
    steps_per_epoch: int | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """One epoch of head alignment on Gaussian samples of ``classes``: batches (x, y, component).

    HiDe's ``train_task_adaptive_prediction``: draw ``per_class`` samples per usable component of
    every class, shuffle them and take ``steps_per_epoch`` batches of ``batch_size`` (default
    ``per_class``; HiDe takes as many batches as there are old classes, so it uses only part of
    what it draws; default here: all of them). Only the components of the used samples are drawn:
    a shuffled prefix of the component ids repeated ``per_class`` times has the same distribution
    as HiDe's prefix of shuffled samples. Everything is drawn when the first batch is asked for.
    The head is then trained with ``masked_cross_entropy`` (SGD with momentum and cosine
    annealing in HiDe; ``methods.task_inference`` declares that phase).
    """
    batch_size = batch_size or per_class
    labels, comp = stats.components(classes)  # (P,), (P,)
    total = len(comp) * per_class
    steps = math.ceil(total / batch_size)
    steps = steps if steps_per_epoch is None else min(steps, steps_per_epoch)
    order = torch.randperm(total, generator=generator)[: steps * batch_size]
    pick = order.to(labels.device) // per_class  # (S,) index into the components
    x = stats.draw(comp[pick], generator)  # (S, D)
    y = labels[pick]  # (S,)
    for s in range(steps):
        rows = slice(s * batch_size, (s + 1) * batch_size)
        yield x[rows], y[rows], pick[rows]


@contextlib.contextmanager
def stored_generator(state: Tensor) -> Iterator[torch.Generator]:
    """A CPU generator in the state held by the buffer ``state`` (a generator's ``get_state()``);
    what is drawn from it is written back, so replay resumes exactly from a checkpoint."""
    g = torch.Generator()
    g.set_state(state.cpu())
    yield g
    state.copy_(g.get_state())


def masked_cross_entropy(logits: Tensor, labels: Tensor, allowed: Tensor) -> Tensor:
    """Cross-entropy over the ``allowed`` classes only (the other logits are masked): (B, C)."""
    mask = torch.full_like(logits, float("-inf"))
    mask[:, allowed] = 0
    return F.cross_entropy(logits + mask, labels)
