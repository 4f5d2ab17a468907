"""CODA-Prompt: COntinual Decomposed Attention-based prompting.

Smith, Karlinsky, Gutta, Cascante-Bonilla, Kim, Arbelle, Panda, Feris, Kira. "CODA-Prompt:
COntinual Decomposed Attention-Based Prompting for Rehearsal-Free Continual Learning", CVPR 2023
(arXiv 2211.13218). Official code: GT-RIPL/CODA-Prompt (``models/zoo.py::CodaPrompt``,
``learners/prompt.py``, ``configs/{cifar-100,imnet-r}_prompt.yaml``, ``experiments/*.sh``).

What it computes. The query q(x) (B, D) is the final class token of the frozen ViT run without
prompts. In each of the layers [0, 1, 2, 3, 4], M prompt components P_m (L_p, D), keys K_m (D) and
attention vectors A_m (D) (``promptcl.prompts.components.ComponentPool``) give

    α_m(x) = cos(q(x) ⊙ A_m, K_m)          (attention-weighted key-query similarity)
    p(x)   = Σ_m α_m(x) P_m ∈ R^{L_p × D}   (the prompt: a weighted sum of components)

with no softmax and no top-k. p(x) is prefix-tuned into the layer's attention in the "halves"
convention (``promptcl.prompts.prefix.halves``): the first L_p/2 rows are prefix keys and the last
L_p/2 prefix values, so the default L_p = 8 means 4 key + 4 value tokens. The class token of the
prompted forward goes through a linear head. Task t of T owns M/T components: while it trains the
earlier ones are used detached and later ones not at all; at test every component so far is used,
without task identity. Loss: cross-entropy with the logits of classes outside the current
task set to -inf (``logits[:, :last_valid_out_dim] = -inf``), plus
μ Σ_layers [mean((KKᵀ - I)²) + mean((AAᵀ - I)²) + mean((P̄P̄ᵀ - I)²)] (``ortho_penalty``).
The paper's equation numbers could not be checked against the PDF, so none are given here.

Defaults and their sources:
- M = 100, L_p = 8, μ = 0.0: ``--prompt_param 100 8 0.0`` in the current ``experiments/*.sh``. The
  beta release (commit 22948d2, April 2023) ran CIFAR-100 with μ = 0.1 and a one-shot orthogonal
  initialisation; commit 605ac87 ("imagenet-r and online ortho init") introduced the per-task
  Gram-Schmidt re-initialisation and μ = 0.0 (README: "we can even set the ortho penalty of our
  method to 0.0"). The μ printed in the paper could not be checked.
- Adam, lr 1e-3, betas (0.9, 0.999) (``momentum: 0.9`` is Adam's β1 there), weight decay 0,
  batch 128, the CODA cosine schedule stepped per epoch, 20 epochs (CIFAR-100) / 50 (ImageNet-R):
  ``configs/cifar-100_prompt.yaml``, ``configs/imnet-r_prompt.yaml``. The optimiser is rebuilt at
  each task, as ours is. Only the prompt pool and the head are optimised.
- No gradient clipping: ``learners/prompt.py::update_model`` steps the optimiser unclipped.
- Backbone: timm ``vit_base_patch16_224`` (in21k -> in1k), preset ``vit-b16-in21k-ft-in1k``.

Departures from the official code:
- α is computed as q·(A⊙K) / (‖q⊙A‖ ‖K‖) without materialising the (B, M, D) product of the
  official einsum; the same numbers up to rounding, much less memory.
- The pool is allotted at ``begin_task(0)`` (T is known from the task, not the constructor); rows
  not yet started are zero, as in the official code, so nothing observable changes.
- Gram-Schmidt: ``gram_schmidt: official`` (default) reproduces the official classical
  Gram-Schmidt, whose new rows are not exactly orthogonal to old rows once training has made those
  non-orthogonal; ``exact`` projects out their span. The random draws differ from the official
  ones (one (M/T, n) draw per matrix instead of one per row).
- Not in this file, but worth knowing when comparing numbers: the official loaders drop the last
  partial batch; its transforms normalise with mean 0 / std 1 (raw [0, 1] pixels into a ViT trained
  on [-1, 1]) and test ImageNet-R with resize 256 + centre crop 224; its A_N is accuracy on the
  pooled test set of all seen classes and F_N is not FM (specs/image-methods.md §0.2).
- With weight decay > 0 Adam would move the old (detached) rows too, as it would in the official
  code; the default is 0, which keeps them bit-identical.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from promptcl.backbones.base import Backbone, LayerPrompts
from promptcl.errors import ConfigError
from promptcl.methods.base import Batch, Task
from promptcl.methods.prompt_base import PromptConfig, PromptMethod, check_layers
from promptcl.prompts.components import ComponentPool
from promptcl.prompts.prefix import halves
from promptcl.registry import methods


class CodaPromptConfig(PromptConfig):
    name: str = "coda_prompt"
    optimizer: Literal["sgd", "adam", "adamw"] = Field("adam", description="optimiser (Adam)")
    lr: float = Field(1e-3, ge=0, description="learning rate of prompts and head")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas")
    weight_decay: float = Field(0.0, ge=0, description="weight decay (0 keeps old rows frozen)")
    schedule: Literal["constant", "cosine", "coda-cosine"] = Field(
        "coda-cosine", description="lr schedule: CODA's CosineSchedule, stepped per epoch"
    )
    epochs: int = Field(20, ge=0, description="epochs per task (20 CIFAR-100, 50 ImageNet-R)")
    batch_size: int = Field(128, ge=1, description="training batch size")
    grad_clip: float | None = Field(None, description="max gradient norm; the official code: none")
    train_mask: bool = Field(
        True, description="mask logits of classes outside the current task (official: yes)"
    )
    layers: list[int] = Field([0, 1, 2, 3, 4], description="prefix-prompted blocks")
    num_components: int = Field(100, ge=1, description="M, components of the whole stream")
    prompt_length: int = Field(
        8, ge=2, description="L_p, tokens per component: L_p/2 prefix keys + L_p/2 prefix values"
    )
    ortho_mu: float = Field(0.0, ge=0, description="μ, weight of the orthogonality penalty")
    gram_schmidt: Literal["official", "exact"] = Field(
        "official", description="re-init of new rows: the official classical GS, or exact"
    )


@methods.register("coda_prompt")
class CodaPrompt(PromptMethod):
    """Attention-weighted prefix components on a frozen ViT, and a linear head."""

    Config = CodaPromptConfig
    config: CodaPromptConfig

    def __init__(self, config: CodaPromptConfig, backbone: Backbone, class_names: list[str]):
        super().__init__(config, backbone, class_names)
        check_layers("layers", config.layers, backbone)
        if config.prompt_length % 2:
            raise ConfigError(
                f"method.prompt_length must be even (halves: keys + values), got "
                f"{config.prompt_length}"
            )
        self.prompt = ComponentPool(
            config.layers,
            config.num_components,
            config.prompt_length,
            backbone.embed_dim,
            backbone.feature_dim,
            config.gram_schmidt,
        )

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.prompt.begin_task(task.index, task.num_tasks)

    def prompt_state(self) -> list[nn.Module | nn.Parameter]:
        return [self.prompt]  # components, keys and attention vectors

    def features(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """(B, C, H, W) -> (B, F): the class token of the prompted forward."""
        query = self.query(x, index)  # (B, F)
        prompts = self.prompt(query)  # layer -> (B, L_p, D)
        prefix = {layer: halves(p) for layer, p in prompts.items()}  # ((B, L_p/2, D),) * 2
        return self.backbone.encode(x, LayerPrompts(prefix=prefix))

    def predict(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))  # (B, C)

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        logits = self.mask_for_training(self.head(self.features(batch.x, batch.index)))
        ce = F.cross_entropy(logits, batch.y)
        if self.config.ortho_mu == 0:  # as the official code: the penalty is not even computed
            return {"loss": ce}
        ortho = self.prompt.penalty()
        return {"loss": ce + self.config.ortho_mu * ortho, "ce": ce, "ortho": ortho}
