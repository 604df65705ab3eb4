"""Run identity (folder names that survive new options) and the named random streams."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dflora_core import seeds
from dflora_core.config import RunConfig, from_dict
from dflora_core.grids.grid import find_run, is_recorded, run_dir
from dflora_core.identity import identity, identity_fields

pytestmark = pytest.mark.usefixtures("one_thread")


# -- identity -------------------------------------------------------------------------------------
def test_identity_hashes_only_the_fields_that_differ_from_the_defaults():
    base = RunConfig()
    assert identity_fields(base) == {}
    cfg = base.replace(**{"search.budget": 200, "progress": False})
    assert identity_fields(cfg) == {"search.budget": 200}  # the progress bar is not part of a run
    assert identity(cfg) == identity(cfg.replace(progress=True)) != identity(base)
    assert identity(cfg.replace(**{"lowrank.targets": ["q", "v"]})) != identity(cfg)


def test_a_record_without_a_field_added_later_has_the_same_identity():
    """A record written before ``seed_scheme`` and ``baseline.init_draws`` existed reads back as the same run."""
    cfg = RunConfig().replace(**{"search.budget": 200, "method": "f-lora"})
    old = cfg.to_dict()
    del old["seed_scheme"], old["baseline"]["init_draws"]
    assert identity(from_dict(old)) == identity(cfg)


def _write_record(folder, cfg: RunConfig) -> None:
    folder.mkdir(parents=True)
    rec = {"format": "dflora-run/1", "status": "done", "method": cfg.method, "task": cfg.data.task,
           "model": cfg.model.name, "seed": cfg.seed, "config": cfg.to_dict(), "test": {"value": 0.5}}  # fmt: skip
    (folder / "record.json").write_text(json.dumps(rec))


def test_a_folder_named_by_an_earlier_rule_is_found_by_its_record(tmp_path):
    cfg = RunConfig().replace(**{"model.name": "tiny-llama", "search.budget": 24})
    legacy = run_dir(tmp_path, cfg).with_name(f"seed{cfg.seed}-0123456789")  # e.g. the old full-config hash
    old = cfg.to_dict()
    del old["seed_scheme"]  # written before the field existed
    _write_record(legacy, from_dict(old))
    assert find_run(tmp_path, cfg) == legacy and is_recorded(tmp_path, cfg)
    other = cfg.replace(**{"search.budget": 48})
    assert find_run(tmp_path, other) == run_dir(tmp_path, other) and not is_recorded(tmp_path, other)


def test_a_rerun_with_a_new_defaulted_field_reuses_the_finished_run(tmp_path, tiny_models):
    from dflora_core.runner import run

    cfg = RunConfig().replace(**{"model.name": "tiny-llama", "model.device": "cpu", "method": "zeroshot",
                                 "data.max_test": 8, "progress": False})  # fmt: skip
    out = tmp_path / "run"
    first = run(cfg, out=out, loaded=tiny_models["tiny-llama"])
    stored = json.loads((out / "record.json").read_text())
    del stored["config"]["seed_scheme"]  # as if recorded by the previous version
    (out / "record.json").write_text(json.dumps(stored))
    again = run(cfg, out=out, resume=True, loaded=tiny_models["tiny-llama"])
    assert again["finished"] == first["finished"]  # read back, not recomputed


# -- seeds ----------------------------------------------------------------------------------------
def test_scheme_1_reproduces_the_derivations_of_the_committed_results():
    ss = np.random.SeedSequence
    assert seeds.derive(42, "optimizer", 3) == int(ss([42, 1, 3]).generate_state(1)[0])
    assert seeds.derive(42, "projection", 7, 2) == int(ss([42, 7, 2]).generate_state(1, dtype=np.uint64)[0] % 2**63)
    assert seeds.derive(13, "prompt_projection", 5) == int(
        ss([13, 5, 1000]).generate_state(1, dtype=np.uint64)[0] % 2**63
    )
    base = int(ss([42, 5]).generate_state(1)[0])
    assert seeds.derive(42, "zo_directions", 9) == int(ss([base, 11, 9]).generate_state(1, dtype=np.uint64)[0] % 2**63)
    assert seeds.derive(42, "lora_init") == 42
    for stream, entropy in (("prompt_tokens", [42, 3]), ("icl_order", [42, 9]), ("step_order", [42, 7]),
                            ("noopt_draws", [42, 7]), ("projection_study", [42, 2])):  # fmt: skip
        assert seeds.generator(42, stream).random() == np.random.default_rng(ss(entropy)).random(), stream


def test_scheme_1_streams_collide_and_scheme_2_streams_do_not():
    # the trap of scheme 1: layer 3's optimizer seed is the low half of model layer 1's projection map 3
    assert seeds.derive(42, "projection", 1, 3, scheme=1) & 0xFFFFFFFF == seeds.derive(42, "optimizer", 3, scheme=1)
    assert seeds.derive(42, "projection", 1, 3, scheme=2) & 0xFFFFFFFF != seeds.derive(42, "optimizer", 3, scheme=2)
    values = set()
    cases = [("optimizer", (j,)) for j in range(30)] + [("projection", (layer, j)) for layer in range(30) for j in range(8)]
    cases += [("zo_directions", (s,)) for s in range(50)] + [(s, ()) for s in ("prompt_tokens", "icl_order",
              "step_order", "noopt_draws", "lora_init", "projection_study")]  # fmt: skip
    for stream, idx in cases:
        values.add(seeds.derive(42, stream, *idx, scheme=2))
    assert len(values) == len(cases)  # every (stream, indices) its own seed
    assert all(0 <= v < 2**63 for v in values)
    assert seeds.derive(42, "optimizer", 3, scheme=2) != seeds.derive(43, "optimizer", 3, scheme=2)


def test_unknown_streams_and_schemes_are_refused():
    with pytest.raises(KeyError, match="unknown random stream"):
        seeds.derive(1, "dropout")
    with pytest.raises(ValueError, match="seed scheme"):
        seeds.derive(1, "optimizer", 0, scheme=3)


def test_a_run_records_its_seed_scheme_and_the_schemes_differ(tmp_path, tiny_models):
    from dflora_core.runner import run

    cfg = RunConfig().replace(**{"model.name": "tiny-llama", "model.device": "cpu", "lowrank.layers": [-1],
                                 "optim.popsize": 4, "search.budget": 8, "search.eval_every": 4,
                                 "lowrank.intrinsic_dim": 8, "data.max_test": 8, "progress": False})  # fmt: skip
    best = {}
    for scheme in (1, 2):
        rec = run(cfg.replace(seed_scheme=scheme), out=tmp_path / str(scheme), loaded=tiny_models["tiny-llama"])
        assert rec["config"]["seed_scheme"] == scheme and rec["projection"]["seed_scheme"] == scheme
        history = json.loads((tmp_path / str(scheme) / "history.json").read_text())
        best[scheme] = [g["best"] for g in history]
    assert best[1] != best[2]  # other projection maps and other optimizer draws
    assert identity(cfg.replace(seed_scheme=2)) != identity(cfg)  # and another run folder


def test_stream_codes_are_unique():
    codes = list(seeds.STREAMS.values())
    assert len(set(codes)) == len(codes)


# -- record versions -------------------------------------------------------------------------------
def test_every_committed_record_reads_back_with_its_configuration():
    from pathlib import Path

    from dflora_core.results.record import load_records

    root = Path(__file__).resolve().parents[1] / "results"
    records = load_records(root)
    assert len(records) >= 55  # the committed grids (peers, optimizers, all layers)
    for rec in records:
        cfg = from_dict(rec.config)  # every field known, every value valid
        assert cfg.method == rec.method and cfg.seed_scheme == 1
        assert rec.format in ("dflora-run/1", "dflora-run/2")


def test_a_record_from_a_newer_version_is_refused_in_one_line(tmp_path):
    from dflora_core.errors import DfloraError
    from dflora_core.results.record import RunFolder

    cfg = RunConfig()
    _write_record(tmp_path / "r", cfg)
    data = json.loads((tmp_path / "r" / "record.json").read_text())
    data["format"] = "dflora-run/9"
    (tmp_path / "r" / "record.json").write_text(json.dumps(data))
    with pytest.raises(DfloraError, match="newer than this dflora reads"):
        RunFolder(tmp_path / "r").read()
