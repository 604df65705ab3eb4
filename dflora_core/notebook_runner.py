"""``make figures``: run the notebook sequence headless with papermill for one profile.

    python -m dflora_core.notebook_runner --profile quick        # the main job (make figures)
    python -m dflora_core.notebook_runner --profile smoke --only 01,05
    python -m dflora_core.notebook_runner --profile quick --convert-only   # .ipynb under build/ only
    python -m dflora_core.notebook_runner --lab          # make lab: JupyterLab on notebooks/, prints its URL

Each jupytext source ``notebooks/NN_*.py`` is converted to ``build/<profile>/NN_*.ipynb``
(the project kernel ``dflora`` that ``make setup`` registers, python3 where it is not
installed), executed in order with the parameters ``profile``, ``interactive=False``
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
# make setup registers this kernel inside the venv (ipykernel install --sys-prefix --name dflora)
PROJECT_KERNEL = {"name": "dflora", "display_name": "Python (dflora)", "language": "python"}
FALLBACK_KERNEL = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
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


def kernelspec() -> dict:
    """The project kernel by name, or python3 (this environment's ipykernel) where it is not installed."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(PROJECT_KERNEL["name"])
    except NoSuchKernel:
        return dict(FALLBACK_KERNEL)
    return dict(PROJECT_KERNEL)


def kernel_manager_config():
    """Kernel-manager settings for papermill and JupyterLab: CurveZMQ keys for the kernel's sockets.

    ipykernel >= 7 warns "Kernel is running over TCP without encryption" at every start unless
    the manager provisions keys; ``auto`` does so for kernelspecs that declare support
    (ipykernel's do) and leaves other kernels as they were.
    """
    import zmq
    from traitlets.config import Config

    config = Config()
    if zmq.has("curve"):
        config.KernelManager.transport_encryption = "auto"
    return config


def convert(source: str | Path, dest: str | Path) -> Path:
    """jupytext percent source -> .ipynb with the project's kernelspec (papermill needs one)."""
    import jupytext

    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = kernelspec()
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
        kernel_name=kernelspec()["name"],
        language="python",
        progress_bar=False,
        log_output=False,
        stdout_file=stream,
        stderr_file=stream,
        cwd=str(cwd),
        start_timeout=180,
        config=kernel_manager_config(),
    )
    return nb_path


def _stamps(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.glob("*") if p.is_file()} if folder.is_dir() else {}


def _written_since(folder: Path, stamps: dict[Path, int]) -> list[Path]:
    """The files of ``folder`` written since ``stamps`` (new, or rewritten: every write replaces the file)."""
    return sorted(p for p, ns in _stamps(folder).items() if stamps.get(p) != ns)


def _kernel_environment() -> None:
    # a waiting OpenMP thread must not spin: on a shared 2-core machine spinning threads made
    # SmolLM2 ~5x slower with 2 threads (measured); passive waiting costs nothing when alone
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # silences a debugger warning in kernels


# -- JupyterLab (make lab, tests/test_browser.py) ------------------------------------------------------
# JupyterLab settings that every dflora lab starts with (an app settings folder's overrides.json)
LAB_SETTINGS = {
    # the jupytext sources open as notebooks on a double-click (jupytext's viewer), not as text
    "@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}},
    # no news feed and no update check: nothing is fetched from outside this machine
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
}


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if it is free on 127.0.0.1, else a port the system picks."""
    import socket

    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")


def lab_command(root: str | Path, port: int, settings_dir: str | Path, extra: tuple[str, ...] = ()) -> list[str]:
    """``jupyter lab`` on ``root``: 127.0.0.1 only, the project kernel, no look-ups outside this machine."""
    import zmq

    return [
        sys.executable,
        "-m",
        "jupyterlab",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        f"--LabApp.app_settings_dir={settings_dir}",
        f"--MappingKernelManager.default_kernel_name={kernelspec()['name']}",
        *(["--KernelManager.transport_encryption=auto"] if zmq.has("curve") else []),
        *(["--ServerApp.allow_root=True"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),  # containers, CI
        *extra,
    ]


class Lab:
    """A JupyterLab server started by :func:`start_lab`."""

    def __init__(self, proc, port: int, token: str):
        self.proc, self.port, self.token = proc, port, token
        self.base = f"http://127.0.0.1:{port}"

    def url(self, path: str = "") -> str:
        """``/lab/tree/<path>`` with the token, which logs the browser in."""
        return f"{self.base}/lab/tree/{path}?token={self.token}" if path else f"{self.base}/lab?token={self.token}"

    def stop(self, timeout: float = 20.0) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: the server shuts its kernels down
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_lab(
    root: str | Path,
    settings_dir: str | Path,
    port: int | None = None,
    extra: tuple[str, ...] = (),
    env: dict | None = None,
    output=None,
    timeout: float = 120.0,
    own_session: bool = False,
) -> Lab:
    """Start JupyterLab on ``root`` with a fresh token and return once it answers.

    ``own_session``: the server does not get the terminal's Ctrl-C (whose "Shutdown this Jupyter
    server (y/[n])?" question would interleave with our output); the caller stops it.
    """
    import secrets
    import subprocess
    import urllib.request

    settings_dir = Path(settings_dir)
    settings_dir.mkdir(parents=True, exist_ok=True)
    (settings_dir / "overrides.json").write_text(json.dumps(LAB_SETTINGS, indent=1))
    token = secrets.token_hex(24)
    port = port or free_port()
    # the token goes in the environment, not on the command line (where ps shows it)
    full_env = {**os.environ, **(env or {}), "JUPYTER_TOKEN": token}
    cmd = lab_command(Path(root).resolve(), port, settings_dir.resolve(), extra)
    proc = subprocess.Popen(
        cmd,
        env=full_env,
        stdout=output,
        stderr=subprocess.STDOUT if output else None,
        start_new_session=own_session,
    )
    lab = Lab(proc, port, token)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise DfloraError(f"JupyterLab exited with status {proc.returncode} before it answered on port {port}")
        try:
            with urllib.request.urlopen(f"{lab.base}/api/status?token={token}", timeout=5) as r:
                if r.status == 200:
                    return lab
        except OSError:
            pass
        if time.monotonic() > deadline:
            lab.stop()
            raise DfloraError(f"JupyterLab did not answer on port {port} within {timeout:.0f} s")
        time.sleep(0.3)


def lab_main(folder: Path, port: int) -> int:
    """``make lab``: JupyterLab on the notebooks folder; prints the URL with its token."""
    sources = notebook_sources(folder)
    _kernel_environment()
    spec = kernelspec()
    print(f"starting JupyterLab on {folder} (kernel {spec['display_name']!r}) ...", flush=True)
    try:
        lab = start_lab(
            folder,
            BUILD_DIR / "lab" / "settings",
            port=free_port(port),
            extra=("--ServerApp.log_level=WARN", "--LabApp.log_level=WARN"),
            own_session=True,
        )
    except DfloraError as err:
        print(f"make lab: error: {err}", file=sys.stderr)
        return 1
    first = sources[0].name if sources else ""
    print(
        f"\nJupyterLab is running. Open this address in a browser (it carries the login token):\n\n"
        f"    {lab.url(first)}\n\n"
        f"It opens {first or 'the notebooks folder'}: start there. The notebooks go 01 to 05; run each with\n"
        "Run > Run All Cells, but 03 cell by cell (Shift+Enter) to use its 'Run N more generations' button.\n"
        "The .py files open as notebooks (double-click one in the file browser). To try everything in\n"
        'seconds on tiny random models, set profile = "smoke" in a notebook\'s parameters cell.\n'
        "Ctrl-C here stops JupyterLab.",
        flush=True,
    )
    import signal

    def stop(_signum, _frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):  # a closed terminal stops the server too
        if sig is not None:
            signal.signal(sig, stop)
    try:
        return lab.proc.wait()
    except KeyboardInterrupt:
        print("\nstopping JupyterLab ...", flush=True)
        lab.stop()
        return 0


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
    ap.add_argument("--lab", action="store_true", help="start JupyterLab on the notebooks instead (make lab)")
    ap.add_argument("--port", type=int, default=8888, help="--lab: the port, if free (default 8888)")
    args = ap.parse_args(argv)
    if args.lab:
        return lab_main(Path(args.notebooks), args.port)

    from .lab.profiles import load_profile

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
    print(f"  kernel -> {kernelspec()['name']}")
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    before = _stamps(figures)
    status = 0
    for i, src in enumerate(sources):
        print(f"[{i + 1}/{len(sources)}] {src.stem} ...", flush=True)
        t0 = time.perf_counter()
        stamps = _stamps(figures)
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
        own = len(_written_since(figures, stamps))  # what the notebook itself says it wrote (05: "N files written")
        print(f"[{i + 1}/{len(sources)}] {src.stem} done in {timings[src.stem]:.0f} s; {own} figure/table files "
              "written", flush=True)  # fmt: skip
    total = time.perf_counter() - t_all
    written = _written_since(figures, before)
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
    print(f"total {total / 60:.1f} min; {len(written)} distinct figure/table files written to {figures} "
          "(a file several notebooks write counts once)")  # fmt: skip
    if status == 0:
        print(json.dumps([str(p.relative_to(figures)) for p in written]) if len(written) < 40 else "")
    return status


if __name__ == "__main__":
    sys.exit(main())
