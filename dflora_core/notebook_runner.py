"""``make figures``: run the notebook sequence headless with papermill for one profile.

    python -m dflora_core.notebook_runner --profile quick        # the main job (make figures)
    python -m dflora_core.notebook_runner --profile smoke --only 01,05
    python -m dflora_core.notebook_runner --profile quick --convert-only   # .ipynb under build/ only

Each jupytext source ``notebooks/NN_*.py`` is converted to ``build/<profile>/NN_*.ipynb``
(kernelspec python3), executed in order with the parameters ``profile``, ``interactive=False``
and the output folders, and written back executed to the same place. The notebooks' own
progress lines appear in the terminal. Runs are recorded under the profile's runs root, so
a rerun reuses finished runs and resumes interrupted ones; figures and tables go to the
profile's figures folder. A failing notebook stops the sequence with a one-paragraph
message (notebook, cell, error, where the executed notebook is) and exit status 1; a bad
profile exits with status 2 before anything runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from .errors import DfloraError

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
BUILD_DIR = REPO_ROOT / "build"
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def notebook_sources(folder: str | Path = NOTEBOOK_DIR) -> list[Path]:
    """The jupytext sources NN_name.py, in order."""
    return sorted(p for p in Path(folder).glob("[0-9][0-9]_*.py"))


def select(sources: list[Path], only: str | None) -> list[Path]:
    if not only:
        return sources
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    out = []
    for w in wanted:
        hits = [p for p in sources if p.stem == w or p.stem.split("_", 1)[0] == w.zfill(2)]
        if not hits:
            raise DfloraError(f"--only {w!r}: no such notebook; have {', '.join(p.stem for p in sources)}")
        out += [h for h in hits if h not in out]
    return sorted(out)


def convert(source: str | Path, dest: str | Path) -> Path:
    """jupytext percent source -> .ipynb with a python3 kernelspec (papermill needs one)."""
    import jupytext

    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata.pop("jupytext", None)  # the generated notebook is not paired with anything
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    jupytext.write(nb, dest, fmt="ipynb")
    return dest


class _Indented:
    """A stream that indents every line (the notebooks' output inside the runner's)."""

    def __init__(self, stream, prefix: str = "  │ "):
        self.stream, self.prefix, self._bol = stream, prefix, True

    def write(self, text: str) -> int:
        text = _ANSI.sub("", text).replace("\r", "\n")
        for piece in text.splitlines(keepends=True):
            if not piece.strip():
                if piece.endswith("\n") and not self._bol:
                    self.stream.write("\n")
                    self._bol = True
                continue
            if self._bol:
                self.stream.write(self.prefix)
            self.stream.write(piece)
            self._bol = piece.endswith("\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def failure_message(name: str, err, output: Path) -> str:
    """One paragraph: which notebook and cell failed, with what, and where to look."""
    ename = getattr(err, "ename", type(err).__name__)
    evalue = getattr(err, "evalue", str(err))
    cell = getattr(err, "exec_count", None)
    tb = [_ANSI.sub("", line) for line in (getattr(err, "traceback", None) or [])]
    last = [ln for ln in "\n".join(tb).splitlines() if ln.strip()][-6:]
    where = f" in cell [{cell}]" if cell is not None else ""
    lines = [f"notebook {name} failed{where}: {ename}: {evalue}"]
    if last:
        lines.append("  last traceback lines:")
        lines += [f"    {ln}" for ln in last]
    lines.append(f"  executed notebook (with the error): {output}")
    lines.append("  finished runs are kept: fix the cause and rerun; recorded runs are reused")
    return "\n".join(lines)


def run_notebook(source: Path, out_dir: Path, parameters: dict, stream=None, cwd: Path = REPO_ROOT) -> Path:
    """Convert and execute one notebook; raises papermill's PapermillExecutionError on failure."""
    import papermill as pm

    nb_path = convert(source, out_dir / f"{source.stem}.ipynb")
    stream = stream or _Indented(sys.stdout)
    pm.execute_notebook(
        str(nb_path),
        str(nb_path),
        parameters=parameters,
        kernel_name=KERNELSPEC["name"],
        language="python",
        progress_bar=False,
        log_output=False,
        stdout_file=stream,
        stderr_file=stream,
        cwd=str(cwd),
        start_timeout=180,
    )
    return nb_path


def _kernel_environment() -> None:
    # a waiting OpenMP thread must not spin: on a shared 2-core machine spinning threads made
    # SmolLM2 ~5x slower with 2 threads (measured); passive waiting costs nothing when alone
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # silences a debugger warning in kernels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m dflora_core.notebook_runner",
        description="run the notebook sequence headless (papermill) for a profile; figures -> the profile's figures folder",
    )
    ap.add_argument("--profile", default="quick", help="smoke, quick, paper or a profile YAML path (default quick)")
    ap.add_argument("--only", help="comma-separated notebooks to run, e.g. 01,05 or 03_training")
    ap.add_argument("--runs-root", help="override the profile's runs_root")
    ap.add_argument("--figures-dir", help="override the profile's figures_dir")
    ap.add_argument("--build-dir", help="where executed notebooks go (default build/<profile>)")
    ap.add_argument("--notebooks", default=str(NOTEBOOK_DIR), help="folder of the jupytext sources")
    ap.add_argument("--convert-only", action="store_true", help="write the .ipynb files, execute nothing")
    args = ap.parse_args(argv)

    from .workbench.profiles import load_profile

    try:
        profile = load_profile(args.profile).with_paths(args.runs_root, args.figures_dir)
        sources = select(notebook_sources(args.notebooks), args.only)
    except DfloraError as err:
        print(f"make figures: error: {err}", file=sys.stderr)
        return 2
    if not sources:
        print(f"make figures: error: no notebooks NN_*.py in {args.notebooks}", file=sys.stderr)
        return 2
    build = Path(args.build_dir) if args.build_dir else BUILD_DIR / profile.name
    if args.convert_only:
        for src in sources:
            print(convert(src, build / f"{src.stem}.ipynb"))
        return 0
    _kernel_environment()
    runs_root, figures = profile.path("runs_root"), profile.path("figures_dir")
    parameters = {
        "profile": profile.source or args.profile,
        "interactive": False,
        "runs_root": str(runs_root),
        "figures_dir": str(figures),
    }
    print(f"profile {profile.name}: {profile.description}")
    print(f"  runs -> {runs_root}\n  figures and tables -> {figures}\n  executed notebooks -> {build}")
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    before = {p: p.stat().st_mtime for p in figures.glob("*")} if figures.is_dir() else {}
    status = 0
    for i, src in enumerate(sources):
        print(f"[{i + 1}/{len(sources)}] {src.stem} ...", flush=True)
        t0 = time.perf_counter()
        try:
            run_notebook(src, build, parameters)
        except KeyboardInterrupt:
            print(
                f"\ninterrupted in {src.stem}; rerun the same command to continue "
                "(recorded runs are reused, an interrupted run resumes from its checkpoint)",
                file=sys.stderr,
            )
            return 130
        except Exception as err:  # noqa: BLE001 - papermill's errors and kernel failures alike
            timings[src.stem] = time.perf_counter() - t0
            print(failure_message(src.stem, err, build / f"{src.stem}.ipynb"), file=sys.stderr)
            status = 1
            break
        timings[src.stem] = time.perf_counter() - t0
        print(f"[{i + 1}/{len(sources)}] {src.stem} done in {timings[src.stem]:.0f} s", flush=True)
    total = time.perf_counter() - t_all
    written = (
        sorted(p for p in figures.glob("*") if p.is_file() and before.get(p) != p.stat().st_mtime)
        if figures.is_dir()
        else []
    )
    from .environment import machine_info
    from .fileio import atomic_write_json

    atomic_write_json(
        build / "timings.json",
        {
            "profile": profile.name,
            "notebooks_s": timings,
            "total_s": total,
            "status": "ok" if status == 0 else "failed",
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine_info(),
        },
    )
    print("\nwall time per notebook: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print(f"total {total / 60:.1f} min; {len(written)} figure/table files written to {figures}")
    if status == 0:
        print(json.dumps([str(p.relative_to(figures)) for p in written]) if len(written) < 40 else "")
    return status


if __name__ == "__main__":
    sys.exit(main())
