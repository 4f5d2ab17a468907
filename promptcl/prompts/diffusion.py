"""Gaussian diffusion over prompts (DDPM, Ho et al. 2020; DDIM, Song et al. 2021).

Forward process: q(P_t | P_{t-1}) = N(sqrt(1 - beta_t) P_{t-1}, beta_t I), so that in closed form
q(P_t | P_0) = N(sqrt(abar_t) P_0, (1 - abar_t) I) with abar_t = prod_{s <= t} (1 - beta_s).
Timesteps are 0-based here: t = 0 is the first noising step.

Reverse process: ``sample`` runs the generalised DDIM update on a subsequence of the timesteps
(``steps`` of them, evenly spaced, always ending at t = 0); ``eta = 0`` is DDIM (deterministic
given P_T), ``eta = 1`` is DDPM's ancestral sampling on the respaced schedule (which, with every
timestep, is Ho et al.'s sampler with sigma_t^2 = beta~_t). The denoiser predicts the noise
("epsilon") or the clean prompt ("x0"); each is converted to the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

Prediction = Literal["epsilon", "x0"]
# denoiser(P_t (B, S, D), t (B,) long, condition (B, F)) -> (B, S, D) prediction
Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]


class NoiseSchedule(nn.Module):
    """Linear betas from ``beta_start`` to ``beta_end`` over ``timesteps`` (Ho et al.'s
    defaults: 1e-4, 0.02, 1000). Buffers, so they follow the module's device."""

    def __init__(self, timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        super().__init__()
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("abar", torch.cumprod(1 - betas, 0), persistent=False)

    @property
    def timesteps(self) -> int:
        return len(self.betas)

    def _at(self, values: Tensor, t: Tensor, like: Tensor) -> Tensor:
        return values[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def q_step(self, previous: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """One forward step: P_t from P_{t-1} (t = 0 noises P_0 itself)."""
        beta = self._at(self.betas, t, previous)
        return (1 - beta).sqrt() * previous + beta.sqrt() * noise

    def q_sample(self, clean: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """P_t ~ q(P_t | P_0) in closed form: sqrt(abar_t) P_0 + sqrt(1 - abar_t) noise."""
        abar = self._at(self.abar, t, clean)
        return abar.sqrt() * clean + (1 - abar).sqrt() * noise

    def split(self, noisy: Tensor, t: Tensor, output: Tensor, prediction: Prediction):
        """(x0, epsilon) from the denoiser's ``output`` at (P_t, t)."""
        abar = self._at(self.abar, t, noisy)
        if prediction == "x0":
            return output, (noisy - abar.sqrt() * output) / (1 - abar).sqrt()
        return (noisy - (1 - abar).sqrt() * output) / abar.sqrt(), output

    def respaced(self, steps: int) -> list[int]:
        """``steps`` timesteps from T - 1 down to 0, evenly spaced (DDIM's "uniform" skip)."""
        steps = max(1, min(steps, self.timesteps))
        grid = torch.linspace(self.timesteps - 1, 0, steps).round().long()
        return grid.tolist()

    @torch.no_grad()
    def sample(
        self,
        denoiser: Denoiser,
        condition: Tensor,
        shape: tuple[int, ...],
        steps: int,
        eta: float,
        prediction: Prediction,
        generator: torch.Generator | None = None,
        clip: float | None = None,
    ) -> Tensor:
        """P_0 ~ p(P_0 | condition): (B, *shape) from P_T ~ N(0, I) in ``steps`` denoising steps.

        Noise comes from ``generator`` only (never the global RNG). ``clip`` clamps each x0
        estimate to [-clip, clip] (DDPM's ``clip_denoised``).
        """
        B = condition.shape[0]
        draw = lambda: torch.randn(  # noqa: E731
            (B, *shape), generator=generator, device=generator.device if generator else None
        ).to(condition)
        x = draw()
        times = self.respaced(steps)
        for i, step in enumerate(times):
            t = torch.full((B,), step, dtype=torch.long, device=condition.device)
            x0, eps = self.split(x, t, denoiser(x, t, condition), prediction)
            if clip is not None:  # and the noise that goes with the clamped estimate
                x0 = x0.clamp(-clip, clip)
                abar_t = self._at(self.abar, t, x)
                eps = (x - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()
            if i == len(times) - 1:
                return x0
            abar, abar_next = self.abar[step].item(), self.abar[times[i + 1]].item()
            sigma = eta * ((1 - abar_next) / (1 - abar) * (1 - abar / abar_next)) ** 0.5
            direction = (1 - abar_next - sigma**2) ** 0.5 * eps
            x = abar_next**0.5 * x0 + direction + (sigma * draw() if sigma > 0 else 0)
        return x
