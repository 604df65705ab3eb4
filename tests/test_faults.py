"""Fault injection: hostile files, concurrent writers, interruptions and bad input.

Every case ends in a one-line error (exit status 2 at the command line) or in a correct
result, and no case loses or demotes a finished record.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dflora_core.cli import main
from dflora_core.errors import DfloraError

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--model", "tiny-llama", "--device", "cpu", "--no-progress", "--task", "sst2", "--max-test", "8",
        "--budget", "24", "--popsize", "4", "--intrinsic-dim", "8", "--eval-every", "8",
        "--set", "lowrank.layers=[-2,-1]", "--set", "search.checkpoint_every=1"]  # fmt: skip


def one_line_error(capsys, argv, *needles) -> str:
    """Run the CLI, expect exit 2 and exactly one line on stderr containing every needle."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("dflora: error: "), err
    for n in needles:
        assert n in err, err
    return err


def run_tiny(tmp_path, capsys, name="run", *extra) -> Path:
    out = tmp_path / name
    assert main(["run", *TINY, "--out", str(out), *extra]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return out


def zeroshot_grid(tmp_path, capsys) -> tuple[list[str], Path]:
    """A finished one-run zero-shot grid: its compare argv and its record's path."""
    root = tmp_path / "grid"
    argv = ["compare", "--tasks", "sst2", "--methods", "zeroshot", "--seeds", "13", "--model", "tiny-llama",
            "--max-test", "8", "--root", str(root), "--in-process", "--set", "model.device=cpu"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    [rec] = root.glob("**/record.json")
    return argv, rec


class Payload:
    """Unpickling this runs code: it would create a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# -- nothing executed -----------------------------------------------------------------------------
def test_a_planted_pickle_checkpoint_is_refused_and_never_unpickled(tmp_path, capsys):
    out = tmp_path / "shared"
    out.mkdir()
    marker = tmp_path / "pwned"
    (out / "checkpoint.pkl").write_bytes(pickle.dumps(Payload(marker)))
    one_line_error(capsys, ["run", *TINY, "--out", str(out), "--resume"], "checkpoint.pkl", "pickle", "--overwrite")
    assert not marker.exists()


def test_a_planted_object_array_in_the_state_file_is_refused(tmp_path, capsys):
    out = run_tiny(tmp_path, capsys, "run")
    (out / "record.json").unlink()  # an interrupted run: only the state remains
    marker = tmp_path / "pwned"
    np.savez(out / "checkpoint.npz", __state__=np.array([Payload(marker)], dtype=object))
    one_line_error(capsys, ["run", *TINY, "--out", str(out), "--resume"], "checkpoint.npz", "unreadable state")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "not a state", "bad json"])
def test_a_damaged_state_file_is_a_one_line_error(tmp_path, capsys, damage):
    out = run_tiny(tmp_path, capsys, damage.replace(" ", "-"))
    (out / "record.json").unlink()
    path = out / "checkpoint.npz"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "not a state":
        np.savez(path, z=np.zeros(3))
    else:
        np.savez(path, __state__=np.frombuffer(b'{"format": "dflora-state/1", "state": ', dtype=np.uint8))
    one_line_error(capsys, ["run", *TINY, "--out", str(out), "--resume"], "checkpoint.npz")


def test_a_model_folder_with_pickle_weights_is_refused_in_one_line(tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(tmp_path / "pwned")))
    argv = ["zeroshot", "--model", str(folder), "--device", "cpu", "--task", "sst2", "--max-test", "8"]
    one_line_error(capsys, argv, "safetensors")
    assert not (tmp_path / "pwned").exists()


def _model_folder(tmp_path, layout: str) -> Path:
    """A model folder whose weights transformers would read from a pickle (or from outside the folder)."""
    from dflora_core.models.tiny import build_tiny

    folder = tmp_path / "model"
    model, tok = build_tiny("tiny-llama")  # a real config and tokenizer: only the weights are wrong
    model.config.save_pretrained(folder)
    tok.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    pickled = pickle.dumps(Payload(tmp_path / "pwned"))
    if layout == "decoy safetensors beside pytorch_model.bin":
        (folder / "pytorch_model.bin").write_bytes(pickled)
        (folder / "x.safetensors").write_bytes(b"decoy")
    elif layout == "a sharded .bin index beside a decoy":
        shard = "pytorch_model-00001-of-00001.bin"
        (folder / shard).write_bytes(pickled)
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": shard}}))
        (folder / "x.safetensors").write_bytes(b"decoy")
    elif layout == "config.json naming a .bin":
        (folder / "adapter_model.bin").write_bytes(pickled)
        (folder / "model.safetensors").write_bytes(b"decoy")
        config["transformers_weights"] = "adapter_model.bin"
    else:  # a safetensors index naming a pickle shard
        (folder / "w.bin").write_bytes(pickled)
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": "w.bin"}}))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "layout",
    ["decoy safetensors beside pytorch_model.bin", "a sharded .bin index beside a decoy", "config.json naming a .bin",
     "a safetensors index naming a .bin shard"],
)  # fmt: skip
def test_only_safetensors_weights_are_ever_loaded(tmp_path, capsys, monkeypatch, layout):
    import torch

    def never(*a, **k):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", never)
    folder = _model_folder(tmp_path, layout)
    argv = ["zeroshot", "--model", str(folder), "--device", "cpu", "--task", "sst2", "--max-test", "8"]
    one_line_error(capsys, argv, str(folder), "safetensors")
    assert not (tmp_path / "pwned").exists()


def test_sharded_safetensors_weights_still_load(tmp_path, capsys):
    from dflora_core.models.tiny import build_tiny

    folder = tmp_path / "model"
    model, tok = build_tiny("tiny-llama")
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="20KB")
    tok.save_pretrained(folder)
    assert (folder / "model.safetensors.index.json").is_file() and not (folder / "model.safetensors").exists()
    assert main(["zeroshot", "--model", str(folder), "--device", "cpu", "--task", "sst2", "--max-test", "8"]) == 0


# -- nothing lost or mixed --------------------------------------------------------------------------
HOLD = """
import sys, time
from dflora_core.results.record import RunFolder
with RunFolder(sys.argv[1]).lock():
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_releases(tmp_path, capsys):
    out = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        one_line_error(capsys, ["run", *TINY, "--out", str(out)], "in use by", f"pid {holder.pid}")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main(["run", *TINY, "--out", str(out)]) == 0  # the dead holder's lock is gone


def test_a_grid_leaves_a_run_held_elsewhere_to_its_holder_when_asked(tmp_path, capsys):
    """Two drivers of one grid share its runs: the busy run is skipped (said on stderr), the rest runs."""
    from dflora_core.config import RunConfig
    from dflora_core.errors import RunBusyError
    from dflora_core.grids.grid import find_run, run_grid

    base = RunConfig().replace(**{"method": "zeroshot", "model.name": "tiny-llama", "model.device": "cpu",
                                  "data.task": "sst2", "data.max_test": 8, "progress": False})  # fmt: skip
    busy, free = base.replace(seed=13), base.replace(seed=42)
    held = find_run(tmp_path, busy)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(held)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunBusyError, match=f"pid {holder.pid}"):
            run_grid([busy, free], tmp_path)  # by default a busy run stops the grid, as before
        records = run_grid([busy, free], tmp_path, skip_busy=True)
        assert [r.config["seed"] for r in records] == [42]
        assert "skipped (running elsewhere)" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert [r.config["seed"] for r in run_grid([busy, free], tmp_path, skip_busy=True)] == [13, 42]


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    from dflora_core.results.record import RunFolder

    folder = RunFolder(tmp_path / "f")
    with folder.lock(), folder.lock():
        assert (tmp_path / "f" / ".lock").read_text().startswith("host ")
    with folder.lock():  # released after the outer exit
        pass


def test_a_finished_run_is_neither_redone_nor_demoted(tmp_path, capsys):
    out = run_tiny(tmp_path, capsys)
    before = json.loads((out / "record.json").read_text())
    one_line_error(capsys, ["run", *TINY, "--out", str(out)], "finished run", "--resume", "--overwrite")
    assert json.loads((out / "record.json").read_text()) == before
    assert main(["run", *TINY, "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "record.replaced.json").read_text()) == before  # set aside, not lost
    after = json.loads((out / "record.json").read_text())
    assert after["status"] == "done" and after["test"] == before["test"]  # deterministic


def test_a_checkpoint_is_not_continued_under_another_config(tmp_path, capsys):
    out = run_tiny(tmp_path, capsys)
    (out / "record.json").unlink()  # the record is gone; the checkpoint knows its config
    argv = ["run", *[a if a != "24" else "48" for a in TINY], "--out", str(out), "--resume"]
    one_line_error(capsys, argv, "checkpoint.npz", "another configuration", "search.budget")


@pytest.mark.parametrize("where", ["record", "table"])
def test_a_corrupted_record_is_named_in_one_line(tmp_path, capsys, where):
    if where == "record":
        out = run_tiny(tmp_path, capsys)
        (out / "record.json").write_text('{"status": "do')
        one_line_error(capsys, ["run", *TINY, "--out", str(out), "--resume"], "record.json", "unreadable")
        return
    argv, rec = zeroshot_grid(tmp_path, capsys)
    rec.write_text("[1, 2")
    one_line_error(capsys, [*argv, "--table-only"], str(rec))


@pytest.mark.parametrize("kind", ["a file", "under a file", "proc", "empty"])
def test_an_unusable_out_is_a_one_line_error(tmp_path, capsys, kind):
    f = tmp_path / "f"
    f.write_text("x")
    out = {"a file": str(f), "under a file": str(f / "run"), "proc": "/proc/dflora-run", "empty": ""}[kind]
    one_line_error(capsys, ["run", *TINY, "--out", out], "--out")


def test_a_full_disk_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    import errno

    from dflora_core import fileio

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(fileio, "atomic_write_bytes", full)
    one_line_error(capsys, ["run", *TINY, "--out", str(tmp_path / "run")], "No space left")


def test_an_invalid_config_leaves_no_folder_behind(tmp_path, capsys):
    out = tmp_path / "never"
    one_line_error(capsys, ["run", *TINY, "--out", str(out), "--set", "search.budget=2"], "search.budget")
    assert not out.exists()


# -- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, needle",
    [
        (b"- a\n- b\n", "mapping"),
        (b"\xff\xfe run: 1\n", "UTF-8"),
        (b"run: [1,\n", "not valid YAML"),
        (b"3\n", "mapping"),
    ],
)
def test_a_config_file_that_is_not_a_utf8_mapping_is_one_line(tmp_path, capsys, content, needle):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(content)
    one_line_error(capsys, ["config", "--config", str(path)], str(path), needle)


def test_flag_combinations_that_would_be_ignored_are_refused(tmp_path, capsys):
    one_line_error(capsys, ["run", *TINY, "--resume"], "--resume needs --out")
    one_line_error(capsys, ["run", *TINY, "--out", str(tmp_path / "x"), "--resume", "--overwrite"], "choose one")
    one_line_error(capsys, ["compare", "--tasks", "sst2", "--methods", "zeroshot", "--seeds", "a,b"], "--seeds")


def test_a_projection_that_would_overflow_is_refused_before_searching(tmp_path, capsys):
    one_line_error(capsys, ["run", *TINY, "--alpha", "1e300", "--out", str(tmp_path / "run")], "lowrank.alpha")


def test_run_and_compare_parse_set_values_alike(tmp_path, capsys):
    out = run_tiny(tmp_path, capsys)  # TINY sets lowrank.layers=[-2,-1], which compare also accepts
    assert json.loads((out / "record.json").read_text())["config"]["lowrank"]["layers"] == [-2, -1]


def test_a_max_test_above_the_test_set_is_said(tmp_path, capsys):
    argv = ["zeroshot", "--model", "tiny-llama", "--device", "cpu", "--task", "rte", "--max-test", "5000"]
    assert main(argv) == 0
    assert "dflora: note: data.max_test 5000 is not below the 277 test examples" in capsys.readouterr().err


# -- interruptions -----------------------------------------------------------------------------------
def test_sigterm_checkpoints_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path, capsys):
    ref = run_tiny(tmp_path, capsys, "ref")
    out = tmp_path / "cut"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dflora_core", "run", *[a if a != "24" else "160" for a in TINY], "--out", str(out)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not (out / "checkpoint.npz").is_file() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted; continue with" in err, err
    assert main(["run", *[a if a != "24" else "160" for a in TINY], "--out", str(out), "--resume"]) == 0
    capsys.readouterr()
    full = tmp_path / "full"
    assert main(["run", *[a if a != "24" else "160" for a in TINY], "--out", str(full)]) == 0
    a, b = (json.loads((p / "record.json").read_text()) for p in (out, full))
    assert a["test"] == b["test"] and a["calls"] == b["calls"] and a["best_dev"] == b["best_dev"]
    ha, hb = ([{k: v for k, v in g.items() if k != "seconds"} for g in json.loads((p / "history.json").read_text())]
              for p in (out, full))  # fmt: skip
    assert ha == hb
    assert ref.is_dir()


def test_the_lock_file_does_not_survive_as_a_stale_claim(tmp_path, capsys):
    """A finished run's folder can be read and resumed by anyone later (the lock is released)."""
    out = run_tiny(tmp_path, capsys)
    assert main(["run", *TINY, "--out", str(out), "--resume"]) == 0


def test_library_callers_get_the_same_errors(tmp_path, tiny_models):
    from dflora_core.config import from_dict
    from dflora_core.runner import run

    cfg = from_dict({"model": {"name": "tiny-llama", "device": "cpu"}, "method": "zeroshot",
                     "data": {"max_test": 8}, "progress": False})  # fmt: skip
    run(cfg, out=tmp_path, loaded=tiny_models["tiny-llama"])
    with pytest.raises(DfloraError, match="finished run"):
        run(cfg, out=tmp_path, loaded=tiny_models["tiny-llama"])


# -- found by benchmarks/fault_census.py ---------------------------------------------------------------
@pytest.mark.parametrize("edit", ["a list", "no z"])
def test_a_checkpoint_of_the_right_config_but_a_malformed_state_is_a_one_line_error(tmp_path, capsys, edit):
    from dflora_core.statefile import load_state, save_state

    out = run_tiny(tmp_path, capsys, edit.replace(" ", "-"))
    (out / "record.json").unlink()
    saved = load_state(out / "checkpoint.npz")  # the identity stays right: only the state is damaged
    state = [1, 2] if edit == "a list" else {k: v for k, v in saved["state"].items() if k != "z"}
    save_state(out / "checkpoint.npz", {**saved, "state": state})
    one_line_error(capsys, ["run", *TINY, "--out", str(out), "--resume"], "checkpoint.npz")


@pytest.mark.parametrize("damage", ["truncated weights", "other shapes"])
def test_weights_transformers_cannot_load_are_a_one_line_error(tmp_path, capsys, damage):
    from dflora_core.models.tiny import build_tiny

    folder = tmp_path / "model"
    model, tok = build_tiny("tiny-llama")
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    if damage == "truncated weights":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 48}))
    argv = ["zeroshot", "--model", str(folder), "--device", "cpu", "--task", "sst2", "--max-test", "8"]
    one_line_error(capsys, argv, str(folder))


@pytest.mark.parametrize("content", ["[1, 2]", '"done"', "no test", "test is text"])
def test_a_record_that_is_not_a_record_object_is_named_in_one_line(tmp_path, capsys, content):
    argv, rec = zeroshot_grid(tmp_path, capsys)
    data = json.loads(rec.read_text())
    if content == "no test":
        content = json.dumps({k: v for k, v in data.items() if k != "test"})
    elif content == "test is text":
        content = json.dumps({**data, "test": "n/a"})
    rec.write_text(content)
    one_line_error(capsys, [*argv, "--table-only"], str(rec))
    one_line_error(capsys, ["run", *TINY, "--out", str(rec.parent), "--resume"], str(rec))


@pytest.mark.parametrize("flag, value", [("--alpha", "1e300"), ("--device", "tpu")])
def test_a_run_refused_after_its_folder_was_made_leaves_no_folder(tmp_path, capsys, flag, value):
    out = tmp_path / "never"
    args = list(TINY)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    one_line_error(capsys, ["run", *args, "--out", str(out)])
    assert not out.exists()
    out.mkdir()  # a folder that was there before is kept, even empty
    one_line_error(capsys, ["run", *args, "--out", str(out)])
    assert out.is_dir()


def test_a_run_in_a_grid_reports_its_own_peak_memory_not_an_earlier_runs(tmp_path):
    """Grids run many runs in one process; each record's CPU peak starts at its run (Linux peak-RSS reset)."""
    from dflora_core.config import RunConfig
    from dflora_core.environment import current_rss, peak_rss
    from dflora_core.grids.grid import run_grid

    big = np.ones(512 * 2**20 // 8)  # an earlier run's 512 MiB peak, freed before the next run
    del big
    before = peak_rss()
    assert before - current_rss() > 400 * 2**20
    cfg = RunConfig().replace(**{"method": "zeroshot", "model.name": "tiny-llama", "model.device": "cpu",
                                 "data.task": "sst2", "data.max_test": 8, "progress": False})  # fmt: skip
    [rec] = run_grid([cfg], tmp_path)
    assert rec.peak_mem_kind == "process_peak_rss"
    assert 0 < rec.peak_mem_bytes < before - 128 * 2**20  # without the reset it would be >= before


# -- issue 32: run folders, model folders and task files from someone else ------------------------------
def edited_run(tiny_run, tmp_path, edit) -> Path:
    """A copy of a finished tiny C-LoRA run whose adapter.npz arrays went through ``edit``."""
    import shutil

    run = Path(shutil.copytree(tiny_run(), tmp_path / "run", ignore=shutil.ignore_patterns(".lock")))
    with np.load(run / "adapter.npz") as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays)
    np.savez(run / "adapter.npz", **arrays)
    return run


def _set(name, value):
    return lambda arrays: arrays.__setitem__(name, value(arrays) if callable(value) else value)


ADAPTER_DAMAGE = {
    "an object array": (_set("z_best_dev", lambda a: np.array([Payload(Path("/nonexistent/pwned"))], dtype=object)),
                        "holds Python objects"),
    "another shape": (_set("z_best_dev", np.zeros((2, 7))), "shape [2, 7]"),
    "a NaN": (_set("z_best_dev", lambda a: np.where(np.arange(a["z_best_dev"].size).reshape(a["z_best_dev"].shape) == 0,
                                                    np.nan, a["z_best_dev"])), "non-finite"),
    "text": (_set("z_final", lambda a: np.full(a["z_final"].shape, "x")), "not numbers"),
    "a planted label bias": (_set("label_bias", np.array([np.nan, 0.0])), "no label bias"),
    "layer scales of another length": (_set("layer_std", np.ones(5)), "'layer_std' has shape [5]"),
}  # fmt: skip


@pytest.mark.parametrize("damage", list(ADAPTER_DAMAGE))
def test_adapter_arrays_are_checked_before_predict_evaluate_export_and_reproduce(tiny_run, tmp_path, capsys, damage):
    edit, needle = ADAPTER_DAMAGE[damage]
    run = edited_run(tiny_run, tmp_path, edit)
    for argv in (["predict", "--run", str(run), "nice"], ["evaluate", "--run", str(run)],
                 ["export", "--run", str(run), "--format", "peft", "--out", str(tmp_path / "peft")],
                 ["reproduce", str(run)]):  # fmt: skip
        one_line_error(capsys, argv, f"{run / 'adapter.npz'}: array", needle)
    assert not (tmp_path / "peft").exists()


def test_a_run_folder_is_named_as_given_with_what_is_missing_in_it(tiny_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    err = one_line_error(
        capsys, ["predict", "--run", str(runs / "no-such-run"), "nice"], "no-such-run: no such run folder"
    )
    assert "runs/record.json" not in err
    (runs / "empty").mkdir()
    one_line_error(capsys, ["export", "--run", str(runs / "empty"), "--format", "peft", "--out", str(tmp_path / "x")],
                   f"{runs / 'empty'}: no record.json in this folder")  # fmt: skip
    run = edited_run(tiny_run, tmp_path, lambda arrays: None)
    (run / "adapter.npz").unlink()
    err = one_line_error(capsys, ["predict", "--run", str(run), "nice"], f"{run}: adapter.npz is missing")
    assert "Errno" not in err


EXAMPLE = Path(__file__).resolve().parents[1] / "data" / "examples" / "reviews"


def task_file(tmp_path, **keys: str) -> Path:
    """The example task in a folder of its own (``tmp_path/task``), with some keys' YAML replaced;
    ``tmp_path/outside.csv`` is a copy of its data one folder up."""
    import shutil

    folder = tmp_path / "task"
    shutil.copytree(EXAMPLE, folder)
    shutil.copyfile(EXAMPLE / "reviews.csv", tmp_path / "outside.csv")
    lines = (folder / "task.yaml").read_text().splitlines()
    lines = [f"{ln.split(':')[0]}: {keys.pop(ln.split(':')[0])}" if ln.split(":")[0] in keys else ln for ln in lines]
    (folder / "task.yaml").write_text("\n".join(lines + [f"{k}: {v}" for k, v in keys.items()]) + "\n")
    return folder / "task.yaml"


ZS_TASK = ["zeroshot", "--model", "tiny-llama", "--device", "cpu", "--max-test", "8", "--task"]


@pytest.mark.parametrize(
    "keys, key",
    [({"test": "/etc/passwd"}, "test"), ({"pool": "{file: ../outside.csv, split: train}"}, "pool[0].file"),
     ({"test": "{file: link.csv, split: test}"}, "test.file"),
     ({"splits": "{13: {train: ../outside.csv, dev: reviews.csv}}"}, "splits.13.train")],
    ids=["absolute", "dot-dot", "a link leading out", "a fixed split"],
)  # fmt: skip
def test_a_task_file_names_only_files_in_its_folder(tmp_path, capsys, keys, key):
    task = task_file(tmp_path, **keys)
    (task.parent / "link.csv").symlink_to("/etc/passwd")
    err = one_line_error(capsys, [*ZS_TASK, str(task)], f"{task}: {key}: ", "outside the task file's folder",
                         "--allow-task-files-outside")  # fmt: skip
    assert "root:" not in err  # nothing of the foreign file is shown


def test_the_user_may_allow_files_outside_and_a_record_cannot(tmp_path, capsys):
    task = task_file(tmp_path, pool="{file: ../outside.csv, split: train}")
    one_line_error(capsys, [*ZS_TASK, str(task)], "outside the task file's folder")
    out = tmp_path / "run"
    argv = [
        "run",
        *[a for a in TINY if a not in ("--task", "sst2")],
        "--task",
        str(task),
        "--shots",
        "4",
        "--out",
        str(out),
    ]
    assert main([*argv, "--allow-task-files-outside"]) == 0
    assert json.loads((out / "record.json").read_text())["config"]["data"]["allow_task_files_outside"] is True
    capsys.readouterr()
    one_line_error(
        capsys, ["evaluate", "--run", str(out)], "outside the task file's folder"
    )  # not the record's to grant
    assert main(["evaluate", "--run", str(out), "--allow-task-files-outside"]) == 0


@pytest.mark.slow
def test_a_grid_gives_its_worker_processes_the_users_permission(tmp_path, capsys):
    """`dflora compare` runs each run in a fresh process: the permission travels in the run's config."""
    task = task_file(tmp_path, pool="{file: ../outside.csv, split: train}")
    grid = ["compare", "--tasks", str(task), "--methods", "zeroshot", "--seeds", "13", "--model", "tiny-llama",
            "--max-test", "8", "--root", str(tmp_path / "grid"), "--set", "model.device=cpu", "--set", "data.shots=4"]  # fmt: skip
    one_line_error(capsys, grid, "outside the task file's folder")
    assert main([*grid, "--allow-task-files-outside"]) == 0


def test_an_allowed_foreign_file_is_never_echoed(tmp_path, capsys):
    task = task_file(tmp_path, test="/etc/passwd", format="csv")
    err = one_line_error(capsys, [*ZS_TASK, str(task), "--allow-task-files-outside"], "/etc/passwd", "not shown")
    assert "root:" not in err and "/bin/" not in err


@pytest.mark.parametrize("fmt", ["peft", "merged"])
def test_an_export_onto_a_full_disk_leaves_nothing_behind_and_can_be_retried(tiny_run, tmp_path, capsys, monkeypatch,
                                                                              fmt):  # fmt: skip
    import safetensors.torch
    import transformers.modeling_utils
    from safetensors import SafetensorError

    def full(tensors, filename, *a, **k):  # what safetensors says on ENOSPC, after a partial write
        Path(filename).write_bytes(b"\0" * 64)
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')  # fmt: skip

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    exports = tmp_path / "exports"
    argv = ["export", "--run", str(tiny_run()), "--format", fmt, "--out", str(exports / "x")]
    one_line_error(capsys, argv, f"--out {exports / 'x'}: the export failed", "No space left", "removed")
    assert list(exports.iterdir()) == []  # no partial folder blocks the retry
    (exports / "x").mkdir()
    (exports / "x" / "kept").write_text("an earlier export")
    one_line_error(capsys, [*argv, "--force"], "No space left", "is as it was")
    assert [p.name for p in exports.iterdir()] == ["x"] and (exports / "x" / "kept").is_file()
    monkeypatch.undo()
    assert main([*argv, "--force"]) == 0
    assert "dflora_classifier.json" in {p.name for p in (exports / "x").iterdir()} - {"kept"}
    assert [p.name for p in exports.iterdir()] == ["x"] and not (exports / "x" / "kept").exists()


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_notebook_folder_parameter_that_is_a_file_is_a_one_line_error(tmp_path, where):
    """`papermill -p runs_root /etc/passwd` on a notebook: the parameter is named, no FileExistsError."""
    from dflora_core.notebook_params import ParameterError, open_profile

    f = tmp_path / "f"
    f.write_text("x")
    value = str(f if where == "a file" else f / "runs")
    with pytest.raises(ParameterError, match="parameter 'runs_root': ") as info:
        open_profile({"profile": "smoke", "runs_root": value, "figures_dir": str(tmp_path / "figs")}, quiet=True)
    assert len(str(info.value).splitlines()) == 1 and value in str(info.value)
    assert f.read_text() == "x" and not (tmp_path / "figs").exists()
