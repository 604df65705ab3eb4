"""Every CUDA code path on the fake CUDA device (tests/fake_cuda.py), since CI never has a GPU.

The coverage set runs every method of ``dflora methods`` with ``model.device=cuda`` on tiny-llama,
the layer-wise and prompt methods and gradient LoRA on tiny-gpt2 and tiny-roberta, fp32 and bf16 for
a few, every search option, ``dflora bench speed|fidelity|memory`` on a tiny shape, ``dflora compare
--jobs 2`` (subprocesses under the fake device), and export / predict / evaluate of a run made on it.
The planted-bug tests show the fixture catches what it is for (a CPU index tensor, a CPU projection,
a CPU generator), so the set cannot pass vacuously. The full product of methods x models x dtypes is
behind the ``slow`` marker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_cuda import REAL, DeviceError, FakeCudaTensor, fake_cuda, subprocess_env

from dflora_core.cli import main
from dflora_core.config import from_dict
from dflora_core.methods import METHODS
from dflora_core.runner import run

pytestmark = pytest.mark.usefixtures("one_thread")
# what only the fake device can observe (its own rules, copy counts, stubbed state): not replayed on a real card
fake_only = pytest.mark.skipif(REAL, reason="checks the fake device itself")

TINY = {
    "data": {"max_test": 8},
    "search": {"budget": 16, "eval_every": 4, "test_at": [8]},
    "optim": {"popsize": 4},
    "lowrank": {"intrinsic_dim": 8},
    "baseline": {"prompt_tokens": 3, "prompt_dim": 8, "lora_rank": 2, "es_population": 3},
    "progress": False,
}
LAYERWISE = ("c-lora", "f-lora", "bbtv2", "lora")
OPTIONS = {
    "output-calibrated": {"lowrank.scale_calibration": "output"},
    "fitness-calibrated": {"lowrank.scale_calibration": "fitness", "search.budget": 40},
    "calibrated-logits": {"search.calibrated_logits": True},
    "bandit": {"search.schedule": "bandit", "search.budget": 40},
}


def cuda_cfg(method: str, model: str = "tiny-llama", **changes):
    return from_dict({**TINY, "method": method, "model": {"name": model, "device": "cuda"}}).replace(**changes)


def run_on_fake_cuda(cfg, out: Path) -> dict:
    with fake_cuda():
        rec = run(cfg, out=out)
    assert rec["device"].startswith("cuda"), rec["device"]
    assert rec["zero_shot"] is not None
    return rec


COVERAGE = (
    [(m, "tiny-llama", "fp32", {}) for m in sorted(METHODS)]
    + [(m, model, "fp32", {}) for model in ("tiny-gpt2", "tiny-roberta") for m in LAYERWISE]
    + [(m, "tiny-llama", "bf16", {"model.dtype": "bfloat16"}) for m in ("c-lora", "lora", "zo-sgd")]
    + [("c-lora", "tiny-llama", name, over) for name, over in OPTIONS.items()]
)


@pytest.mark.parametrize("method, model, variant, over", COVERAGE, ids=[f"{m}-{mo}-{v}" for m, mo, v, _ in COVERAGE])
def test_every_method_runs_on_cuda(method, model, variant, over, tmp_path):
    if METHODS[method].family in ("gradient",) or method.startswith("zo-") or method == "forward-grad":
        pytest.importorskip("peft")
    rec = run_on_fake_cuda(cuda_cfg(method, model, **over), tmp_path)
    test = rec["test"] or rec["zero_shot"]
    assert 0 <= test["value"] <= 1
    assert rec["dtype"] == ("bfloat16" if variant == "bf16" else "float32")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DFLORA_FULL_PRODUCT") != "1", reason="the full product: make test-gpu-paths")
@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-roberta"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_full_product_runs_on_cuda(method, model, dtype, tmp_path):
    pytest.importorskip("peft")
    run_on_fake_cuda(cuda_cfg(method, model, **{"model.dtype": dtype}), tmp_path)


# -- the fixture catches what it is for ---------------------------------------------------------------
@fake_only
def test_the_fixture_applies_cudas_device_rules():
    with fake_cuda():
        x = torch.ones(3, 4).to("cuda")
        assert isinstance(x, FakeCudaTensor) and x.device.type == "cuda" and x.is_cuda
        assert (x + torch.tensor(2.0)).device.type == "cuda"  # a 0-dim CPU scalar is allowed
        assert x[torch.tensor([0, 2])].shape == (2, 4)  # so is a CPU index tensor in x[idx]
        with pytest.raises(DeviceError):
            x + torch.ones(4)
        with pytest.raises(TypeError, match="numpy"):
            x.numpy()
        assert not isinstance(x.cpu(), FakeCudaTensor) and x.cpu().device.type == "cpu"
        with pytest.raises(RuntimeError, match="generator"):
            torch.randn(3, device="cuda", generator=torch.Generator())
        assert torch.randn(3, device="cuda", generator=torch.Generator(device="cuda")).is_cuda


@pytest.mark.parametrize("bug", ["cpu index tensor", "cpu projection", "cpu generator"])
def test_the_fixture_catches_a_planted_device_bug(bug, tmp_path, monkeypatch):
    """Each bug a real GPU would raise on, planted in dflora's own code path, fails the run here."""
    if bug == "cpu index tensor":
        from dflora_core.lowrank import patching

        real = patching.LowRankWrapper.add_target

        def add_target(self, name, select):  # a GPT-2 fused c_attn target kept as a CPU index tensor
            n = real(self, name, select)
            if isinstance(select, slice):
                self.selects[name] = torch.arange(self.out_features)[select]
            return n

        monkeypatch.setattr(patching.LowRankWrapper, "add_target", add_target)
        cfg = cuda_cfg("c-lora", "tiny-gpt2")
    elif bug == "cpu projection":
        from dflora_core.lowrank import projection

        real = projection.IntrinsicProjection.matrices
        monkeypatch.setattr(
            projection.IntrinsicProjection, "matrices", lambda self, layer: [m.cpu() for m in real(self, layer)]
        )
        cfg = cuda_cfg("c-lora")
    else:  # the directions drawn on the device from a CPU generator
        from dflora_core.baselines import zeroth_order

        def directions(params, seed, masks=None):
            gen = torch.Generator().manual_seed(seed)
            for _name, q in params.items():
                yield q, torch.randn(q.shape, generator=gen, device=q.device, dtype=q.dtype)

        monkeypatch.setattr(zeroth_order, "directions", directions)
        pytest.importorskip("peft")
        cfg = cuda_cfg("zo-sgd")
    with pytest.raises(RuntimeError, match="device|generator"):
        run_on_fake_cuda(cfg, tmp_path)


# -- defects of the audit, each seen here --------------------------------------------------------------
@fake_only
def test_the_label_bias_and_a_selection_tensor_are_not_copied_on_every_forward():
    from dflora_core.data.types import Example
    from dflora_core.lowrank.patching import LowRankPatch
    from dflora_core.models.registry import load_model
    from dflora_core.models.scoring import PromptEncoder, VerbalizerHead, forward_class_logits

    with fake_cuda() as mode:
        loaded = load_model("tiny-gpt2", "cuda")
        enc = PromptEncoder(loaded, "sst2")
        data = enc.encode([Example(("a fine film",), 1), Example(("dull",), 0)])
        head = VerbalizerHead(loaded, enc.label_token_ids)
        head.label_bias = torch.tensor([0.1, -0.1])
        patch = LowRankPatch(loaded.model, ("q", "v"))  # c_attn: q and v as index selections of the fused output
        factors = {t: (torch.full((s.in_features, 2), 0.01, device="cuda"), torch.full((2, s.out_features), 0.01,
                   device="cuda")) for t, s in patch.sites[0].items()}  # fmt: skip
        patch.set_layer(0, factors)
        (batch,) = data.batches(4096, loaded.device)
        forward_class_logits(loaded, head, batch)
        before = mode.h2d_copies
        for _ in range(5):
            forward_class_logits(loaded, head, batch)
        patch.remove()
    assert mode.h2d_copies == before, f"{mode.h2d_copies - before} host-to-device copies in 5 forwards"


@fake_only
def test_building_a_tiny_model_on_cuda_leaves_the_global_cuda_generator_alone():
    from dflora_core.models.tiny import build_shape, build_tiny

    with fake_cuda() as mode:
        torch.cuda.manual_seed_all(1234)
        build_tiny("tiny-llama", seed=7)
        build_shape("roberta-tiny-shape", device="cuda")
        assert mode.cuda.rng_seed == 1234


def test_the_zero_shot_cache_key_includes_the_device(tiny_models):
    from dflora_core.experiment import Experiment, zero_shot_key

    cpu = Experiment.prepare(from_dict({**TINY, "method": "zeroshot", "model": {"name": "tiny-llama", "device": "cpu"}}),
                             tiny_models["tiny-llama"])  # fmt: skip
    with fake_cuda():
        from dflora_core.models.registry import load_model

        gpu = Experiment.prepare(cuda_cfg("zeroshot"), load_model("tiny-llama", "cuda"))
        assert zero_shot_key(gpu) != zero_shot_key(cpu)


# -- the other commands on cuda -------------------------------------------------------------------------
def test_export_predict_and_evaluate_a_run_made_on_cuda(tmp_path, capsys):
    pytest.importorskip("peft")
    run_on_fake_cuda(cuda_cfg("c-lora", **{"search.select_start": False}), tmp_path / "run")
    with fake_cuda():
        assert main(["export", "--run", str(tmp_path / "run"), "--format", "peft", "--out", str(tmp_path / "p")]) == 0
        assert main(["export", "--run", str(tmp_path / "run"), "--format", "merged", "--out", str(tmp_path / "m")]) == 0
        assert main(["predict", "--run", str(tmp_path / "run"), "--json", "a great film"]) == 0
        assert main(["evaluate", "--run", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert '"probabilities"' in out and "scored on sst2" in out
    assert (tmp_path / "p" / "adapter_model.safetensors").is_file() and (tmp_path / "m" / "config.json").is_file()


@pytest.mark.parametrize("kind", ["speed", "fidelity", "memory"])
def test_bench_runs_on_cuda(kind, tmp_path):
    model = (
        "gpt2-tiny-shape" if kind == "memory" else "tiny-llama"
    )  # memory: synthetic shapes (label ids of a real vocab)
    args = ["bench", kind, "--model", model, "--device", "cuda", "--out", str(tmp_path / "b.json"), "--quiet"]
    args += {"speed": ["--popsize", "4", "--reps", "1", "--shots", "4"], "fidelity": ["--popsize", "4", "--layers", "0"],
             "memory": ["--batch", "2", "--seq", "16", "--steps", "1", "--population", "4"]}[kind]  # fmt: skip
    with fake_cuda():
        assert main(args) == 0
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    failed = [r for r in rows if r.get("error") and not str(r["error"]).startswith("skipped")]  # fp16: no CPU kernels
    assert rows and not failed, failed
    assert all(str(r.get("device", "cuda")).startswith("cuda") for r in rows)


def test_compare_with_two_jobs_runs_its_children_on_cuda(tmp_path):
    """``--jobs 2``: each run is a child process, put under the fake device by tests/fake_cuda_site."""
    pytest.importorskip("peft")
    cmd = [sys.executable, "-m", "dflora_core", "compare", "--tasks", "sst2", "--methods", "zeroshot,c-lora",
           "--seeds", "13", "--model", "tiny-llama", "--device", "cuda", "--budget", "16", "--max-test", "8",
           "--root", str(tmp_path), "--jobs", "2", "--set", "optim.popsize=4", "--set", "lowrank.intrinsic_dim=8",
           "--set", "search.eval_every=4"]  # fmt: skip
    res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in tmp_path.rglob("record.json")]
    assert len(records) == 2 and all(r["device"].startswith("cuda") for r in records)


# -- scale-out decisions -----------------------------------------------------------------------------------
def test_ray_with_zero_gpus_per_run_and_a_visible_gpu_is_refused_in_one_line(tmp_path):
    from dflora_core.errors import DfloraError
    from dflora_core.grids.backend_base import BackendSpec
    from dflora_core.grids.backends import execute

    with fake_cuda(), pytest.raises(DfloraError, match="--gpus-per-run is 0"):
        execute([cuda_cfg("c-lora")], tmp_path, spec=BackendSpec(name="ray"))
    with fake_cuda(), pytest.raises(DfloraError, match="--gpus-per-run is 0"):
        execute([cuda_cfg("c-lora", **{"model.device": "auto"})], tmp_path, spec=BackendSpec(name="ray"))


def test_local_runs_get_their_thread_count_for_blas_and_openmp_too(monkeypatch):
    from dflora_core.grids.backend_base import THREAD_VARIABLES, run_environment

    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    env = run_environment(3)
    assert all(env[name] == "3" for name in THREAD_VARIABLES)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")  # what the user set is kept
    assert run_environment(3)["OPENBLAS_NUM_THREADS"] == "1" and "MKL_NUM_THREADS" not in run_environment(0)


def test_a_gpu_run_sizes_its_token_budget_from_the_card_and_records_it(tmp_path, monkeypatch):
    from dflora_core.identity import identity
    from dflora_core.models import sizing

    monkeypatch.setenv(sizing.SHARE_VARIABLE, "4")  # four runs share the (fake 80 GiB) card
    cfg = cuda_cfg("c-lora")
    rec = run_on_fake_cuda(cfg, tmp_path)
    plan = rec["gpu_sizing"]
    assert plan["share"] == 4 and plan["footprint"] == "estimated from the shape"
    assert plan["total_memory"] == torch.cuda.get_device_properties(0).total_memory if REAL else 80 * 2**30
    assert sizing.MIN_TOKENS <= plan["max_tokens"] <= sizing.CAP_TOKENS and plan["max_tokens"] % 1024 == 0
    assert rec["max_memory_reserved"] > 0 and rec["deterministic_algorithms"] is False
    assert identity(cfg) == identity(cfg.replace(**{"model.device": "cuda"}))  # the sizing is not the run's identity


@fake_only
def test_the_token_budget_and_jobs_follow_the_memory_of_the_card():
    from types import SimpleNamespace

    from dflora_core.models import sizing

    config = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_attention_heads=9)
    weights = 540 * 2**20  # SmolLM2 in fp32
    h100, h200 = 80 * 2**30, 141 * 10**9
    assert (
        1
        <= sizing.jobs_per_gpu("smollm2", weights, config, h100)
        < sizing.jobs_per_gpu("smollm2", weights, config, h200)
    )
    small = SimpleNamespace(
        hidden_size=4096, intermediate_size=16384, num_attention_heads=32
    )  # a wide model: fewer runs
    assert sizing.jobs_per_gpu("other", 16 * 2**30, small, h100) < sizing.jobs_per_gpu("smollm2", weights, config, h100)


def test_bench_writes_each_models_rows_as_soon_as_they_are_measured(tmp_path, monkeypatch):
    """A GPU command cut short keeps what it measured: the JSON is rewritten after every model."""
    from dflora_core.bench import cli as bench_cli

    written = []
    real = bench_cli.write
    monkeypatch.setattr(bench_cli, "write", lambda path, doc, quiet=False: (written.append(len(doc["rows"])),
                                                                           real(path, doc, quiet)))  # fmt: skip
    args = ["bench", "speed", "--model", "tiny-llama,tiny-gpt2", "--device", "cpu", "--out", str(tmp_path / "b.json"),
            "--quiet", "--popsize", "4", "--reps", "1", "--shots", "4", "--strategies", "reference,prefix-reuse"]  # fmt: skip
    assert main(args) == 0
    assert written[0] > 0 and written[1] > written[0] and len(written) == 3  # after each model, then the final
