"""The notebook sequence: profiles, typed parameters, papermill runs, figures and the main-job runner.

The slow tests run every notebook under papermill with the smoke profile (tiny random
models) into temporary folders, once per session, and check what they produce.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from dflora_core import notebook_runner
from dflora_core.errors import ConfigError
from dflora_core.notebook_params import ParameterError, ParameterGuard

NOTEBOOKS = notebook_runner.notebook_sources()
# what each notebook must write into the figures folder
EXPECTED = {
    "01_hidden_state_statistics": ["hidden_state_stats.pdf", "hidden_state_stats.png"],
    "02_projection_init": ["projection_scale.pdf", "projection_scale.png", "projection_calibrated.png"],
    "03_training": ["training_c-lora.png", "training_f-lora.png", "table_training.md", "table_training.csv"],
    "04_ablations": [
        "table_main.md",
        "table_main.csv",
        *(f"table_{s}.{e}" for s in ("rank", "intrinsic_dim", "init", "targets", "optimizer") for e in ("md", "csv")),
        "subspace_dimension.pdf",
        "rank.pdf",
    ],
    "05_figures": [
        *(
            f"{n}.{e}"
            for n in ("main_comparison", "convergence", "convergence_optimizer", "subspace_dimension", "rank")
            for e in ("pdf", "png")
        ),
        "table_cost.md",
        "table_cost.csv",
        "PROVENANCE.md",
    ],
    "06_zeroth_order": [f"{n}.{e}" for n in ("zo_quadratic", "zo_quadratic_losses", "zo_passes") for e in ("pdf", "png")],
}
COMMON_PARAMETERS = {"profile": "str", "interactive": "bool", "runs_root": "str", "figures_dir": "str"}


def test_every_notebook_is_expected():
    assert [p.stem for p in NOTEBOOKS] == sorted(EXPECTED)


# -- profiles ------------------------------------------------------------------------------------------
def test_shipped_profiles_load_and_plan_valid_runs():
    from dflora_core.grids.plans import all_planned, training_plan, unique_runs
    from dflora_core.lab.profiles import available_profiles, load_profile

    assert {"smoke", "quick", "paper"} <= set(available_profiles())
    for name in ("smoke", "quick", "paper"):
        p = load_profile(name)
        assert p.name == name and p.description
        assert unique_runs(all_planned(p))
        # the live runs of 03 are runs of the main grid, so 04 and 05 reuse them
        main_keys = {x.key for x in all_planned(p) if x.study == "main"}
        assert {x.key for x in training_plan(p)} <= main_keys
    quick = load_profile("quick")
    assert quick.base.model.name == "smollm2" and quick.base.data.max_test


@pytest.mark.parametrize(
    "change, field",
    [
        ({"ablations": {"rnak": [1, 2]}}, "ablations.rnak"),
        ({"bogus": 1}, "bogus"),
        ({"main": {"seeds": "many"}}, "main.seeds"),
        ({"main": {"tasks": ["imdb"]}}, "main.tasks"),
        ({"run": {"search": {"budgett": 3}}}, "run.search.budgett"),
        ({"ablations": {"targets": ["q,x"]}}, "ablations.targets"),
        ({"training": {"methods": ["zeroshot"]}}, "training.methods"),
    ],
)
def test_profile_errors_name_the_key(change, field):
    from dflora_core.config import _merge, load_yaml
    from dflora_core.lab.profiles import CONFIG_DIR, profile_from_dict

    data = _merge(load_yaml(CONFIG_DIR / "smoke.yaml"), change)
    with pytest.raises(ConfigError) as err:
        profile_from_dict(data, "t")
    assert field in str(err.value)


def test_profile_rejects_a_run_shorter_than_one_round():
    from dflora_core.config import _merge, load_yaml
    from dflora_core.lab.profiles import CONFIG_DIR, profile_from_dict

    data = _merge(load_yaml(CONFIG_DIR / "smoke.yaml"), {"ablations": {"run": {"search": {"budget": 5}}}})
    with pytest.raises(ConfigError, match="search.budget"):
        profile_from_dict(data, "t")


# -- typed parameters ------------------------------------------------------------------------------------
def _cells(*sources: str) -> dict:
    ns: dict = {}
    guard = ParameterGuard(ns)
    for src in sources:
        exec(src, ns)
    ns.pop("__builtins__", None)
    return guard.validate(ns), ns


PARAMS_CELL = 'profile: str = "quick"\ninteractive: bool = True\nbudget: int = 3\nscale: float = 1.0\n'


def test_parameters_are_typed_and_validated():
    params, ns = _cells(PARAMS_CELL, "interactive = False\nscale = 2\nbudget = 4.0\n")
    assert params.interactive is False and params.scale == 2.0 and isinstance(ns["scale"], float)
    assert params.budget == 4 and isinstance(params.budget, int)
    assert params.types() == {"profile": "str", "interactive": "bool", "budget": "int", "scale": "float"}
    with pytest.raises(AttributeError):
        params.profile = "x"
    # `papermill -p interactive false` injects the lower-case string
    assert _cells(PARAMS_CELL, "interactive = 'false'\n")[0].interactive is False
    assert _cells(PARAMS_CELL, "interactive = 'True'\n")[0].interactive is True


@pytest.mark.parametrize(
    "injected, message",
    [
        ("budgt = 3\n", "unknown parameter(s) budgt"),
        ("interactive = 'no'\n", "expected true or false"),
        ("budget = 2.5\n", "expected an integer"),
        ("profile = 3\n", "expected a string"),
        ("scale = True\n", "expected a number"),
    ],
)
def test_bad_parameters_are_errors(injected, message):
    with pytest.raises(ParameterError) as err:
        _cells(PARAMS_CELL, injected)
    assert message in str(err.value)


def test_every_notebook_has_one_typed_parameters_cell(tmp_path):
    import jupytext

    for src in NOTEBOOKS:
        nb = jupytext.read(src)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, src.name
        lines = [ln for ln in tagged[0].source.splitlines() if ln.strip() and not ln.startswith("#")]
        assert all(": " in ln.split("=")[0] for ln in lines), f"{src.name}: every parameter needs a type annotation"


def test_papermill_help_lists_typed_parameters(tmp_path):
    from click.testing import CliRunner
    from papermill.cli import papermill

    for src in NOTEBOOKS:
        nb = notebook_runner.convert(src, tmp_path / f"{src.stem}.ipynb")
        out = CliRunner().invoke(papermill, ["--help-notebook", str(nb)])
        assert out.exit_code == 0, out.output
        for name, tp in COMMON_PARAMETERS.items():
            assert f"{name}: {tp}" in out.output, f"{src.stem}: {name} not listed with its type\n{out.output}"
        assert "Unable to parse" not in out.output


# -- figures ---------------------------------------------------------------------------------------------
def _fake_result():
    rows = []
    for model in ("m1",):
        for task in ("sst2", "rte"):
            for src in ("residual", "proj_input"):
                for layer in range(4):
                    std = 1.0 + layer if src == "residual" else 1.0
                    rows.append(
                        {
                            "model": model,
                            "task": task,
                            "source": src,
                            "layer": layer,
                            "std": std,
                            "raw_std": std * 1.1,
                            "mean": 0.0,
                            "raw_mean": 0.0,
                            "kept": 0.99,
                            "std_hat": std,
                            "ril_std": std / 100,
                        }
                    )
    return {
        "profile": "smoke",
        "seed": 42,
        "alpha": 0.05,
        "intrinsic_dim": 500,
        "sigma": 1.0,
        "clip_rounds": 5,
        "clip_sigma": 3.0,
        "rows": rows,
        "meta": [],
    }


def test_figures_are_deterministic_and_labelled(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from dflora_core.reports import statistics_figures, style

    blobs = []
    for k in range(2):
        fig = statistics_figures.hidden_stats_figure(_fake_result())
        assert any("smoke profile" in t.get_text() for t in fig.texts)
        paths = style.save(fig, tmp_path / str(k), "stats", ("pdf", "png", "svg"))
        blobs.append([p.read_bytes() for p in paths])
    assert blobs[0] == blobs[1]
    assert b"CreationDate" not in blobs[0][0]


# -- the live training session -----------------------------------------------------------------------------
@pytest.fixture
def one_thread():
    """Tiny models: one thread is fastest, and two spinning threads crawl on a shared 2-core machine."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_run_n_more_generations_gives_the_same_record(tmp_path, one_thread):
    from dflora_core.grids.grid import run_grid
    from dflora_core.grids.plans import training_plan
    from dflora_core.lab.live import TrainingSession
    from dflora_core.lab.profiles import load_profile

    prof = load_profile("smoke")
    planned = training_plan(prof)[0]
    s = TrainingSession(
        planned, tmp_path / "a", interactive=True, profile="smoke", log=lambda _: None, show_figure=False
    )
    s.show()
    s.more(2)
    assert s.search.generation == 2
    s.more(1)
    rec = s.finish()
    ref = run_grid([planned.cfg], tmp_path / "b")[0]
    assert rec["calls"] == ref["calls"] and rec["test"]["value"] == ref["test"]["value"]
    h1 = json.loads((Path(rec["_dir"]) / "history.json").read_text())
    h2 = json.loads((Path(ref["_dir"]) / "history.json").read_text())
    assert [g["best"] for g in h1] == [g["best"] for g in h2]
    again = TrainingSession(planned, tmp_path / "a", log=lambda _: None, show_figure=False)
    assert again.record is not None  # a recorded run is shown from its record, not rerun


# -- the whole sequence under papermill (smoke profile) ------------------------------------------------
@pytest.fixture(scope="module")
def smoke_sequence(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq")
    out = {"runs": root / "runs", "figures": root / "figures", "build": root / "build"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = notebook_runner.main(
            [
                "--profile",
                "smoke",
                "--runs-root",
                str(out["runs"]),
                "--figures-dir",
                str(out["figures"]),
                "--build-dir",
                str(out["build"]),
            ]
        )
    out["rc"], out["printed"] = rc, printed.getvalue()
    return out


@pytest.mark.slow
def test_every_notebook_runs_headless_and_writes_its_figures(smoke_sequence):
    assert smoke_sequence["rc"] == 0
    figures = smoke_sequence["figures"]
    for nb, files in EXPECTED.items():
        executed = smoke_sequence["build"] / f"{nb}.ipynb"
        assert executed.is_file(), nb
        cells = json.loads(executed.read_text())["cells"]
        errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{nb}: {errors[:1]}"
        missing = [f for f in files if not (figures / f).is_file()]
        assert not missing, f"{nb} did not write {missing}"
    timings = json.loads((smoke_sequence["build"] / "timings.json").read_text())
    assert set(timings["notebooks_s"]) == set(EXPECTED) and timings["status"] == "ok"
    main = (figures / "table_main.md").read_text()
    assert "smoke profile" in main and "c-lora" in main and "f-lora" in main
    assert "Prefer: committed (a run both in runs_root and in an extra root shows" in main  # the profile's choice
    # PROVENANCE.md names the run folder behind every cell of the main table and every curve of the figures
    from dflora_core.grids import collect
    from dflora_core.lab.profiles import load_profile

    provenance = (figures / "PROVENANCE.md").read_text()
    prof = load_profile("smoke").with_paths(smoke_sequence["runs"])
    for rec in collect.main_records(prof, collect.profile_records(prof)):
        assert Path(rec["_dir"]).name in provenance, rec["_dir"]
    for section in ("## table_main", "## convergence_optimizer", "## training_c-lora", "## hidden_state_stats"):
        assert section in provenance
    # the runner's count of what 05 wrote is what 05 says it wrote
    executed = json.loads((smoke_sequence["build"] / "05_figures.ipynb").read_text())["cells"]
    text = "".join("".join(o.get("text", "")) for c in executed for o in c.get("outputs", []))  # str or lines
    said = [ln for ln in text.splitlines() if " files written to " in ln]
    (n,) = [int(ln.split()[0]) for ln in said]
    (line,) = [ln for ln in smoke_sequence["printed"].splitlines() if "05_figures done in" in ln]
    assert line.endswith(f"; {n} figure/table files written"), line


@pytest.mark.slow
def test_rerun_reuses_runs_and_regenerates_identical_figures(smoke_sequence, one_thread):
    import matplotlib

    matplotlib.use("Agg")
    from dflora_core.grids.collect import index_records, load_all_records, study_frame
    from dflora_core.grids.plans import ablation_plan, main_plan, run_plan
    from dflora_core.lab.profiles import load_profile
    from dflora_core.reports import comparison_figures, style, training_figures
    from dflora_core.reports.provenance import choice_text

    runs, figures = smoke_sequence["runs"], smoke_sequence["figures"]
    records = sorted(runs.glob("**/record.json"))
    stamps = {p: p.stat().st_mtime_ns for p in records}

    class Seen:
        cached = []

        def start_run(self, i, n, planned, cached):
            self.cached.append(cached)

        def end_run(self, rec):
            pass

        def callbacks(self):
            return {}

    prof = load_profile("smoke")
    seen = Seen()
    run_plan(main_plan(prof) + ablation_plan(prof), runs, seen)
    assert seen.cached and all(seen.cached)
    assert {p: p.stat().st_mtime_ns for p in records} == stamps
    # what 05 wrote is what the records give again, byte for byte
    recs = load_all_records(runs)
    idx = index_records(recs)
    frame = study_frame(ablation_plan(prof), recs)
    dfo = [idx[p.key] for p in main_plan(prof) if p.key in idx and p.cfg.method in ("c-lora", "f-lora")]
    fmt = {"formats": prof.figures.formats, "dpi": prof.figures.dpi}
    rank_recs = [idx[p.key] for p in ablation_plan(prof) if p.key in idx and p.study == "rank"]
    rank = comparison_figures.rank_figure(frame, recs, "smoke")
    convergence = training_figures.convergence_figure(dfo, "smoke", "convergence: main runs")
    for fig, shown in ((rank, rank_recs), (convergence, dfo)):  # the footer line notebook 05 adds
        style.extend_footer(fig, choice_text(prof.prefer, shown, {}))
    again = style.save(rank, runs / "again", "rank", **fmt)
    again += style.save(convergence, runs / "again", "convergence", **fmt)
    changed = [p.name for p in again if p.read_bytes() != (figures / p.name).read_bytes()]
    assert not changed, f"regenerated figures differ: {changed}"


INTERACTIVE_CELL_TIMEOUT_S = 300


@pytest.mark.slow
@pytest.mark.parametrize("name", ["02_projection_init", "03_training"])
def test_interactive_mode_runs_under_papermill(name, tmp_path):
    """Widgets (sliders, the run-N-more control) and notebook progress bars are built without errors."""
    import papermill as pm

    nb = notebook_runner.convert(notebook_runner.NOTEBOOK_DIR / f"{name}.py", tmp_path / "in.ipynb")
    params = {
        "profile": "smoke",
        "interactive": True,
        "runs_root": str(tmp_path / "r"),
        "figures_dir": str(tmp_path / "f"),
    }
    from nbclient.exceptions import CellTimeoutError

    def execute():
        pm.execute_notebook(
            str(nb),
            str(tmp_path / "out.ipynb"),
            parameters=params,
            kernel_name="python3",
            language="python",
            progress_bar=False,
            cwd=str(tmp_path),
            # a smoke cell takes seconds; the bound turns nbclient's rare endless wait on a widget
            # cell (jupyter/nbclient#312, nteract/papermill#723: kernel idle, client in epoll) into
            # one retry instead of a CI job that never ends
            execution_timeout=INTERACTIVE_CELL_TIMEOUT_S,
        )

    try:
        execute()
    except CellTimeoutError:
        execute()  # a second endless wait is a real fault and fails the test
    cells = json.loads((tmp_path / "out.ipynb").read_text())["cells"]
    widgets = [
        o
        for c in cells
        for o in c.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert widgets, "no widget was displayed in interactive mode"


@pytest.mark.slow
def test_an_unknown_parameter_fails_the_notebook(tmp_path):
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    nb = notebook_runner.convert(notebook_runner.NOTEBOOK_DIR / "05_figures.py", tmp_path / "05.ipynb")
    with pytest.raises(PapermillExecutionError) as err:
        pm.execute_notebook(
            str(nb),
            str(tmp_path / "out.ipynb"),
            parameters={"profile": "smoke", "interactive": False, "bugdet": 3},
            kernel_name="python3",
            language="python",
            progress_bar=False,
            cwd=str(tmp_path),
        )
    assert err.value.ename == "ParameterError" and "bugdet" in err.value.evalue


@pytest.mark.slow
def test_runner_stops_with_a_clear_message_when_a_notebook_fails(tmp_path, capsys):
    src = tmp_path / "nbs"
    src.mkdir()
    (src / "01_broken.py").write_text(
        '# %% tags=["parameters"]\nprofile: str = "smoke"\ninteractive: bool = True\n'
        'runs_root: str = ""\nfigures_dir: str = ""\n\n# %%\n1 / 0\n'
    )
    (src / "02_never.py").write_text('# %% tags=["parameters"]\nprofile: str = "smoke"\n\n# %%\nraise SystemExit\n')
    rc = notebook_runner.main(
        [
            "--profile",
            "smoke",
            "--notebooks",
            str(src),
            "--build-dir",
            str(tmp_path / "b"),
            "--runs-root",
            str(tmp_path / "r"),
            "--figures-dir",
            str(tmp_path / "f"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert "notebook 01_broken failed" in err and "ZeroDivisionError" in err
    assert "02_never" not in err and (tmp_path / "b" / "01_broken.ipynb").is_file()


def test_runner_rejects_a_bad_profile(capsys):
    assert notebook_runner.main(["--profile", "nope"]) == 2
    assert "unknown profile" in capsys.readouterr().err
