"""Rebuild an adapted model from a run folder, without re-running the search.

A DFO-LoRA run stores its learned z vectors (``adapter.npz``) and everything that defines
the fixed random projections (seed, init, per-layer scales, rank, d, targets, layers) in its
record, so the adapted model is a deterministic function of the folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import DFO_LORA_METHODS, from_dict
from ..errors import DfloraError
from ..experiment import Experiment
from ..lowrank.adapter import LowRankAdapter
from ..lowrank.patching import LowRankPatch
from ..lowrank.projection import IntrinsicProjection
from ..models.registry import LoadedModel
from ..results.record import load_record


def load_adapted(run_dir: str | Path, which: str = "z_best_dev", loaded: LoadedModel | None = None):
    """(Experiment, LowRankAdapter) with the run's ``which`` z ("z_best_dev" or "z_final") installed.

    Call ``adapter.remove()`` to get the original model back.
    """
    run_dir = Path(run_dir)
    record = load_record(run_dir)
    if record.get("method") not in DFO_LORA_METHODS:
        raise DfloraError(f"{run_dir}: method {record.get('method')} has no low-rank adapter to rebuild")
    arrays = np.load(run_dir / "adapter.npz")
    if which not in arrays:
        raise DfloraError(f"{run_dir}/adapter.npz has no {which!r}; choose from {list(arrays)}")
    cfg = from_dict(record["config"])
    exp = Experiment.prepare(cfg, loaded)
    info = record["projection"]
    patch = LowRankPatch(exp.loaded.model, tuple(info["targets"]), tuple(info["model_layers"]))
    dims = [{t: (s.in_features, s.out_features) for t, s in layer.items()} for layer in patch.sites]
    projection = IntrinsicProjection(
        dims, info["rank"], info["intrinsic_dim"], info["init"], info["seed"], info["layer_std"],
        info["alpha"], info["sigma"], info["ri_std"], exp.loaded.device, model_layers=info["model_layers"],
    )  # fmt: skip
    adapter = LowRankAdapter(patch, projection)
    z = arrays[which]
    for layer in range(adapter.num_layers):
        adapter.set_z(layer, z[layer])
    return exp, adapter
