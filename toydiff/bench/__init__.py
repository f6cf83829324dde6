"""The guidance benchmark on exact ground truth: `sweep` (every registered method over its weight, scored),
`models` (the bench's small models and their checkpoints), `report` (leaderboard, json, Pareto plots).
`toydiff.bench.run(...)` and the other names of `sweep` are re-exported here."""
from .sweep import *  # noqa: F401,F403  (the public names of the sweep: BenchConfig, FULL, FAST, run, ...)
from .sweep import __all__
