"""The seven few-shot tasks of the paper: classes, metric, test set and caveats.

File locations live in :mod:`dflora_core.data.fewshot`; the raw formats in
:mod:`dflora_core.data.loaders`. ``notes`` holds what a results table must show next to a score.

The paper drops inputs longer than 512 tokens. The data layer does not tokenise, so it keeps every
row; the scoring layer applies (and reports) that filter for its tokenizer.
"""

from __future__ import annotations

from ..errors import ConfigError
from .types import TaskSpec
from .user_task import is_task_file, load_task_file

__all__ = ["FIXED_SEEDS", "TASKS", "get_task", "is_task_file"]

#: Seeds of the fixed 16-shot splits shipped for every task (LM-BFF / RLPrompt convention).
FIXED_SEEDS: tuple[int, ...] = (13, 21, 42, 87, 100)

_DBPEDIA_CLASSES = (
    "Company",
    "EducationalInstitution",
    "Artist",
    "Athlete",
    "OfficeHolder",
    "MeanOfTransportation",
    "Building",
    "NaturalPlace",
    "Village",
    "Animal",
    "Plant",
    "Album",
    "Film",
    "WrittenWork",
)

TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec(
        name="sst2",
        title="SST-2",
        classes=("negative", "positive"),
        n_fields=1,
        metric="accuracy",
        test_official=True,
        test_name="GLUE validation (872)",
        fixed_seeds=FIXED_SEEDS,
        pool_kind="full",
        default_split_source="pool",
        test_size=872,
        pool_size=67349,
        notes=(
            "Test = GLUE validation (872), the paper's stand-in for the unlabelled GLUE test. "
            "Pool = full GLUE train (67,349 phrases, sub-sentence phrases included); duplicate texts "
            "are collapsed before sampling. The fixed LM-BFF splits keep the original SST "
            "tokenisation ('(x)', '\\/'), which differs slightly from GLUE's."
        ),
    ),
    "yelp": TaskSpec(
        name="yelp",
        title="Yelp polarity",
        classes=("negative", "positive"),
        n_fields=1,
        metric="accuracy",
        test_official=False,
        test_name="Yelp 2k test sample (of 38,000)",
        fixed_seeds=FIXED_SEEDS,
        pool_kind="none",
        default_split_source="fixed",
        test_size=2000,
        notes=(
            "Test is a uniform random sample of 2,000 of the 38,000 official test reviews: report it "
            "as 'Yelp (2k test sample)', never as the official test accuracy (standard error about "
            "0.7 points at 90%). No train pool: only the five fixed RLPrompt 16-shot splits "
            "(seeds 13, 21, 42, 87, 100). Literal '\\n' replaced by a space as in the paper; inputs "
            "over 512 tokens are dropped by the paper (the scoring layer must do the same)."
        ),
    ),
    "agnews": TaskSpec(
        name="agnews",
        title="AG News",
        classes=("World", "Sports", "Business", "Sci/Tech"),
        n_fields=1,
        metric="accuracy",
        test_official=True,
        test_name="official test (7,600)",
        fixed_seeds=FIXED_SEEDS,
        pool_kind="partial",
        default_split_source="fixed",
        test_size=7600,
        pool_size=10001,
        notes=(
            "Test = official char-CNN test set (7,600), text = title + ' ' + description. Default "
            "few-shot splits = the fixed RLPrompt 16-shot files (same title + description format). "
            "The only train pool is a partial one (10,001 alps train rows) holding descriptions "
            "WITHOUT titles, unlike the test set: splits sampled from it (source='pool') change the "
            "input format and must be labelled as such; 10 of its rows also occur (as descriptions) "
            "in the test set and are dropped. The fixed seed-21 dev split holds one story that is "
            "also in the test set up to letter case (an AG News near-duplicate)."
        ),
    ),
    "dbpedia": TaskSpec(
        name="dbpedia",
        title="DBPedia",
        classes=_DBPEDIA_CLASSES,
        n_fields=1,
        metric="accuracy",
        test_official=False,
        test_name="DBPedia 7.6k test sample (of 70,000)",
        fixed_seeds=FIXED_SEEDS,
        pool_kind="none",
        default_split_source="fixed",
        test_size=7600,
        notes=(
            "Test is a uniform random (not stratified) sample of 7,600 of the 70,000 official test "
            "rows: report it as 'DBPedia (7.6k test sample)', never as the official test accuracy. "
            "No train pool: only the five fixed RLPrompt 16-shot splits (seeds 13, 21, 42, 87, 100). "
            "Text = the content field only (no title), as in the paper."
        ),
    ),
    "mrpc": TaskSpec(
        name="mrpc",
        title="MRPC",
        classes=("not_paraphrase", "paraphrase"),
        n_fields=2,
        metric="f1",
        test_official=True,
        test_name="GLUE validation (408)",
        fixed_seeds=FIXED_SEEDS,
        pool_kind="full",
        default_split_source="pool",
        test_size=408,
        pool_size=3668,
        notes=(
            "Metric F1 of the paraphrase class. Test = GLUE validation (408), the paper's convention. "
            "Pool = msr_paraphrase_train.txt minus dev_ids.tsv (3,668 pairs, as the Hugging Face "
            "script builds it; GLUE's train.tsv misses one row)."
        ),
    ),
    "snli": TaskSpec(
        name="snli",
        title="SNLI",
        classes=("entailment", "neutral", "contradiction"),
        n_fields=2,
        metric="accuracy",
        test_official=True,
        test_name="official test, labelled pairs (9,824)",
        fixed_seeds=FIXED_SEEDS,
        pool_kind="partial",
        default_split_source="pool",
        test_size=9824,
        pool_size=9999,
        notes=(
            "Test = official SNLI test minus its 176 unlabelled pairs (9,824). The train pool is a "
            "partial real subset (9,999 of the ~550k train pairs), so seeded splits are drawn from a "
            "smaller pool than the paper's full train split."
        ),
    ),
    "rte": TaskSpec(
        name="rte",
        title="RTE",
        classes=("entailment", "not_entailment"),
        n_fields=2,
        metric="accuracy",
        test_official=True,
        test_name="GLUE validation (277)",
        fixed_seeds=FIXED_SEEDS,
        pool_kind="full",
        default_split_source="pool",
        test_size=277,
        pool_size=2490,
        notes="Test = GLUE validation (277), the paper's stand-in for the unlabelled GLUE test. Pool = full GLUE train (2,490).",
    ),
}


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` registered as ``name`` (case-insensitive), or declared in the task file
    ``name`` (``*.yaml``, data/user_task.py); ConfigError("task") otherwise."""
    if is_task_file(name):
        return load_task_file(name)
    key = name.strip().lower() if isinstance(name, str) else None
    if key not in TASKS:
        raise ConfigError("task", f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[key]
