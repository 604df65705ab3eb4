"""Facts about the machine a run or benchmark ran on: package versions, commit, peak memory.

One peak-memory helper for records and benchmarks alike: the CUDA allocator's high-water
mark on a GPU, the process's peak resident set (Linux ``VmHWM``, resettable through
``/proc/self/clear_refs``) on a CPU.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("dflora", "torch", "transformers", "tokenizers", "cma", "numpy", "accelerate", "gguf", "peft")


def package_versions() -> dict[str, str | None]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(cwd: str | Path | None = None) -> dict[str, Any]:
    """The commit of the code that ran, and whether the work tree had uncommitted changes."""
    where = Path(cwd) if cwd else Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if sha.returncode != 0:
            return {"commit": None, "dirty": None}
        return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_tile")  # what changes CPU kernels' float results


def cpu_kind() -> dict[str, Any]:
    """The CPU's model and the instruction sets that pick torch's kernels: exact repeatability holds
    between machines of one kind (Linux ``/proc/cpuinfo``; elsewhere the platform's processor name)."""
    model, flags = platform.processor() or None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {"model": model, "features": [f for f in CPU_FEATURES if f in flags]}


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "cpu": cpu_kind()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


# -- memory ---------------------------------------------------------------------------------------
def _proc_status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the process's peak-RSS mark (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident memory of this process (since the last reset where Linux allows one)."""
    v = _proc_status("VmHWM")
    return v if v is not None else int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def current_rss() -> int | None:
    return _proc_status("VmRSS")


def reset_peak_memory(device) -> bool:
    """Start a peak-memory measurement on ``device`` (a torch.device); False where the CPU's peak mark
    cannot be reset (then the peak is the process's since it started, earlier runs in it included)."""
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)
        return True
    return reset_peak_rss()


def peak_memory(device) -> tuple[int, str]:
    """(bytes, kind) of the peak since ``reset_peak_memory`` (or since the process started)."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    return peak_rss(), "process_peak_rss"


class PeakMemory:
    """Peak memory of a block: ``with PeakMemory(device) as m: ...; m.value, m.kind``."""

    def __init__(self, device):
        self.device = device
        self.value: int | None = None
        self.kind: str | None = None

    def __enter__(self) -> PeakMemory:
        reset_peak_memory(self.device)
        return self

    def __exit__(self, *exc) -> None:
        self.value, self.kind = peak_memory(self.device)
