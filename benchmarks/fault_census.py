#!/usr/bin/env python
"""Fault census (issues 12, 32): hostile or unlucky inputs and fault states, each run through the CLI.

    OMP_NUM_THREADS=1 python benchmarks/fault_census.py            # the default census, ~15-20 min on 2 loaded cores
    python benchmarks/fault_census.py --all                         # every case, about twice as long
    python benchmarks/fault_census.py --only data,record            # cases whose name or class contains a word
    python benchmarks/fault_census.py --list                        # the cases, nothing run
    python benchmarks/fault_census.py --case-limit 120              # a case not over in 120 s is a hang

Every case runs ``python -m dflora_core ...`` (``sys.executable``, ``OMP_NUM_THREADS=1``) in a
subprocess, in a folder of its own under one temporary folder, one case after another, and is
classified automatically:

- ``one-line error``: exit status 2, exactly one stderr line, starting ``dflora: error:``, and the
  case's own requirements hold (no pickle executed, no folder left behind, ...);
- ``correct``: exit status 0 and the case's check of the result passes (e.g. a resumed record equals
  the uninterrupted one in test, best_dev, calls and the learned z); for a signal sent on purpose,
  exit status 130 with one line;
- ``traceback``: "Traceback" on the stderr of any command of the case (goal: none);
- ``silently accepted``: exit 0 where an error was expected, or exit 0 with a failed check (goal: none);
- ``hang``: a command of the case had not ended when the case's time limit (``--case-limit``,
  default 240 s) ran out; its process group is killed (goal: none);
- ``other``: anything else (printed with the reason), e.g. an exit 2 whose requirement failed;
- ``skipped``: the machine cannot stage the fault (a read-only folder needs a tmpfs mount or a
  user that permissions bind, not root).

A full disk is injected, not mounted (no root, no tmpfs): ``FULL_DISK`` runs the command with a
byte budget, past which dflora's file writes fail with ENOSPC and safetensors' with its own error,
after a partial file, as on a real full disk.

Cases that start from a finished (or interrupted) run folder also get a ``data_lost`` flag: the
record.json and adapter.npz there must be byte-identical afterwards, or intentionally replaced
by ``--overwrite``, which keeps the old record as record.replaced.json (byte-identical).

Writes ``benchmarks/results/fault-census.json`` (each case: name, class, command, exit, first
stderr line, classification, data_lost, notes; the totals) and prints the totals as Markdown.
Tiny models (the ``tiny-llama`` registry model, the tests' ``TINY`` arguments; random tiny ELECTRA
and Granite folders built like tests/test_heads.py), tiny budgets.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pickle
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from dflora_core.statefile import load_state, save_state  # noqa: E402 - light: numpy only

DATA = REPO / "data"
OUT_JSON = REPO / "benchmarks" / "results" / "fault-census.json"
PY = sys.executable

# tests/test_faults.py's TINY (copied: importing the test module would import pytest and torch here)
TINY = ["--model", "tiny-llama", "--device", "cpu", "--no-progress", "--task", "sst2", "--max-test", "8",
        "--budget", "24", "--popsize", "4", "--intrinsic-dim", "8", "--eval-every", "8",
        "--set", "lowrank.layers=[-2,-1]", "--set", "search.checkpoint_every=1"]  # fmt: skip


def tiny(budget: int | None = None, **flags: str) -> list[str]:
    """TINY with another budget and/or other flag values (``popsize="6"`` -> ``--popsize 6``)."""
    args = list(TINY)
    if budget is not None:
        flags["budget"] = str(budget)
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args


ZS = ["--model", "tiny-llama", "--device", "cpu", "--task", "sst2", "--max-test", "8"]
GRID = ["compare", "--tasks", "sst2", "--methods", "zeroshot", "--seeds", "13", "--model", "tiny-llama",
        "--max-test", "8", "--in-process", "--set", "model.device=cpu"]  # fmt: skip
SST2_DEV = "sst2/glue/SST-2/dev.tsv"
SNLI_TEST = "snli/hf_export/snli_test.csv"
RTE_POOL = "rte/glue/RTE/train.tsv"
RTE_FIXED_DEV = "rte/lmbff_k-shot/RTE/16-13/dev.tsv"

BUILD_ARCHS = r"""
import sys, torch
from pathlib import Path
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM
from dflora_core.models.tiny import tiny_tokenizer
from dflora_core.models.registry import MASKED_TYPES
root = Path(sys.argv[1])
for mt, over in (("electra", dict(embedding_size=16)), ("granite", dict(logits_scaling=8.0))):
    masked = mt in MASKED_TYPES
    tok = tiny_tokenizer(masked)
    cfg = AutoConfig.for_model(mt, vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
        initializer_range=0.2, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, **over)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = (AutoModelForMaskedLM if masked else AutoModelForCausalLM).from_config(cfg).eval()
    model.save_pretrained(root / mt, safe_serialization=True)
    tok.save_pretrained(root / mt)
"""

# the verbalizer head against the model's own logits (tests/test_heads.py), on a folder dflora loads
HEAD_CHECK = r"""
import sys, torch
from dflora_core.models.registry import load_model
from dflora_core.models.scoring import Batch, VerbalizerHead, forward_class_logits
lm = load_model(sys.argv[1], "cpu")
ids = torch.tensor([[5, 9, 11, 13, 17, 19], [7, 8, 9, 10, 0, 0]])
mask = (ids != 0).long()
pos = torch.tensor([5, 3] if lm.family == "causal" else [2, 1])
labels = [21, 33, 40]
ours = forward_class_logits(lm, VerbalizerHead(lm, labels), Batch(torch.arange(2), ids, mask, pos))
with torch.no_grad():
    full = lm.model(input_ids=ids, attention_mask=mask).logits
theirs = full[torch.arange(2), pos][:, labels].float()
print(float((ours - theirs).abs().max()), float(theirs.abs().max()))
"""

# `papermill -p interactive false` injects the string 'false': the notebooks' parameter guard
PARAMS = r"""
import sys
from dflora_core.errors import DfloraError
from dflora_core.notebook_params import ParameterGuard
ns = {}
guard = ParameterGuard(ns)
ns["__annotations__"] = {"profile": "str", "interactive": "bool"}
ns["profile"], ns["interactive"] = "quick", sys.argv[1]
try:
    params = guard.validate(ns)
except DfloraError as err:
    print(f"dflora: error: {err}", file=sys.stderr)
    sys.exit(2)
print(repr(params.interactive))
"""

# `dflora ARGS` on a disk with BUDGET bytes left (argv: BUDGET ARGS...): every file dflora writes goes through
# fileio.atomic_write_bytes (patched before any module imports it by name), weights through safetensors' save_file;
# past the budget they fail as on a full disk: OSError ENOSPC, and safetensors' own error after a partial file
FULL_DISK = r"""
import errno, os, sys
budget, argv, spent = int(sys.argv[1]), sys.argv[2:], [0]
from dflora_core import fileio

def charge(n, path):
    spent[0] += n
    if spent[0] > budget:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

def full_write(path, data, write=fileio.atomic_write_bytes):
    charge(len(data), path)
    write(path, data)

fileio.atomic_write_bytes = full_write
import safetensors.torch
from safetensors import SafetensorError

def full_save(tensors, filename, *a, save=safetensors.torch.save_file, **k):
    try:
        charge(sum(t.numel() * t.element_size() for t in tensors.values()), filename)
    except OSError:
        with open(filename, "wb") as f:
            f.write(bytes(64))
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })') from None
    return save(tensors, filename, *a, **k)

safetensors.torch.save_file = full_save
from dflora_core.cli import main
sys.exit(main(argv))
"""

HOLD = r"""
import sys, time
from dflora_core.results.record import RunFolder
with RunFolder(sys.argv[1]).lock():
    print("held", flush=True)
    time.sleep(120)
"""


class Payload:
    """Unpickling this creates a marker file: the proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# -- running commands ------------------------------------------------------------------------------
@dataclass
class Result:
    command: list[str]
    exit: int | None
    out: str
    err: str
    wall_s: float
    timed_out: bool = False


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DFLORA_DATA"}
    env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))  # fmt: skip
    env.update(extra or {})
    return env


def _show(cmd: list[str]) -> list[str]:
    return [str(c) for c in cmd]


class Skip(Exception):
    """The machine cannot stage this fault."""


@dataclass
class Case:
    name: str
    klass: str
    expect: str  # "error", "correct", "either" or "interrupted" (exit 130 after a signal, one line)
    fn: Callable[[T], None]


@dataclass
class T:
    """One case's workspace: its folder, its commands, its requirements and the folders it guards."""

    name: str
    dir: Path
    env: dict[str, str]
    results: list[Result] = field(default_factory=list)
    main: Result | None = None
    fails: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    guards: list[tuple[Path, dict[str, bytes], bool]] = field(default_factory=list)
    deadline: float = math.inf  # time.monotonic() by which the case's commands must have ended (--case-limit)

    def cli(self, *args, env: dict | None = None, main: bool = True, timeout: float = 300, preexec=None) -> Result:
        return self.cmd([PY, "-m", "dflora_core", *map(str, args)], env=env, main=main, timeout=timeout,
                        preexec=preexec)  # fmt: skip

    def full_disk(self, budget: int, *args, main: bool = True) -> Result:
        """``dflora ARGS`` on a disk with ``budget`` bytes left (ENOSPC injected: no root, no tmpfs)."""
        return self.cmd([PY, "-c", FULL_DISK, str(budget), *map(str, args)], main=main)

    def cmd(self, cmd, env: dict | None = None, main: bool = True, timeout: float = 300, preexec=None) -> Result:
        proc = subprocess.Popen(_show(cmd), cwd=self.dir, env={**self.env, **(env or {})}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace", preexec_fn=preexec,
                                start_new_session=True)  # fmt: skip
        return self.collect(proc, main=main, timeout=timeout)

    def popen(self, *args, env: dict | None = None) -> subprocess.Popen:
        cmd = [PY, "-m", "dflora_core", *map(str, args)]
        return subprocess.Popen(cmd, cwd=self.dir, env={**self.env, **(env or {})}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)  # fmt: skip

    def collect(self, proc: subprocess.Popen, main: bool = False, timeout: float = 300) -> Result:
        """Wait for ``proc`` (within the case's time limit); one that does not end is a hang: its whole
        process group (it runs in a session of its own) is killed."""
        t0 = time.perf_counter()
        limit = max(1.0, min(timeout, self.deadline - time.monotonic()))
        try:
            out, err = proc.communicate(timeout=limit)
            hung = False
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            err, hung = err + f"\n[no end after {limit:.0f} s: killed]", True
        r = Result(_show(proc.args), proc.returncode, out, err, time.perf_counter() - t0, hung)
        self.results.append(r)
        if main:
            self.main = r
        return r

    def need(self, cond: bool, message: str) -> bool:
        if not cond:
            self.fails.append(message)
        return bool(cond)

    def note(self, message: str) -> None:
        self.notes.append(message)

    def needs_in_error(self, *needles: str) -> None:
        """Words the one-line error should contain (a note, not a failure, when one is missing)."""
        err = self.main.err if self.main else ""
        missing = [n for n in needles if n not in err]
        if missing:
            self.note(f"error does not mention {missing}")

    def guard(self, folder: Path, replace_ok: bool = False, names=("record.json", "adapter.npz")) -> None:
        """Snapshot files of a run folder now; they must be byte-identical when the case ends."""
        snap = {n: (folder / n).read_bytes() for n in names if (folder / n).is_file()}
        self.guards.append((folder, snap, replace_ok))

    def data_lost(self) -> bool | None:
        if not self.guards:
            return None
        lost = False
        for folder, snap, replace_ok in self.guards:
            kept = folder / "record.replaced.json"
            replaced = (
                replace_ok and "record.json" in snap and kept.is_file() and kept.read_bytes() == snap["record.json"]
            )
            for name, data in snap.items():
                now = folder / name
                if now.is_file() and now.read_bytes() == data:
                    continue
                if replaced:
                    continue
                lost = True
                self.note(f"{folder.name}/{name} changed or gone")
        return lost


def _text(x) -> str:
    if x is None:
        return ""
    return x.decode(errors="replace") if isinstance(x, bytes) else x


# -- fixtures --------------------------------------------------------------------------------------
@dataclass
class Fixtures:
    root: Path
    ref24: Path | None = None  # a finished TINY run (budget 24)
    ref96: Path | None = None  # a finished TINY run with budget 96 (the interruption cases' reference)
    grid: Path | None = None  # a finished compare grid (zeroshot)
    archs: Path | None = None  # tiny random electra/ and granite/ folders (safetensors)
    zs_value: float | None = None  # zero-shot accuracy of TINY's model on the shipped data
    mounts: list[Path] = field(default_factory=list)
    setup_s: float = 0.0


FX: Fixtures


def prepare(root: Path, env: dict[str, str]) -> Fixtures:
    t0 = time.perf_counter()
    fx = Fixtures(root)
    ws = T("setup", root / "setup", env)
    ws.dir.mkdir(parents=True)
    steps = [
        ("ref24", lambda: ws.cli("run", *TINY, "--out", ws.dir / "ref24")),
        ("ref96", lambda: ws.cli("run", *tiny(96), "--out", ws.dir / "ref96")),
        ("grid", lambda: ws.cli(*GRID, "--root", ws.dir / "grid")),
        ("archs", lambda: ws.cmd([PY, "-c", BUILD_ARCHS, ws.dir / "archs"])),
    ]
    for name, step in steps:
        r = step()
        if r.exit != 0:
            raise SystemExit(f"setup step {name} failed (exit {r.exit}):\n{r.err[-3000:]}")
        print(f"  setup {name}: {r.wall_s:.1f} s", flush=True)
    fx.ref24, fx.ref96, fx.grid, fx.archs = (ws.dir / n for n in ("ref24", "ref96", "grid", "archs"))
    fx.zs_value = read_record(fx.ref24)["zero_shot"]["value"]  # the same model and test subsample
    fx.setup_s = time.perf_counter() - t0
    return fx


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def grid_run(grid: Path) -> Path:
    [rec] = grid.glob("**/record.json")
    return rec.parent


def read_record(folder: Path) -> dict:
    return json.loads((folder / "record.json").read_text())


def same_result(t: T, a: Path, b: Path) -> bool:
    """Two run folders agree in test, best_dev, calls, the learned z and the history (times aside)."""
    ra, rb = read_record(a), read_record(b)
    ok = True
    for key in ("status", "test", "best_dev", "calls"):
        ok &= t.need(ra.get(key) == rb.get(key), f"{key} differs: {ra.get(key)!r} vs {rb.get(key)!r}")
    with np.load(a / "adapter.npz", allow_pickle=False) as za, np.load(b / "adapter.npz", allow_pickle=False) as zb:
        ok &= t.need(sorted(za.files) == sorted(zb.files), "adapter.npz entries differ")
        for k in set(za.files) & set(zb.files):
            ok &= t.need(np.array_equal(za[k], zb[k]), f"adapter.npz {k} differs")

    def hist(p):
        return [{k: v for k, v in g.items() if k != "seconds"} for g in json.loads((p / "history.json").read_text())]

    ok &= t.need(hist(a) == hist(b), "history.json differs")
    return ok


def data_copy(t: T, *tasks: str, manifest: bool = False) -> tuple[Path, dict[str, str]]:
    """A data root holding copies of the shipped task folders (and the manifest): DFLORA_DATA for it."""
    root = t.dir / "data"
    for task in tasks:
        shutil.copytree(DATA / task, root / task)
    if manifest:
        shutil.copyfile(DATA / "MANIFEST.json", root / "MANIFEST.json")
    return root, {"DFLORA_DATA": str(root)}


def keep_lines(path: Path, n: int) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:n]), encoding="utf-8")


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


def mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if not can_mount():
        return False
    ok = (
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0
    )
    if ok:
        FX.mounts.append(path)
    return ok


def umount(path: Path) -> None:
    if path in FX.mounts:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
        FX.mounts.remove(path)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> bool:
    """Until ``path`` exists (a checkpoint was written) or the process ended."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.is_file():
            return True
        time.sleep(0.02)
    return path.is_file() and proc.poll() is None


# -- the cases -------------------------------------------------------------------------------------
CASES: list[Case] = []


def case(name: str, klass: str, expect: str = "error"):
    def register(fn):
        CASES.append(Case(name, klass, expect, fn))
        return fn

    return register


def _plain(name: str, klass: str, argv: list[str], needles=(), expect: str = "error", no_folder: str | None = None):
    """A case that runs one command; ``no_folder``: a path that must not exist afterwards."""

    def fn(t: T) -> None:
        t.cli(*argv)
        t.needs_in_error(*needles)
        if no_folder:
            t.need(not (t.dir / no_folder).exists(), f"{no_folder} was left behind")

    CASES.append(Case(name, klass, expect, fn))


K_PICKLE = "planted pickle / state files"
K_MODEL = "model folders"
K_LOCK = "concurrent writers"
K_FINISHED = "finished-folder protection"
K_DRIFT = "config drift on resume"
K_DATA = "short/corrupt data files"
K_RECORD = "corrupt record files"
K_OUT = "bad --out"
K_CONFIG = "invalid config / YAML"
K_FLAGS = "ignored or bad flags"
K_SIGNAL = "interruptions"
K_ARCH = "architectures"


# planted pickle and damaged state files ---------------------------------------------------------
@case("planted checkpoint.pkl, run --resume", K_PICKLE)
def _(t: T):
    out = t.dir / "shared"
    out.mkdir()
    (out / "checkpoint.pkl").write_bytes(pickle.dumps(Payload(t.dir / "pwned")))
    t.cli("run", *TINY, "--out", out, "--resume")
    t.need(not (t.dir / "pwned").exists(), "the pickle was executed")
    t.needs_in_error("checkpoint.pkl", "pickle")


@case("planted checkpoint.pkl beside a finished run, run --resume", K_PICKLE, "either")
def _(t: T):
    out = copy_run(FX.ref24, t.dir / "run")
    (out / "checkpoint.pkl").write_bytes(pickle.dumps(Payload(t.dir / "pwned")))
    t.guard(out)
    r = t.cli("run", *TINY, "--out", out, "--resume")
    t.need(not (t.dir / "pwned").exists(), "the pickle was executed")
    if r.exit == 0:
        t.need(read_record(out)["status"] == "done", "record not done")


@case("planted checkpoint.pkl in an unfinished grid run, compare", K_PICKLE, "either")
def _(t: T):
    grid = t.dir / "grid"
    shutil.copytree(FX.grid, grid, ignore=shutil.ignore_patterns(".lock"))
    run = grid_run(grid)
    (run / "record.json").unlink()
    (run / "checkpoint.pkl").write_bytes(pickle.dumps(Payload(t.dir / "pwned")))
    r = t.cli(*GRID, "--root", grid)
    t.need(not (t.dir / "pwned").exists(), "the pickle was executed")
    if r.exit == 0:
        t.need(read_record(run)["test"]["value"] == FX.zs_value, "the rerun grid cell differs from the zero-shot score")


def _state_case(name: str, damage: Callable[[Path, Path], None], needles=("checkpoint.npz",)):
    """An interrupted run (the finished one without its record) whose checkpoint.npz is damaged."""

    def fn(t: T) -> None:
        out = copy_run(FX.ref24, t.dir / "run")
        (out / "record.json").unlink()
        damage(out / "checkpoint.npz", t.dir)
        t.guard(out, names=("adapter.npz", "checkpoint.npz"))
        t.cli("run", *TINY, "--out", out, "--resume")
        t.need(not (t.dir / "pwned").exists(), "a pickle was executed")
        t.needs_in_error(*needles)

    CASES.append(Case(f"checkpoint.npz {name}, run --resume", K_PICKLE, "error", fn))


def _rewrite_state(path: Path, edit: Callable[[dict], dict]) -> None:
    save_state(path, edit(load_state(path)))


def _raw_state(path: Path, doc: bytes) -> None:
    np.savez(path, __state__=np.frombuffer(doc, dtype=np.uint8))


def _edit_doc(path: Path, edit: Callable[[dict], None]) -> None:
    """Edit the JSON document of a state file in place (its arrays kept)."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    doc = json.loads(arrays["__state__"].tobytes().decode())
    edit(doc)
    arrays["__state__"] = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
    np.savez(path, **arrays)


_state_case("with an object array (pickle)",
            lambda p, d: np.savez(p, __state__=np.array([Payload(d / "pwned")], dtype=object)))  # fmt: skip
_state_case("truncated", lambda p, d: p.write_bytes(p.read_bytes()[:200]))
_state_case("empty", lambda p, d: p.write_bytes(b""))
_state_case("random bytes", lambda p, d: p.write_bytes(os.urandom(4096)))
_state_case("without a __state__ entry", lambda p, d: np.savez(p, z=np.zeros(3)))
_state_case("with broken JSON", lambda p, d: _raw_state(p, b'{"format": "dflora-state/1", "state": '))
_state_case("of another format version", lambda p, d: _raw_state(p, b'{"format": "dflora-state/99", "state": {}}'))
_state_case("whose JSON is a list", lambda p, d: _raw_state(p, b"[1, 2, 3]"))
_state_case(
    "naming a missing array", lambda p, d: _edit_doc(p, lambda doc: doc["state"].update(state={"__array__": "a999"}))
)
_state_case(
    "with another identity stored (a tampered budget)",
    lambda p, d: _edit_doc(
        p,
        lambda doc: (
            doc["state"]["identity"].update({"search.budget": 48})
            if "search.budget" in doc["state"]["identity"]
            else doc["state"].update(identity={})
        ),
    ),
)
_state_case("with the right identity but an empty state",
            lambda p, d: _rewrite_state(p, lambda s: {**s, "state": {}}))  # fmt: skip
_state_case("with the right identity but a state that is a list",
            lambda p, d: _rewrite_state(p, lambda s: {**s, "state": [1, 2]}))  # fmt: skip
_state_case(
    "with the right identity but no z",
    lambda p, d: _rewrite_state(p, lambda s: {**s, "state": {k: v for k, v in s["state"].items() if k != "z"}}),
)
_state_case("that is a folder", lambda p, d: (p.unlink(), p.mkdir()))


# model folders ----------------------------------------------------------------------------------
def _pickle_model(t: T) -> Path:
    folder = t.dir / "model"
    shutil.copytree(FX.archs / "granite", folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(t.dir / "pwned")))
    return folder


@case("model folder with pytorch_model.bin (pickle), zeroshot", K_MODEL)
def _(t: T):
    t.cli("zeroshot", "--model", _pickle_model(t), "--device", "cpu", "--task", "sst2", "--max-test", "8")
    t.need(not (t.dir / "pwned").exists(), "the pickle weights were executed")
    t.needs_in_error("safetensors")


@case("model folder with pytorch_model.bin (pickle), run --out", K_MODEL)
def _(t: T):
    t.cli("run", *tiny(model=str(_pickle_model(t))), "--out", t.dir / "run")
    t.need(not (t.dir / "pwned").exists(), "the pickle weights were executed")
    t.needs_in_error("safetensors")


@case("model folder without weights", K_MODEL)
def _(t: T):
    folder = t.dir / "model"
    shutil.copytree(FX.archs / "granite", folder)
    (folder / "model.safetensors").unlink()
    t.cli("zeroshot", *ZS[2:], "--model", folder)
    t.needs_in_error("no weights")


@case("model folder with a garbage config.json", K_MODEL)
def _(t: T):
    folder = t.dir / "model"
    shutil.copytree(FX.archs / "granite", folder)
    (folder / "config.json").write_text('{"model_type": "granite", "hidden_size": ')
    t.cli("zeroshot", *ZS[2:], "--model", folder)


@case("model folder with truncated safetensors weights", K_MODEL)
def _(t: T):
    folder = t.dir / "model"
    shutil.copytree(FX.archs / "granite", folder)
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    t.cli("zeroshot", *ZS[2:], "--model", folder)


@case("model folder whose weights do not fit its config.json", K_MODEL)
def _(t: T):
    folder = t.dir / "model"
    shutil.copytree(FX.archs / "granite", folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 48}))
    t.cli("zeroshot", *ZS[2:], "--model", folder)


@case("a .gguf file that is not GGUF", K_MODEL)
def _(t: T):
    (t.dir / "m.gguf").write_bytes(b"not a gguf file" * 10)
    t.cli("zeroshot", *ZS[2:], "--model", t.dir / "m.gguf")


# concurrent writers and finished folders --------------------------------------------------------
@case("second writer while another process holds the folder", K_LOCK)
def _(t: T):
    out = t.dir / "busy"
    holder = subprocess.Popen([PY, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=t.env)
    try:
        t.need(holder.stdout.readline().strip() == "held", "the holder did not take the lock")
        t.cli("run", *TINY, "--out", out)
        t.needs_in_error("in use by", f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()


@case("a killed (kill -9) holder's lock is free again", K_LOCK, "correct")
def _(t: T):
    out = t.dir / "busy"
    holder = subprocess.Popen([PY, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=t.env)
    t.need(holder.stdout.readline().strip() == "held", "the holder did not take the lock")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    r = t.cli("run", *ZS, "--method", "zeroshot", "--out", out)
    if r.exit == 0:
        t.need(read_record(out)["status"] == "done", "record not done")


@case("two dflora run at once on one --out", K_LOCK)
def _(t: T):
    out = t.dir / "both"
    a = t.popen("run", *tiny(96), "--out", out)
    deadline = time.time() + 120
    while not (out / ".lock").is_file() and time.time() < deadline and a.poll() is None:
        time.sleep(0.05)
    b = t.popen("run", *tiny(48), "--out", out)
    rb = t.collect(b, main=True)
    ra = t.collect(a)
    t.need(ra.exit == 0, f"the first writer failed (exit {ra.exit}): {ra.err.strip()[-300:]}")
    if "in use by" not in rb.err:
        t.note("the second writer did not overlap the first (no 'in use by')")
    if ra.exit == 0:
        rec, cfg = read_record(out), json.loads((out / "config.json").read_text())
        t.need(rec["config"] == cfg and cfg["search"]["budget"] == 96, "record and config.json are of different runs")
        t.need(same_result(t, out, FX.ref96), "the first writer's result differs from the reference run")


@case("finished folder re-run without --resume", K_FINISHED)
def _(t: T):
    out = copy_run(FX.ref24, t.dir / "run")
    t.guard(out)
    t.cli("run", *TINY, "--out", out)
    t.needs_in_error("finished run", "--resume", "--overwrite")


@case("finished folder re-run with --resume reads it back", K_FINISHED, "correct")
def _(t: T):
    out = copy_run(FX.ref24, t.dir / "run")
    t.guard(out)
    r = t.cli("run", *TINY, "--out", out, "--resume", "--json")
    if r.exit == 0:
        t.need(json.loads(r.out).get("test") == read_record(out)["test"], "--json output is not the stored record")


@case("finished folder re-run with --overwrite", K_FINISHED, "correct")
def _(t: T):
    out = copy_run(FX.ref24, t.dir / "run")
    t.guard(out, replace_ok=True)
    r = t.cli("run", *TINY, "--out", out, "--overwrite")
    if r.exit == 0:
        t.need((out / "record.replaced.json").is_file(), "no record.replaced.json")
        t.need(same_result(t, out, FX.ref24), "the redone run differs from the first")


@case("finished folder re-run with --resume under another budget", K_FINISHED)
def _(t: T):
    out = copy_run(FX.ref24, t.dir / "run")
    t.guard(out, names=("record.json", "adapter.npz", "checkpoint.npz"))
    t.cli("run", *tiny(48), "--out", out, "--resume")
    t.needs_in_error("different config")


@case("finished folder re-run with --overwrite under another method", K_FINISHED)
def _(t: T):
    out = copy_run(FX.ref24, t.dir / "run")
    t.guard(out)
    t.cli("run", *tiny(method="rs-lora"), "--out", out, "--overwrite")


@case("kill -9 during --overwrite, then --resume", K_FINISHED, "correct")
def _(t: T):
    out = copy_run(FX.ref96, t.dir / "run")
    t.guard(out, replace_ok=True)
    old_ckpt = (out / "checkpoint.npz").stat().st_mtime_ns
    p = t.popen("run", *tiny(96), "--out", out, "--overwrite")
    deadline = time.time() + 180
    while p.poll() is None and time.time() < deadline:
        ck = out / "checkpoint.npz"
        with contextlib.suppress(FileNotFoundError):
            if ck.stat().st_mtime_ns != old_ckpt:
                break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    cut = t.collect(p)
    t.need(cut.exit == -9, f"the run was not killed mid-run (exit {cut.exit})")
    t.need((out / "record.replaced.json").is_file(), "the finished record was not set aside before the redo")
    r = t.cli("run", *tiny(96), "--out", out, "--resume")
    if r.exit == 0:
        t.need(same_result(t, out, FX.ref96), "the resumed redo differs from the uninterrupted run")


# config drift on resume -------------------------------------------------------------------------
def _drift(name: str, argv: list[str], drop_config: bool = False):
    def fn(t: T) -> None:
        out = copy_run(FX.ref24, t.dir / "run")
        (out / "record.json").unlink()
        if drop_config:
            (out / "config.json").unlink()
        t.guard(out, names=("adapter.npz", "checkpoint.npz"))
        t.cli("run", *argv, "--out", out, "--resume")
        t.needs_in_error("checkpoint.npz", "another configuration")

    CASES.append(Case(f"record.json deleted, resume with {name}", K_DRIFT, "error", fn))


_drift("another budget", tiny(48))
_drift("another popsize", tiny(popsize="6"))
_drift("another alpha", tiny(alpha="0.1"))
_drift("another seed", tiny(seed="7"))
_drift("another method (rs-lora)", tiny(method="rs-lora"))
_drift("another budget, config.json deleted too", tiny(48), drop_config=True)


@case("record.json deleted, resume with the same config", K_DRIFT, "correct")
def _(t: T):
    out = copy_run(FX.ref24, t.dir / "run")
    (out / "record.json").unlink()
    r = t.cli("run", *TINY, "--out", out, "--resume")
    if r.exit == 0:
        same_result(t, out, FX.ref24)


# data files ---------------------------------------------------------------------------------------
def _data(name: str, damage: Callable[[Path], None], argv=None, tasks=("sst2",), manifest=False, needles=()):
    def fn(t: T) -> None:
        root, env = data_copy(t, *tasks, manifest=manifest)
        damage(root)
        t.cli(*(argv or ["zeroshot", *ZS]), env=env)
        t.needs_in_error(*needles)

    where = "data root with manifest" if manifest else "data root without manifest"
    CASES.append(Case(f"{name} ({where})", K_DATA, "error", fn))


def _replace_line(path: Path, index: int, line: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[index] = line
    path.write_text("".join(lines), encoding="utf-8")


def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(text)


def _merge_quotes(root: Path) -> None:
    path = root / SNLI_TEST
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[1] = lines[1].replace(",The church has", ',"The church has')
    lines[2] = lines[2].replace("with song.,", 'with song.",')
    path.write_text("".join(lines), encoding="utf-8")


def _same_size_md5(root: Path) -> None:
    path = root / SST2_DEV
    path.write_text(path.read_text(encoding="utf-8").replace("\t1\n", "\t0\n", 1), encoding="utf-8")


def _bad_utf8(root: Path) -> None:
    path = root / SST2_DEV
    data = path.read_bytes()
    cut = data.index(b"\n", 200) + 1
    path.write_bytes(data[:cut] + b"a caf\xe9 sentence\t1\n" + data[cut:])


_data("header-only SST-2 dev file", lambda r: keep_lines(r / SST2_DEV, 1), manifest=True, needles=(SST2_DEV,))
_data("header-only SST-2 dev file", lambda r: keep_lines(r / SST2_DEV, 1), needles=(SST2_DEV, "no rows"))
_data("empty SST-2 dev file", lambda r: (r / SST2_DEV).write_bytes(b""), needles=(SST2_DEV,))
_data("SST-2 dev file cut to 499 rows", lambda r: keep_lines(r / SST2_DEV, 500), needles=("499 rows", "872"))
_data("SST-2 dev file cut to 499 rows", lambda r: keep_lines(r / SST2_DEV, 500), manifest=True, needles=("bytes",))
_data("SST-2 dev file with one label changed (same size)", _same_size_md5, manifest=True, needles=("md5",))
_data("SNLI test file whose stray quotes merge two rows", _merge_quotes, ["zeroshot", *ZS[:4], "--task", "snli",
      "--max-test", "8"], tasks=("snli",), needles=(f"{SNLI_TEST}:2:",))  # fmt: skip
_data("SST-2 dev file with a NUL byte", lambda r: _replace_line(r / SST2_DEV, 4, "a sentence with a \x00 byte\t1\n"),
      needles=(f"{SST2_DEV}:5:",))  # fmt: skip
_data("SST-2 dev file with a byte that is not UTF-8", _bad_utf8, needles=(SST2_DEV,))
_data("SST-2 dev file missing", lambda r: (r / SST2_DEV).unlink(), needles=(SST2_DEV,))
_data("MANIFEST.json that is not JSON", lambda r: (r / "MANIFEST.json").write_text('{"files": {'), manifest=True,
      needles=("MANIFEST.json",))  # fmt: skip
_data("RTE train pool cut to 1,999 rows", lambda r: keep_lines(r / RTE_POOL, 2000),
      ["run", *tiny(8, task="rte", method="no-opt")], tasks=("rte",), needles=("1,999 rows",))  # fmt: skip
_data("RTE fixed dev split with an extra row",
      lambda r: _append(r / RTE_FIXED_DEV, "99\tAn extra premise.\tAn extra hypothesis.\tentailment\n"),
      ["run", *tiny(task="rte", method="no-opt", seed="13"), "--set", "data.split_source=fixed"], tasks=("rte",),
      needles=("33 rows",))  # fmt: skip


@case("DFLORA_DATA pointing at no folder", K_DATA)
def _(t: T):
    t.cli("zeroshot", *ZS, env={"DFLORA_DATA": str(t.dir / "nowhere")})
    t.needs_in_error("DFLORA_DATA")


@case("intact data copy without manifest, after the bad ones (no cache poisoning)", K_DATA, "correct")
def _(t: T):
    root, env = data_copy(t, "sst2")
    r = t.cli("run", *ZS, "--method", "zeroshot", "--out", t.dir / "run", env=env)
    if r.exit == 0:
        rec = read_record(t.dir / "run")
        t.need(rec["test"]["value"] == FX.zs_value, f"zero-shot {rec['test']['value']} != {FX.zs_value} (shipped data)")
        t.need(rec["data"]["test_verification"] == "row counts", f"verification {rec['data']['test_verification']}")


# corrupt record files ---------------------------------------------------------------------------
def _record(name: str, content, where: str = "run --resume", needles=("record.json",)):
    def fn(t: T) -> None:
        if where == "run --resume":
            folder = copy_run(FX.ref24, t.dir / "run")
        else:
            grid = t.dir / "grid"
            shutil.copytree(FX.grid, grid, ignore=shutil.ignore_patterns(".lock"))
            folder = grid_run(grid)
        rec = folder / "record.json"
        if content is None:
            rec.unlink()
            rec.mkdir()
        elif callable(content):
            rec.write_bytes(content(rec.read_bytes()))
        else:
            rec.write_bytes(content)
        t.guard(folder)
        if where == "run --resume":
            t.cli("run", *TINY, "--out", folder, "--resume")
        else:
            t.cli(*GRID, "--root", grid, *(["--table-only"] if where == "compare --table-only" else []))
        t.needs_in_error(*needles)

    CASES.append(Case(f"record.json {name}, {where}", K_RECORD, "error", fn))


_record("truncated", b'{"status": "do')
_record("empty", b"")
_record("a JSON list", b"[1, 2]")
_record("a JSON string", b'"done"')
_record("an empty mapping", b"{}")
_record("not UTF-8", b'{"status": "d\xffne"}')
_record("of a newer format", b'{"format": "dflora-run/99", "method": "c-lora", "task": "sst2", "model": "tiny-llama", '
        b'"seed": 42, "config": {}}')  # fmt: skip
_record("that is a folder", None)
_record("truncated", b'{"status": "do', "compare")
_record("truncated", b"[1, 2", "compare --table-only")
_record("a JSON list", b"[1, 2]", "compare --table-only")
_record("done but without its test score", lambda b: json.dumps({k: v for k, v in json.loads(b).items() if k != "test"}).encode(),
        "compare --table-only", needles=())  # fmt: skip
_record("done but with a test score that is a string", lambda b: json.dumps({**json.loads(b), "test": "n/a"}).encode(),
        "compare --table-only", needles=())  # fmt: skip


# bad --out ----------------------------------------------------------------------------------------
@case("--out is a file", K_OUT)
def _(t: T):
    (t.dir / "f").write_text("x")
    t.cli("run", *TINY, "--out", t.dir / "f")
    t.need((t.dir / "f").read_text() == "x", "the file was changed")


@case("--out under a file", K_OUT)
def _(t: T):
    (t.dir / "f").write_text("x")
    t.cli("run", *TINY, "--out", t.dir / "f" / "run")


@case("--out in a read-only folder", K_OUT)
def _(t: T):
    ro = t.dir / "ro"
    if not mount_tmpfs(ro, "ro,size=64k"):
        if os.geteuid() == 0:
            raise Skip("root ignores permissions and tmpfs cannot be mounted here")
        ro.chmod(0o555)
    try:
        t.cli("run", *TINY, "--out", ro / "run")
        t.needs_in_error("--out")
    finally:
        umount(ro)
        ro.chmod(0o755)


@case("--out /proc/dflora-run", K_OUT)
def _(t: T):
    t.cli("run", *TINY, "--out", "/proc/dflora-run")


@case('--out ""', K_OUT)
def _(t: T):
    t.cli("run", *TINY, "--out", "")


@case("--out with a 300-character name", K_OUT)
def _(t: T):
    t.cli("run", *TINY, "--out", t.dir / ("x" * 300))


@case("--out on a full disk from the start", K_OUT)
def _(t: T):
    t.full_disk(0, "run", *TINY, "--out", t.dir / "run")
    t.needs_in_error("No space left")


@case("disk fills up mid-run, resume after space is freed", K_OUT, "correct")
def _(t: T):
    out = t.dir / "run"
    budget = 6 * (FX.ref96 / "checkpoint.npz").stat().st_size + 16384  # a few generations' checkpoints
    cut = t.full_disk(budget, "run", *tiny(96), "--out", out, main=False)
    lines = [ln for ln in cut.err.splitlines() if ln.strip()]
    t.need(cut.exit == 2 and len(lines) == 1 and "No space left" in lines[0],
           f"the full disk did not end in one line (exit {cut.exit}): {cut.err.strip()[-300:]}")  # fmt: skip
    running = not (out / "record.json").is_file() or read_record(out)["status"] == "running"
    t.need((out / "checkpoint.npz").is_file() and running, "the disk did not fill up mid-run")
    r = t.cli("run", *tiny(96), "--out", out, "--resume")
    if r.exit == 0:
        same_result(t, out, FX.ref96)


_plain("invalid config (search.budget=2) leaves no folder", K_CONFIG,
       ["run", *TINY, "--out", "never", "--set", "search.budget=2"], ("search.budget",), no_folder="never")  # fmt: skip


# config and YAML ------------------------------------------------------------------------------------
def _yaml(name: str, content: bytes, command: str = "config", needles=()):
    def fn(t: T) -> None:
        (t.dir / "cfg.yaml").write_bytes(content)
        if command == "run":
            t.cli("run", *TINY, "--config", t.dir / "cfg.yaml", "--out", "never")
            t.need(not (t.dir / "never").exists(), "a folder was left behind")
        else:
            t.cli(command, *(["--tasks", "sst2", "--methods", "zeroshot", "--seeds", "13"] if command == "compare"
                             else []), "--config", t.dir / "cfg.yaml")  # fmt: skip
        t.needs_in_error("cfg.yaml", *needles)

    CASES.append(Case(f"YAML config {name} ({command})", K_CONFIG, "error", fn))


_yaml("that is a list", b"- a\n- b\n", needles=("mapping",))
_yaml("that is a scalar", b"3\n", needles=("mapping",))
_yaml("that is not UTF-8", b"\xff\xfe run: 1\n", needles=("UTF-8",))
_yaml("that is not valid YAML", b"run: [1,\n", needles=("YAML",))
_yaml("that is a list", b"- a\n- b\n", "run")
_yaml("that is a list", b"- a\n- b\n", "compare")
_yaml("that is not UTF-8", b"search:\n  budget: \xff\n", "compare")
_yaml("with an unknown key", b"search:\n  budgt: 3\n", needles=("budgt",))
_plain("--config naming no file", K_CONFIG, ["config", "--config", "missing.yaml"], ("missing.yaml",))


@case("empty YAML config gives the defaults", K_CONFIG, "correct")
def _(t: T):
    (t.dir / "cfg.yaml").write_text("")
    ref = t.cli("config", main=False)
    r = t.cli("config", "--config", t.dir / "cfg.yaml")
    t.need(r.out == ref.out and "search:" in r.out, "not the default config")


_plain("--set field that does not exist", K_CONFIG, ["run", *TINY, "--out", "never", "--set", "search.budgt=3"],
       ("search.budgt",), no_folder="never")  # fmt: skip
_plain("--set value of the wrong type", K_CONFIG, ["run", *TINY, "--out", "never", "--set", "search.budget=abc"],
       ("search.budget",), no_folder="never")  # fmt: skip
_plain("--set without =", K_CONFIG, ["run", *TINY, "--set", "search.budget"], ("key=value",))
_plain("--set lowrank.layers with a non-integer", K_CONFIG, ["config", "--set", "lowrank.layers=[-2,x]"],
       ("lowrank.layers",))  # fmt: skip
_plain(
    "unknown method", K_CONFIG, ["run", *TINY, "--method", "c-lorra", "--out", "never"], ("c-lorra",), no_folder="never"
)
_plain("unknown task", K_CONFIG, ["run", *TINY, "--task", "sst3", "--out", "never"], ("sst3",), no_folder="never")
_plain("unknown model name", K_CONFIG, ["run", *TINY, "--model", "tiny-llamma", "--out", "never"], ("tiny-llamma",),
       no_folder="never")  # fmt: skip
_plain("unknown optimizer", K_CONFIG, ["run", *TINY, "--optimizer", "adamm", "--out", "never"], ("adamm",),
       no_folder="never")  # fmt: skip
_plain("--popsize 0", K_CONFIG, ["run", *tiny(popsize="0"), "--out", "never"], ("popsize",), no_folder="never")
_plain("--budget -5", K_CONFIG, ["run", *tiny(-5), "--out", "never"], ("budget",), no_folder="never")
_plain("--sigma nan", K_CONFIG, ["run", *tiny(sigma="nan"), "--out", "never"], ("sigma",), no_folder="never")
_plain(
    "--alpha 1e300", K_CONFIG, ["run", *tiny(alpha="1e300"), "--out", "never"], ("lowrank.alpha",), no_folder="never"
)
_plain("--alpha inf", K_CONFIG, ["run", *tiny(alpha="inf"), "--out", "never"], ("alpha",), no_folder="never")
_plain("--device tpu", K_CONFIG, ["run", *tiny(device="tpu"), "--out", "never"], ("device",), no_folder="never")
_plain("--dtype float7", K_CONFIG, ["run", *tiny(dtype="float7"), "--out", "never"], ("dtype",), no_folder="never")


@case("--set lowrank.layers=[-2,-1] is parsed like run's", K_CONFIG, "correct")
def _(t: T):
    r = t.cli("config", "--set", "lowrank.layers=[-2,-1]")
    t.need("- -2\n  - -1\n" in r.out, "lowrank.layers is not [-2, -1]")


@case("--set progress=false (lower case)", K_CONFIG, "correct")
def _(t: T):
    r = t.cli("config", "--set", "progress=false")
    t.need("progress: false" in r.out, "progress is not false")


# flags that would be ignored, bad flag values, compare ------------------------------------------------
_plain("--resume without --out", K_FLAGS, ["run", *TINY, "--resume"], ("--resume needs --out",))
_plain("--overwrite without --out", K_FLAGS, ["run", *TINY, "--overwrite"], ("--overwrite needs --out",))
_plain("--resume with --overwrite", K_FLAGS, ["run", *TINY, "--out", "x", "--resume", "--overwrite"], ("choose one",),
       no_folder="x")  # fmt: skip
_plain("--max-test -3", K_FLAGS, ["zeroshot", *ZS[:6], "--max-test", "-3"], ("max_test",))
_plain("compare --seeds a,b", K_FLAGS, ["compare", "--tasks", "sst2", "--methods", "zeroshot", "--seeds", "a,b"],
       ("--seeds",))  # fmt: skip
_plain('compare --seeds ""', K_FLAGS, ["compare", "--tasks", "sst2", "--methods", "zeroshot", "--seeds", ""])
_plain("compare --methods with an unknown method", K_FLAGS,
       ["compare", "--tasks", "sst2", "--methods", "zeroshot,c-lorra", "--seeds", "13"], ("c-lorra",))  # fmt: skip
_plain("compare --tasks with an unknown task", K_FLAGS,
       ["compare", "--tasks", "sst3", "--methods", "zeroshot", "--seeds", "13"], ("sst3",))  # fmt: skip
_plain("compare --set for an unknown method", K_FLAGS,
       ["compare", "--tasks", "sst2", "--methods", "zeroshot", "--seeds", "13", "--set", "c-lorra:lowrank.rank=2"],
       ("c-lorra",))  # fmt: skip


@case("--max-test 5000 on RTE's 277 rows is said, and all 277 are scored", K_FLAGS, "correct")
def _(t: T):
    r = t.cli("zeroshot", *ZS[:4], "--task", "rte", "--max-test", "5000", "--json")
    t.need("dflora: note: data.max_test 5000 is not below the 277 test examples" in r.err, "no note about --max-test")
    if r.exit == 0:
        t.need(json.loads(r.out)["n"] == 277, "not all 277 examples scored")


def _params(name: str, value: str, expect: str, shown: str | None):
    def fn(t: T) -> None:
        r = t.cmd([PY, "-c", PARAMS, value])
        if shown is not None:
            t.need(r.out.strip() == shown, f"interactive = {r.out.strip()!r}, expected {shown}")

    CASES.append(Case(f"papermill -p interactive {name}", K_FLAGS, expect, fn))


_params("false", "false", "correct", "False")
_params("' TRUE '", " TRUE ", "correct", "True")
_params("maybe", "maybe", "error", None)


# interruptions --------------------------------------------------------------------------------------
def _interrupt(name: str, sig: int, needle: str | None):
    def fn(t: T) -> None:
        out = t.dir / "cut"
        p = t.popen("run", *tiny(96), "--out", out)
        t.need(wait_for(out / "checkpoint.npz", p), "the run ended before its first checkpoint")
        p.send_signal(sig)
        cut = t.collect(p)
        if needle is None:
            t.need(cut.exit == -sig, f"exit {cut.exit} after kill -9")
        else:
            t.need(cut.exit == 130 and needle in cut.err, f"exit {cut.exit}, stderr {cut.err.strip()[-200:]!r}")
        t.need(not (out / "record.json").is_file() or read_record(out)["status"] == "running", "record not 'running'")
        r = t.cli("run", *tiny(96), "--out", out, "--resume")
        if r.exit == 0:
            same_result(t, out, FX.ref96)

    CASES.append(Case(f"{name} mid-run, then --resume equals the uninterrupted run", K_SIGNAL, "correct", fn))


_interrupt("SIGTERM", signal.SIGTERM, "interrupted; continue with")
_interrupt("SIGINT", signal.SIGINT, "interrupted; continue with")
_interrupt("kill -9", signal.SIGKILL, None)


# architectures --------------------------------------------------------------------------------------
def _arch(mt: str, command: str):
    def fn(t: T) -> None:
        folder = FX.archs / mt
        if command == "zeroshot":
            r = t.cli("zeroshot", *ZS[2:], "--model", folder, "--json")
            if r.exit == 0:
                v = json.loads(r.out)
                t.need(v["n"] == 8 and 0 <= v["value"] <= 1, f"zero-shot result {v}")
            h = t.cmd([PY, "-c", HEAD_CHECK, folder], main=False)
            if t.need(h.exit == 0, f"head check failed: {h.err.strip()[-300:]}"):
                diff, scale = map(float, h.out.split())
                t.need(diff < 1e-4 and scale > 0.05, f"head vs model logits: max diff {diff}, logit scale {scale}")
        else:
            r = t.cli("run", *tiny(model=str(folder)), "--out", t.dir / "run")
            if r.exit == 0:
                rec = read_record(t.dir / "run")
                t.need(rec["status"] == "done" and rec["calls"] > 0 and math.isfinite(rec["test"]["value"]),
                       "not a finished search")  # fmt: skip

    CASES.append(Case(f"{mt} tiny model: {command}", K_ARCH, "correct", fn))


for _mt in ("electra", "granite"):
    _arch(_mt, "zeroshot")
    _arch(_mt, "run c-lora")


# -- issue 32: run folders, model folders and task files from someone else; clusters; full disks -----------
FIRST_OF_32 = len(CASES)
K_RUNDIR = "run folders from someone else"
K_TASK = "task files from someone else"
K_RAY = "cluster addresses"
K_EXPORT = "exports on a full disk"
USE = {
    "predict": lambda r, t: ["predict", "--run", r, "nice"],
    "evaluate": lambda r, t: ["evaluate", "--run", r],
    "export": lambda r, t: ["export", "--run", r, "--format", "peft", "--out", t.dir / "export"],
    "reproduce": lambda r, t: ["reproduce", r],
}


def _edit_adapter(folder: Path, edit: Callable[[dict, Path], None]) -> None:
    with np.load(folder / "adapter.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays, folder)
    np.savez(folder / "adapter.npz", **arrays)


def _adapter(name: str, damage: Callable[[Path, Path], None], commands: tuple[str, ...], needles=("adapter.npz",)):
    """A finished run whose adapter.npz (planted, edited or gone) is used by predict, evaluate, export, reproduce."""
    for command in commands:

        def fn(t: T, command=command) -> None:
            run = copy_run(FX.ref24, t.dir / "run")
            damage(run, t.dir)
            t.guard(run)
            t.cli(*USE[command](run, t))
            t.need(not (t.dir / "pwned").exists(), "a pickle was executed")
            t.need(not (t.dir / "export").exists(), "an export was written")
            t.needs_in_error(*needles)

        CASES.append(Case(f"{name}, {command}", K_RUNDIR, "error", fn))


def _z(value) -> Callable[[Path, Path], None]:
    return lambda run, d: _edit_adapter(run, lambda a, f: a.update(z_best_dev=value(a, d)))


_adapter("adapter.npz whose z_best_dev is an object array (pickle)",
         _z(lambda a, d: np.array([Payload(d / "pwned")], dtype=object)), tuple(USE), ("Python objects",))  # fmt: skip
_adapter("adapter.npz whose z_best_dev has shape (2, 7)", _z(lambda a, d: np.zeros((2, 7))), ("export", "predict"),
         ("shape [2, 7]",))  # fmt: skip
_adapter("adapter.npz whose z_best_dev holds a NaN",
         _z(lambda a, d: np.where(np.arange(a["z_best_dev"].size).reshape(a["z_best_dev"].shape) == 0, np.nan,
                                  a["z_best_dev"])), ("predict", "evaluate"), ("non-finite",))  # fmt: skip
_adapter("adapter.npz with a label_bias the record does not have",
         lambda run, d: _edit_adapter(run, lambda a, f: a.update(label_bias=np.array([5.0, -5.0]))), ("predict",),
         ("no label bias",))  # fmt: skip
_adapter(
    "adapter.npz missing", lambda run, d: (run / "adapter.npz").unlink(), ("predict",), ("adapter.npz is missing",)
)
_adapter("adapter.npz truncated", lambda run, d: (run / "adapter.npz").write_bytes((run / "adapter.npz").read_bytes()[:300]),
         ("export",))  # fmt: skip


@case("--run runs/no-such-run names the folder given (predict)", K_RUNDIR)
def _(t: T):
    (t.dir / "runs").mkdir()
    t.cli("predict", "--run", "runs/no-such-run", "nice")
    t.need("runs/no-such-run" in t.main.err and "runs/record.json" not in t.main.err, "the parent folder is named")
    t.needs_in_error("no such run folder")


@case("--run of a folder without record.json (export)", K_RUNDIR)
def _(t: T):
    (t.dir / "empty").mkdir()
    t.cli("export", "--run", "empty", "--format", "peft", "--out", "x")
    t.needs_in_error("empty: no record.json in this folder")


def _decoy_model(t: T, layout: str) -> Path:
    """The tiny Granite folder (config, tokenizer) whose weights transformers would read from a pickle."""
    folder = t.dir / "model"
    shutil.copytree(FX.archs / "granite", folder)
    (folder / "model.safetensors").unlink()
    pickled = pickle.dumps(Payload(t.dir / "pwned"))
    if layout == "index":
        (folder / "pytorch_model-00001-of-00001.bin").write_bytes(pickled)
        index = {"weight_map": {"lm_head.weight": "pytorch_model-00001-of-00001.bin"}}
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    elif layout == "config":
        (folder / "adapter_model.bin").write_bytes(pickled)
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, "transformers_weights": "adapter_model.bin"}))
        shutil.copyfile(FX.archs / "granite" / "model.safetensors", folder / "model.safetensors")
    else:
        (folder / "pytorch_model.bin").write_bytes(pickled)
    if layout != "config":
        (folder / "x.safetensors").write_bytes(b"decoy")
    return folder


for _layout, _what in (("bin", "a decoy x.safetensors beside a pickle pytorch_model.bin"),
                       ("index", "a decoy x.safetensors beside a sharded pickle .bin index"),
                       ("config", "config.json naming a pickle as its transformers_weights")):  # fmt: skip

    def _fn(t: T, layout=_layout) -> None:
        t.cli("zeroshot", *ZS[2:], "--model", _decoy_model(t, layout))
        t.need(not (t.dir / "pwned").exists(), "the pickle weights were executed")
        t.needs_in_error("safetensors")

    CASES.append(Case(f"model folder with {_what}, zeroshot", K_MODEL, "error", _fn))


def _task_file(t: T, **keys: str) -> Path:
    """The example task (data/examples/reviews) in ``t.dir/task`` with some keys replaced; its data also one folder up."""
    folder = t.dir / "task"
    shutil.copytree(DATA / "examples" / "reviews", folder)
    shutil.copyfile(folder / "reviews.csv", t.dir / "outside.csv")
    (folder / "link.csv").symlink_to("/etc/passwd")
    lines = [ln for ln in (folder / "task.yaml").read_text().splitlines() if ln.split(":")[0] not in keys]
    (folder / "task.yaml").write_text("\n".join([*lines, *(f"{k}: {v}" for k, v in keys.items())]) + "\n")
    return folder / "task.yaml"


ZS_TASK = ["zeroshot", "--model", "tiny-llama", "--device", "cpu", "--max-test", "8", "--shots", "4", "--task"]


def _task(name: str, keys: dict[str, str], allow: bool = False, expect: str = "error", needles=("outside",)):
    def fn(t: T) -> None:
        r = t.cli(*ZS_TASK, _task_file(t, **keys), *(["--allow-task-files-outside", "--json"] if allow else []))
        t.need("root:" not in r.err and "/bin/" not in r.err, "the foreign file's content is shown")
        if r.exit == 0:
            t.need(json.loads(r.out)["n"] == 8, "not the 8 test examples")
        t.needs_in_error(*needles)

    CASES.append(Case(f"task file with {name}", K_TASK, expect, fn))


_task("test: /etc/passwd, zeroshot", {"test": "/etc/passwd"})
_task("pool: ../outside.csv, zeroshot", {"pool": "{file: ../outside.csv, split: train}"})
_task("a test file that is a link to /etc/passwd, zeroshot", {"test": "{file: link.csv, split: test}"})
_task("a fixed split outside its folder, zeroshot", {"splits": "{13: {train: ../outside.csv, dev: reviews.csv}}"})
_task("pool: ../outside.csv, zeroshot --allow-task-files-outside", {"pool": "{file: ../outside.csv, split: train}"},
      allow=True, expect="correct", needles=())  # fmt: skip
_task("test: /etc/passwd, zeroshot --allow-task-files-outside (nothing of it shown)",
      {"test": "/etc/passwd", "format": "csv"}, allow=True, needles=("not shown",))  # fmt: skip


@case("evaluate --run R --task T whose test file is outside T's folder", K_TASK)
def _(t: T):
    run = copy_run(FX.ref24, t.dir / "run")
    t.guard(run)
    t.cli("evaluate", "--run", run, "--task", _task_file(t, test="/etc/passwd"))
    t.need("root:" not in t.main.err, "the foreign file's content is shown")
    t.needs_in_error("outside")


RAY_GRID = ["compare", "--tasks", "sst2", "--methods", "zeroshot", "--seeds", "13", "--model", "tiny-llama",
            "--max-test", "8", "--root", "grid", "--backend", "ray", "--set", "model.device=cpu"]  # fmt: skip


def _address(name: str, address: str, needles=()):
    _plain(f"compare --backend ray --address {address} ({name})", K_RAY, [*RAY_GRID, "--address", address], needles)


_address("nothing listening", "127.0.0.1:1", ("nothing answers",))
_address("a port that is not a number", "not-a-host:xyz", ("HOST:PORT",))
_address("no such host", "not-a-host:6379", ("nothing answers",))
_address("a Ray Client address", "ray://127.0.0.1:10001", ("HOST:PORT",))


@contextlib.contextmanager
def _silent_port():
    """A TCP port that accepts connections and never answers as a Ray head would."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"127.0.0.1:{s.getsockname()[1]}"


@case("compare --backend ray --address of a port where no Ray answers, --connect-timeout 5", K_RAY)
def _(t: T):
    with _silent_port() as address:
        t0 = time.monotonic()
        t.cli(*RAY_GRID, "--address", address, "--connect-timeout", "5")
        t.need(time.monotonic() - t0 < 90, f"took {time.monotonic() - t0:.0f} s with --connect-timeout 5")
    t.needs_in_error("no Ray cluster answered within 5 s")


@case("SIGTERM while compare waits for a Ray address that does not answer", K_RAY, "interrupted")
def _(t: T):
    with _silent_port() as address:
        p = t.popen(*RAY_GRID, "--address", address)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None and not _children(p.pid):
            time.sleep(0.2)
        time.sleep(4)  # the probe is inside Ray's connection attempts
        probes, t0 = _children(p.pid), time.monotonic()
        p.send_signal(signal.SIGTERM)
        r = t.collect(p, main=True, timeout=60)
    t.need(bool(probes), "no probe process was seen")
    t.need(time.monotonic() - t0 < 10, f"{time.monotonic() - t0:.0f} s from SIGTERM to the end")
    t.need("interrupted" in r.err, "no 'interrupted' line")
    t.need(not [c for c in probes if _alive(c)], "the probe process outlived the command")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


def _export_full(fmt: str):
    def fn(t: T) -> None:
        exports = t.dir / "exports"
        exports.mkdir()
        argv = ["export", "--run", FX.ref24, "--format", fmt, "--which", "z_final", "--out", exports / "x"]
        full = t.full_disk(0, *argv, main=False)
        lines = [ln for ln in full.err.splitlines() if ln.strip()]
        t.need(full.exit == 2 and len(lines) == 1 and "No space left" in lines[0],
               f"the full disk did not end in one line (exit {full.exit}): {full.err.strip()[-300:]}")  # fmt: skip
        t.need(not list(exports.iterdir()), f"left behind: {[p.name for p in exports.iterdir()]}")
        r = t.cli(*argv)
        if r.exit == 0:
            t.need((exports / "x" / "dflora_classifier.json").is_file(), "the retried export is incomplete")

    CASES.append(Case(f"export --format {fmt} onto a full disk, then the retry", K_EXPORT, "correct", fn))


_export_full("peft")
_export_full("merged")

# `papermill -p runs_root /etc/passwd` on a notebook: its parameter cells, then open_profile as notebook 01 runs it
NB_PATHS = r"""
import sys
from dflora_core.errors import DfloraError
from dflora_core.notebook_params import ParameterGuard, open_profile
ns = {}
guard = ParameterGuard(ns)
ns["__annotations__"] = {"profile": "str", "runs_root": "str", "figures_dir": "str"}
ns["profile"], ns["runs_root"], ns["figures_dir"] = "smoke", sys.argv[1], sys.argv[2]
try:
    open_profile(guard.validate(ns), quiet=True)
except DfloraError as err:
    print(f"dflora: error: {err}", file=sys.stderr)
    sys.exit(2)
"""


@case("papermill -p runs_root /etc/passwd (a file, not a folder)", K_FLAGS)
def _(t: T):
    t.cmd([PY, "-c", NB_PATHS, "/etc/passwd", t.dir / "figures"])
    t.needs_in_error("runs_root", "is a file")


NEW_IN_32 = {c.name for c in CASES[FIRST_OF_32:]}


# the default census: one or more cases of every class of issue 12, about 10 minutes on 2 loaded cores
# (``--all`` runs every case above, about twice as long)
CORE = {
    "planted checkpoint.pkl, run --resume",
    "planted checkpoint.pkl beside a finished run, run --resume",
    "checkpoint.npz with an object array (pickle), run --resume",
    "checkpoint.npz truncated, run --resume",
    "checkpoint.npz empty, run --resume",
    "checkpoint.npz without a __state__ entry, run --resume",
    "checkpoint.npz with the right identity but a state that is a list, run --resume",
    "model folder with pytorch_model.bin (pickle), zeroshot",
    "model folder without weights",
    "model folder with truncated safetensors weights",
    "model folder whose weights do not fit its config.json",
    "second writer while another process holds the folder",
    "a killed (kill -9) holder's lock is free again",
    "two dflora run at once on one --out",
    "finished folder re-run without --resume",
    "finished folder re-run with --resume reads it back",
    "finished folder re-run with --overwrite",
    "kill -9 during --overwrite, then --resume",
    "record.json deleted, resume with another budget",
    "record.json deleted, resume with another popsize",
    "record.json deleted, resume with another alpha",
    "record.json deleted, resume with the same config",
    "header-only SST-2 dev file (data root with manifest)",
    "header-only SST-2 dev file (data root without manifest)",
    "empty SST-2 dev file (data root without manifest)",
    "SST-2 dev file cut to 499 rows (data root without manifest)",
    "SNLI test file whose stray quotes merge two rows (data root without manifest)",
    "SST-2 dev file with a NUL byte (data root without manifest)",
    "DFLORA_DATA pointing at no folder",
    "intact data copy without manifest, after the bad ones (no cache poisoning)",
    "record.json truncated, run --resume",
    "record.json a JSON list, run --resume",
    "record.json an empty mapping, run --resume",
    "record.json truncated, compare",
    "record.json truncated, compare --table-only",
    "record.json a JSON list, compare --table-only",
    "--out is a file",
    "--out under a file",
    "--out in a read-only folder",
    "--out /proc/dflora-run",
    '--out ""',
    "--out on a full disk from the start",
    "disk fills up mid-run, resume after space is freed",
    "invalid config (search.budget=2) leaves no folder",
    "YAML config that is a list (config)",
    "YAML config that is a scalar (config)",
    "YAML config that is not UTF-8 (config)",
    "YAML config that is not valid YAML (config)",
    "--set field that does not exist",
    "--set value of the wrong type",
    "unknown method",
    "unknown task",
    "--alpha 1e300",
    "--set lowrank.layers=[-2,-1] is parsed like run's",
    "--set progress=false (lower case)",
    "--resume without --out",
    "--resume with --overwrite",
    "compare --seeds a,b",
    "--max-test 5000 on RTE's 277 rows is said, and all 277 are scored",
    "papermill -p interactive false",
    "papermill -p interactive maybe",
    "SIGTERM mid-run, then --resume equals the uninterrupted run",
    "SIGINT mid-run, then --resume equals the uninterrupted run",
    "kill -9 mid-run, then --resume equals the uninterrupted run",
    "electra tiny model: zeroshot",
    "electra tiny model: run c-lora",
    "granite tiny model: zeroshot",
    *NEW_IN_32,  # issue 32: every case of run folders, task files, clusters, full-disk exports, folder parameters
}
assert CORE <= {c.name for c in CASES}, sorted(CORE - {c.name for c in CASES})


# -- classification and report -------------------------------------------------------------------------
CLASSES = ("one-line error", "correct", "traceback", "silently accepted", "hang", "other")


def classify(c: Case, t: T) -> tuple[str, str]:
    r = t.main
    if r is None:
        return "other", "no command ran"
    hung = [x for x in t.results if x.timed_out]
    if hung:
        return "hang", f"{' '.join(_short(a) for a in hung[0].command[:6])} ... did not end within the case's limit"
    if any("Traceback" in x.err for x in t.results):
        return "traceback", ""
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    one_line = r.exit == 2 and len(lines) == 1 and lines[0].startswith("dflora: error: ")
    why = "; ".join(t.fails)
    if c.expect == "interrupted":  # a signal's correct result: exit 130 and one line saying how to continue
        ok = r.exit == 130 and len(lines) == 1 and not t.fails
        return (
            ("correct", "")
            if ok
            else ("other", f"exit {r.exit}, {len(lines)} stderr lines" + (f"; {why}" if why else ""))
        )
    if one_line and c.expect in ("error", "either"):
        return ("one-line error", "") if not t.fails else ("other", f"one-line error, but {why}")
    if r.exit == 0:
        if c.expect == "error":
            return "silently accepted", "exit 0 where an error was expected" + (f"; {why}" if why else "")
        return ("correct", "") if not t.fails else ("silently accepted", why)
    if one_line:
        return "other", f"refused a valid case: {lines[0]}" + (f"; {why}" if why else "")
    tail = " | ".join(lines[-3:])
    return "other", f"exit {r.exit}, {len(lines)} stderr lines: {tail[:400]}" + (f"; {why}" if why else "")


def run_case(c: Case, root: Path, env: dict[str, str], index: int, limit: float = 240.0) -> dict:
    t = T(c.name, root / f"case{index:03d}", env, deadline=time.monotonic() + limit)
    t.dir.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        c.fn(t)
        kind, why = classify(c, t)
    except Skip as err:
        kind, why = "skipped", str(err)
    except Exception as err:  # noqa: BLE001 - a census bug must not stop the census
        kind, why = "other", f"census error: {type(err).__name__}: {err}"
    lost = t.data_lost() if kind != "skipped" else None
    r = t.main
    err_lines = [ln for ln in (r.err if r else "").splitlines() if ln.strip()]
    return {
        "name": c.name,
        "class": c.klass,
        "expect": c.expect,
        "command": " ".join(_short(x) for x in r.command) if r else None,
        "exit": r.exit if r else None,
        "stderr_first_line": err_lines[0][:500] if err_lines else "",
        "stderr_lines": len(err_lines),
        "classification": kind,
        "why": why,
        "data_lost": lost,
        "notes": t.notes,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _short(arg: str) -> str:
    """Temporary paths shortened to ``$CASE/...`` in the JSON; spaces quoted."""
    for prefix, name in ((str(FX.root / "setup"), "$SETUP"), (str(FX.root), "$TMP"), (PY, "python")):
        arg = arg.replace(prefix, name)
    if arg.startswith("$TMP/case"):
        arg = "$CASE" + arg[len("$TMP/case000") :]
    return json.dumps(arg) if (not arg or any(ch in arg for ch in " \n'\"[]")) else arg


def totals(rows: list[dict]) -> dict:
    counted = [r for r in rows if r["classification"] != "skipped"]
    out = {"cases tried": len(counted)}
    for k in CLASSES:
        out[k] = sum(r["classification"] == k for r in counted)
    out["data lost"] = sum(bool(r["data_lost"]) for r in counted)
    out["skipped"] = len(rows) - len(counted)
    return out


def markdown(rows: list[dict]) -> str:
    tot = totals(rows)
    lines = ["| cases tried | one-line errors | correct results | tracebacks (goal 0) | silently accepted (goal 0) "
             "| hangs (goal 0) | other | data lost (goal 0) |", "|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| {tot['cases tried']} | {tot['one-line error']} | {tot['correct']} | {tot['traceback']} "
             f"| {tot['silently accepted']} | {tot['hang']} | {tot['other']} | {tot['data lost']} |", "",
             "| class | cases | one-line errors | correct | tracebacks | silently accepted | hangs | other | data lost |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for klass in dict.fromkeys(r["class"] for r in rows):
        sub = [r for r in rows if r["class"] == klass and r["classification"] != "skipped"]
        n = Counter(r["classification"] for r in sub)
        lines.append(f"| {klass} | {len(sub)} | {n['one-line error']} | {n['correct']} | {n['traceback']} "
                     f"| {n['silently accepted']} | {n['hang']} | {n['other']} | {sum(bool(r['data_lost']) for r in sub)} |")  # fmt: skip
    if tot["skipped"]:
        lines.append(f"\n{tot['skipped']} case(s) skipped: the machine cannot stage them.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    global FX
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--all", action="store_true", help=f"every case ({len(CASES)}), not the default {len(CORE)}")
    ap.add_argument("--only", help="comma-separated words: run the cases whose name or class contains one")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--out", default=str(OUT_JSON), help=f"JSON results (default {OUT_JSON.relative_to(REPO)})")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    ap.add_argument("--case-limit", type=float, default=240.0, metavar="SECONDS",
                    help="a case whose commands have not ended by then is a hang (they are killed); default 240")  # fmt: skip
    args = ap.parse_args(argv)
    cases = CASES if args.all or args.only else [c for c in CASES if c.name in CORE]
    if args.only:
        words = [w.strip().lower() for w in args.only.split(",") if w.strip()]
        cases = [c for c in CASES if any(w in c.name.lower() or w in c.klass.lower() for w in words)]
    if args.list:
        for i, c in enumerate(cases, 1):
            print(f"{i:3} [{c.klass}] {c.name} (expect {c.expect})")
        return 0
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="dflora-census-"))
    env = _env({"DFLORA_ZS_CACHE": str(root / "zscache")})
    FX = Fixtures(root)
    rows: list[dict] = []
    try:
        print(f"fault census: {len(cases)} cases, working in {root}", flush=True)
        FX = prepare(root, env)
        for i, c in enumerate(cases, 1):
            row = run_case(c, root, env, i, args.case_limit)
            rows.append(row)
            flag = " DATA LOST" if row["data_lost"] else ""
            print(f"{i:3}/{len(cases)} {row['classification']:17} {row['seconds']:5.1f} s  {c.name}{flag}"
                  + (f"\n      {row['why']}" if row["why"] else ""), flush=True)  # fmt: skip
    finally:
        for m in list(FX.mounts):
            umount(m)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    wall = time.perf_counter() - t0
    report = {
        "command": " ".join(["python", "benchmarks/fault_census.py", *(argv if argv is not None else sys.argv[1:])]),
        "git": subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip(),
        "git_dirty": bool(
            subprocess.run(
                ["git", "status", "--porcelain", "dflora_core"], cwd=REPO, capture_output=True, text=True
            ).stdout.strip()
        ),  # fmt: skip
        "python": platform.python_version(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_start": load0,
            "loadavg_end": os.getloadavg(),
            "root": os.geteuid() == 0,
            "tmpfs_mounts": can_mount(),
        },  # fmt: skip
        "case_limit_s": args.case_limit,
        "wall_s": round(wall, 1),
        "setup_s": round(FX.setup_s, 1),
        "totals": totals(rows),
        "cases": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print()
    print(markdown(rows))
    print(f"\ncensus wall time {wall:.0f} s (setup {FX.setup_s:.0f} s); wrote {out}")
    bad = totals(rows)
    return (
        0 if bad["traceback"] == bad["silently accepted"] == bad["hang"] == bad["other"] == bad["data lost"] == 0 else 1
    )


if __name__ == "__main__":
    sys.exit(main())
