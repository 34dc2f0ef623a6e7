"""metalearner: learning to optimize, measured honestly."""

__version__ = "0.1.0"
