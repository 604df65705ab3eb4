"""How large an update is, relative to the frozen projection it is added to (notebook 02; the
"output" scale calibration of the layer-wise search).

``ProjectionProbe`` reads, once, each target projection's real inputs X on a batch (real
tokens only, at most ``max_rows`` rows), its frozen weight W and its frozen outputs X W. For
factors A, B (one update or a population) it then gives

    weight_ratio = ||A B||_F / ||W||_F        output_ratio = ||X A B||_F / ||X W||_F

without ever forming the [in, out] update (||A B||_F^2 = tr((A^T A)(B B^T))).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models.registry import LoadedModel
from ..models.scoring import EncodedSet, body_forward
from .build import site_dims
from .patching import LowRankPatch


def _select(y: torch.Tensor, sel) -> torch.Tensor:
    if sel is None:
        return y
    if isinstance(sel, slice):
        return y[..., sel]
    return torch.index_select(y, -1, sel.to(y.device))


class ProjectionProbe:
    """Inputs, weights and frozen outputs of the target projections of some layers (model unchanged)."""

    def __init__(
        self,
        loaded: LoadedModel,
        data: EncodedSet,
        targets: Sequence[str],
        layers: Sequence[int] | None = None,
        max_rows: int = 256,
        max_tokens: int = 16384,
    ):
        patch = LowRankPatch(loaded.model, tuple(targets), None if layers is None else tuple(layers))
        try:
            self.model_layers = list(patch.model_layers)
            self.dims = site_dims(patch)
            inputs = self._inputs(loaded, patch, data, max_tokens)
            self.W: list[dict[str, torch.Tensor]] = []
            self.X: list[dict[str, torch.Tensor]] = []
            self.Y: list[dict[str, torch.Tensor]] = []
            gen = torch.Generator().manual_seed(0)  # which rows are kept when there are more than max_rows
            with torch.no_grad():
                for sites in patch.sites:
                    Ws, Xs, Ys = {}, {}, {}
                    for t, site in sites.items():
                        w = site.wrapper
                        x = torch.cat(inputs[id(w)])
                        if len(x) > max_rows:
                            x = x[torch.randperm(len(x), generator=gen)[:max_rows]]
                        eye = torch.eye(w.in_features, device=loaded.device)
                        zero = torch.zeros(1, w.in_features, device=loaded.device)
                        sel = w.selects[t]
                        Ws[t] = _select(w.base(eye) - w.base(zero), sel).cpu()
                        Ys[t] = _select(w.base(x) - w.base(zero), sel).cpu()
                        Xs[t] = x.cpu()
                    self.W.append(Ws)
                    self.X.append(Xs)
                    self.Y.append(Ys)
        finally:
            patch.remove()

    @staticmethod
    def _inputs(loaded: LoadedModel, patch: LowRankPatch, data: EncodedSet, max_tokens: int) -> dict:
        """Real-token inputs of every wrapped projection on ``data``, keyed by the wrapper's id."""
        inputs: dict[int, list[torch.Tensor]] = {}
        mask_box: list[torch.Tensor] = []
        wrappers = {id(site.wrapper): site.wrapper for sites in patch.sites for site in sites.values()}
        handles = []
        for wid, w in wrappers.items():

            def hook(_m, args, _wid=wid):
                inputs.setdefault(_wid, []).append(args[0][mask_box[0].bool()].detach().float())

            handles.append(w.register_forward_pre_hook(hook))
        try:
            with torch.no_grad():
                for batch in data.batches(max_tokens, loaded.device):
                    mask_box[:] = [batch.attention_mask]
                    body_forward(loaded.model, batch.input_ids, batch.attention_mask)
        finally:
            for h in handles:
                h.remove()
        return inputs

    @property
    def num_layers(self) -> int:
        return len(self.dims)

    def ratios(self, layer: int, target: str, A: torch.Tensor, B: torch.Tensor) -> tuple[float, float]:
        """(weight_ratio, output_ratio), each the mean over the candidates of factors A [P, in, r], B [P, r, out]."""
        with torch.no_grad():
            # the probe's rows live on the CPU (small, kept off the accelerator); the factors come from the
            # model's device: bring them here (a few hundred KB per generation)
            A, B = A.to(self.X[layer][target].device).float(), B.to(self.X[layer][target].device).float()
            gram = torch.bmm(A.transpose(1, 2), A) * torch.bmm(B, B.transpose(1, 2)).transpose(1, 2)
            dw_norm = gram.sum(dim=(1, 2)).clamp_min(0).sqrt()  # [P]
            dY = torch.matmul(torch.matmul(self.X[layer][target], A), B)  # [P, n, out]
            w_norm, y_norm = float(self.W[layer][target].norm()), float(self.Y[layer][target].norm())
            return float(dw_norm.mean()) / w_norm, float(dY.flatten(1).norm(dim=1).mean()) / y_norm
