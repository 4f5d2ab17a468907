"""HiDe-Prompt: hierarchical decomposition of prompt-based continual learning.

Wang, Zhang, Li, Zhang, Su, Zhu. "Hierarchical Decomposition of Prompt-Based Continual Learning:
Rethinking Obscured Sub-optimality" (NeurIPS 2023). Official code: thu-ml/HiDe-Prompt, read for
this file: ``engines/hide_tii_engine.py``, ``engines/hide_promtp_wtp_and_tap_engine.py``,
``trainers/{tii,hideprompt}_trainer.py``, ``peft/prompt/hide_prompt.py``,
``vits/hide_prompt_vision_transformer.py``, ``configs/{cifar100,imr}_hideprompt_5e.py``,
``training_scripts/train_{cifar100,imr}_vit.sh``. Spec: ../shared/specs/image-methods.md §1.4.

Class-incremental prediction is split into three parts (equation names follow the code):

- WTP (within-task prediction). One prefix prompt P_t per task (prompt t of the pool is task t's;
  shape (layers, 2, L, D), "per_kv": L key and L value tokens at blocks 0..4), uniform(-1, 1)
  init, no keys. Training uses the true task id and, for t > 0, the momentum prompt
      P~_t = (1 - m) P_t + m mean(P_0..P_{t-1}).detach()        (EPrompt.forward, m = 0.01)
  After the task, P_t <- P~_t; at the start of task t > 0, P_t <- P_{t-1} (shared_prompt_pool).
  Loss: CE over the current task's classes + reg * L_cr, with ``orth_loss``
      L_cr = CE( M M^T / 0.8, arange ),  M = [mu_old; f]                       ((P + B), F)
  where mu_old are the stored prototypes (every centroid of every old class) and f the batch's
  pre-logit features; on task 0 M = f.
- TII (task-identity inference). The frozen backbone's class-token feature q(x) goes through
  ``MlpMapping`` (structure [2]: LN(x + W2 GELU(W1 x)), D -> 2D -> D) and a linear head over
  all classes, trained per task with CE over the task's classes. At test time
  t^ = task(argmax over seen classes), per sample.
- TAP (task-adaptive prediction). After each task, Gaussian statistics (``ClassStats``, default
  10 centroids per class) of the task's classes are stored for the TII features q(x) and for the
  WTP features f(x; P_t). For t > 0, the WTP head, and the TII MLP + head, are retrained on
  samples of all seen classes (``align_head``: SGD, momentum 0.9, cosine, ``crct_epochs``).
- Inference: t^ from TII, the ViT run with P_t^ (per sample), the aligned head's logits.

Defaults (CIFAR-100 script ``train_cifar100_vit.sh`` + ``configs/cifar100_hideprompt_5e.py``):
- Learning rates are the *effective* ones: the trainers rescale ``lr`` by the per-device batch,
  ``lr * 24 / 256`` (``unscale_lr=True``), so WTP lr = 0.03 * 24/256 = 0.0028125 (prompts) and
  0.1 of that for the head (``--larger_prompt_lr``); TII lr = 5e-4 * 24/256 = 4.6875e-5 and TII
  alignment lr = 0.005 * 24/256 = 4.6875e-4 (``tii_trainer`` rescales ``ca_lr`` too; the WTP
  trainer does not, so WTP alignment lr = 0.005).
- batch 192 = 8 GPUs x 24 per device (DDP averages the 8 gradients); the alignment draws
  5 x batch features per class/centroid (WTP) and batch per class/centroid (TII), and takes as
  many batches per epoch as there are old classes (``crct_num``).
- Adam, betas (0.9, 0.999), weight decay 0, grad clip 1.0, 50 WTP epochs, 20 TII epochs,
  L = 5, reg 0.1, m = 0.01, crct_epochs 30, multi-centroid with 10 centroids.
- Weight decay is 0 everywhere, alignment included: the config file declares both
  ``--weight-decay`` (0.0) and ``--weight_decay`` (5e-4) with the same dest, argparse keeps the
  first default, and the alignment's param group ``weight_decay=args.weight_decay`` overrides
  the ``SGD(..., weight_decay=5e-4)`` literal.
- Plain CE: ``--smoothing 0.1`` is declared but the trainers build ``CrossEntropyLoss()``.
- Head and TII layers: timm's init (trunc-normal std 0.02, zero bias), as the official ViT does.
- ``query_cache`` has no effect: WTP training uses the true task id, never the query.

Departures from the official code:
1. TII is trained inside ``end_task`` (after the WTP epochs, on the loader of the task's training
   data) instead of in a separate run before WTP. The two models never read each other during
   training, so only the data differ: the TII sees each image once through the test transforms
   (its features are computed once and cached) instead of augmented views each epoch. Its own
   epochs, lr, fresh Adam, clipping, batch size and constant schedule are kept.
2. Schedule: the CIFAR script uses timm's step schedule (x0.1 after 30 epochs; with the
   official ``step(epoch)`` call after each epoch, epochs 31..49 run at 0.1 lr); our trainer has
   no step schedule, so the default is constant [inferred nearest]. ImageNet-R's timm cosine
   has min lr 1e-5; ours decays to 0.
3. The official L_cr is computed per GPU (24 features + prototypes); here over the whole batch
   in one process, and per process (over its B/W features) when several processes train.
4. k-means is a deterministic torch implementation (official: scikit-learn, unseeded).
5. The alignment draws only the samples it trains on (same distribution as drawing all and
   taking a shuffled prefix, see ``align_head``).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from promptcl.backbones.base import Backbone, LayerPrompts
from promptcl.engine import distributed
from promptcl.methods.base import Batch, Task
from promptcl.methods.prompt_base import PromptConfig, PromptMethod, check_layers
from promptcl.prompts.gaussian import ClassStats, Mode, align_head
from promptcl.prompts.prefix import per_kv
from promptcl.registry import methods

CR_TEMPERATURE = 0.8  # official ``orth_loss``: ``torch.matmul(M, M.t()) / 0.8``
CA_MOMENTUM = 0.9  # official ``optim.SGD(..., momentum=0.9)`` in the alignment


class HiDePromptConfig(PromptConfig):
    name: str = "hide_prompt"
    lr: float = Field(
        0.0028125, ge=0, description="prompt lr: 0.03 * 24/256 (script lr, official batch scaling)"
    )
    larger_prompt_lr: bool = Field(
        True, description="head lr = 0.1 * lr unless head_lr is set (--larger_prompt_lr)"
    )
    epochs: int = Field(50, ge=0, description="WTP epochs per task (CIFAR script)")
    batch_size: int = Field(192, ge=1, description="8 GPUs x 24 per device (CIFAR script)")
    prompt_length: int = Field(5, ge=1, description="L key and L value tokens per layer (--length)")
    prompt_layers: list[int] = Field(
        [0, 1, 2, 3, 4], description="blocks with task prompts (e_prompt_layer_idx)"
    )
    prompt_momentum: float = Field(0.01, ge=0, le=1, description="m of the momentum prompt")
    reg: float = Field(0.1, ge=0, description="weight of the contrastive regulariser L_cr")
    ca_storage: Mode = Field(
        "multi-centroid", description="class statistics (ca_storage_efficient_method)"
    )
    n_centroids: int = Field(10, ge=1, description="k-means centroids per class (multi-centroid)")
    crct_epochs: int = Field(30, ge=0, description="alignment epochs (WTP head and TII)")
    ca_lr: float = Field(0.005, ge=0, description="WTP head alignment lr (SGD)")
    ca_weight_decay: float = Field(
        0.0, ge=0, description="alignment weight decay (effective official value, see docstring)"
    )
    tii_epochs: int = Field(20, ge=0, description="TII epochs per task (TII stage of the script)")
    tii_lr: float = Field(4.6875e-5, ge=0, description="TII lr: 5e-4 * 24/256 (Adam)")
    tii_ca_lr: float = Field(4.6875e-4, ge=0, description="TII alignment lr: 0.005 * 24/256 (SGD)")
    tii_mlp_structure: list[int] = Field(
        [2], description="hidden widths of the TII MlpMapping, in multiples of D ([] = none)"
    )


def _init_linear(layer: nn.Linear) -> nn.Linear:
    """timm's ViT init of linear layers (``init_weights_vit_timm``)."""
    nn.init.trunc_normal_(layer.weight, std=0.02)
    nn.init.zeros_(layer.bias)
    return layer


class MlpMapping(nn.Module):
    """HiDe's TII feature mapping: LN(x + MLP(x)) with hidden widths ``dim * hidden[i]``.

    Layer i of the MLP is Linear -> GELU, except the last (Linear only) and, for deeper
    structures, the middle one (Linear -> LayerNorm). Dropout is 0 in the official runs.
    """

    def __init__(self, dim: int, hidden: list[int]):
        super().__init__()
        widths = [dim, *(dim * h for h in hidden), dim]
        layers: list[nn.Module] = []
        for i in range(len(hidden) + 1):
            linear = _init_linear(nn.Linear(widths[i], widths[i + 1]))
            if i == len(hidden):
                layers.append(nn.Sequential(linear))
            elif i == len(hidden) // 2 and i != 0:
                layers.append(nn.Sequential(linear, nn.LayerNorm(widths[i + 1])))
            else:
                layers.append(nn.Sequential(linear, nn.GELU()))
        self.net = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.net(x))  # (B, D)


class TaskInference(nn.Module):
    """The TII classifier on frozen features: MlpMapping (or nothing) + a head over all classes."""

    def __init__(self, dim: int, num_classes: int, hidden: list[int]):
        super().__init__()
        self.mlp = MlpMapping(dim, hidden) if hidden else nn.Identity()
        self.head = _init_linear(nn.Linear(dim, num_classes))

    def forward(self, features: Tensor) -> Tensor:
        return self.head(self.mlp(features))  # (B, C)


def contrastive_regulariser(features: Tensor, prototypes: Tensor) -> Tensor:
    """Official ``orth_loss`` without its weight: CE(M M^T / 0.8, arange), M = [prototypes; f]."""
    M = torch.cat([prototypes.to(features), features])  # (P + B, F)
    sim = M @ M.T / CR_TEMPERATURE  # (P + B, P + B)
    return F.cross_entropy(sim, torch.arange(len(M), device=M.device))


@methods.register("hide_prompt")
class HiDePrompt(PromptMethod):
    """WTP prompts per task, TII on frozen features, TAP head alignment on Gaussian replay."""

    Config = HiDePromptConfig
    config: HiDePromptConfig

    def __init__(self, config: HiDePromptConfig, backbone: Backbone, class_names: list[str]):
        super().__init__(config, backbone, class_names)
        check_layers("prompt_layers", config.prompt_layers, backbone)
        C, dim = self.num_classes, backbone.feature_dim
        _init_linear(self.head)
        self.tii = TaskInference(dim, C, config.tii_mlp_structure)
        # One prompt per task, (layers, 2, L, D) each; slot t is created at begin_task(t).
        self.prompt_shape = (len(config.prompt_layers), 2, config.prompt_length, backbone.embed_dim)
        self.prompts = nn.ParameterList()
        self.wtp_stats = ClassStats(C, dim, config.ca_storage, config.n_centroids)
        self.tii_stats = ClassStats(C, dim, config.ca_storage, config.n_centroids)
        self.register_buffer("class_task", torch.full((C,), -1, dtype=torch.long))

    # -- prompts ------------------------------------------------------------------------------
    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        t = task.index
        self.class_task[task.start : task.end] = t
        device = self.head.weight.device
        while len(self.prompts) <= t:
            self.prompts.append(nn.Parameter(torch.empty(self.prompt_shape, device=device)))
            nn.init.uniform_(self.prompts[-1], -1, 1)
        if t > 0:  # shared_prompt_pool: start from the previous task's prompt
            with torch.no_grad():
                self.prompts[t].copy_(self.prompts[t - 1])
        for i, prompt in enumerate(self.prompts):
            prompt.requires_grad_(i == t)

    def task_prompt(self, t: int, momentum: bool) -> Tensor:
        """P_t, or with ``momentum`` (t > 0) (1 - m) P_t + m mean(P_<t) detached: (layers, 2, L, D)."""
        prompt = self.prompts[t]
        m = self.config.prompt_momentum
        if momentum and t > 0 and m > 0:
            old = torch.stack([self.prompts[i] for i in range(t)]).detach().mean(0)
            prompt = (1 - m) * prompt + m * old
        return prompt

    def layer_prompts(self, prompts: Tensor) -> LayerPrompts:
        """Per-sample prompts (B, layers, 2, L, D) -> prefix keys/values at ``prompt_layers``."""
        return LayerPrompts(
            prefix={
                layer: per_kv(prompts[:, j]) for j, layer in enumerate(self.config.prompt_layers)
            }
        )

    def features(self, x: Tensor, prompt: Tensor) -> Tensor:
        """f(x; P) with one prompt (layers, 2, L, D) for the whole batch: (B, F)."""
        batched = prompt.unsqueeze(0).expand(len(x), *prompt.shape)
        return self.backbone.encode(x, self.layer_prompts(batched))

    # -- the contract -------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        assert self.task is not None, "begin_task was not called"
        cfg = self.config
        head_lr = cfg.head_lr
        if head_lr is None:
            head_lr = 0.1 * cfg.lr if cfg.larger_prompt_lr else cfg.lr
        return [
            {"params": [self.prompts[self.task.index]]},
            {"params": list(self.head.parameters()), "lr": head_lr},
        ]

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        assert self.task is not None, "begin_task was not called"
        f = self.features(batch.x, self.task_prompt(self.task.index, momentum=True))  # (B, F)
        ce = F.cross_entropy(self.mask_for_training(self.head(f)), batch.y)
        cr = contrastive_regulariser(f, self.wtp_stats.prototypes())
        return {"loss": ce + self.config.reg * cr, "ce": ce.detach(), "cr": cr.detach()}

    @torch.no_grad()
    def end_task(self, task: Task, loader: DataLoader) -> None:
        cfg, t = self.config, task.index
        self.prompts[t].copy_(self.task_prompt(t, momentum=True))  # P_t <- momentum prompt
        plain, prompted, labels = self._task_features(t, loader)  # (N, F), (N, F), (N,)
        # One generator per task, seeded from the global RNG (restored by the trainer on resume).
        g = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
        self.tii_stats.fit(plain, labels, g)
        self.wtp_stats.fit(prompted, labels, g)
        self._train_tii(plain, labels, g)
        if t > 0:  # TAP: re-align both classifiers on replayed features of all seen classes
            self._align(self.tii, self.tii_stats, task, cfg.batch_size, cfg.tii_ca_lr, g)
            self._align(self.head, self.wtp_stats, task, 5 * cfg.batch_size, cfg.ca_lr, g)

    def _align(
        self,
        head: nn.Module,
        stats: ClassStats,
        task: Task,
        per_class: int,
        lr: float,
        g: torch.Generator,
    ) -> None:
        """``train_task_adaptive_prediction``: as many batches of ``per_class`` features per
        epoch as there are old classes (``crct_num``)."""
        align_head(
            head,
            stats,
            range(task.end),
            epochs=self.config.crct_epochs,
            per_class=per_class,
            steps_per_epoch=task.start,
            lr=lr,
            momentum=CA_MOMENTUM,
            weight_decay=self.config.ca_weight_decay,
            generator=g,
        )

    def _task_features(self, t: int, loader: DataLoader) -> tuple[Tensor, Tensor, Tensor]:
        """Un-instructed q(x) and instructed f(x; P_t) features of the task's training data.

        With several processes each reads its block of the data and the blocks are gathered in
        order, so every process fits the statistics and trains the TII on the same features."""
        device = self.head.weight.device
        plain, prompted, labels = [], [], []
        for x, y, *_ in loader:
            x = x.to(device)
            plain.append(self.query(x))
            prompted.append(self.features(x, self.prompts[t]))
            labels.append(y.to(device))
        gather = distributed.all_gather_cat
        return gather(torch.cat(plain)), gather(torch.cat(prompted)), gather(torch.cat(labels))

    def _train_tii(self, features: Tensor, labels: Tensor, g: torch.Generator) -> None:
        """The TII stage for one task: Adam, CE over the task's classes, clipped gradients."""
        cfg = self.config
        params = list(self.tii.parameters())
        optimizer = torch.optim.Adam(
            params, lr=cfg.tii_lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.tii.train()
        with torch.enable_grad():
            for _ in range(cfg.tii_epochs):
                order = torch.randperm(len(features), generator=g).to(features.device)
                for rows in order.split(cfg.batch_size):
                    logits = self.mask_for_training(self.tii(features[rows]))  # (b, C)
                    loss = F.cross_entropy(logits, labels[rows])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip is not None:
                        nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    optimizer.step()
        self.tii.eval()

    @torch.no_grad()
    def infer_tasks(self, x: Tensor) -> Tensor:
        """TII: t^ = task(argmax over the seen classes of the TII logits), per sample: (B,)."""
        assert self.task is not None, "begin_task was not called"
        logits = self.tii(self.query(x))[:, : self.task.end]  # (B, seen)
        return self.class_task[logits.argmax(1)]

    def predict(self, x: Tensor) -> Tensor:
        t_hat = self.infer_tasks(x)  # (B,)
        prompts = torch.stack(list(self.prompts))[t_hat]  # (B, layers, 2, L, D)
        return self.head(self.backbone.encode(x, self.layer_prompts(prompts)))  # (B, C)
