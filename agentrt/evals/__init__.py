"""Evaluation of DMS and the cache baselines: the synthetic task suite, the runner, `agentrt eval`.

Importing this package loads neither torch nor transformers; `agentrt.evals.runner`
(the serving loop) and `agentrt.evals.text_eval` do when imported.
"""

from agentrt.evals.tasks import TASKS, Item, Task

__all__ = ["TASKS", "Item", "Task"]
