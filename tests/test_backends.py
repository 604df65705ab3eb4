"""Grids on other backends (grids/backends.py, grids/rayrun.py; docs/scale-out.md): local
processes (`--jobs`) and Ray give the serial grid's records, a worker killed mid-run is retried
and still gives them, a failing run does not stop the others, and the default backend never
imports Ray. Ray tests share one local instance of this machine's 2 CPUs."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dflora_core.errors import ConfigError, DfloraError
from dflora_core.fileio import read_json
from dflora_core.grids.backend_base import BackendSpec, check_backend
from dflora_core.grids.compare import build_configs
from dflora_core.grids.grid import find_run, run_grid
from dflora_core.results.record import RunFolder

pytestmark = pytest.mark.usefixtures("one_thread")
needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install 'dflora[ray]')"
)

# threads=1: a run's CPU numbers depend on its thread count (last digits), so a grid compared across backends fixes it
SETS = ["model.device=cpu", "optim.popsize=4", "lowrank.intrinsic_dim=8", "search.eval_every=8", "threads=1"]
GRID = (["sst2"], ["c-lora", "f-lora"], [13])
KW = dict(model="tiny-llama", budget=24, max_test=16, sets=SETS)
# long enough to be killed after its first checkpoint (30 generations, a checkpoint after each)
LONG = dict(KW, budget=120, sets=[*SETS, "search.checkpoint_every=1"])


def grid_configs():
    return build_configs(*GRID, **KW)


def long_config():
    return build_configs(["sst2"], ["c-lora"], [42], **LONG)[0]


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The reference: the same runs one after the other in this process."""
    root = tmp_path_factory.mktemp("serial")
    run_grid([*grid_configs(), long_config()], root)
    return root


def outcome(root: Path, cfg) -> dict:
    """What must not depend on the backend: test, best dev, calls, every generation's fitnesses, the learned z."""
    folder = find_run(root, cfg)
    rec = RunFolder(folder).finished()
    assert rec is not None, f"{folder} has no finished record"
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in read_json(folder / "history.json")]
    with np.load(folder / "adapter.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return {"test": rec["test"], "best_dev": rec["best_dev"], "calls": rec["calls"], "history": history, "z": arrays}


def assert_same_runs(root_a: Path, root_b: Path, configs) -> None:
    for cfg in configs:
        a, b = outcome(root_a, cfg), outcome(root_b, cfg)
        assert {k: a[k] for k in ("test", "best_dev", "calls")} == {k: b[k] for k in ("test", "best_dev", "calls")}
        assert a["history"] == b["history"] and len(a["history"]) > 2
        assert a["z"].keys() == b["z"].keys()
        for k in a["z"]:
            np.testing.assert_array_equal(a["z"][k], b["z"][k])


# -- settings -------------------------------------------------------------------------------------
def test_backend_settings_are_checked_in_one_line():
    check_backend(BackendSpec(name="ray", gpus_per_run=0.25, cpus_per_run=2))
    check_backend(BackendSpec(name="local", jobs=4))
    check_backend(BackendSpec(name="local", jobs=0))  # 0: from the card (models/sizing.py)
    for spec, needle in [(BackendSpec(name="ray", jobs=2), "jobs"), (BackendSpec(name="local", gpus_per_run=1), "gpus_per_run"),
                         (BackendSpec(name="local", jobs=-1), "jobs"), (BackendSpec(name="ray", jobs=0), "jobs"), (BackendSpec(name="ray", max_retries=-1), "max_retries"),
                         (BackendSpec(name="inprocess", address="h:1"), "address")]:  # fmt: skip
        with pytest.raises(ConfigError, match=needle):
            check_backend(spec)


def test_a_profile_names_its_backend():
    from dflora_core.config import load_yaml
    from dflora_core.lab.profiles import REPO_ROOT, profile_from_dict

    data = load_yaml(REPO_ROOT / "configs" / "smoke.yaml")
    assert profile_from_dict(data, "smoke").backend.name == "inprocess"  # notebooks: in the kernel by default
    prof = profile_from_dict({**data, "backend": {"name": "ray", "gpus_per_run": 0.25}}, "smoke")
    assert prof.backend.gpus_per_run == 0.25 and prof.backend.shared_fs == "auto"
    with pytest.raises(ConfigError, match="backend.name"):
        profile_from_dict({**data, "backend": {"name": "slurm"}}, "smoke")
    with pytest.raises(ConfigError, match="backend.jobs"):
        profile_from_dict({**data, "backend": {"name": "ray", "jobs": 4}}, "smoke")


def test_compare_flags_of_another_backend_are_one_line_errors(tmp_path, capsys):
    from dflora_core.cli import main

    base = ["compare", "--tasks", "sst2", "--methods", "zeroshot", "--seeds", "1", "--root", str(tmp_path)]
    for extra, needle in [(["--backend", "ray", "--jobs", "2"], "--jobs"), (["--gpus-per-run", "1"], "--gpus-per-run"),
                          (["--in-process", "--backend", "ray"], "choose one")]:  # fmt: skip
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1


# -- local processes --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_grid(tmp_path_factory):
    """`dflora compare --jobs 2` in a fresh interpreter, which then tells whether Ray got imported. The grid
    has a third run that fails: three label words for SST-2's two classes (known only when the run builds its
    prompt; what the configuration check can see, e.g. a layer the model lacks, fails the grid up front)."""
    root = tmp_path_factory.mktemp("jobs2")
    argv = ["compare", "--tasks", "sst2", "--methods", "c-lora,f-lora,rs-lora", "--seeds", "13", "--model", "tiny-llama",
            "--budget", "24", "--max-test", "16", "--root", str(root), "--jobs", "2",
            "--set", "rs-lora:model.verbalizer=[bad,good,great]", *[a for s in SETS for a in ("--set", s)]]  # fmt: skip
    code = (
        "import json, sys\n"
        "from dflora_core.cli import main\n"
        f"code = main({argv!r})\n"
        "print(json.dumps({'code': code, 'ray': 'ray' in sys.modules}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    *table, last = proc.stdout.strip().splitlines()
    return root, json.loads(last), "\n".join(table), proc.stderr


def test_jobs_2_records_equal_the_serial_grid(local_grid, serial):
    root = local_grid[0]
    assert_same_runs(serial, root, grid_configs())
    for cfg in grid_configs():
        assert (find_run(root, cfg) / "run.log").is_file()  # each process's own output


def test_the_default_backend_never_imports_ray(local_grid):
    assert local_grid[1]["ray"] is False


def test_a_failing_run_does_not_stop_the_others_locally(local_grid):
    root, report, table, err = local_grid
    assert report["code"] == 2  # the one-line error after the table
    [line] = [ln for ln in err.splitlines() if "run failed" in ln]
    assert "rs-lora sst2 seed 13" in line and "3 words given for sst2" in line and str(root) in line
    assert "| c-lora |" in table and "| f-lora |" in table and "| rs-lora |" not in table
    assert "1 run(s) failed" in err.splitlines()[-1]
    assert len(list(root.glob("**/record.json"))) == 2
    # no folder without a record stays behind: the failed run's folder is gone, its log kept beside it
    failed = root / "sst2" / "rs-lora" / "tiny-llama"
    assert not [p for p in failed.iterdir() if p.is_dir()]
    (log,) = failed.glob("seed13-*.failed.log")
    assert "folder removed, nothing to resume" in line and str(log) in line and "3 words given" in log.read_text()
    assert all((p / "record.json").is_file() for p in root.glob("sst2/*/tiny-llama/seed13-*") if p.is_dir())


# -- Ray ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_instance():
    """One local instance for the module, started as `--backend ray` starts it (execute then reuses it)."""
    from dflora_core.grids.rayrun import connect

    ray, started = connect(BackendSpec(name="ray"))
    yield ray
    if started:
        ray.shutdown()


def execute_on_ray(root, configs, **spec):
    from dflora_core.grids.backends import execute

    return execute(configs, root, spec=BackendSpec(name="ray", **spec))


@needs_ray
def test_the_local_ray_instance_listens_on_the_loopback_address_only(ray_instance):
    import psutil

    assert ray_instance.util.get_node_ip_address() == "127.0.0.1"
    assert ray_instance.cluster_resources()["CPU"] == len(os.sched_getaffinity(0))
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    listening = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in ours]
    assert listening and {c.laddr.ip for c in listening} <= {"127.0.0.1", "::ffff:127.0.0.1"}


@needs_ray
@pytest.mark.parametrize("shared_fs", ["auto", "no"])
def test_the_ray_grid_records_equal_the_serial_grid(ray_instance, serial, tmp_path, shared_fs):
    """auto: the workers see the root (probed); no: each run's files come back to the driver."""
    assert execute_on_ray(tmp_path, grid_configs(), shared_fs=shared_fs) == []
    assert_same_runs(serial, tmp_path, grid_configs())
    for cfg in grid_configs():
        names = {p.name for p in find_run(tmp_path, cfg).iterdir()}
        assert {"record.json", "history.json", "dev_curve.json", "adapter.npz", "run.log"} <= names
        assert ("checkpoint.npz" in names) == (shared_fs == "auto")  # the checkpoint does not travel
    assert not list(tmp_path.glob(".dflora-probe-*"))


def kill_after_checkpoint(where: Path, killed: list, timeout: float = 120.0) -> None:
    """SIGKILL the process that holds an unfinished run's folder once it wrote a checkpoint (its pid is in .lock)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for lock in where.glob("**/.lock"):
            text = lock.read_text().split()
            if (lock.parent / "checkpoint.npz").is_file() and "pid" in text and not RunFolder(lock.parent).finished():
                killed.append(int(text[text.index("pid") + 1]))
                os.kill(killed[-1], signal.SIGKILL)
                return
        time.sleep(0.02)


@needs_ray
@pytest.mark.parametrize("shared", [True, False])
def test_a_worker_killed_mid_run_is_retried_with_the_same_record(ray_instance, serial, tmp_path, shared):
    """Shared root: the retry resumes from the checkpoint; otherwise it starts again in a fresh scratch folder."""
    cfg = long_config()
    grid, scratch = tmp_path / "grid", tmp_path / "scratch"
    killed: list[int] = []
    killer = threading.Thread(target=kill_after_checkpoint, args=(grid if shared else scratch, killed))
    killer.start()
    failures = execute_on_ray(grid, [cfg], shared_fs="yes" if shared else "no", scratch=str(scratch))
    killer.join()
    assert len(killed) == 1 and failures == []
    assert_same_runs(serial, grid, [cfg])
    if shared:  # the retry took the folder's lock in another process
        assert f"pid {killed[0]} " not in (find_run(grid, cfg) / ".lock").read_text()


@needs_ray
def test_a_failing_ray_run_does_not_stop_the_others(ray_instance, tmp_path, capsys):
    from dflora_core.grids.backends import pending_runs

    good, bad = build_configs(["sst2"], ["zeroshot", "c-lora"], [13],
                              **{**KW, "sets": [*SETS, "c-lora:model.verbalizer=[bad,good,great]"]})  # fmt: skip
    [failure] = execute_on_ray(tmp_path, [good, bad])
    assert failure.run.cfg is bad and "3 words given" in failure.error
    assert str(find_run(tmp_path, bad).parent) in capsys.readouterr().err  # reported in one line with where it ran
    assert not find_run(tmp_path, bad).exists()  # nothing to resume: no folder without a record stays
    assert RunFolder(find_run(tmp_path, good)).finished() is not None
    assert [p.cfg for p in pending_runs([good, bad], tmp_path)] == [bad]  # a rerun runs only what is missing


@needs_ray
def test_a_profile_plan_runs_on_ray_with_its_tags_and_one_line_per_run(ray_instance, serial, tmp_path):
    from dflora_core.grids import plans
    from dflora_core.lab import live

    planned = [plans.PlannedRun("main", "method", c.method, c, {"study": "main"}) for c in grid_configs()]
    lines: list[str] = []
    progress = live.GridProgress(False, log=lines.append)
    records = plans.run_plan(planned, tmp_path, progress, BackendSpec(name="ray"))
    progress.close()
    assert [r["tags"] for r in records] == [{"study": "main"}] * 2
    assert_same_runs(serial, tmp_path, grid_configs())
    assert len([ln for ln in lines if ": done · " in ln]) == 2
    with pytest.raises(DfloraError, match="failed"):
        bad = grid_configs()[0].replace(**{"lowrank.layers": [40]})
        plans.run_plan([plans.PlannedRun("main", "method", "c-lora", bad)], tmp_path, None, BackendSpec(name="ray"))


@needs_ray
def test_runs_asking_more_than_this_machine_has_are_a_one_line_error(ray_instance, tmp_path):
    with pytest.raises(DfloraError, match="asks for 64 CPUs"):
        execute_on_ray(tmp_path, grid_configs(), cpus_per_run=64)
    assert not list(tmp_path.glob(".dflora-probe-*"))


# -- a Ray cluster as a user starts one -------------------------------------------------------------
RAY_CLI = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """End a `ray start --block` and what it started: its own process group (it runs in a session of its own)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.5)  # the group's other processes end with their leader's signal; SIGKILL makes sure
    with __import__("contextlib").suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def ray_cluster():
    """A head on 127.0.0.1 (`ray start --head`) and a second node process (`ray start --address`) with its own
    resources and temporary folder; token authentication with a token of the test's own (Ray's default since
    2.5x; the driver gets it through the environment). Both stopped by their process groups' ids."""
    import secrets
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="dfl-ray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    (base / "token").write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(base / "token"), "OMP_NUM_THREADS": "1"}  # fmt: skip
    port = _free_port()
    address = f"127.0.0.1:{port}"
    nodes = []

    def start(name, *args):
        log = open(base / f"{name}.log", "wb")  # noqa: SIM115 - the node's output, kept for a failure
        nodes.append(subprocess.Popen([str(RAY_CLI), "start", *args, "--disable-usage-stats", "--block",
                                       f"--temp-dir={base / name}"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))  # fmt: skip

    try:
        # the head runs no task (0 CPUs): every run of a grid goes to the second node, two at a time
        start("head", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
              "--num-cpus=0")  # fmt: skip
        start("node2", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
              '--resources={"second_node": 1}')  # fmt: skip
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in (base / "node2.log").read_text(errors="replace"):  # it joined the head
            assert all(n.poll() is None for n in nodes), (base / "node2.log").read_text()[-2000:]
            assert time.monotonic() < deadline, f"the cluster did not form: {(base / 'node2.log').read_text()[-2000:]}"
            time.sleep(0.5)
        yield address, env, base
    finally:
        for node in reversed(nodes):
            _stop(node)
        import psutil

        left = [p.pid for p in psutil.process_iter(["cmdline"]) if str(base) in " ".join(p.info["cmdline"] or [])]
        __import__("shutil").rmtree(base, ignore_errors=True)
        assert not left, f"Ray processes of the test cluster still run: {left}"


@needs_ray
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("DFLORA_TEST_RAY_CLUSTER"),
                    reason="about 2 minutes on 2 cores: DFLORA_TEST_RAY_CLUSTER=1 (make test-cluster) runs it")  # fmt: skip
@pytest.mark.parametrize("shared", [True, False], ids=["shared root", "--no-shared-fs"])
def test_a_grid_on_a_cluster_joined_by_address_equals_the_serial_grid(ray_cluster, serial, tmp_path, shared):
    """As a user meets a cluster: `dflora compare --address` in a fresh process, the runs on two nodes."""
    address, env, base = ray_cluster
    argv = ["compare", "--tasks", ",".join(GRID[0]), "--methods", ",".join(GRID[1]), "--seeds", "13",
            "--model", KW["model"], "--budget", str(KW["budget"]), "--max-test", str(KW["max_test"]),
            "--root", str(tmp_path), "--backend", "ray", "--address", address,
            *(["--no-shared-fs"] if not shared else []), *[a for s in SETS for a in ("--set", s)]]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "dflora_core", *argv], env=env, capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_runs(serial, tmp_path, grid_configs())
    for cfg in grid_configs():
        names = {p.name for p in find_run(tmp_path, cfg).iterdir()}
        assert ("checkpoint.npz" in names) == shared  # the checkpoint does not travel back


@needs_ray
@pytest.mark.slow
def test_a_cluster_address_that_does_not_answer_is_one_line_soon(tmp_path):
    """Nothing listening, a listener that is not Ray (bounded by --connect-timeout), a malformed address."""
    import socket

    base = ["compare", "--tasks", "sst2", "--methods", "zeroshot", "--seeds", "13", "--model", "tiny-llama",
            "--max-test", "8", "--root", str(tmp_path), "--backend", "ray", "--set", "model.device=cpu"]  # fmt: skip
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        cases = [(["--address", "127.0.0.1:1"], "nothing answers there"),
                 (["--address", "not-a-host:xyz"], "is not HOST:PORT"),
                 (["--address", f"127.0.0.1:{listener.getsockname()[1]}", "--connect-timeout", "3"],
                  "no Ray cluster answered within 3 s")]  # fmt: skip
        for extra, needle in cases:
            t0 = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "dflora_core", *base, *extra], capture_output=True, text=True,
                                  timeout=300)  # fmt: skip
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("dflora: error: "), proc.stderr
            assert needle in lines[0] and time.monotonic() - t0 < 120


@needs_ray
@pytest.mark.slow
def test_sigterm_ends_a_command_waiting_for_a_cluster(tmp_path):
    import socket

    import psutil

    with socket.socket() as listener:  # accepts, never answers as Ray would: joining waits out the timeout
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        argv = ["compare", "--tasks", "sst2", "--methods", "zeroshot", "--seeds", "13", "--model", "tiny-llama",
                "--max-test", "8", "--root", str(tmp_path), "--backend", "ray", "--set", "model.device=cpu",
                "--address", f"127.0.0.1:{listener.getsockname()[1]}", "--connect-timeout", "600"]  # fmt: skip
        proc = subprocess.Popen([sys.executable, "-m", "dflora_core", *argv], stderr=subprocess.PIPE, text=True)
        deadline, probes = time.monotonic() + 120, []
        while time.monotonic() < deadline and not probes:  # the probe process that joins the cluster
            probes = psutil.Process(proc.pid).children(recursive=True)
            time.sleep(0.2)
        time.sleep(4)  # inside Ray's connection attempts
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert probes and proc.returncode == 130 and "interrupted" in err and time.monotonic() - t0 < 10, err
    assert not [p for p in probes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_cluster_addresses_and_timeouts_are_checked_before_ray_is_imported():
    from dflora_core.grids.backend_base import split_address

    assert split_address("10.0.0.5:6379") == ("10.0.0.5", 6379) and split_address("[::1]:6379") == ("::1", 6379)
    assert split_address("auto") is None
    for bad in ("not-a-host:xyz", "host", ":6379", "ray://h:10001", "h:0", "h:70000", "a b:1"):
        with pytest.raises(ConfigError, match="--address: "):
            check_backend(BackendSpec(name="ray", address=bad), prefix="--")
    for spec in (BackendSpec(name="ray", connect_timeout=0), BackendSpec(name="local", connect_timeout=5)):
        with pytest.raises(ConfigError, match="--connect-timeout: "):
            check_backend(spec, prefix="--")
