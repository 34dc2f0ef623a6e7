"""Learned optimizers: Opt2Vec, the LR controller, their meta-training, pretrained weights
(``learned_sf``'s optimizer is :class:`metalearner.lopt.learned.LearnedOptimizer`).

    from metalearner.lopt import Opt2Vec, LRController
    opt = Opt2Vec(model.parameters(), lr=1e-3, budget=steps)  # shipped pretrained weights
    opt = LRController(torch.optim.Adam(model.parameters()))  # learned lr scaling of Adam
"""

from metalearner.lopt.controller import LRController
from metalearner.lopt.meta_train import MetaTrainConfig, default_config, meta_train
from metalearner.lopt.opt2vec import Opt2Vec
from metalearner.lopt.policy import PolicyConfig, PolicyWeights, WeightsError, default_weights

__all__ = [
    "LRController", "MetaTrainConfig", "Opt2Vec", "PolicyConfig", "PolicyWeights", "WeightsError",
    "default_config", "default_weights", "meta_train",
]  # fmt: skip
