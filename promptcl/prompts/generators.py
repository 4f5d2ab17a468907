"""Conditional prompt generators: p(P | E) for a prompt P (B, S, D) and a condition E, a feature
(B, F) or feature tokens (B, N, F).

One conditional 1-D U-Net (``PromptUNet``, over the S prompt tokens with D channels, FiLM-
conditioned on a timestep and E) is trained in one of four ways (``PromptGenerator``):

- ``diffusion``:     a denoiser of a DDPM over prompts (``prompts.diffusion``); sampling from
                     pure noise with DDIM or DDPM in a few steps.
- ``deterministic``: P = net(0, 0, E), no noise; trained to regress the target.
- ``vae``:           a conditional VAE: z ~ q(z | P_0, E) = N(mu, sigma^2) per token, P = net(z,
                     0, E); reconstruction + beta KL; z ~ N(0, I) at test time.
- ``gan``:           a conditional GAN: P = net(z, 0, E), z ~ N(0, I); a discriminator D(P, E)
                     told targets from generated prompts (non-saturating losses).

``training_losses(target, condition)`` returns the generated prompt the classifier is trained
through (differentiable) and the generator's own loss; ``sample(condition, generator)`` draws
a prompt at test time from the given ``torch.Generator`` only. All of it is [inferred]: CoSTEP
names a conditional DDPM with a U-Net denoiser and GAN / VAE generators as ablations, nothing
more (specs/video-methods.md §1.3-1.4).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from promptcl.prompts.diffusion import NoiseSchedule, Prediction

GeneratorKind = Literal["diffusion", "deterministic", "vae", "gan"]


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of timesteps (B,) -> (B, dim) (Vaswani et al.; Ho et al.)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class FiLMBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, with the embedding as scale and shift; residual."""

    def __init__(self, width: int, emb: int):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(8, width), nn.GroupNorm(8, width)
        self.conv1 = nn.Conv1d(width, width, 3, padding=1)
        self.conv2 = nn.Conv1d(width, width, 3, padding=1)
        self.film = nn.Linear(emb, 2 * width)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # (B, W, S), (B, E)
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb).unsqueeze(-1).chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


def pooled(condition: Tensor) -> Tensor:
    """(B, F) conditions as they are; (B, N, F) condition tokens averaged."""
    return condition.mean(dim=1) if condition.dim() == 3 else condition


class PromptUNet(nn.Module):
    """eps/x0 = net(P_t (B, S, D), t (B,), E): a two-level 1-D U-Net over the S prompt tokens.

    E is (B, F), or (B, N, F) tokens: their mean then conditions every block (FiLM) and the
    middle level also cross-attends to them (as text-conditioned image U-Nets do).
    """

    def __init__(self, dim: int, condition_dim: int, width: int = 128, tokens: bool = False):
        super().__init__()
        if tokens:
            self.cross = nn.MultiheadAttention(
                width, 4, kdim=condition_dim, vdim=condition_dim, batch_first=True
            )
            self.cross_norm = nn.LayerNorm(width)
        emb = 4 * width
        self.width = width
        self.time = nn.Sequential(nn.Linear(width, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.condition = nn.Sequential(
            nn.Linear(condition_dim, emb), nn.SiLU(), nn.Linear(emb, emb)
        )
        self.inp = nn.Conv1d(dim, width, 1)
        self.down_blocks = nn.ModuleList([FiLMBlock(width, emb), FiLMBlock(width, emb)])
        self.down = nn.Conv1d(width, width, 3, stride=2, padding=1)
        self.mid = nn.ModuleList([FiLMBlock(width, emb), FiLMBlock(width, emb)])
        self.up = nn.ConvTranspose1d(width, width, 4, stride=2, padding=1)
        self.merge = nn.Conv1d(2 * width, width, 1)
        self.up_blocks = nn.ModuleList([FiLMBlock(width, emb), FiLMBlock(width, emb)])
        self.out = nn.Sequential(nn.GroupNorm(8, width), nn.SiLU(), nn.Conv1d(width, dim, 1))

    def forward(self, x: Tensor, t: Tensor, condition: Tensor) -> Tensor:
        S = x.shape[1]
        emb = self.time(timestep_embedding(t, self.width)) + self.condition(pooled(condition))
        h = self.inp(F.pad(x.transpose(1, 2), (0, S % 2)))  # (B, W, S'), S' even
        for block in self.down_blocks:
            h = block(h, emb)
        skip = h
        h = self.down(h)  # (B, W, S' / 2)
        for block in self.mid:
            h = block(h, emb)
        if condition.dim() == 3:  # (B, W, S'/2) queries over the N condition tokens
            if not hasattr(self, "cross"):
                raise ValueError("condition tokens given to a U-Net built without tokens=True")
            q = self.cross_norm(h.transpose(1, 2))
            h = h + self.cross(q, condition, condition, need_weights=False)[0].transpose(1, 2)
        h = self.merge(torch.cat([self.up(h), skip], dim=1))  # (B, W, S')
        for block in self.up_blocks:
            h = block(h, emb)
        return self.out(h)[..., :S].transpose(1, 2)  # (B, S, D)


class Discriminator(nn.Module):
    """D(P, E) -> (B,) logits: a token-wise MLP, mean over tokens, joined with the condition."""

    def __init__(self, dim: int, condition_dim: int, width: int = 128):
        super().__init__()
        self.tokens = nn.Sequential(nn.Linear(dim, width), nn.SiLU(), nn.Linear(width, width))
        self.head = nn.Sequential(
            nn.Linear(width + condition_dim, width), nn.SiLU(), nn.Linear(width, 1)
        )

    def forward(self, prompt: Tensor, condition: Tensor) -> Tensor:
        summary = self.tokens(prompt).mean(dim=1)  # (B, W)
        return self.head(torch.cat([summary, pooled(condition)], dim=1)).squeeze(1)


class PromptGenerator(nn.Module):
    """A generator of (S, D) prompts conditioned on (F,) features (see the module docstring)."""

    def __init__(
        self,
        kind: GeneratorKind,
        shape: tuple[int, int],
        condition_dim: int,
        width: int = 128,
        timesteps: int = 1000,
        prediction: Prediction = "x0",
        kl_weight: float = 1e-3,
        condition_tokens: bool = False,
    ):
        super().__init__()
        self.kind, self.shape, self.prediction, self.kl_weight = kind, shape, prediction, kl_weight
        dim = shape[1]
        self.net = PromptUNet(dim, condition_dim, width, condition_tokens)
        self.schedule = NoiseSchedule(timesteps)
        if kind == "vae":  # q(z | P_0, E): per-token mean and log-variance
            self.encoder = nn.Linear(dim + condition_dim, 2 * dim)
        if kind == "gan":
            self.discriminator = Discriminator(dim, condition_dim, width)

    def _zeros(self, condition: Tensor) -> tuple[Tensor, Tensor]:
        B = condition.shape[0]
        return condition.new_zeros(B, *self.shape), condition.new_zeros(B, dtype=torch.long)

    def training_losses(self, target: Tensor, condition: Tensor) -> tuple[Tensor, Tensor]:
        """(the generated prompt (B, S, D), the generator's loss) for targets (B, S, D).

        Gradients reach the target only through the generated prompt (the generator's own loss
        sees it detached), so the classifier can train the targets while the generator follows.
        """
        goal = target.detach()
        if self.kind == "diffusion":
            t = torch.randint(0, self.schedule.timesteps, (len(target),), device=target.device)
            noise = torch.randn_like(target)
            noisy = self.schedule.q_sample(target, t, noise)
            output = self.net(noisy, t, condition)
            x0, _ = self.schedule.split(noisy, t, output, self.prediction)
            wanted = goal if self.prediction == "x0" else noise
            return x0, F.mse_loss(output, wanted)
        zeros, t0 = self._zeros(condition)
        if self.kind == "deterministic":
            generated = self.net(zeros, t0, condition)
            return generated, F.mse_loss(generated, goal)
        if self.kind == "vae":
            cond = pooled(condition)[:, None].expand(-1, goal.shape[1], -1)
            tokens = torch.cat([goal, cond], dim=2)
            mu, logvar = self.encoder(tokens).chunk(2, dim=2)
            z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
            generated = self.net(z, t0, condition)
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean()
            return generated, F.mse_loss(generated, goal) + self.kl_weight * kl
        # gan: one loss trains both players; each sees the other's parameters detached
        generated = self.net(torch.randn_like(goal), t0, condition)
        real = self.discriminator(goal, condition)
        fake = self.discriminator(generated.detach(), condition)
        d_loss = F.binary_cross_entropy_with_logits(
            real, torch.ones_like(real)
        ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        judged = functional_call(self.discriminator, frozen, (generated, condition))
        g_loss = F.binary_cross_entropy_with_logits(judged, torch.ones_like(judged))
        return generated, d_loss + g_loss

    @torch.no_grad()
    def sample(
        self,
        condition: Tensor,
        generator: torch.Generator,
        steps: int = 5,
        eta: float = 0.0,
    ) -> Tensor:
        """A prompt (B, S, D) per condition; noise from ``generator`` only."""
        if self.kind == "diffusion":
            return self.schedule.sample(
                self.net, condition, self.shape, steps, eta, self.prediction, generator
            )
        zeros, t0 = self._zeros(condition)
        if self.kind == "deterministic":
            return self.net(zeros, t0, condition)
        z = torch.randn(zeros.shape, generator=generator, device=generator.device).to(zeros)
        return self.net(z, t0, condition)
