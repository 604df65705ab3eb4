"""Figures: a legend never covers data, and methods whose curves coincide stay visible (issue 33).

The cases are the committed figures that went wrong: in ``main_comparison`` the legend sat on ICL's
error bar, in ``training_c-lora`` on the last dev point, and in ``convergence_optimizer`` F-LoRA's
two-point dev curve lay exactly under random search's.
"""

import json

import matplotlib
import numpy as np
import pytest

from dflora_core.config import RunConfig
from dflora_core.identity import identity
from dflora_core.reports import comparison_figures, training_figures

matplotlib.use("Agg")


def data_points(fig) -> np.ndarray:
    """Display coordinates of every data point of every panel: line vertices, scatter points, error-bar ends,
    and the top edge of every bar (left, middle, right)."""
    pts = []
    for ax in fig.axes:
        for line in ax.lines:
            xy = np.asarray(line.get_xydata(), float)
            if line.get_linestyle() in ("--", ":") and len(xy) == 2 and xy[0][1] == xy[1][1]:
                continue  # a reference line across the panel (zero-shot, final test): not data a legend hides
            pts.append(line.get_transform().transform(xy))
        for coll in ax.collections:
            if len(coll.get_offsets()):
                pts.append(coll.get_offset_transform().transform(coll.get_offsets()))
            for seg in getattr(coll, "get_segments", lambda: [])():
                pts.append(coll.get_transform().transform(np.asarray(seg, float)))
        for patch in ax.patches:
            box = patch.get_window_extent()
            pts.append(np.array([[box.x0, box.y1], [(box.x0 + box.x1) / 2, box.y1], [box.x1, box.y1]]))
    pts = np.concatenate([p for p in pts if len(p)]) if pts else np.zeros((0, 2))
    return pts[np.isfinite(pts).all(axis=1)]


def covered(fig) -> list[tuple[float, float]]:
    """The data points inside any legend's box."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    pts = data_points(fig)
    out = []
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        box = legend.get_window_extent(renderer)
        out += [tuple(p) for p in pts if box.x0 < p[0] < box.x1 and box.y0 < p[1] < box.y1]
    return out


def record(method: str, seed: int, test: float, folder=None) -> dict:
    cfg = RunConfig().replace(**{"method": method, "seed": seed, "lowrank.layers": [-6, -5, -4, -3, -2, -1]})
    rec = {"method": method, "task": "sst2", "model": "smollm2", "seed": seed, "config": cfg.to_dict(),
           "test": {"value": test, "metric": "accuracy", "name": "GLUE validation (872)"}}  # fmt: skip
    if folder is not None:
        rec["_dir"] = str(folder)
    return rec


def test_the_main_comparison_legend_leaves_every_bar_and_error_bar_free():
    # the committed quick-profile cells (mean, std over seeds 13 and 42): ICL's error bar reaches the top
    cells = {"zeroshot": (0.560, 0.560), "zeroshot-calibrated": (0.690, 0.694), "icl": (0.660, 0.750),
             "c-lora": (0.675, 0.675), "f-lora": (0.635, 0.670)}  # fmt: skip
    recs = [record(m, seed, v) for m, pair in cells.items() for seed, v in zip((13, 42), pair, strict=True)]
    fig = comparison_figures.main_comparison_figure(recs, "quick")
    assert fig.axes[0].get_legend() is not None and not covered(fig)


def test_the_training_figure_legends_leave_the_last_dev_point_free():
    history = [{"calls": 1 + 20 * (g + 1), "layer": g % 6, "best": 0.65 - 0.007 * g + 0.03 * (g % 3 == 0),
                "config_fitness": 0.65 - 0.007 * g} for g in range(29)]  # fmt: skip
    dev = [{"calls": c, "value": v, "selected": c == 400}
           for c, v in ((0, 0.531), (100, 0.5625), (200, 0.469), (300, 0.53), (400, 0.594), (500, 0.5625))]  # fmt: skip
    fig = training_figures.training_figure(history, dev, list(range(24, 30)), 0.56, 0.675, "c-lora on sst2")
    assert sum(ax.get_legend() is not None for ax in fig.axes) == 1 and not covered(fig)  # one, beside the panels


@pytest.fixture
def coinciding_runs(tmp_path):
    """Three optimizer arms; F-LoRA's and random search's dev curves are the same two points."""
    curves = {"c-lora": [(1, 0.531), (81, 0.719)], "f-lora": [(1, 0.531), (81, 0.5625)],
              "rs-lora": [(1, 0.531), (81, 0.5625)]}  # fmt: skip
    recs = []
    for method, dev in curves.items():
        folder = tmp_path / method
        folder.mkdir()
        hist = [{"calls": 10 * (g + 1) + 1, "layer": g % 4, "best": 0.6 - 0.01 * g, "config_fitness": 0.6 - 0.01 * g}
                for g in range(15)]  # fmt: skip
        (folder / "history.json").write_text(json.dumps(hist))
        (folder / "dev_curve.json").write_text(json.dumps([{"calls": c, "value": v} for c, v in dev]))
        recs.append(record(method, 42, 0.6, folder))
    return recs


def test_coinciding_convergence_curves_stay_visible(coinciding_runs):
    fig = training_figures.convergence_figure(coinciding_runs, "quick", "convergence: per-layer optimizer")
    for ax in fig.axes:
        styles = [(line.get_linestyle(), line.get_marker(), line.get_markersize()) for line in ax.lines]
        assert len(set(styles)) == len(styles) == 3, styles  # every method its own style: none hides another
    dev = {line.get_label(): line for line in fig.axes[1].lines}
    assert np.array_equal(dev["f-lora"].get_xydata(), dev["rs-lora"].get_xydata())  # the same points, both drawn
    assert dev["f-lora"].get_markerfacecolor() == "none"  # open markers: the smaller shows inside the larger


# -- which copy of a run a profile shows, and PROVENANCE.md -------------------------------------------------
def _write_run(folder, cfg: RunConfig, wall_s: float) -> None:
    folder.mkdir(parents=True)
    rec = {"format": "dflora-run/2", "status": "done", "method": cfg.method, "task": cfg.data.task,
           "model": cfg.model.name, "seed": cfg.seed, "config": cfg.to_dict(), "wall_s": wall_s,
           "test": {"value": 0.6, "metric": "accuracy", "name": "GLUE validation (872)"}}  # fmt: skip
    (folder / "record.json").write_text(json.dumps(rec))


@pytest.mark.parametrize("prefer, shown", [("committed", 133.0), ("local", 282.0)])
def test_the_profile_setting_chooses_the_copy_and_provenance_names_both(tmp_path, prefer, shown):
    """The same run in the profile's runs root (this machine: 282 s) and in a committed extra root (133 s): the
    profile's ``prefer`` picks one, the other is listed in PROVENANCE.md as not shown, footers say the choice."""
    from types import SimpleNamespace

    from dflora_core.grids import collect
    from dflora_core.reports import provenance, tables

    cfg = RunConfig().replace(**{"method": "c-lora", "search.budget": 600})
    other = cfg.replace(seed=13)
    _write_run(tmp_path / "runs" / "c-lora-42", cfg, 282.0)
    _write_run(tmp_path / "results" / "grid" / "c-lora-42", cfg, 133.0)
    _write_run(tmp_path / "results" / "grid" / "c-lora-13", other, 140.0)  # only committed
    prof = SimpleNamespace(path=lambda which: tmp_path / "runs", extra_paths=lambda: [tmp_path / "results" / "grid"],
                           prefer=prefer)  # fmt: skip
    records, shadowed = collect.profile_sources(prof)
    assert sorted(r["wall_s"] for r in records) == sorted([shown, 140.0])  # one copy per run
    (kept,) = [r for r in records if r["seed"] == 42]
    hidden = tmp_path / ("runs" if prefer == "committed" else "results/grid") / "c-lora-42"
    assert shadowed == {kept["_dir"]: [str(hidden)]}
    assert collect.profile_records(prof) == records
    note = provenance.choice_text(prefer, records, shadowed)
    assert note.startswith(f"prefer: {prefer} (") and "1 of these 2 runs had both" in note
    tables.write_table(tables.frame(records), tmp_path, "t", "caption", records, note)
    assert f"Prefer: {prefer} (" in (tmp_path / "t.md").read_text()
    path = provenance.write_provenance(tmp_path, [("t", records, "")], prefer, shadowed, tmp_path)
    text = path.read_text()
    shown_dir = "results/grid/c-lora-42" if prefer == "committed" else "runs/c-lora-42"
    hidden_dir = "runs/c-lora-42" if prefer == "committed" else "results/grid/c-lora-42"
    assert f"| c-lora | sst2 | 42 | {shown_dir} | {hidden_dir} |" in text
    assert "| c-lora | sst2 | 13 | results/grid/c-lora-13 |  |" in text and f"`prefer: {prefer}`" in text


def test_a_run_asked_for_auto_that_ran_on_the_cpu_is_the_same_run_as_one_asked_for_cpu(tmp_path):
    """The committed zero-shot runs asked for ``model.device: auto`` and ran on the CPU; the quick profile asks
    for ``cpu``. One run each (it was counted twice per seed in table_main); a run that resolved ``auto`` to
    another device, or that differs in anything else, stays its own run."""
    from types import SimpleNamespace

    from dflora_core.grids import collect

    def write(folder, cfg, wall_s, resolved):
        _write_run(folder, cfg, wall_s)
        rec = json.loads((folder / "record.json").read_text())
        (folder / "record.json").write_text(json.dumps({**rec, "device": resolved}))

    local = RunConfig().replace(**{"method": "zeroshot", "model.device": "cpu"})
    write(tmp_path / "runs" / "zs-42", local, 1.0, "cpu")
    write(tmp_path / "results" / "zs-42", local.replace(**{"model.device": "auto"}), 2.0, "cpu")
    write(tmp_path / "results" / "zs-13", local.replace(**{"model.device": "auto", "seed": 13}), 3.0, "cuda")
    write(tmp_path / "runs" / "zs-13", local.replace(seed=13), 4.0, "cpu")  # auto went to cuda there: another run
    prof = SimpleNamespace(path=lambda which: tmp_path / "runs", extra_paths=lambda: [tmp_path / "results"],
                           prefer="committed")  # fmt: skip
    records, shadowed = collect.profile_sources(prof)
    assert sorted(r["wall_s"] for r in records) == [2.0, 3.0, 4.0]
    assert shadowed == {str(tmp_path / "results" / "zs-42"): [str(tmp_path / "runs" / "zs-42")]}
    idx = collect.index_records(records)
    assert idx[identity(local)]["wall_s"] == 2.0  # a plan asking for cpu finds the committed auto run
    assert len({id(r) for r in idx.values()}) == 3


def test_the_dev_rule_footer_counts_only_runs_that_select_on_dev():
    from dflora_core.reports import provenance

    old = {"method": "zeroshot", "config": {"method": "zeroshot", "search": {}}}  # a record without the field
    new = {"method": "c-lora", "config": {"method": "c-lora", "search": {"dev_rule": "periodic+final"}}}
    assert provenance.dev_rule_text([old, new]) == provenance.RULE_TEXT["periodic+final"]
    assert provenance.dev_rule_text([old]) == ""
    legacy = {"method": "zo-sgd", "config": {"method": "zo-sgd", "search": {}}}
    assert provenance.dev_rule_text([legacy, new]).startswith("mixed dev rules: 1 run ")


def test_a_figure_footer_gets_the_choice_under_its_own_lines():
    from dflora_core.reports import style

    recs = [record("c-lora", 42, 0.6)]
    fig = comparison_figures.main_comparison_figure(recs, "quick")
    style.extend_footer(fig, "prefer: committed (...); run folders: PROVENANCE.md")
    (foot,) = [t for t in fig.texts if t.get_gid() == style.FOOTER]
    assert foot.get_text().startswith("quick profile") and foot.get_text().endswith("run folders: PROVENANCE.md")


def test_the_zeroth_order_passes_figure_draws_dev_and_test_curves_from_the_records():
    """Notebook 06's figure: the dev curve at every evaluation (mean over seeds) and the test curve from the
    zero-shot at 0 passes to each test_at point and the final test at the budget (a run with test_at 300 of 600
    passes ends with its 600-pass test in ``test`` only); an arm with no test curve falls back to its final test."""
    from dflora_core.reports import zo_figures

    def rec(method, seed, dev, test_curve, final):
        return {"method": method, "seed": seed, "task": "sst2", "model": "smollm2", "calls": 600,
                "tags": {"label": method}, "zero_shot": {"value": 0.5}, "test": {"value": final},
                "dev_curve": [{"calls": c, "value": v} for c, v in dev],
                "test_curve": [{"at": a, "value": v} for a, v in test_curve], "config": {}}  # fmt: skip

    recs = [rec("fzoo", 13, [(0, 0.5), (300, 0.6), (600, 0.7)], [(300, 0.62), (600, 0.66)], 0.66),
            rec("fzoo", 42, [(0, 0.5), (300, 0.8), (600, 0.9)], [(300, 0.64)], 0.7),  # 600: its final test
            rec("zo-sgd", 13, [(0, 0.5), (300, 0.55)], [], 0.58)]  # fmt: skip
    fig = zo_figures.passes_figure(recs, "quick")
    dev, test = fig.axes[0], fig.axes[1]
    means = {line.get_label(): line.get_xydata() for line in dev.lines}
    tests = {line.get_label(): line.get_xydata() for line in test.lines}
    close = dict(rtol=4 * np.finfo(float).eps, atol=0)  # x 100 and a mean of two: a few float64 roundings
    np.testing.assert_allclose(means["fzoo"], [[0, 50], [300, 70], [600, 80]], **close)
    np.testing.assert_allclose(tests["fzoo"], [[0, 50], [300, 63], [600, 68]], **close)
    np.testing.assert_allclose(tests["zo-sgd"], [[0, 50], [600, 58]], **close)
    assert [t.get_text() for t in test.get_legend().get_texts()] == ["fzoo", "zo-sgd"]
    many = [rec(f"arm{k:02d}", 13, [(0, 0.5)], [(300, 0.6)], 0.6) for k in range(11)]  # more arms than colours
    looks = [(line.get_color(), line.get_linestyle()) for line in zo_figures.passes_figure(many, "quick").axes[1].lines]
    assert len(set(looks)) == 11 and looks[10] == (looks[0][0], "--")
