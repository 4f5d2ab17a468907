"""Joint training: the upper bound, trained on the data of every task seen so far.

At task t the model continues training on the union of tasks 0..t (all data stays available), so
the last column of the accuracy matrix is the i.i.d. upper bound the papers report ("Upper-bound"
in L2P, Table 1). Same model and optimiser as ``finetune`` [inferred: the papers do not say].
"""

from promptcl.methods.finetune import HeadClassifier, HeadConfig
from promptcl.registry import methods


class JointConfig(HeadConfig):
    name: str = "joint"


@methods.register("joint")
class Joint(HeadClassifier):
    Config = JointConfig
    cumulative_data = True
