"""A learnable context token per class in CLIP's text tower: STAR-Prompt's first-level prompts.

CoOp-style (Zhou et al., IJCV 2022) but class-specific and of length 1: the text of class c is
[SOS, v_c, name_c, ".", EOS], v_c learned, and the class's key is the normalised text embedding
k_c = normalize(E_txt([SOS, v_c, name_c, ".", EOS])) (official ``first_stage_model.py``: the
caption "X {name}." whose "X" embedding is replaced by v_c; promptcl inserts v_c after SOS into
"{name}.", the same sequence). v_c ~ N(0, 0.02^2), as in the official ``setup_text_prompting``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from promptcl.backbones.base import Backbone, LayerPrompts

CAPTION = "{}."  # the official "X {}." without the placeholder X, which v_c takes the place of


class ClassContext(nn.Module):
    """Context vectors (C, 1, D_text) and the tokenised class captions (C, L)."""

    def __init__(self, clip: Backbone, class_names: list[str]):
        super().__init__()
        width = clip.text_width  # type: ignore[attr-defined]
        self.context = nn.Parameter(torch.randn(len(class_names), 1, width) * 0.02)
        tokens = clip.tokenize([CAPTION.format(name) for name in class_names])  # type: ignore[attr-defined]
        self.register_buffer("tokens", tokens, persistent=False)

    def keys(self, clip: Backbone, start: int, end: int) -> Tensor:
        """Normalised keys (end - start, F) of classes [start, end); differentiable in v_c."""
        prompts = LayerPrompts(tokens={0: self.context[start:end]})
        text = clip.encode_text(self.tokens[start:end], prompts)  # type: ignore[attr-defined]
        return F.normalize(text, dim=-1)

    def orthogonality(self, start: int, end: int) -> Tensor:
        """mean_{c in [start, end), c' < start} (v_c . v_c')^2, past vectors detached; 0 at start 0
        (official ``compute_ortho_loss`` of the first stage)."""
        current = self.context[start:end, 0]  # (n, D_text)
        if start == 0:
            return current.new_zeros(())
        past = self.context[:start, 0].detach()  # (m, D_text)
        return (current @ past.T).pow(2).mean()
