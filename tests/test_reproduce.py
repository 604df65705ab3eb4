"""``dflora reproduce`` (docs/export.md): a finished run reruns from its record to the same numbers, and a
changed record is reported field by field."""

import json
import shutil

import numpy as np

from dflora_core.cli import main
from dflora_core.tuned.reproduce import reproduce


def test_a_tiny_run_reproduces_identically(tiny_run, tiny_models, tmp_path):
    run = tiny_run("tiny-llama")
    res = reproduce(run, tmp_path / "rerun", loaded=tiny_models["tiny-llama"])
    assert res["identical"] and res["differences"] == [] and res["scratch"] == str(tmp_path / "rerun" / "run")
    assert (tmp_path / "rerun" / "run" / "adapter.npz").is_file()


def test_a_tampered_record_and_adapter_are_reported_by_field(tiny_run, tmp_path, capsys):
    fake = tmp_path / "tampered"
    shutil.copytree(tiny_run("tiny-llama"), fake)
    record = json.loads((fake / "record.json").read_text())
    record["test"]["value"] = 0.999
    record["versions"]["torch"] = "0.0.1"
    (fake / "record.json").write_text(json.dumps(record))
    with np.load(fake / "adapter.npz") as arrays:
        saved = {k: arrays[k] for k in arrays.files}
    saved["z_best_dev"] = saved["z_best_dev"] + 1e-3
    np.savez(fake / "adapter.npz", **saved)
    assert main(["reproduce", str(fake)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("differs:") and "test.value: record 0.999 -> rerun" in out
    assert "adapter.npz:z_best_dev" in out and "max |difference| 0.001" in out
    assert "version torch: record 0.0.1 -> now" in out
    assert "calls:" not in out  # only what differs
