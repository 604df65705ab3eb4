"""The benchmarks' output: the JSON document's header, its writer, and its rows as markdown tables."""

from __future__ import annotations

import math
import shlex
import sys
import time
from dataclasses import asdict

import torch

from ..environment import git_commit, machine_info, package_versions
from ..fileio import atomic_write_json
from .probes import loadavg


def header(argv: list[str] | None) -> dict:
    """What every results document starts with: the command, versions, commit, machine, load."""
    return {
        "command": "dflora " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "versions": package_versions(),
        "git": git_commit(),
        "machine": {**machine_info(), "torch_threads": torch.get_num_threads()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_start": loadavg(),  # other processes on the machine (timings are shared-CPU numbers)
    }


def write(path: str | None, doc: dict, quiet: bool = False) -> None:
    """The JSON results (atomically: a reader never sees half a file); ``quiet`` for the partial writes."""
    if path:
        atomic_write_json(path, doc)
        if not quiet:
            print(f"wrote {path}")


def fmt(v, spec: str, none: str = "-") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return format(v, spec)


SPEED_COLUMNS = (
    "model | strategy | dtype | >evals/s | >x reference | >Spearman | same best | >peak mem (MiB) | >GFLOP/eval"
    " | >ceiling evals/s"
)
FIDELITY_COLUMNS = "model | task | >layer | dtype | >Spearman | same best | >max abs diff | >fp32 spread"
MEMORY_COLUMNS = (
    "model | config | batch x seq | dtype | >peak (MiB) | >above load (MiB) | >ratio vs LoRA | >ratio above load"
)


def markdown(columns: str, rows) -> str:
    """A markdown table: ``columns`` like "model | >evals/s" (``>`` right-aligns), rows of cells."""
    names = [c.strip() for c in columns.split("|")]
    lines = [
        "| " + " | ".join(n.lstrip(">") for n in names) + " |",
        "|" + "|".join("---:" if n.startswith(">") else "---" for n in names) + "|",
    ]
    lines += ["|" + "|".join(f" {c} " if c else " " for c in cells) + "|" for cells in rows]
    return "\n".join(lines)


def _mib(n) -> float | None:
    return n and n / 2**20


def _speed_cells(r) -> list[str]:
    r = r if isinstance(r, dict) else asdict(r)
    name = r["strategy"] + (" **(fastest faithful)**" if r.get("fastest_faithful") else "")
    if r.get("error"):
        name += f" (failed: {r['error'][:60]})"
    return [r["model"], name, r["dtype"], fmt(r["evals_per_s"], ".2f"), fmt(r["ratio_vs_reference"], ".2f"),
            fmt(r["spearman_vs_fp32"], ".4f"), fmt(r["same_best"], ""), fmt(_mib(r["peak_mem_bytes"]), ".0f"),
            fmt(r.get("gflop_per_eval"), ".2f"), fmt(r.get("ceiling_evals_per_s"), ".1f")]  # fmt: skip


def speed_table(rows) -> str:
    return markdown(SPEED_COLUMNS, [_speed_cells(r) for r in rows])


def fidelity_table(rows) -> str:
    cells = [
        [r["model"], str(r["task"]), str(r["model_layer"]), r["dtype"], fmt(r.get("spearman_vs_fp32"), ".4f"),
         str(r.get("same_best", "-")), fmt(r.get("max_abs_fitness_diff"), ".1e"), fmt(r["fp32_fitness_spread"], ".1e")]
        for r in rows
    ]  # fmt: skip
    if not any(r.get("options") for r in rows):
        return markdown(FIDELITY_COLUMNS, cells)
    # rows measured under search options (``--set``) say which, and the layer's calibrated scale
    for c, r in zip(cells, rows, strict=True):
        c += [", ".join(f"{k.split('.')[-1]}={v}" for k, v in (r.get("options") or {}).items()) or "defaults",
              fmt(r.get("scale_multiplier"), ".3g")]  # fmt: skip
    return markdown(FIDELITY_COLUMNS + " | options | >scale x RIL", cells)


def _memory_cells(r) -> list[str]:
    if "error" in r:
        return [r["model"], r["config"], f"failed: {r['error']}", "", "", "", "", ""]
    return [r["model"], r["config"], f"{r['batch']} x {r['seq']}", r["dtype"], f"{_mib(r['peak_mem_bytes']):.0f}",
            fmt(_mib(r.get("above_load_bytes")), ".0f"), fmt(r.get("ratio_vs_lora"), ".3f"),
            fmt(r.get("ratio_vs_lora_above_load"), ".3f")]  # fmt: skip


def memory_table(rows) -> str:
    return markdown(MEMORY_COLUMNS, [_memory_cells(r) for r in rows])


TABLES = {"speed": speed_table, "sweep": speed_table, "fidelity": fidelity_table, "memory": memory_table}
