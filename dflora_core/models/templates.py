"""Prompt templates and verbalizers: data, one table per model family (docs/design.md §2).

``{0}``/``{1}`` are the text fields, ``{mask}`` the mask token (masked LM only). For causal
LMs the template ends right before the label word and the label word is scored as the
next token; the words carry their leading space because BPE vocabularies attach it.

Causal templates are the released GPT-2 code's, as they are (including the "the" in the
MRPC/SNLI ones); its DBPedia template kept 50 placeholder prompt tokens, left out here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data.tasks import get_task
from ..data.user_task import is_task_file
from ..errors import ConfigError


@dataclass(frozen=True)
class Template:
    pattern: str  # str.format pattern with {0}, {1} and (masked LM) {mask}
    words: tuple[str, ...]  # one verbalizer word per class, in label-index order
    origin: str = ""  # where a task file declared it ("task.yaml: templates.causal.verbalizer"), for errors


_DBPEDIA = (
    "Company Education Artist Athlete Office Transportation Building Natural Village Animal Plant Album Film Written"
).split()

MASKED_LM: dict[str, Template] = {
    "sst2": Template("{0} . It was {mask} .", ("bad", "great")),
    "yelp": Template("{0} . It was {mask} .", ("bad", "great")),
    "agnews": Template("{mask} News: {0}", ("World", "Sports", "Business", "Tech")),
    "dbpedia": Template("[ Category: {mask} ] {0}", tuple(_DBPEDIA)),
    "mrpc": Template("{0} ? {mask} , {1}", ("No", "Yes")),
    "rte": Template("{0} ? {mask} , {1}", ("Yes", "No")),
    "snli": Template("{0} ? {mask} , {1}", ("Yes", "Maybe", "No")),
}

CAUSAL_LM: dict[str, Template] = {
    "sst2": Template("{0} . It was", (" negative", " positive")),
    "yelp": Template("{0} . It is", (" negative", " positive")),
    "agnews": Template("{0} News:", (" world", " sports", " business", " tech")),
    "dbpedia": Template("{0} The text above is about", tuple(" " + w.lower() for w in _DBPEDIA)),
    "mrpc": Template("{0} the {1} ? Answer:", (" No", " Yes")),
    "rte": Template("{0} {1} Answer:", (" Yes", " No")),
    "snli": Template("{0} the {1} ? Answer:", (" Yes", " Maybe", " No")),
}

FAMILIES = {"masked": MASKED_LM, "causal": CAUSAL_LM}


def get_template(task: str, family: str, words: tuple[str, ...] | None = None) -> Template:
    """The template of ``task`` for a model ``family`` ("masked" or "causal").

    ``words`` overrides the verbalizer (e.g. SmolLM2's " bad"/" great", docs/design.md §3).
    """
    if family not in FAMILIES:
        raise ConfigError("model family", f"unknown family {family!r}; expected one of {sorted(FAMILIES)}")
    tpl = _declared(task, family) if is_task_file(task) else FAMILIES[family].get(task)
    if tpl is None:
        raise ConfigError("task", f"no {family} template for task {task!r}")
    if words is not None:
        if len(words) != len(tpl.words):
            raise ConfigError("verbalizer", f"{len(words)} words given for {task}, which has {len(tpl.words)} classes")
        tpl = Template(tpl.pattern, tuple(words))
    return tpl


def _declared(task: str, family: str) -> Template:
    """The template a task file declares for ``family`` (data/user_task.py, docs/tasks.md)."""
    found = get_task(task).files.template(family)
    if found is None:
        raise ConfigError(f"{task}: templates.{family}", f"the task file declares no template for a {family} model")
    return Template(*found, origin=f"{task}: templates.{family}.verbalizer")
