"""The procedural task suite."""

from __future__ import annotations

import pytest

from models.data.tasks import ANSWER_MARK, DEFAULT_TASKS, get_task, make_splits
from models.errors import NotFoundError


@pytest.mark.parametrize("task_id", DEFAULT_TASKS)
def test_splits_are_disjoint_deterministic_and_hide_the_key(task_id):
    task = get_task(task_id)
    a, b = make_splits(task, 300, 300, 100), make_splits(task, 300, 300, 100)
    assert a == b
    inputs = [set(ex.prompt for ex in part) for part in (a.public, a.private, a.test)]
    assert not (inputs[0] & inputs[1]) and not (inputs[0] & inputs[2]) and not (inputs[1] & inputs[2])
    assert all(ex.prompt.endswith(ANSWER_MARK) and " ?: " in ex.prompt for ex in a.test)


def test_answers_follow_the_key():
    assert get_task("rotate-3").example("abcdefgh").answer == "defghabc"
    assert get_task("drop-2").example("abcdefghi").answer == "abdefghi"
    assert get_task("separate-7").example("abcde").answer == "a7b7c7d7e"
    assert get_task("pick6-6").example("cat dog sun pen cup owl").answer == "owl"


def test_pick6_shares_picks_format_on_longer_lists():
    """smol's held-out family: the `pick` prompt the TinyLM was pretrained on, with six words instead of five."""
    six, five = make_splits(get_task("pick6-2")), make_splits(get_task("pick-2"))
    assert len(six.test) == 500 and all(len(ex.prompt.split(":")[1].split()) == 7 for ex in six.test)  # words + ####
    assert six.test[0].prompt.startswith("pick ?: ") and five.test[0].prompt.startswith("pick ?: ")
    assert not {ex.prompt for ex in six.public} & {ex.prompt for ex in five.public}


@pytest.mark.parametrize("bad", ["rotate-99", "nope-1", "rotate", "rotate-x"])
def test_unknown_tasks_are_refused(bad):
    with pytest.raises(NotFoundError):
        get_task(bad)
