"""Meta-meta learning: hyperoptimizer towers and the MAML family with a learned meta-level."""

from metalearner.meta.towers import Tower, make_tower, tower_hparams

__all__ = ["Tower", "make_tower", "tower_hparams"]
