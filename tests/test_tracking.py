"""Tracking (lab/tracking, docs/tracking.md): each sink on a tiny run, read back with its library's own
reader; a replayed record gives the live run's scalars; a broken sink never fails a run; a resumed run
continues its tracker run; a run without sinks imports none of the libraries."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from dflora_core.cli import main
from dflora_core.config import from_dict
from dflora_core.errors import DfloraError, DfloraWarning
from dflora_core.lab.tracking import Tracker, TrackingSpec, sinks
from dflora_core.methods import chain_callbacks
from dflora_core.runner import run

BASE = {
    "method": "c-lora", "seed": 42, "progress": False,
    "model": {"name": "tiny-llama", "device": "cpu"}, "data": {"task": "sst2", "max_test": 32},
    "lowrank": {"intrinsic_dim": 24, "alpha": 1.0}, "optim": {"popsize": 4},
    "search": {"budget": 40, "eval_every": 12, "checkpoint_every": 2},
}  # fmt: skip
LIBRARIES = ("tensorboard", "mlflow", "wandb")


def cfg(**changes):
    return from_dict(BASE).replace(**changes)


@pytest.fixture(scope="module")
def loaded(tiny_models, one_thread):
    return tiny_models["tiny-llama"]


@pytest.fixture(scope="module")
def live(tmp_path_factory, loaded):
    """One tiny C-LoRA run logged live to every installed sink: (run folder, tracking folder, record)."""
    base = tmp_path_factory.mktemp("live")
    out, logs = base / "grid" / "sst2" / "c-lora" / "tiny-llama" / "seed42-run", base / "tracking"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DfloraWarning)  # a library that is not installed is skipped below
        with Tracker(TrackingSpec(to=LIBRARIES, dir=str(logs))) as tracker:
            rec = run(cfg(), out=out, loaded=loaded, **tracker.callbacks(cfg(), out))
    return out, logs, rec


def history(folder: Path) -> list[dict]:
    return json.loads((folder / "history.json").read_text())


def tb_scalars(logs: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the one TensorBoard run below ``logs``, as TensorBoard's own reader sees it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (folder,) = {p.parent for p in logs.glob("tensorboard/**/events.out.tfevents.*")}
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_holds_the_curves_and_results(live):
    pytest.importorskip("tensorboard")
    out, logs, rec = live
    got = tb_scalars(logs)
    rows = history(out)
    assert [s for s, _ in got["train/loss"]] == [g["generation"] + 1 for g in rows]  # the step: generations done
    assert [v for _, v in got["budget/calls"]][:-1] == [g["calls"] for g in rows]
    assert got["search/step_size"][0][1] == pytest.approx(rows[0]["step_size"])
    assert got["time/search_s"][-1][1] == pytest.approx(sum(g["seconds"] for g in rows))
    assert got["test/accuracy"] == [(len(rows), pytest.approx(rec["test"]["value"]))]
    assert got["zero_shot/accuracy"][0][1] == pytest.approx(rec["zero_shot"]["value"])
    assert got["memory/peak_bytes"][0][1] == pytest.approx(rec["peak_mem_bytes"], rel=1e-6)
    assert [s for s, _ in got["dev/best"]] == [
        d["generation"] for d in json.loads((out / "dev_curve.json").read_text())
    ]
    # the group is the grid's root, the run its folder below it
    assert (logs / "tensorboard" / "grid" / "sst2" / "c-lora" / "tiny-llama").is_dir()


def test_mlflow_store_holds_the_run(live):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    out, logs, rec = live
    client = MlflowClient(tracking_uri=f"sqlite:///{logs / 'mlflow' / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("grid").experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name.startswith("sst2/c-lora/tiny-llama/seed42-")
    assert found.data.metrics["test/accuracy"] == pytest.approx(rec["test"]["value"])
    assert found.data.params["optim.popsize"] == "4" and found.data.params["method"] == "c-lora"
    assert found.data.tags["task"] == "sst2" and found.data.tags["seed"] == "42"
    assert found.data.tags["git_commit"] == str(rec["git"]["commit"]) and "version.torch" in found.data.tags
    steps = [m.step for m in client.get_metric_history(found.info.run_id, "train/loss")]
    assert steps == [g["generation"] + 1 for g in history(out)]


def wandb_records(logs: Path) -> list:
    """The records of the one W&B offline run below ``logs``, parsed with W&B's own protobuf schema.

    The ``.wandb`` file is W&B's transaction log: a 7-byte header (":W&B", magic, version), then 32 KiB
    blocks of chunks (crc32 u32, length u16, type u8, data); a record split across blocks is FIRST,
    MIDDLE ..., LAST (types 2, 3, 4), a whole one FULL (1)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = logs.glob("wandb/wandb/offline-run-*/run-*.wandb")
    data, pos, part, out = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        part += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            out.append(pb.Record.FromString(part))
            part = b""
    return out


def test_wandb_offline_run_files_hold_the_run(live):
    pytest.importorskip("wandb")
    out, logs, rec = live
    records = wandb_records(logs)
    (header,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert header.run_group == "grid" and "c-lora" in list(header.tags)
    steps = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            steps[items["_step"]] = items
    assert [steps[g["generation"] + 1]["train/loss"] for g in history(out)] == pytest.approx(
        [g["config_fitness"] for g in history(out)]
    )
    assert steps[max(steps)]["test/accuracy"] == pytest.approx(rec["test"]["value"])


def test_dflora_log_replays_the_live_scalars(live, tmp_path):
    pytest.importorskip("tensorboard")
    out, logs, _rec = live
    assert main(["log", "--run", str(out), "--to", "tensorboard", "--out", str(tmp_path)]) == 0
    assert tb_scalars(tmp_path) == tb_scalars(logs)
    assert main(["log", "--run", str(out), "--to", "tensorboard", "--out", str(tmp_path)]) == 0  # again: replaced
    assert tb_scalars(tmp_path) == tb_scalars(logs)


class Recording:
    """A sink that keeps what it is given (opened runs, scalars per step, finals, closes)."""

    name = "recording"
    opened: list = []

    def __init__(self, root: Path):
        Recording.opened = []

    def open(self, info, fresh, step):
        run = {"info": info, "fresh": fresh, "scalars": [], "final": None, "closed": None}
        Recording.opened.append(run)

        class Run:
            def scalars(self, step, values):
                run["scalars"].append((step, dict(values)))

            def final(self, step, values):
                run["final"] = (step, dict(values))

            def close(self, ok):
                run["closed"] = ok

        return Run()

    def close(self):
        pass


class Broken(Recording):
    name = "broken"

    def open(self, info, fresh, step):
        run = super().open(info, fresh, step)
        run.scalars = lambda step, values: 1 / 0
        return run


@pytest.fixture
def fake_sinks(monkeypatch):
    monkeypatch.setitem(sinks.SINKS, "recording", Recording)
    monkeypatch.setitem(sinks.SINKS, "broken", Broken)


def test_a_broken_sink_is_one_warning_and_the_run_goes_on(tmp_path, loaded, fake_sinks):
    with pytest.warns(DfloraWarning) as said:
        with Tracker(TrackingSpec(to=("broken", "recording"), dir=str(tmp_path / "t"))) as tracker:
            rec = run(cfg(), out=tmp_path / "run", loaded=loaded, **tracker.callbacks(cfg(), tmp_path / "run"))
    assert rec.done
    lines = [str(w.message) for w in said if issubclass(w.category, DfloraWarning)]
    assert lines == ["tracking: broken failed (ZeroDivisionError: division by zero); the run goes on without it"]
    (kept,) = [r for r in Recording.opened if r["final"] is not None]  # the other sink logged everything
    assert len([s for s in kept["scalars"] if "train/loss" in s[1]]) == len(history(tmp_path / "run"))


def test_step_peers_log_every_step(tmp_path, loaded, fake_sinks):
    with Tracker(TrackingSpec(to=("recording",), dir=str(tmp_path / "t"))) as tracker:
        c = cfg(method="zo-sgd", **{"baseline.batch_size": 8, "search.budget": 6})
        run(c, out=tmp_path / "run", loaded=loaded, **tracker.callbacks(c, tmp_path / "run"))
    (opened,) = Recording.opened
    steps = [s for s, values in opened["scalars"] if "train/loss" in values]
    assert steps == [row["step"] for row in history(tmp_path / "run")] and len(steps) > 3
    assert all("budget/forward_passes" in v and "time/search_s" in v for _, v in opened["scalars"] if "train/loss" in v)
    assert opened["closed"] is True and "test/accuracy" in opened["final"][1]


def test_a_resumed_run_continues_its_tracker_run(tmp_path, loaded):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    spec, out = TrackingSpec(to=("mlflow",), dir=str(tmp_path / "t")), tmp_path / "run"

    def stop(search, gen):
        if gen.generation == 4:
            raise KeyboardInterrupt

    with Tracker(spec) as tracker, pytest.raises(KeyboardInterrupt):  # closed as killed, a checkpoint kept
        run(cfg(), out=out, loaded=loaded, **chain_callbacks(tracker.callbacks(cfg(), out), {"on_generation": stop}))
    with Tracker(spec) as tracker:
        rec = run(cfg(), out=out, loaded=loaded, resume=True, **tracker.callbacks(cfg(), out))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 't' / 'mlflow' / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("dflora").experiment_id])
    steps = sorted({m.step for m in client.get_metric_history(found.info.run_id, "train/loss")})
    assert steps == [g["generation"] + 1 for g in history(out)] and found.info.status == "FINISHED"
    assert found.data.metrics["test/accuracy"] == pytest.approx(rec["test"]["value"])


def test_a_missing_library_is_one_warning_or_an_error_for_dflora_log(tmp_path, monkeypatch):
    def missing(root):
        raise ImportError("No module named 'tensorboard'", name="tensorboard")

    monkeypatch.setitem(sinks.SINKS, "tensorboard", missing)
    with pytest.warns(DfloraWarning, match="tensorboard is not installed"):
        assert not Tracker(TrackingSpec(to=("tensorboard",), dir=str(tmp_path))).active
    with pytest.raises(DfloraError, match="--to tensorboard: tensorboard is not installed"):
        Tracker(TrackingSpec(to=("tensorboard",), dir=str(tmp_path)), strict=True)


@pytest.mark.parametrize("flags, said", [
    (["--log-to", "tensorbord"], "--log-to: unknown sink(s) ['tensorbord']"),
    (["--log-to", "tensorboard", "--log-dir", "results/tb"], "--log-dir: results/tb: the trackers' files go"),
    (["--log-to", "tensorboard", "--log-dir", "."], "the trackers' files go elsewhere"),
])  # fmt: skip
def test_bad_tracking_flags_are_one_line(flags, said, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert main(["run", "--model", "tiny-llama", "--method", "zeroshot", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and said in err


def test_dflora_log_refuses_what_is_not_a_finished_run(tmp_path, capsys):
    assert main(["log", "--run", str(tmp_path), "--to", "tensorboard", "--out", str(tmp_path / "t")]) == 2
    assert main(["log", "--root", str(tmp_path), "--to", "wandb", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no finished run" in err[0] and "no finished run below it" in err[1]


def test_a_grid_is_one_group_with_a_run_per_record(tmp_path, fake_sinks):
    from dflora_core.grids.backend_base import BackendSpec
    from dflora_core.grids.compare import compare

    with Tracker(TrackingSpec(to=("recording",), dir=str(tmp_path / "t"))) as tracker:
        compare(["sst2"], ["zeroshot"], [13, 42], root=tmp_path / "mygrid", model="tiny-llama", max_test=16,
                backend=BackendSpec(name="inprocess"), hooks=tracker)  # fmt: skip
    assert [r["info"].group for r in Recording.opened] == ["mygrid", "mygrid"]
    assert len({r["info"].run_id for r in Recording.opened}) == 2 and all(r["closed"] for r in Recording.opened)


def test_a_run_elsewhere_is_replayed_when_it_finishes(live, tmp_path, fake_sinks):
    """The local and Ray backends: the driver logs each run from its folder once it finished."""
    from dflora_core.grids.backend_base import GridBar, Pending, Report

    out, _logs, rec = live
    with Tracker(TrackingSpec(to=("recording",), dir=str(tmp_path))) as tracker:
        report = Report(GridBar(1, disable=True), hooks=tracker)
        report.finished(Pending(cfg(), {}, out))
    (opened,) = Recording.opened
    assert opened["fresh"] and opened["final"][1]["test/accuracy"] == pytest.approx(rec["test"]["value"])


def test_a_run_without_sinks_imports_no_tracker(tmp_path):
    code = (
        "import sys\n"
        "from dflora_core.cli import main\n"
        f"assert main(['run', '--model', 'tiny-llama', '--method', 'c-lora', '--budget', '24', '--popsize', '4',"
        f" '--max-test', '8', '--no-progress', '--out', {str(tmp_path / 'run')!r}]) == 0\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorboard', 'mlflow', 'wandb')"
        " or m.startswith('torch.utils.tensorboard'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
