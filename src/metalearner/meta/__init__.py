"""Meta-meta learning: hyperoptimizer towers and the MAML family with a learned meta-level."""

from metalearner.meta.fewshot import FewShotConfig, MetaLearner, evaluate, make_families, meta_train
from metalearner.meta.towers import Tower, make_tower, tower_hparams

__all__ = ["FewShotConfig", "MetaLearner", "Tower", "evaluate", "make_families", "make_tower", "meta_train", "tower_hparams"]
