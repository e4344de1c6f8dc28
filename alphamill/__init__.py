"""alphamill: run quantitative-research experiments at scale.

Qlib's task vocabulary (task dicts, RollingGen, TaskManager, run_task, trainers,
collectors, ensembles) on a crash-safe task pool that needs no server by default.
"""

__version__ = "0.1.0"
