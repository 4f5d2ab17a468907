"""Linear probe: a linear head trained task by task on the frozen backbone's features.

Cross-entropy on the current task's classes (``train_mask``, as in L2P's head training); the
backbone is never updated. Adam, lr 1e-3 [inferred: a common linear-probe setting].
"""

from promptcl.methods.finetune import HeadClassifier, HeadConfig
from promptcl.registry import methods


class LinearProbeConfig(HeadConfig):
    name: str = "linear_probe"
    lr: float = 1e-3
    train_backbone: bool = False
    train_mask: bool = True


@methods.register("linear_probe")
class LinearProbe(HeadClassifier):
    Config = LinearProbeConfig
