"""Score a whole population of one layer's candidate updates in one forward pass.

Two savings over the released code's one-candidate-per-forward loop:
- population batching: the few-shot batch is repeated P times and candidate p's factors
  act on rows p*N..(p+1)*N-1 through batched matmuls (patching.lowrank_delta);
- prefix reuse: the layers below the one being optimised hold the same update for every
  candidate of a generation, so their output is computed once on the N examples and
  replayed (repeated P times) instead of being recomputed P times. Layers are replayed by
  overriding their forward for the duration of the call, which works for any architecture
  whose layer returns its hidden state; ``verify_prefix_reuse`` checks this on the model at
  hand and the evaluator falls back to full forwards where it does not hold.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from ..models.registry import LoadedModel
from ..models.scoring import Batch, EncodedSet, VerbalizerHead, forward_class_logits
from .adapter import LayerAdapter


class _StopForward(Exception):
    pass


def _repeat_like(output, hidden: torch.Tensor):
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden,) + tuple(None for _ in output[1:])
    raise TypeError(f"cannot replay a layer output of type {type(output).__name__}")


class PopulationEvaluator:
    """Class logits [P, N, C] of P candidates for one layer, the other layers as they are."""

    def __init__(
        self,
        loaded: LoadedModel,
        head: VerbalizerHead,
        adapter: LayerAdapter,
        data: EncodedSet,
        dtype: torch.dtype | None = None,
        max_tokens: int = 16384,
        reuse_prefix: bool = True,
    ):
        self.loaded, self.head, self.adapter, self.data = loaded, head, adapter, data
        self.dtype, self.max_tokens, self.reuse_prefix = dtype, max_tokens, reuse_prefix
        self._batches: dict[int, list[Batch]] = {}
        self.forward_rows = 0  # sequences pushed through the model (for speed accounting)

    def batches(self, copies: int) -> list[Batch]:
        if copies not in self._batches:
            self._batches[copies] = self.data.batches(self.max_tokens, self.loaded.device, copies)
        return self._batches[copies]

    def candidate_chunk(self, population: int) -> int:
        """Candidates per forward so that even the longest example fits the token budget."""
        longest = int(self.data.lengths.max())
        return max(1, min(population, self.max_tokens // max(1, longest)))

    # -- prefix reuse -----------------------------------------------------------------
    def _prefix_output(self, batch: Batch, layer: int):
        """Output of model layer ``layer - 1`` for the batch (N rows), stopping the forward there."""
        captured = {}

        def hook(_m, _args, output):
            captured["out"] = output
            raise _StopForward

        handle = self.adapter.layers[layer - 1].register_forward_hook(hook)
        try:
            forward_class_logits(self.loaded, self.head, batch, dtype=self.dtype)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured["out"]

    @contextlib.contextmanager
    def _replay(self, layer: int, prefix_output, copies: int):
        hidden = prefix_output if isinstance(prefix_output, torch.Tensor) else prefix_output[0]
        replayed = _repeat_like(prefix_output, hidden.repeat(copies, *([1] * (hidden.dim() - 1))))
        layers = self.adapter.layers[:layer]
        for mod in layers:
            mod.forward = lambda *a, **k: replayed  # instance attribute shadows the class forward
        try:
            yield
        finally:
            for mod in layers:
                del mod.forward

    # -- scoring -----------------------------------------------------------------------
    def logits(self, layer: int, Z) -> torch.Tensor:
        """Class logits [P, N, C] of candidates Z [P, dim] for ``layer``, the other layers as they are."""
        state = self.adapter.population(layer, Z)
        P = len(Z)
        N, C = len(self.data), len(self.head.weight)
        out = torch.empty(P, N, C)
        saved = self.adapter.get(layer)
        pc = self.candidate_chunk(P)
        first = self.adapter.model_layers[layer]  # model layers below this one are the same for all candidates
        reuse = self.reuse_prefix and first > 0
        prefixes = {}
        try:
            for c0 in range(0, P, pc):
                c1 = min(P, c0 + pc)
                self.adapter.set(layer, self.adapter.take(state, c0, c1))
                for b, batch in enumerate(self.batches(c1 - c0)):
                    ctx = contextlib.nullcontext()
                    if reuse:
                        key = (c1 - c0, b)
                        if key not in prefixes:
                            prefixes[key] = self._prefix_output(batch, first)
                        ctx = self._replay(first, prefixes[key], c1 - c0)
                    with ctx:
                        lg = forward_class_logits(self.loaded, self.head, batch, copies=c1 - c0, dtype=self.dtype)
                    self.forward_rows += lg.shape[0]
                    out[c0:c1, batch.index] = lg.view(c1 - c0, len(batch.index), C).cpu()
        finally:
            self.adapter.set(layer, saved)
        return out

    def verify_prefix_reuse(self, layer: int, Z, atol: float = 1e-4) -> bool:
        """Compare reused-prefix logits with full forwards once; turn reuse off if they differ."""
        if not self.reuse_prefix or self.adapter.model_layers[layer] == 0:
            return self.reuse_prefix
        try:
            fast = self.logits(layer, Z)
            self.reuse_prefix = False
            full = self.logits(layer, Z)
            # a candidate that overflows is non-finite either way: compare where both paths are finite
            finite = torch.isfinite(fast)
            ok = bool(torch.equal(finite, torch.isfinite(full)))
            ok = ok and torch.allclose(fast[finite], full[finite], atol=atol, rtol=1e-3)
        except (TypeError, KeyError, IndexError) as err:
            ok, full = False, None
            warnings.warn(f"prefix reuse failed on this architecture ({err}); using full forwards", stacklevel=2)
        self.reuse_prefix = ok
        if not ok and full is not None:
            warnings.warn("prefix reuse changed the logits on this architecture; using full forwards", stacklevel=2)
        return ok
