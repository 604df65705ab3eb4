"""Live views for the notebooks: training curves that redraw in place, progress, and the
"run N more generations" control.

Interactive (JupyterLab): a tqdm.auto progress bar, ipywidgets controls, and a figure
updated in place. Headless (papermill, ``interactive=False``): no widgets and no bars, the
same computations, a few plain progress lines on stdout (the notebook runner shows them in
the terminal) and the same figure, updated through ``display(fig, display_id=True)`` /
``handle.update(fig)``, which works without a front end (docs/design.md §4).

The control is built on the search's ask/tell state, not on interrupting a loop: each click
runs ``LayerwiseSearch.run(generations=N)`` and checkpoints; ``finish()`` then completes the
budget through ``runner.run(..., resume=True)`` from that checkpoint, so the recorded run is
the same whether it was clicked through or run in one go.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from ..experiment import Experiment, zero_shot
from ..grids.backend_base import GridBar
from ..grids.grid import find_run
from ..methods import RunContext
from ..reports.curves import run_curves
from ..reports.style import describe_records, footer, new_figure, style
from ..reports.training_figures import draw_training
from ..results.record import RunFolder, RunRecord
from ..runner import run
from ..search.loop import LayerwiseSearch


def _display(obj, **kw):
    from IPython.display import display

    return display(obj, **kw)


def log_line(text: str) -> None:
    print(text, flush=True)


class LiveCurves:
    """The three training panels (reports.training_figures.draw_training), redrawn at most every ``interval`` s."""

    def __init__(self, title: str = "", interval: float = 1.0, show: bool = True, note: str = ""):
        import matplotlib.pyplot as plt

        self.fig, axes = new_figure(1, 3, width=7.5, height=2.3)
        self.axes = axes[0]
        self.title, self.interval, self.note = title, interval, note
        with style():
            if title:
                self.fig.suptitle(title, fontsize=9)
            if note:
                footer(self.fig, note)
        self._last = 0.0
        self.handle = _display(self.fig, display_id=True) if show else None
        plt.close(self.fig)  # shown through the handle only (not again at the end of the cell)

    def draw(self, history, dev_curve, model_layers=None, zero_shot=None, test=None, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < self.interval:
            return

        with style():
            draw_training(self.axes, history, dev_curve, model_layers, zero_shot, test)
            self.fig.tight_layout()
        if self.handle is not None:
            self.handle.update(self.fig)
        self._last = time.perf_counter()

    def draw_search(self, search, zero_shot=None, test=None, force: bool = False) -> None:
        from dataclasses import asdict

        self.draw(
            [asdict(g) for g in search.history], search.dev_curve, search.adapter.model_layers, zero_shot, test, force
        )


class RunProgress:
    """Progress of one run: a tqdm.auto bar when interactive, a line every ``every`` of the budget otherwise."""

    def __init__(self, name: str, interactive: bool, log: Callable[[str], None] = log_line, every: float = 0.25):
        self.name, self.interactive, self.log, self.every = name, interactive, log, every
        self.bar = None
        self._next = 0.0
        self._t0 = time.perf_counter()

    def start(self, search) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(
                total=search.budget, initial=search.calls, desc=self.name, unit="call", disable=not self.interactive
            )
        self._t0 = time.perf_counter()
        self._next = search.calls + self.every * search.budget

    def generation(self, search, gen) -> None:
        if self.bar is not None:
            self.bar.n = search.calls
            dev = search.best_dev["value"] if search.best_dev else float("nan")
            fit = search.current_fitness if search.current_fitness is not None else gen.layer_best
            self.bar.set_postfix(
                layer=search.adapter.model_layers[gen.layer], train=f"{fit:.3f}", dev=f"{dev:.3f}", refresh=False
            )
            self.bar.refresh()
        if not self.interactive and search.calls >= self._next:
            self._next += self.every * search.budget
            fit = search.current_fitness if search.current_fitness is not None else gen.layer_best
            dev = f"{search.best_dev['value']:.3f}" if search.best_dev else "-"
            self.log(
                f"    {self.name}: {search.calls}/{search.budget} calls · round {search.round} · "
                f"train loss {fit:.4f} · best dev {dev} · {time.perf_counter() - self._t0:.0f} s"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class GridProgress:
    """Progress over the runs of a plan (plans.run_plan): one bar over the runs (backends.GridBar),
    one line per run, and the progress of the run in progress when it runs in this kernel."""

    def __init__(self, interactive: bool, log: Callable[[str], None] = log_line, view: bool = False):
        self.interactive, self.log, self.view = interactive, log, view
        self.run: RunProgress | None = None
        self._t0 = 0.0
        self._outer: GridBar | None = None

    def grid_bar(self, total: int, done: int) -> GridBar:
        """The bar of a plan whose runs execute elsewhere (a profile's backend: local processes, Ray)."""
        self.close()
        self._outer = GridBar(total, done, disable=not self.interactive, log=self.log)
        return self._outer

    def start_run(self, i: int, n: int, planned, cached: bool) -> None:
        if self._outer is None:
            self._outer = GridBar(n, disable=not self.interactive)
        self._t0 = time.perf_counter()
        what = f"[{i + 1}/{n}] {planned.study}: {planned.describe()}"
        self.log(what + (" (recorded: reused)" if cached else ""))
        self.run = None if cached else RunProgress(planned.cfg.method, self.interactive, self.log)
        self._outer.set_running(1)

    def callbacks(self) -> dict:
        """Runner callbacks that forward to the run in progress (none for a recorded run)."""

        def on_start(search):
            if self.run is not None:
                self.run.start(search)

        def on_generation(search, gen):
            if self.run is not None:
                self.run.generation(search, gen)

        return {"on_start": on_start, "on_generation": on_generation}

    def end_run(self, rec: dict) -> None:
        if self.run is not None:
            self.run.close()
            t, z = rec["test"], rec["zero_shot"]
            self.log(
                f"    done: test {t['metric']} {t['value']:.4f} (zero-shot {z['value']:.4f}) · "
                f"{rec.get('calls', 0)} calls · {time.perf_counter() - self._t0:.0f} s"
            )
        if self._outer is not None:
            self._outer.finish(f"{rec['method']} {rec['task']} seed {rec['seed']}")

    def close(self) -> None:
        if self._outer is not None:
            self._outer.close()
            self._outer = None


class TrainingSession:
    """One layer-wise run shown live, driven generation by generation, recorded like any run.

    s = TrainingSession(planned, root, loaded, interactive=True)
    s.show()        # live curves (+ progress bar and "run N more generations" when interactive)
    s.more(5)       # what the button does: 5 more generations, then a checkpoint
    rec = s.finish()  # the rest of the budget through runner.run(resume=True); the record
    """

    def __init__(
        self,
        planned,
        root: str | Path,
        loaded=None,
        interactive: bool = False,
        profile: str = "",
        more_generations: int = 5,
        log: Callable[[str], None] = log_line,
        show_figure: bool = True,
        tracker=None,
    ):
        self.planned, self.cfg = planned, planned.cfg
        self.root = Path(root)
        self.out = find_run(root, self.cfg)
        self.loaded, self.interactive, self.profile = loaded, interactive, profile
        self.more_generations, self.log, self.show_figure = more_generations, log, show_figure
        self.search = None
        self.exp = None
        self._lock: contextlib.ExitStack | None = None
        self.view: LiveCurves | None = None
        self.progress = RunProgress(f"{self.cfg.method}", interactive, log)
        self.record = self._finished()
        self.zero_shot_value = None
        # a tracker (lab/tracking) follows the run live, generations driven here or by finish() alike
        fresh = tracker is not None and self.record is None
        self.tracking = tracker.callbacks(self.cfg, self.out, planned.tags) if fresh else {}

    def _finished(self) -> RunRecord | None:
        return RunFolder(self.out).finished()

    @property
    def title(self) -> str:
        c = self.cfg
        return f"{c.method} on {c.data.task}, seed {c.seed}"

    # -- display ----------------------------------------------------------------------------------
    def show(self) -> TrainingSession:
        note = describe_records([{"config": self.cfg.to_dict(), "seed": self.cfg.seed}], self.profile)
        self.view = LiveCurves(self.title, interval=1.0 if self.interactive else 5.0, show=self.show_figure, note=note)
        if self.record is not None:
            self.log(f"{self.title}: recorded in {self.out} (reused; delete the folder to run it again)")
            self._draw_record()
            return self
        self._start_search()
        self.view.draw_search(self.search, self.zero_shot_value, force=True)
        if self.interactive:
            self._widgets()
        return self

    def _draw_record(self) -> None:
        hist, dev = run_curves(self.record)
        layers = (self.record.get("projection") or {}).get("model_layers")
        self.view.draw(hist, dev, layers, self.record["zero_shot"]["value"], self.record["test"]["value"], force=True)

    def _start_search(self) -> None:
        self._lock = contextlib.ExitStack()  # the folder stays ours until finish() (re-entrant for run())
        self._lock.enter_context(RunFolder(self.out).lock())
        self.exp = Experiment.prepare(self.cfg, self.loaded)
        self.loaded = self.exp.loaded
        self.zero_shot_value = zero_shot(self.exp)["value"]
        ctx = RunContext.for_run(self.cfg, self.out, resume=True)
        self.search = LayerwiseSearch(self.exp, ctx, self._on_generation, self._on_eval)
        state = ctx.load_checkpoint()
        if state is not None:
            with ctx.restoring():
                self.search.load_state_dict(state)
        self._track("on_start", self.search)
        self.search.start()
        self.progress.start(self.search)

    def _widgets(self) -> None:
        import ipywidgets as W

        n = W.BoundedIntText(
            value=self.more_generations, min=1, max=10_000, description="N", layout=W.Layout(width="140px")
        )
        button = W.Button(description="Run N more generations", button_style="primary", layout=W.Layout(width="220px"))
        status = W.HTML()
        out = W.Output()

        def set_status():
            s = self.search
            if s is None:
                status.value = "finished"
                return
            dev = f"{s.best_dev['value']:.3f}" if s.best_dev else "-"
            status.value = f"&nbsp;{s.calls}/{s.budget} calls, round {s.round}, best dev {dev}"
            button.disabled = s.done

        def click(_b):
            with out:
                button.disabled = True
                try:
                    self.more(n.value)
                finally:
                    set_status()

        button.on_click(click)
        set_status()
        _display(W.VBox([W.HBox([n, button, status]), out]))

    # -- driving ------------------------------------------------------------------------------------
    def _track(self, name: str, *args) -> None:
        hook = self.tracking.get(name)
        if hook is not None:
            hook(*args)

    def _on_generation(self, search, gen) -> None:
        self.progress.generation(search, gen)
        self._track("on_generation", search, gen)
        if self.view is not None:
            self.view.draw_search(search, self.zero_shot_value)

    def _on_eval(self, search, row) -> None:
        self._track("on_eval", search, row)
        if self.view is not None:
            self.view.draw_search(search, self.zero_shot_value)

    def more(self, generations: int | None = None) -> None:
        """Run N more generations (ask/tell) and checkpoint; the budget still bounds the run."""
        if self.record is not None or self.search is None:
            self.log("this run is finished")
            return
        self.search.run(generations=generations or self.more_generations, progress=False)
        self.search.save_checkpoint()
        if self.view is not None:
            self.view.draw_search(self.search, self.zero_shot_value, force=True)

    def finish(self) -> dict:
        """Complete the budget from the last checkpoint and write the record (returned)."""
        if self.record is not None:
            return self.record
        if self.search is not None:
            self.search.close()  # the runner patches the model again from the checkpoint
            self.search = None
        callbacks = {
            "on_start": self._on_runner_start,
            "on_generation": self._on_generation,
            "on_eval": self._on_eval,
            "on_finish": lambda rec: self._track("on_finish", rec),
        }
        try:
            rec = run(self.cfg, out=self.out, resume=True, loaded=self.loaded, tags=self.planned.tags, **callbacks)
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None
        self.progress.close()
        self.record = rec
        if self.view is not None:
            self._draw_record()
        t, z = rec["test"], rec["zero_shot"]
        self.log(
            f"{self.title}: test {t['metric']} {t['value']:.4f} vs zero-shot {z['value']:.4f} on {t['name']} "
            f"· {rec['calls']} calls · {rec['wall_s']:.0f} s"
        )
        return rec

    def _on_runner_start(self, search) -> None:
        self._track("on_start", search)
        self.progress.start(search)
        if self.view is not None:
            self.view.draw_search(search, self.zero_shot_value, force=True)


def training_summary(records: list[dict]):
    """Final test score against zero-shot, one row per run."""
    import pandas as pd

    rows = []
    for r in records:
        t, z = r["test"], r["zero_shot"]
        rows.append(
            {
                "method": r["method"],
                "task": r["task"],
                "seed": r["seed"],
                "test": round(t["value"], 4),
                "zero-shot": round(z["value"], 4),
                "change (points)": round((t["value"] - z["value"]) * 100, 1),
                "best dev": round((r.get("best_dev") or {}).get("value", float("nan")), 4),
                "calls": r.get("calls"),
                "wall time (s)": round(r.get("wall_s", 0.0), 1),
                "selected the start": r.get("selected_start"),
                "test set": t.get("name"),
            }
        )
    return pd.DataFrame(rows)
