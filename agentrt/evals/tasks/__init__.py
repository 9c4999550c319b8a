"""The synthetic long-context task suite: generators deterministic by seed, at any length.

`TASKS[name].generate(seed, length, count)` builds an `Item` whose rendered prompt has at
most `length` tokens under `count` (see `agentrt.evals.render.token_counter`);
`TASKS[name].score(item, replies)` grades the assistant replies 1.0 or 0.0.
"""

from agentrt.evals.tasks.agent import AgentTask
from agentrt.evals.tasks.arith import ArithmeticTask
from agentrt.evals.tasks.base import Item, Task, TokenCounter, extract_answer, item_seed, normalise
from agentrt.evals.tasks.niah import NeedleTask
from agentrt.evals.tasks.vt import VariableTrackingTask

TASKS: dict[str, Task] = {
    "niah": NeedleTask(),
    "lookup": NeedleTask(needles=1, name="lookup"),
    "vt": VariableTrackingTask(),
    "arith": ArithmeticTask(),
    "agent": AgentTask(),
}

__all__ = [
    "TASKS",
    "AgentTask",
    "ArithmeticTask",
    "Item",
    "NeedleTask",
    "Task",
    "TokenCounter",
    "VariableTrackingTask",
    "extract_answer",
    "item_seed",
    "normalise",
]
