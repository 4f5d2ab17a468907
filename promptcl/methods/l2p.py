"""L2P: Learning to Prompt for Continual Learning.

Wang, Zhang, Lee, Zhang, Sun, Ren, Su, Perot, Dy, Pfister. CVPR 2022 (arXiv 2112.08654).
Official code: google-research/l2p (JAX), ``configs/cifar100_l2p.py``, ``models/prompt.py``,
``models/vit.py``, ``train_continual.py``. What is implemented (paper §4, in the code's terms):

    q(x)    = CLS feature of the frozen backbone run without prompts            (B, F)
    K_x     = the N prompts with the largest cos(q(x), k_m), m = 1..M, per sample
              (the paper's argmin of the cosine distance γ = 1 − cos)
    x_p     = [x_cls; P_s1; ...; P_sN; x_patches] at block 0's input    (B, 1 + N L_p + P, D)
    logits  = W · mean_{j ∈ prompt positions} f(x_p)_j + b     (``vit_classifier="prompt"``)
    loss    = CE(train-masked logits, y) + λ Σ_{i ∈ K_x} (1 − cos(q(x), k_i))  (pull constraint)

Prompt length convention: prompt-tuning tokens (not a prefix), so each prompt adds L_p tokens and
N prompts add N·L_p tokens to the sequence (25 with the defaults).

Defaults and their sources:
- M=10, L_p=5, N=5: the paper's, and the first JAX commit's ``configs/cifar100_l2p.py`` (8cfb210).
  The JAX config at HEAD uses M=10, L_p=10, N=4.
- λ=1.0 (``pull_constraint_coeff``), Adam, constant lr, grad-norm clip 1.0, 5 epochs, train_mask,
  optimiser re-initialised every task (``reinit_optimizer``; the trainer always does this).
- Batch 128: 16 per device x 8 devices (JAX README).
- lr 0.015: the JAX config says 0.03, but ``train_continual.py`` treats it as the rate for a batch
  of 256 and scales it, ``lr = 0.03 * 128 / 256``; 0.015 is what the optimiser actually used.
- Head: weights and bias initialised to zero (JAX ``models/vit.py``: ``kernel_init=zeros``).
- ``train_voting``: in training the JAX code replaces each sample's prompt ids by the batch
  majority (``batchwise_prompt=True`` applies to training too). A training batch holds one task,
  so this leaks nothing; it is kept. With several processes each votes over its own slice of the
  batch, as the JAX code votes per device (under ``pmap``).

Departures from the official code:
- Test-time selection is per sample. The JAX config also votes at test time, and its test batches
  hold a single task, so the vote acts as a task oracle (specs/peer-frameworks.md §7.3).
  ``task_oracle_voting: true`` restores it, and the run is then labelled "task-oracle".
- Prompts and keys are initialised U(-1, 1) as in the PyTorch ports (JH-LEE-KR/l2p-pytorch);
  the JAX ``nn.initializers.uniform()`` draws U[0, 0.01): ``prompt_init: flax``.
- Prompt tokens are inserted after the class token, the JAX code puts them before it. In both
  they carry no position embedding (as in the paper), and attention is permutation-equivariant,
  so the order changes nothing.
- l2p-pytorch (JH-LEE-KR), on which mammoth and LAMDA-PILOT build, does give them one: its
  ``resize_pos_embed`` widens the position embedding for the prompts by copying the class
  token's row, so every prompt token gets the class token's position embedding.
  ``prompt_pos_embed: cls`` reproduces it (the row is added to the prompts at block 0's input,
  which equals adding it before ``norm_pre``, an identity in every ViT those ports load).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.nn import functional as F

from promptcl.backbones.base import Backbone, LayerPrompts
from promptcl.errors import ConfigError
from promptcl.methods.base import Batch
from promptcl.methods.prompt_base import PromptConfig, PromptMethod
from promptcl.prompts.pool import INIT_RANGES, PromptPool
from promptcl.registry import methods


class L2PConfig(PromptConfig):
    name: str = "l2p"
    lr: float = Field(0.015, ge=0, description="Adam lr: the JAX 0.03 at batch 256, x 128/256")
    epochs: int = Field(5, ge=0, description="epochs per task")
    batch_size: int = Field(128, ge=1, description="training batch size (16/device x 8)")
    pool_size: int = Field(10, ge=1, description="M, prompts in the pool")
    prompt_length: int = Field(5, ge=1, description="L_p, tokens per prompt")
    top_k: int = Field(5, ge=1, description="N, prompts selected per sample")
    pull_coeff: float = Field(1.0, ge=0, description="λ, weight of the pull constraint")
    prompt_init: Literal["uniform", "flax"] = Field(
        "uniform", description="prompt/key init: U(-1,1) (PyTorch ports) or U[0,0.01) (JAX)"
    )
    train_voting: bool = Field(
        True, description="batch-majority prompt ids in training (JAX batchwise_prompt)"
    )
    task_oracle_voting: bool = Field(
        False, description="batch-majority prompt ids at TEST time: a task oracle, off"
    )
    prompt_pos_embed: Literal["none", "cls"] = Field(
        "none", description="prompt tokens' position embedding: none (paper, JAX) or cls (ports)"
    )

    @property
    def task_oracle(self) -> bool:
        return self.task_oracle_voting

    @model_validator(mode="after")
    def _top_k_fits(self) -> L2PConfig:
        if self.top_k > self.pool_size:
            raise ConfigError(f"top_k={self.top_k} exceeds pool_size={self.pool_size}")
        return self


@methods.register("l2p")
class L2P(PromptMethod):
    """A pool of input prompts picked per sample by a frozen query; head on the prompt tokens."""

    Config = L2PConfig
    config: L2PConfig

    def __init__(self, config: L2PConfig, backbone: Backbone, class_names: list[str]):
        super().__init__(config, backbone, class_names)
        D = backbone.embed_dim
        self.pool = PromptPool(
            config.pool_size,
            backbone.feature_dim,
            (config.prompt_length, D),
            INIT_RANGES[config.prompt_init],
        )
        if config.prompt_pos_embed == "cls" and not hasattr(backbone, "class_position"):
            raise ConfigError(
                "method.prompt_pos_embed=cls copies a timm ViT's class-token position embedding "
                f"(l2p-pytorch); backbone {type(backbone).__name__} has none: set it to none"
            )
        # The head reads prompt tokens, which have the token width D (not the pooled width F).
        self.head = nn.Linear(D, self.num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def prompt_state(self) -> list[nn.Module | nn.Parameter]:
        return [self.pool]  # prompts and keys

    def classify(self, x: Tensor, indices: Tensor) -> Tensor:
        """(B, ...) inputs and (B, N) prompt ids -> (B, C) logits."""
        prompts = self.pool.gather(indices).flatten(1, 2)  # (B, N, L_p, D) -> (B, N L_p, D)
        if self.config.prompt_pos_embed == "cls":
            prompts = prompts + self.backbone.class_position()  # (D,) broadcast, frozen
        tokens = self.backbone(x, LayerPrompts(tokens={0: prompts}))  # (B, 1 + N L_p + P, D)
        return self.head(tokens[:, 1 : 1 + prompts.shape[1]].mean(dim=1))  # (B, C)

    def select(self, query: Tensor, vote: bool) -> Tensor:
        indices, _ = self.pool.select(query, self.config.top_k)  # (B, N)
        return self.pool.vote(indices) if vote else indices

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        query = self.query(batch.x, batch.index)  # (B, F)
        indices = self.select(query, self.config.train_voting)  # (B, N)
        ce = F.cross_entropy(self.mask_for_training(self.classify(batch.x, indices)), batch.y)
        pull = self.pool.pull_loss(query, indices)
        return {"loss": ce + self.config.pull_coeff * pull, "ce": ce, "pull": pull}

    def predict(self, x: Tensor) -> Tensor:
        return self.classify(x, self.select(self.query(x), self.config.task_oracle_voting))
