"""Results where researchers already look: a run's curves and results in TensorBoard, MLflow or Weights &
Biases (docs/tracking.md), attached on the top floor through a run's callbacks; nothing below imports a sink.

- ``rows``: what is logged, from the rows a run writes anyway (one code path for live runs and replays);
- ``sinks``: the three libraries, each imported only when chosen;
- ``hub``: the ``Tracker``: chosen sinks, a run's callbacks, replaying a record, a broken sink as one warning;
- ``command``: ``dflora log`` and the ``--log-to`` flags of ``dflora run`` and ``dflora compare``.
"""

from .hub import DEFAULT_DIR, Tracker, TrackingSpec

__all__ = ["DEFAULT_DIR", "Tracker", "TrackingSpec"]
