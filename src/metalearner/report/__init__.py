"""Figures and reports."""

from metalearner.report.curves import plot_run, smooth

__all__ = ["plot_run", "smooth"]
