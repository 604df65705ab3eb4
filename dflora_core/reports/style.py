"""The figures' common ground: deterministic style and files, footers that say what a figure shows.

Every figure function of ``reports`` takes recorded results (run records, analysis JSON, frames
built from them) and the profile name, never a model, and returns a matplotlib Figure whose footer
says which profile and settings produced it. ``save`` writes PDF and PNG that are byte-identical
for the same data: seaborn "paper" context, ``pdf.fonttype`` 42 (embedded TrueType), a fixed
``svg.hashsalt``, and no creation date or software version in the metadata.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .. import methods
from ..fileio import atomic_write_bytes
from .provenance import dev_rule_text

RC = {
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.hashsalt": "dflora",
    "svg.fonttype": "path",
    "figure.dpi": 100,
    "savefig.bbox": "tight",
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "figure.titlesize": 10,
}
METADATA = {
    "pdf": {"CreationDate": None, "ModDate": None, "Producer": "dflora", "Creator": "dflora"},
    "png": {"Software": None},
    "svg": {"Date": None, "Creator": "dflora"},
}
FOOTER = "dflora-footer"  # the gid of a figure's footer text
SOURCE_TITLES = {"residual": "residual stream entering the layer", "proj_input": "input of the q/k projections"}


@contextlib.contextmanager
def style():
    """seaborn "paper" context and white grid, plus the deterministic-output settings."""
    import matplotlib
    import seaborn as sns

    with matplotlib.rc_context():
        sns.set_theme(context="paper", style="whitegrid", palette="colorblind")
        matplotlib.rcParams.update(RC)
        yield


def new_figure(nrows: int = 1, ncols: int = 1, width: float = 7.0, height: float = 2.6, **kw):
    import matplotlib.pyplot as plt

    with style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, **kw)
    return fig, axes


def wrap_parts(text: str, width: int, sep: str = " · ") -> str:
    """Break a ' · '-separated provenance line into lines of at most ``width`` characters."""
    lines, line = [], ""
    for part in text.split(sep):
        candidate = f"{line}{sep}{part}" if line else part
        if line and len(candidate) > width:
            lines.append(line)
            line = part
        else:
            line = candidate
    lines.append(line)
    return "\n".join(lines)


def footer(fig, text: str) -> None:
    """The provenance lines at the bottom of every figure (profile, model, settings, test set),
    wrapped to the figure's width so they never widen it."""
    width = max(40, int(fig.get_figwidth() * 24))
    fig.text(0.0, -0.02, wrap_parts(text, width), fontsize=5.5, color="0.35", ha="left", va="top", linespacing=1.3,
             gid=FOOTER)  # fmt: skip


def extend_footer(fig, text: str) -> None:
    """Add ``text`` to a figure's footer (what a caller knows and the figure function does not: which copy of
    a run its profile shows), wrapped as the footer is; a figure without a footer gets one."""
    found = [t for t in fig.texts if t.get_gid() == FOOTER]
    if not found:
        footer(fig, text)
        return
    width = max(40, int(fig.get_figwidth() * 24))
    found[0].set_text(found[0].get_text() + "\n" + wrap_parts(text, width))


def save(fig, folder: str | Path, name: str, formats: Sequence[str] = ("pdf", "png"), dpi: int = 200) -> list[Path]:
    """Write ``name``.<format> for each format; same data, same bytes. Returns the paths."""
    import io

    import matplotlib

    paths = []
    with matplotlib.rc_context(RC):
        for fmt in formats:
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=dpi, metadata=METADATA.get(fmt), bbox_inches="tight", pad_inches=0.05)
            path = Path(folder) / f"{name}.{fmt}"
            atomic_write_bytes(path, buf.getvalue())
            paths.append(path)
    return paths


def scale_axis(ax, values, integer_x: bool = True) -> None:
    """Log y only when the values span more than a factor 4; integer ticks on a layer axis."""
    from matplotlib.ticker import MaxNLocator

    v = np.asarray([x for x in values if x is not None and np.isfinite(x) and x > 0], float)
    if v.size and v.max() / v.min() > 4:
        ax.set_yscale("log")
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


# -- provenance text ---------------------------------------------------------------------------------
def _layers_text(cfg: dict) -> str:
    layers = cfg["lowrank"].get("layers")
    if not layers:
        return "all layers"
    if all(i < 0 for i in layers):
        return f"top {len(layers)} layers"
    return "layers " + ",".join(str(i) for i in layers)


def describe_records(records: Iterable[dict], profile: str, extra: str = "") -> str:
    """'<profile> profile · model · layers · popsize · calls · seeds · test set' from the records."""
    recs = [r for r in records if r.get("config")]
    parts = [f"{profile} profile"]
    if recs:
        cfgs = [r["config"] for r in recs]
        models = sorted({c["model"]["name"] for c in cfgs})
        parts.append(", ".join(models))
        dfo = [c for c in cfgs if methods.is_layerwise_lora(c["method"])]
        if dfo:
            parts.append(" / ".join(sorted({_layers_text(c) for c in dfo})))
            parts.append("popsize " + "/".join(str(x) for x in sorted({c["optim"]["popsize"] for c in dfo})))
            parts.append("/".join(str(x) for x in sorted({c["search"]["budget"] for c in dfo})) + " calls")
        seeds = sorted({r.get("seed") for r in recs if r.get("seed") is not None})
        if seeds:
            parts.append("seed" + ("s " if len(seeds) > 1 else " ") + ",".join(str(s) for s in seeds))
        tests = sorted({(r.get("test") or {}).get("name") for r in recs if (r.get("test") or {}).get("name")})
        if tests:
            parts.append("test: " + "; ".join(tests))
        rule = dev_rule_text(recs)
        if rule:
            parts.append(rule)
    if extra:
        parts.append(extra)
    return " · ".join(parts)
