"""Grids on Ray: every pending run of a grid is one Ray task with declared resources.

Imported only when the ray backend is chosen (``backends.execute``), so nothing else imports
Ray. Without an address it starts a local instance sized to this machine and reachable from
this machine only; with one it joins that cluster (docs/scale-out.md):

- joining: the address is checked first (``HOST:PORT`` answers on TCP), then a probe process
  joins within ``connect_timeout`` (Ray itself retries for minutes, deaf to SIGTERM while it
  waits), and only then this process; a grid waits on its tasks a second at a time, so SIGINT
  and SIGTERM end it (its queued and running tasks are cancelled);

- local instance: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before Ray is imported (Ray's
  local-only mode: the node's address is the loopback one, so GCS, raylet, workers and agents
  listen on 127.0.0.1 only), ``RAY_USAGE_STATS_ENABLED=0``, no dashboard, no metrics port;
- run folders: a worker that sees the grid's root (the driver leaves a probe file there)
  runs in it directly; one that does not runs in a scratch folder and returns the run's files
  (record, history, dev curve, adapter, log; not the checkpoint), which the driver writes
  into the run's folder atomically, the record last;
- faults: a task whose worker process dies is retried ``max_retries`` times (Ray's own
  retries; a Python exception is final): from the checkpoint where the root is shared, from
  the start otherwise. The search is deterministic, so either way the record is the same.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

from ..errors import DfloraError
from ..fileio import atomic_write_bytes
from ..results.record import RECORD, RunFolder
from .backend_base import LOG, BackendSpec, Pending, Report, run_environment, run_threads, split_address
from .grid import run_dir, run_grid

# set before Ray is first imported: no usage report; a local instance on the loopback address only
USAGE_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
OBJECT_STORE_BYTES = 256 * 2**20  # a run's files are kilobytes to a few MB; Ray's default takes 30% of memory
START_ATTEMPTS = 3  # Ray gives its raylet 30 s to register: not always enough on a loaded 2-core machine (measured)
PROBE = ".dflora-probe-"  # + a token: a worker that reads it sees the driver's root


def import_ray(local: bool):
    os.environ.update(USAGE_ENV)
    if local:  # the instance's workers inherit this environment
        os.environ.update({**run_environment(), **LOCAL_ENV})
    try:
        import ray
    except ImportError:
        raise DfloraError("--backend ray needs Ray: pip install 'dflora[ray]' (make setup installs it)") from None
    return ray


# joins in a process of its own, given ``timeout`` seconds once Ray is imported; exit 0 joined, 3 timed out, 4 refused
_PROBE = r"""
import os, sys, threading
import ray
address, timeout, out = sys.argv[1], float(sys.argv[2]), {}
def join():
    try:
        ray.init(address=address, log_to_driver=False, logging_level="error")
        ray.shutdown()
        out["ok"] = True
    except BaseException as err:
        out["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
thread = threading.Thread(target=join, daemon=True)
thread.start()
thread.join(timeout)
if "error" in out:
    print(out["error"], file=sys.stderr, flush=True)
os._exit(0 if "ok" in out else 4 if "error" in out else 3)  # a join still waiting is not waited for
"""
_GLOG = re.compile(r"^\[[^\]]*\]\s*(\S+:\d+:\s*)?")  # Ray's C++ log prefix: [time level pid tid] file:line:
IMPORT_ALLOWANCE = 120.0  # s for the probe's Python and Ray to start, beyond connect_timeout (a loaded machine)


def _last_said(stderr) -> str:
    lines = [_GLOG.sub("", ln).strip() for ln in (stderr or b"").decode(errors="replace").splitlines()]
    lines = [ln for ln in lines if ln]
    return lines[-1][:300] if lines else ""


def reach(address: str, timeout: float) -> None:
    """Check that a Ray cluster at ``address`` can be joined within ``timeout`` s; one-line DfloraErrors."""
    where = split_address(address)
    if where is not None:  # a TCP answer first: the clearest message for a wrong host or port
        try:
            socket.create_connection(where, timeout=timeout).close()
        except OSError as err:
            why = err.strerror or str(err) or type(err).__name__
            raise DfloraError(f"--address {address}: nothing answers there ({why}); is the cluster's head "
                              f"running (ray start --head --port {where[1]})?") from None  # fmt: skip
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE, address, str(timeout)], stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=timeout + IMPORT_ALLOWANCE, env=dict(os.environ))  # fmt: skip
        code, said = probe.returncode, _last_said(probe.stderr)
    except subprocess.TimeoutExpired as err:
        code, said = 3, _last_said(err.stderr)
    if code == 3:
        raise DfloraError(f"--address {address}: no Ray cluster answered within {timeout:g} s (--connect-timeout)"
                          + (f"; Ray's last word: {said}" if said else ""))  # fmt: skip
    if code != 0:
        raise DfloraError(f"--address {address}: cannot join the Ray cluster ({said or f'exit {code}'})")


def connect(spec: BackendSpec):
    """(ray, whether this call started the instance). A Ray already initialised in this process is used as is."""
    if spec.address and not ("ray" in sys.modules and sys.modules["ray"].is_initialized()):
        reach(spec.address, spec.connect_timeout)  # before Ray is imported here: a bad address fails sooner
    ray = import_ray(local=spec.address is None)
    if ray.is_initialized():
        return ray, False
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        return ray, _init(ray, spec)
    finally:
        if previous is not None:  # ray.init installs its own SIGTERM handler (sys.exit): the command's own is kept
            signal.signal(signal.SIGTERM, previous)


def _init(ray, spec: BackendSpec) -> bool:
    quiet = {"log_to_driver": False, "logging_level": "error"}  # a run's output goes to its run.log
    if spec.address:
        ray.init(address=spec.address, **quiet)
        return True
    import torch

    attempt = 0
    while True:
        try:
            ray.init(address="local", num_cpus=len(os.sched_getaffinity(0)), num_gpus=torch.cuda.device_count(),
                     include_dashboard=False, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
                     object_store_memory=OBJECT_STORE_BYTES, **quiet)  # fmt: skip
            return True
        except Exception as err:  # noqa: BLE001 - Ray raises a bare Exception when its node starts too slowly
            ray.shutdown()  # what did start
            attempt += 1
            if "timed out during startup" not in str(err) or attempt == START_ATTEMPTS:
                raise DfloraError(f"the local Ray instance did not start: {str(err).splitlines()[0]}") from None


def _cpus(spec: BackendSpec, run: Pending) -> float:
    return spec.cpus_per_run if spec.cpus_per_run is not None else float(run.cfg.threads or 1)


def slots(ray, spec: BackendSpec, pending: list[Pending]) -> int:
    """How many runs the cluster holds at once (for the bar); none on a fixed instance is a one-line error."""
    have = ray.cluster_resources()
    cpus = max(_cpus(spec, r) for r in pending)
    n = math.floor(have.get("CPU", 0) / cpus)
    if spec.gpus_per_run:
        n = min(n, math.floor(have.get("GPU", 0) / spec.gpus_per_run))
    if n == 0 and not spec.address:  # a cluster may still add nodes; this machine will not
        raise DfloraError(f"a run asks for {cpus:g} CPUs and {spec.gpus_per_run:g} GPUs; this Ray instance has "
                          f"{have.get('CPU', 0):g} and {have.get('GPU', 0):g} (--cpus-per-run, --gpus-per-run)")  # fmt: skip
    return max(1, n)


def run_on_ray(pending: list[Pending], root: Path, spec: BackendSpec, report: Report) -> None:
    ray, started = connect(spec)
    token = secrets.token_hex(8)
    probe = root / f"{PROBE}{token}"
    if spec.shared_fs != "no":
        atomic_write_bytes(probe, token.encode())
    task = ray.remote(run_task)
    refs = {}
    try:
        held = slots(ray, spec, pending)
        for run in pending:
            cpus = _cpus(spec, run)
            payload = {**run.payload(root, run_threads(run.cfg, cpus)), "probe": str(probe), "token": token,
                       "shared_fs": spec.shared_fs, "scratch": spec.scratch}  # fmt: skip
            opts = {"num_cpus": cpus, "num_gpus": spec.gpus_per_run, "max_retries": spec.max_retries,
                    "retry_exceptions": False}  # fmt: skip
            if spec.gpus_per_run:  # a GPU worker is retired after its run: its CUDA caches go with it
                opts["max_calls"] = 1
            refs[task.options(**opts).remote(payload)] = run
        report.bar.set_running(min(len(refs), held))
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)  # a second at a time: signals get through
            for ref in ready:
                run = refs.pop(ref)
                try:
                    out = ray.get(ref)
                    if out["files"] is not None:
                        land(run.folder, out["files"])
                    error = None
                except Exception as err:  # noqa: BLE001 - a run's failure is reported, the grid goes on
                    error = one_line(ray, err, spec)
                report.finished(run, error)
                report.bar.set_running(min(len(refs), held))
    finally:
        for ref in refs:  # interrupted: the tasks still queued or running are cancelled
            ray.cancel(ref, force=True)
        probe.unlink(missing_ok=True)
        if started:
            ray.shutdown()


def one_line(ray, err: Exception, spec: BackendSpec) -> str:
    """A task's error in one line: the run's own exception, or how its worker died."""
    if isinstance(err, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)):
        return f"its worker died {spec.max_retries + 1} times ({type(err).__name__})"
    if isinstance(err, ray.exceptions.RayTaskError) and err.cause is not None:
        err = err.cause
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"


def land(folder: Path, files: dict[str, bytes]) -> None:
    """A finished run's files from a worker, written into its folder atomically (the record last)."""
    bad = [n for n in files if Path(n).name != n or n.startswith(".")]
    if bad or RECORD not in files:
        raise DfloraError(f"{folder}: a worker returned unexpected files {sorted(bad) or sorted(files)}")
    with RunFolder(folder).lock():
        for name in sorted(files, key=lambda n: n == RECORD):
            atomic_write_bytes(folder / name, files[name])


def _shipped(folder: Path) -> dict[str, bytes]:
    """The files that come back without a shared root: everything but the checkpoint and hidden files."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith((".", "checkpoint."))}  # fmt: skip


def _sees_root(payload: dict) -> bool:
    if payload["shared_fs"] != "auto":
        return payload["shared_fs"] == "yes"
    try:
        return Path(payload["probe"]).read_text() == payload["token"]
    except OSError:
        return False


@contextlib.contextmanager
def output_to(path: Path):
    """This process's stdout and stderr (file descriptors 1 and 2) appended to ``path`` meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            traceback.print_exc()
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def run_task(payload: dict) -> dict:
    """One run on a Ray worker, with the payload's thread count; returns its files when the root is not shared."""
    import torch

    from ..config import from_dict

    cfg = from_dict(payload["config"])
    root, folder = Path(payload["root"]), Path(payload["folder"])
    threads = torch.get_num_threads()
    torch.set_num_threads(payload["threads"])  # Ray leaves one thread per task; the run's own count instead
    try:
        if _sees_root(payload):
            with output_to(folder / LOG):
                run_grid([cfg], root, [payload["tags"]])
            return {"files": None}
        base = payload["scratch"]
        scratch = Path(base) if base else Path(tempfile.mkdtemp(prefix="dflora-runs-"))
        where = run_dir(scratch, cfg)
        shutil.rmtree(where, ignore_errors=True)  # an earlier attempt's leftovers: this one starts afresh
        try:
            with output_to(where / LOG):
                run_grid([cfg], scratch, [payload["tags"]])
            return {"files": _shipped(where)}
        finally:
            shutil.rmtree(where if base else scratch, ignore_errors=True)
    finally:
        torch.set_num_threads(threads)
