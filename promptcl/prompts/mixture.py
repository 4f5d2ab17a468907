"""A diagonal mixture of Gaussians fitted by EM: STAR-Prompt's generative replay (both levels).

STAR-Prompt (Menabue et al., ECCV 2024; official code aimagelab/mammoth
``models/star_prompt_utils/generative_replay.py``, an adaptation of ldeecke/gmm-torch) models each
class's features as a mixture of K diagonal Gaussians (K = 5), fitted in float64:

- initial means: k-means on the features min-max scaled to [0, 1] (one global min and max): the
  best of 50 random draws of K distinct points (cost: the sum over clusters of the mean distance
  of their members to the centre), then Lloyd iterations until no centre moves by more than 1e-3;
- initial variances 1 and weights 1/K;
- EM until the mean log-likelihood gains less than 1e-3, at most ``iters`` + 1 iterations. The
  M-step adds eps = 1e-6 to every variance and to the components' responsibility sums.

``likelihood="official"`` keeps the official E-step, which scores a point with
sum_d (x_d - mu_d)^2 / sigma_d and half the log-determinant, i.e. as if the variance were sigma
(gmm-torch's diagonal ``_estimate_log_prob`` takes ``rsqrt(var)`` for the precision): the
responsibilities are softer than the model's own. ``likelihood="exact"`` uses the Gaussian
likelihood. The M-step and the samples use the fitted variance either way.

Departures: a class with fewer than K samples gets one component per sample (the official code
cannot draw K distinct points); an empty k-means cluster keeps its centre (the official one
becomes NaN); the official reversion "to the old parameters when the score decreases" is a no-op
(it keeps a reference to the updated tensors), so it is left out; random numbers come from the
given generator, not from numpy's global one.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

Likelihood = Literal["official", "exact"]
EPS = 1e-6  # gmm-torch's eps on variances and responsibility sums
TOLERANCE = 1e-3  # EM: minimum gain of the mean log-likelihood; k-means: largest centre shift
KMEANS_DRAWS = 50  # random initial centre sets (``init_times``)


@torch.no_grad()
def kmeans_init(x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """gmm-torch's ``get_kmeans_mu``: initial means (k, D) of ``x`` (N, D), N >= k."""
    low, high = x.min(), x.max()
    scaled = (x - low) / (high - low) if high > low else x - low
    best, best_cost = None, math.inf
    for _ in range(KMEANS_DRAWS):
        centres = scaled[torch.randperm(len(x), generator=generator)[:k].to(x.device)]
        assign = torch.cdist(scaled, centres).argmin(1)
        cost = sum(
            (scaled[assign == c] - centres[c]).norm(dim=1).mean() for c in range(k)
        )  # every centre is a data point, so no cluster is empty
        if cost < best_cost:
            best, best_cost = centres, float(cost)
    assert best is not None
    centres = best.clone()
    while True:
        assign = torch.cdist(scaled, centres).argmin(1)
        old = centres.clone()
        for c in range(k):
            if (assign == c).any():
                centres[c] = scaled[assign == c].mean(0)
        if (old - centres).norm(dim=1).max() <= TOLERANCE:
            break
    return centres * (high - low) + low


def log_densities(x: Tensor, means: Tensor, var: Tensor, likelihood: Likelihood) -> Tensor:
    """Per-component log densities (N, K) of ``x`` (N, D) under diagonal Gaussians (K, D)."""
    D = x.shape[1]
    sq = (x[:, None, :] - means[None]) ** 2  # (N, K, D)
    if likelihood == "official":  # gmm-torch: precision rsqrt(var), log det of rsqrt(var)
        precision = var.rsqrt()
        return -0.5 * (
            D * math.log(2 * math.pi) + (sq * precision).sum(-1) - precision.log().sum(-1)
        )
    return -0.5 * (D * math.log(2 * math.pi) + (sq / var).sum(-1) + var.log().sum(-1))


@torch.no_grad()
def fit_diagonal_mixture(
    x: Tensor,
    k: int,
    iters: int,
    likelihood: Likelihood = "official",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """EM fit of ``x`` (N, D): weights (K,), means (K, D), variances (K, D), all float64.

    With N < k, each sample is its own component (variance eps) and the rest get weight 0.
    """
    x = x.detach().to(torch.float64)
    N, D = x.shape
    if N < k:
        weights = torch.zeros(k, dtype=x.dtype, device=x.device)
        weights[:N] = 1 / N
        means = torch.zeros(k, D, dtype=x.dtype, device=x.device)
        means[:N] = x
        return weights, means, torch.full_like(means, EPS)
    means = kmeans_init(x, k, generator)
    var = torch.ones_like(means)
    log_weights = torch.full((k,), -math.log(k), dtype=x.dtype, device=x.device)
    score = -math.inf
    for _ in range(iters + 1):
        # E-step
        joint = log_densities(x, means, var, likelihood) + log_weights  # (N, K)
        resp = (joint - joint.logsumexp(1, keepdim=True)).exp()  # (N, K)
        # M-step
        mass = resp.sum(0) + EPS  # (K,)
        means = resp.T @ x / mass[:, None]  # (K, D)
        var = resp.T @ (x * x) / mass[:, None] - means * means + EPS  # E[x^2] - mu^2 + eps
        log_weights = (mass / N).log()
        # the mean log-likelihood under the new parameters decides whether to go on
        old, score = score, float((log_densities(x, means, var, likelihood) + log_weights)
                                  .logsumexp(1).mean())  # fmt: skip
        if not math.isfinite(score):
            raise ValueError(
                "the mixture fit diverged (non-finite log-likelihood); the class's features may "
                "be constant or contain NaN"
            )
        if score - old < TOLERANCE:
            break
    return log_weights.exp(), means, var
