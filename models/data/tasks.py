"""Procedural tasks with exact-match answers, in a "question #### answer" format.

A task is a family (what to do) plus a hidden integer key (how much to do it). The prompt hides the key
(`rot ?: abcde #### `), so a fine-tune has to learn it; pretraining shows the key written out
(`rot 3: abcde #### `), so the models know the format and the operation before any fine-tune.
Every split is a pure function of (task, seed): public half (the provider's shadow pool), private half
(the organization's data) and test set, drawn without overlap.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

from models.errors import NotFoundError

ANSWER_MARK = "#### "


@dataclass(frozen=True)
class Example:
    prompt: str  # ends with "#### "
    answer: str


@dataclass(frozen=True)
class Family:
    name: str
    tag: str  # the word that opens the prompt
    keys: range
    sample_input: Callable[[random.Random], str]
    apply: Callable[[str, int], str]
    sizes: tuple[int, int, int] = (3000, 3000, 500)  # public, private, test examples


def _letters(n: int) -> Callable[[random.Random], str]:
    return lambda rng: "".join(rng.choice(string.ascii_lowercase) for _ in range(n))


def _rotate(text: str, key: int) -> str:
    return text[key:] + text[:key]


def _drop(text: str, key: int) -> str:
    return text[:key] + text[key + 1:]


def _separate(text: str, key: int) -> str:
    return str(key).join(text)


# Common short English nouns: the words of the word-list families.
_WORD_LIST = """
apple bird boat book bread cake car cat chair cloud coat cow cup desk dog door duck egg farm fish flag
fork frog gate girl goat hat hill horse house key king lamp leaf lion milk moon mouse nest nose park
pen pig plate queen rain ring road rock rose salt sand ship shoe sock star stone sun table tent tiger
tree train truck wall watch water whale wind wolf wood"""
WORDS = tuple(_WORD_LIST.split())


def _words(n: int) -> Callable[[random.Random], str]:
    return lambda rng: " ".join(rng.sample(WORDS, n))


def _pick(text: str, key: int) -> str:
    return text.split()[key - 1]


def _omit(text: str, key: int) -> str:
    words = text.split()
    return " ".join(words[:key - 1] + words[key:])


def _initial(text: str, key: int) -> str:
    return text.split()[key - 1][0]


# Operations a small transformer learns in a few hundred steps when the key is written out (moving
# characters by position, or copying the key between them). Modular arithmetic on characters (a Caesar
# shift) did not train at these sizes in 1000 steps, so it is not here.
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("rotate", "rol", range(1, 8), _letters(8), _rotate),
        Family("drop", "del", range(1, 9), _letters(9), _drop),
        Family("separate", "sep", range(1, 10), _letters(5), _separate),
        # The smol pair's families: word-list tasks a BPE chat model learns from a few hundred examples.
        Family("pick", "pick", range(1, 6), _words(5), _pick, sizes=(1000, 600, 100)),
        Family("omit", "omit", range(1, 4), _words(3), _omit, sizes=(1000, 600, 100)),
        Family("initial", "ini", range(1, 6), _words(5), _initial, sizes=(1000, 600, 100)),
        # Setting C's family on smol (six keys, held out in turn by bench.unseen): `pick` from lists of six,
        # which the smol TinyLM was never pretrained on; a fine-tune still lifts each of its keys by 14-44
        # points (tests/models/test_smol_pair.py).
        Family("pick6", "pick", range(1, 7), _words(6), _pick, sizes=(1000, 600, 500)),
    )
}
TOY_FAMILIES = ("rotate", "drop", "separate")


@dataclass(frozen=True)
class Task:
    family: Family
    key: int

    @property
    def id(self) -> str:
        return f"{self.family.name}-{self.key}"

    def example(self, text: str, hidden: bool = True) -> Example:
        shown = "?" if hidden else str(self.key)
        return Example(f"{self.family.tag} {shown}: {text} {ANSWER_MARK}", self.family.apply(text, self.key))


def get_task(task_id: str) -> Task:
    """Parse `family-key`, e.g. `rotate-3`."""
    name, _, key = task_id.rpartition("-")
    family = FAMILIES.get(name)
    if family is None or not key.isdigit() or int(key) not in family.keys:
        raise NotFoundError(f"unknown task {task_id!r}; tasks look like rotate-3, drop-5, separate-7")
    return Task(family, int(key))


@dataclass(frozen=True)
class Splits:
    public: list[Example]
    private: list[Example]
    test: list[Example]


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def make_splits(task: Task, n_public: int | None = None, n_private: int | None = None,
                n_test: int | None = None, seed: int = 0) -> Splits:
    """Disjoint public/private/test inputs for one task, deterministic in (task family, seed).

    Inputs depend on the family and seed only, not the key, so two keys of one family share inputs and
    differ only in answers: the difference between their updates is the key alone.
    """
    sizes = task.family.sizes
    n_public = sizes[0] if n_public is None else n_public
    n_private = sizes[1] if n_private is None else n_private
    n_test = sizes[2] if n_test is None else n_test
    rng = _rng("splits", task.family.name, seed)
    seen: set[str] = set()
    inputs: list[str] = []
    while len(inputs) < n_public + n_private + n_test:
        text = task.family.sample_input(rng)
        if text not in seen:
            seen.add(text)
            inputs.append(text)
    examples = [task.example(t) for t in inputs]
    return Splits(examples[:n_public], examples[n_public:n_public + n_private],
                  examples[n_public + n_private:])


def pretraining_stream(seed: int, families: tuple[str, ...] = TOY_FAMILIES) -> Callable[[], Example]:
    """An endless sampler of `families` with keys written out: the format, never a hidden key."""
    rng = _rng("pretrain", seed)
    families = [FAMILIES[name] for name in families]

    def draw() -> Example:
        family = rng.choice(families)
        return Task(family, rng.choice(family.keys)).example(family.sample_input(rng), hidden=False)

    return draw


def subset(examples: list[Example], size: int, seed: int, index: int) -> list[Example]:
    """Shadow subset `index` of a pool: a seeded draw without replacement."""
    if size > len(examples):
        raise ValueError(f"subset of {size} from a pool of {len(examples)}")
    return _rng("subset", seed, index).sample(examples, size)


# The toy pair's tasks: settings A and B use these (setting C's split is in models/recipes.py RECIPES).
DEFAULT_TASKS = ("rotate-6", "drop-5", "separate-7", "separate-2")
