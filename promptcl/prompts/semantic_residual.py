"""Class-specific prompts chosen per layer by CLIP: STAR-Prompt's second-level prompts.

Official code: aimagelab/mammoth ``models/star_prompt_utils/second_stage_model.py`` (``Prompter``).
In every prompted layer l, each class c has a residual prompt p_{l,c} (D) and a modulation vector
a_{l,c} (F, the width of CLIP's image embedding). With q = q(x) the frozen CLIP image embedding
and k_c the class's first-level key (normalised):

    s_{l,c} = 5 cos(q * softmax(a_{l,c}), k_c)          (retrieval, ``compute_maps``)
    c*_l    = argmax_c s_{l,c}                           (over the classes seen so far)
    r_l     = s_{l,c*} p_{l,c*}                          (paper Eq. 5, confidence modulation;
                                                          without it r_l = p_{l,c*})

r_l is a ``value`` prompt: added to the attention values of every token, which equals
h + MSA(LN(h)) + W_o r_l (``LayerPrompts.value``). In ``prefix`` mode (the official
``--prompt_mode concat`` ablation) a class holds 2 x ``prefix_length`` tokens instead, whose
first half are prefix keys and second half prefix values (CODA-Prompt's attention).

Parameters of past classes (and their similarities) are detached, so only the current task's
prompts learn; the argmax still runs over every seen class. Initialisation as in the official
``get_parameter``: ``orthogonal_`` on a (C, 3, D) tensor whose first slice is kept (it is then
deliberately not orthogonal), on (C, 2 L_p, D) in prefix mode, and on (C, F) for a.

Departure: the cosine is computed as q (f_c k_c)^T / ||q f_c|| (two matrix products) instead of
materialising the (B, C, F) modulated queries; equal up to rounding.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from promptcl.backbones.base import LayerPrompts

SIMILARITY_SCALE = 5.0  # the official fixed scale of s (``compute_maps``: ``* 5``)
PromptMode = Literal["value", "prefix"]


def _orthogonal(*shape: int) -> Tensor:
    return nn.init.orthogonal_(torch.empty(*shape))


class SemanticResidualPrompts(nn.Module):
    """Residual prompts (layers, C, D) (prefix: (layers, C, 2 L_p, D)), modulation vectors
    (layers, C, F) and the class keys (C, F), a buffer set from the first level."""

    def __init__(
        self,
        layers: list[int],
        num_classes: int,
        embed_dim: int,
        query_dim: int,
        mode: PromptMode = "value",
        prefix_length: int = 5,
    ):
        super().__init__()
        self.layers, self.mode, self.prefix_length = list(layers), mode, prefix_length
        C, D = num_classes, embed_dim
        rows = []
        for _ in layers:  # in the official order: p_l, then a_l, layer by layer
            p = (
                _orthogonal(C, 3, D)[:, 0]
                if mode == "value"
                else _orthogonal(C, 2 * prefix_length, D)
            )
            rows.append((p, _orthogonal(C, query_dim)))
        shape = (C, D) if mode == "value" else (C, 2 * prefix_length, D)
        residuals = torch.stack([p for p, _ in rows]) if rows else torch.zeros(0, *shape)
        modulation = torch.stack([a for _, a in rows]) if rows else torch.zeros(0, C, query_dim)
        self.residuals = nn.Parameter(residuals)
        self.modulation = nn.Parameter(modulation)  # (layers, C, F)
        self.register_buffer("keys", torch.zeros(C, query_dim))

    def set_keys(self, start: int, keys: Tensor) -> None:
        self.keys[start : start + len(keys)] = keys.detach()

    def _rows(self, param: Tensor, seen: int, past: int) -> Tensor:
        """param[:seen] with the past classes' rows detached."""
        return torch.cat([param[:past].detach(), param[past:seen]])

    def similarity(self, query: Tensor, i: int, seen: int, past: int = 0) -> Tensor:
        """s_{l,c} of the i-th prompted layer for classes [0, seen): (B, seen)."""
        f = self._rows(self.modulation[i], seen, past).softmax(-1)  # (seen, F)
        k = self.keys[:seen]  # (seen, F)
        norm = ((query * query) @ (f * f).T).sqrt().clamp_min(1e-12)  # ||q * f_c||, (B, seen)
        return SIMILARITY_SCALE * (query @ (f * k).T) / norm

    def prompts(
        self, query: Tensor, seen: int, past: int = 0, confidence: bool = True
    ) -> LayerPrompts:
        """The layers' prompts for the frozen CLIP queries ``query`` (B, F)."""
        out = LayerPrompts()
        for i, layer in enumerate(self.layers):
            s = self.similarity(query, i, seen, past)  # (B, seen)
            pick = s.argmax(1)  # (B,)
            p = self._rows(self.residuals[i], seen, past)[pick]  # (B, D) or (B, 2 L_p, D)
            if confidence:
                weight = s.gather(1, pick[:, None])  # (B, 1): gradients reach a of the chosen class
                p = p * (weight if p.dim() == 2 else weight[:, :, None])
            if self.mode == "value":
                out.value[layer] = p
            else:
                keys, values = p.split(self.prefix_length, dim=1)  # (B, L_p, D) each
                out.prefix[layer] = (keys, values)
        return out

    def orthogonality(self, seen: int, past: int) -> Tensor:
        """The official second-stage ``compute_ortho_loss``, averaged over layers:
        mean_c (||p_c||^2 - 1)^2 + mean_{c, c'} (p_c . p_c')^2 for current c and past c' (past
        detached); prefix mode sums it over the key and the value halves (flattened). 0 when
        there are no past classes."""
        if past == 0 or not self.layers:
            return self.residuals.new_zeros(())
        total = self.residuals.new_zeros(())
        for i in range(len(self.layers)):
            p = self.residuals[i]
            halves = (
                [p]
                if self.mode == "value"
                else [h.flatten(1) for h in p.split(self.prefix_length, 1)]
            )
            for rows in halves:
                current, old = rows[past:seen], rows[:past].detach()
                intra = ((current * current).sum(1) - 1).pow(2).mean()
                inter = (current @ old.T).pow(2).mean()
                total = total + intra + inter
        return total / len(self.layers)
