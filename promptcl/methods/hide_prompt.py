"""HiDe-Prompt: hierarchical decomposition of prompt-based continual learning.

Wang, Zhang, Li, Zhang, Su, Zhu. "Hierarchical Decomposition of Prompt-Based Continual Learning:
Rethinking Obscured Sub-optimality" (NeurIPS 2023). Official code: thu-ml/HiDe-Prompt, read for
this file: ``engines/hide_tii_engine.py``, ``engines/hide_promtp_wtp_and_tap_engine.py``,
``trainers/{tii,hideprompt}_trainer.py``, ``peft/prompt/hide_prompt.py``,
``vits/hide_prompt_vision_transformer.py``, ``configs/{cifar100,imr}_hideprompt_5e.py``,
``training_scripts/train_{cifar100,imr}_vit.sh``. Spec: ../shared/specs/image-methods.md §1.4.

Class-incremental prediction is split into three parts (equation names follow the code); TII and
TAP live in ``task_inference.py``, shared with Hash:

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
  samples of all seen classes (phases align-tii and align-head: SGD, momentum 0.9, cosine,
  ``crct_epochs``).
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

What the prompts earn, measured (``benchmarks/frozen_prompts.py``, synth-shapes-10, seed 0):
trained prompts give FAA 57.25, prompts frozen at their initialisation 58.15, because task
inference is the bottleneck: it picks the right task for 62 % of the test images, and a task's
prompt serves only its own task. Given each image's true task the trained prompts reach 86.0 %
over all classes, the frozen ones 58.15 % (with ``shared_prompt_pool`` every frozen prompt is a
copy of the first, so the task chosen does not matter to them).

Departures from the official code:
1. TII is trained as a phase of each task after the WTP epochs (on the task's training data)
   instead of in a separate run before WTP. The two models never read each other during
   training, so only the data differ: the TII sees each image once through the test transforms
   (its features are computed once and cached) instead of augmented views each epoch. Its own
   epochs, lr, fresh Adam, clipping, batch size and constant schedule are kept.
2. Schedule: the CIFAR script's timm step schedule is ours (``schedule: step``, x0.1 every 30
   epochs, called as the official engine calls it, so epochs 31..49 run at 0.1 lr). ImageNet-R's
   timm cosine has min lr 1e-5; ours decays to 0.
3. The official L_cr is computed per GPU (24 features + prototypes); here over the whole batch
   in one process, and per process (over its B/W features) when several processes train.
4. k-means is a deterministic torch implementation (official: scikit-learn, unseeded).
5. The alignment draws only the samples it trains on (same distribution as drawing all and
   taking a shuffled prefix, see ``prompts.gaussian.replay_batches``).
6. The released ``peft/prompt`` E-prompt reshape mixes keys, values and samples (the
   dualprompt-pytorch bug it inherits, specs/peer-frameworks.md §7.3); here each sample's own
   keys and values are used. ``released_kv_mixing: true`` reproduces the bug exactly
   (``prompts.prefix.released_reshape``) and labels the run, so a published number can be
   split into what the method and what the bug give.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.utils.data import DataLoader

from promptcl.backbones.base import Backbone, LayerPrompts
from promptcl.config import Schedule
from promptcl.methods.base import Batch, Task
from promptcl.methods.prompt_base import check_layers
from promptcl.methods.task_inference import TaskInferenceConfig, TaskInferenceMethod
from promptcl.prompts.prefix import RELEASED_RESHAPE_BUG, per_kv, released_reshape
from promptcl.registry import methods


class HiDePromptConfig(TaskInferenceConfig):
    name: str = "hide_prompt"
    lr: float = Field(
        0.0028125, ge=0, description="prompt lr: 0.03 * 24/256 (script lr, official batch scaling)"
    )
    epochs: int = Field(50, ge=0, description="WTP epochs per task (CIFAR script)")
    schedule: Schedule = Field("step", description="x0.1 after 30 epochs (CIFAR script, timm)")
    batch_size: int = Field(192, ge=1, description="8 GPUs x 24 per device (CIFAR script)")
    prompt_length: int = Field(5, ge=1, description="L key and L value tokens per layer (--length)")
    prompt_layers: list[int] = Field(
        [0, 1, 2, 3, 4], description="blocks with task prompts (e_prompt_layer_idx)"
    )
    prompt_momentum: float = Field(0.01, ge=0, le=1, description="m of the momentum prompt")
    released_kv_mixing: bool = Field(
        False, description="the released E-prompt reshape bug (mixes keys, values, samples)"
    )

    @property
    def released_bugs(self) -> list[str]:
        return [RELEASED_RESHAPE_BUG] if self.released_kv_mixing else []


@methods.register("hide_prompt")
class HiDePrompt(TaskInferenceMethod):
    """WTP prompts per task, TII on frozen features, TAP head alignment on Gaussian replay."""

    Config = HiDePromptConfig
    config: HiDePromptConfig

    def __init__(self, config: HiDePromptConfig, backbone: Backbone, class_names: list[str]):
        super().__init__(config, backbone, class_names)
        check_layers("prompt_layers", config.prompt_layers, backbone)
        # One prompt per task, (layers, 2, L, D) each; slot t is created at begin_task(t).
        self.prompt_shape = (len(config.prompt_layers), 2, config.prompt_length, backbone.embed_dim)
        self.prompts = nn.ParameterList()

    # -- prompts ------------------------------------------------------------------------------
    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        t = task.index
        device = self.head.weight.device
        while len(self.prompts) <= t:
            self.prompts.append(nn.Parameter(torch.empty(self.prompt_shape, device=device)))
            nn.init.uniform_(self.prompts[-1], -1, 1)
        if t > 0:  # shared_prompt_pool: start from the previous task's prompt
            with torch.no_grad():
                self.prompts[t].copy_(self.prompts[t - 1])
        for i, prompt in enumerate(self.prompts):
            prompt.requires_grad_(i == t)

    def prompt_state(self) -> list[nn.Module | nn.Parameter]:
        return [self.prompts]

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
        mix = released_reshape if self.config.released_kv_mixing else lambda p: p
        return LayerPrompts(
            prefix={
                layer: per_kv(mix(prompts[:, j]))
                for j, layer in enumerate(self.config.prompt_layers)
            }
        )

    def features(self, x: Tensor, prompt: Tensor) -> Tensor:
        """f(x; P) with one prompt (layers, 2, L, D) for the whole batch: (B, F)."""
        batched = prompt.unsqueeze(0).expand(len(x), *prompt.shape)
        return self.backbone.encode(x, self.layer_prompts(batched))

    def task_features(self, x: Tensor, tasks: Tensor) -> Tensor:
        prompts = torch.stack(list(self.prompts))[tasks]  # (B, layers, 2, L, D)
        return self.backbone.encode(x, self.layer_prompts(prompts))

    # -- the contract -------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        assert self.task is not None, "begin_task was not called"
        return [
            {"params": [self.prompts[self.task.index]]},
            {"params": list(self.head.parameters()), "lr": self.head_lr()},
        ]

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        assert self.task is not None, "begin_task was not called"
        f = self.features(batch.x, self.task_prompt(self.task.index, momentum=True))  # (B, F)
        return self.wtp_loss(f, batch.y)

    def fit_statistics(self, loader: DataLoader) -> None:
        assert self.task is not None, "begin_task was not called"
        t = self.task.index
        self.prompts[t].copy_(self.task_prompt(t, momentum=True))  # P_t <- momentum prompt
        super().fit_statistics(loader)
