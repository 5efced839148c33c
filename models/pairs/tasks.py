"""A pair's tasks, whatever made them: the one place that turns a task id on a pair into its splits
(public: the provider's shadow pool; private: an organization's stand-in data; test: scoring).

Today every task is procedural (`models.data.tasks`: a family and a hidden key, splits drawn under the
pair's seed); tasks registered from data files answer through the same function.
"""

from __future__ import annotations

from models.data.tasks import Splits, get_task, make_splits
from models.pairs.store import Pair


def task_splits(pair: Pair, task_id: str) -> Splits:
    """The task's disjoint public, private and test examples on this pair."""
    return make_splits(get_task(task_id), seed=pair.spec.seed)
