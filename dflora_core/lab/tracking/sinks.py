"""The trackers a run can be logged to, each library imported only when its sink is chosen (an
``ImportError`` here means the ``tracking`` extra is not installed). Everything goes below the
tracking folder, nothing is sent anywhere (docs/tracking.md):

- ``tensorboard``: ``torch.utils.tensorboard`` event files in ``DIR/tensorboard/<group>/<key>``;
- ``mlflow``: a local SQLite store, ``DIR/mlflow/mlflow.db`` (one experiment per group);
- ``wandb``: Weights & Biases offline runs in ``DIR/wandb/wandb/`` (``wandb sync`` uploads them later).

A sink opens one tracker run per dflora run (``open``); ``fresh`` replaces what an earlier attempt
of the same run logged (a run started again, a record replayed), else the run is continued (resumed).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Protocol

from .rows import RunInfo

WANDB_PROJECT = "dflora"


class TrackerRun(Protocol):
    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def final(self, step: int, values: dict[str, float]) -> None: ...

    def close(self, ok: bool) -> None: ...


class Sink(Protocol):
    name: str

    def open(self, info: RunInfo, fresh: bool, step: int) -> TrackerRun: ...

    def close(self) -> None: ...


def _tag_table(tags: dict[str, str]) -> str:
    return "| tag | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in tags.items())


# -- TensorBoard ------------------------------------------------------------------------------------
class TensorBoard:
    name = "tensorboard"

    def __init__(self, root: Path):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer_type, self.root = SummaryWriter, root / "tensorboard"

    def open(self, info: RunInfo, fresh: bool, step: int) -> TrackerRun:
        folder = self.root / info.group / info.key
        if fresh:
            for old in folder.glob("events.out.tfevents.*"):
                old.unlink()
        # resumed: TensorBoard drops what an earlier session logged past the checkpoint (purge_step)
        writer = self.writer_type(log_dir=str(folder), flush_secs=10, purge_step=None if fresh else step + 1)
        if fresh:
            writer.add_text("dflora/tags", _tag_table(info.tags), 0)
            writer.add_text("dflora/config", f"```\n{json.dumps(info.config, indent=1)}\n```", 0)
        return _TensorBoardRun(writer, info)

    def close(self) -> None:
        pass


class _TensorBoardRun:
    def __init__(self, writer, info: RunInfo):
        self.writer, self.info = writer, info

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def final(self, step: int, values: dict[str, float]) -> None:
        from torch.utils.tensorboard.summary import hparams

        self.scalars(step, values)
        # the HParams dashboard: the config beside the final values (same tags, same run folder)
        for summary in hparams(self.info.params, values):
            self.writer.file_writer.add_summary(summary)

    def close(self, ok: bool) -> None:
        self.writer.close()


# -- MLflow -----------------------------------------------------------------------------------------
class MLflow:
    name = "mlflow"
    BATCH = 100  # MLflow takes at most 100 params (1,000 metrics) per log_batch

    def __init__(self, root: Path):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing is sent anywhere
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # the store's set-up narrates its migrations at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
        folder = root / "mlflow"
        folder.mkdir(parents=True, exist_ok=True)
        self.metric, self.param = Metric, Param
        self.client = MlflowClient(tracking_uri=f"sqlite:///{folder.resolve() / 'mlflow.db'}")
        self.artifacts = (folder / "artifacts").resolve().as_uri()  # else ./mlruns of the working directory

    def _experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            return self.client.create_experiment(name, artifact_location=self.artifacts)
        if exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    def open(self, info: RunInfo, fresh: bool, step: int) -> TrackerRun:
        experiment = self._experiment(info.group)
        found = self.client.search_runs([experiment], filter_string=f"tags.`dflora.run_id` = '{info.run_id}'")
        if found and not fresh:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return _MLflowRun(self, run_id)
        for old in found:
            self.client.delete_run(old.info.run_id)
        run = self.client.create_run(experiment, run_name=info.key, tags={**info.tags, "dflora.run_id": info.run_id})
        params = [self.param(k, str(v)) for k, v in info.params.items()]
        for i in range(0, len(params), self.BATCH):
            self.client.log_batch(run.info.run_id, params=params[i : i + self.BATCH])
        return _MLflowRun(self, run.info.run_id)

    def close(self) -> None:
        pass


class _MLflowRun:
    def __init__(self, sink: MLflow, run_id: str):
        self.sink, self.run_id = sink, run_id

    def scalars(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.sink.client.log_batch(self.run_id, metrics=[self.sink.metric(k, v, now, step) for k, v in values.items()])

    def final(self, step: int, values: dict[str, float]) -> None:
        self.scalars(step, values)

    def close(self, ok: bool) -> None:
        self.sink.client.set_terminated(self.run_id, "FINISHED" if ok else "KILLED")


# -- Weights & Biases ----------------------------------------------------------------------------------
class WandB:
    name = "wandb"

    def __init__(self, root: Path):
        import wandb

        self.wandb, self.dir = wandb, root / "wandb"
        self.dir.mkdir(parents=True, exist_ok=True)

    def open(self, info: RunInfo, fresh: bool, step: int) -> TrackerRun:
        if fresh:  # an earlier attempt's offline files would be synced into the same run id
            for old in (self.dir / "wandb").glob(f"offline-run-*-{info.run_id}"):
                shutil.rmtree(old, ignore_errors=True)
        settings = self.wandb.Settings(mode="offline", silent=True, console="off", disable_git=True,
                                       disable_code=True, x_disable_stats=True, x_disable_machine_info=True)  # fmt: skip
        short = [info.tags[k][:64] for k in ("task", "method", "model")] + [f"seed{info.tags['seed']}"]
        run = self.wandb.init(dir=str(self.dir), project=WANDB_PROJECT, group=info.group, name=info.key,
                              id=info.run_id, resume=None if fresh else "allow", reinit="create_new",
                              config={**info.config, "dflora_tags": info.tags}, tags=short,
                              settings=settings)  # fmt: skip
        return _WandBRun(run)

    def close(self) -> None:
        self.wandb.teardown()  # stops W&B's service process


class _WandBRun:
    def __init__(self, run):
        self.run = run

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def final(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)
        self.run.summary.update(values)

    def close(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


SINKS = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}
