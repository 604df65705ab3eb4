"""Data layer: the seven few-shot tasks, their raw files, few-shot splits and test sets."""

from .fewshot import data_root, load_pool, load_test, pool_report, sample_fewshot, text_key
from .manifest import verify_manifest
from .tasks import FIXED_SEEDS, TASKS, get_task
from .types import Example, FewShotSplit, TaskSpec, TestSet

__all__ = [
    "FIXED_SEEDS",
    "TASKS",
    "Example",
    "FewShotSplit",
    "TaskSpec",
    "TestSet",
    "data_root",
    "get_task",
    "load_pool",
    "load_test",
    "pool_report",
    "sample_fewshot",
    "text_key",
    "verify_manifest",
]
