"""Data-driven criteria: units scored from what flows through them (survey section 3.3).

Every criterion here looks at whole units, so it supports the ``channel`` pattern (a
neuron of a Linear layer, a filter of a conv), except ``thinet`` and ``lasso_channel``,
which choose the *input* channels of a layer (``pattern="input"``): removing input channel
``c`` of a layer is removing filter ``c`` of the layer before.  They read ``data`` (a
DataLoader or an ``(inputs, targets)`` tuple) in eval mode; ``batches`` limits how many
batches they read (all by default).

Units are assumed to be followed by a ReLU, as in every model of :mod:`sparsity_lab.models`:
``apoz`` and ``mean_activation`` apply it to the layer's output themselves.  Criteria that
change weights (``activation_variance``, ``correlation_merge``, ``thinet``,
``lasso_channel``) say so in their docstring.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import nn

from .. import masks
from ..registry import register
from ..targets import default_targets
from .base import Context
from .units import (
    GroupCriterion,
    Link,
    alive_units,
    evaluating,
    forward_hooks,
    greedy_merge,
    input_gram,
    links,
    module_of,
    ordered_scores,
    per_unit,
    removed_units,
)


def output_means(
    model: nn.Module, names: list[str], context: Context, transform, batches: int | None = None
) -> dict[str, torch.Tensor]:
    """Mean of ``transform(output)`` per output unit of each layer, over examples and positions."""
    modules = {n: module_of(model, n) for n in names}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(key, inputs, output):
        values = per_unit(transform(output.detach())).double()
        sums[key] = sums.get(key, 0) + values.sum(dim=(0, 2))
        counts[key] = counts.get(key, 0) + values.shape[0] * values.shape[2]

    with evaluating(model), torch.no_grad(), forward_hooks(modules, hook):
        for x, _ in context.batches(batches, labels=False):
            model(x)
    return {n: sums[n] / counts[n] for n in names}


class _UnitCriterion(GroupCriterion):
    """A data-driven criterion over output units (``channel``)."""

    needs_data = True
    supported_patterns = ("channel",)

    def __init__(self, batches: int | None = None) -> None:
        self.batches = batches


@register("criterion", "apoz", section="3.3")
class APoZ(_UnitCriterion):
    """Average percentage of zeros, APoZ (Hu et al. 2016).

    ``APoZ_j`` is the fraction of zeros in unit ``j``'s ReLU output over the data (and the
    positions of a feature map); units that are almost always zero go first.  Score:
    ``1 - APoZ_j``.  Pattern: ``channel``.
    """

    name = "apoz"

    def group_scores(self, model, names, pattern, context):
        return output_means(model, names, context, lambda out: out > 0, self.batches)


@register("criterion", "mean_activation", section="3.3")
class MeanActivation(_UnitCriterion):
    """Mean activation (Tan & Motani 2020, DropNet): remove the units with the lowest
    average ReLU output over the data.  Score: ``mean(relu(z_j))``.  Pattern: ``channel``."""

    name = "mean_activation"

    def group_scores(self, model, names, pattern, context):
        return output_means(model, names, context, torch.relu, self.batches)


def reader_statistics(
    model: nn.Module, found: dict[str, Link], context: Context, batches: int | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """Moments of what the next layer reads from each layer's units.

    The reader's input is seen as ``(samples, units, k)`` (:meth:`Link.unit_inputs`).
    Returns per layer ``sum`` and ``squares`` of shape ``(units, k)``, ``outer`` (the
    ``units x units`` sum of products, each (sample, position) a row) and ``rows``.
    """
    readers = {n: module_of(model, link.target) for n, link in found.items()}
    stats: dict[str, dict] = {n: {"sum": 0, "squares": 0, "outer": 0, "rows": 0} for n in found}

    def hook(key, inputs, output):
        x = found[key].unit_inputs(inputs.detach()).double()  # (S, units, k)
        rows = x.permute(0, 2, 1).reshape(-1, x.shape[1])  # (S * k, units)
        entry = stats[key]
        entry["sum"] = entry["sum"] + x.sum(dim=0)
        entry["squares"] = entry["squares"] + x.pow(2).sum(dim=0)
        entry["outer"] = entry["outer"] + rows.T @ rows
        entry["rows"] += x.shape[0]

    with evaluating(model), torch.no_grad(), forward_hooks(readers, hook):
        for x, _ in context.batches(batches, labels=False):
            model(x)
    return stats


class _FoldingCriterion(_UnitCriterion):
    """Shared by the criteria that move removed units into the next layer."""

    def __init__(self, batches: int | None = None, next_layers: dict | None = None) -> None:
        super().__init__(batches)
        self.next_layers = next_layers

    def _statistics(self, model, names, context):
        found = context.state["links"] = links(model, names, self.next_layers, self.name)
        for link in found.values():
            if link.bias(model) is None:
                raise ValueError(
                    f"{self.name} folds removed units into the bias of {link.target!r}, which "
                    "has none; give that layer a bias or choose another criterion"
                )
        return reader_statistics(model, found, context, self.batches)


@register("criterion", "activation_variance", section="3.3")
class ActivationVariance(_FoldingCriterion):
    """Activation variance (Sietsma & Dow 1988): a unit whose output hardly varies is a
    constant, which the next layer's bias can absorb.

    Score: ``sum_k Var(a_jk)``, the variance of what the next layer reads from unit ``j``
    (summed over the positions of a flattened feature map).  Changes weights: each removed
    unit's mean output is folded into the next layer's bias, ``b += sum_k A[:, j, k] *
    mean(a_jk)``, and its outgoing weights ``A[:, j]`` are zeroed, so a constant unit is
    removed without changing the output (exactly for a Linear reader; for a conv reader,
    away from its zero-padded border).  Pattern: ``channel``; the next layer is the next
    Linear/Conv in module order unless ``next_layers`` says otherwise.
    """

    name = "activation_variance"

    def group_scores(self, model, names, pattern, context):
        means, alive, out = (
            context.state.setdefault("means", {}),
            context.state.setdefault("alive", {}),
            {},
        )
        for n, stats in self._statistics(model, names, context).items():
            mean = stats["sum"] / stats["rows"]
            means[n], alive[n] = mean, alive_units(model, n)
            out[n] = (stats["squares"] / stats["rows"] - mean.pow(2)).clamp_min(0).sum(dim=1)
        return out

    @torch.no_grad()
    def update_weights(self, model, new_masks, context):
        means, alive = context.state["means"], context.state["alive"]
        for n, keep in new_masks.items():
            link = context.state["links"][n]
            outgoing, bias = link.outgoing(model), link.bias(model)
            for j in removed_units(keep, alive[n]).tolist():
                bias += (outgoing[:, j] * means[n][j].to(outgoing.dtype)).sum(dim=-1)
                outgoing[:, j] = 0


@register("criterion", "correlation_merge", section="3.3")
class CorrelationMerge(_FoldingCriterion):
    """Merging correlated units (Sietsma & Dow 1991).

    If unit ``j``'s output is a linear function of unit ``i``'s, ``a_j = alpha a_i + beta``,
    the next layer can read ``a_i`` for both: ``A[:, i] += alpha A[:, j]``, ``b += beta
    A[:, j]``.  Saliency of merging ``j`` into ``i``: ``||A[:, j]||^2 Var(a_j) (1 -
    rho_ij^2)``, the output energy the least-squares fit leaves unexplained; units go
    greedily, cheapest first, each into the unit that explains it best.  A constant unit
    (zero variance) costs nothing and is folded into the bias.

    Changes weights: the merges above, then ``A[:, j] = 0``; exactly duplicated or scaled
    units (``relu(2z) = 2 relu(z)``) are merged without changing the output.  Pattern:
    ``channel``; the next layer as in ``activation_variance``.
    """

    name = "correlation_merge"

    def group_scores(self, model, names, pattern, context):
        plan, out = context.state.setdefault("plan", {}), {}
        for n, stats in self._statistics(model, names, context).items():
            link = context.state["links"][n]
            samples = stats["rows"] * stats["sum"].shape[1]  # (sample, position) rows
            mean = stats["sum"].sum(dim=1) / samples  # pooled over positions, like the fit
            cov = stats["outer"] / samples - torch.outer(mean, mean)
            var = cov.diagonal().clamp_min(0)
            # alpha[j, i]: slope of a_j on a_i; residual[j, i]: Var(a_j) (1 - rho_ij^2)
            safe = torch.where(var > 1e-12 * var.max().clamp_min(1e-300), var, math.inf)
            alpha = cov / safe.reshape(1, -1)
            residual = (var.reshape(-1, 1) - cov.pow(2) / safe.reshape(1, -1)).clamp_min(0)
            alive = alive_units(model, n)
            order, saliency, into = greedy_merge(residual, link.outgoing(model), alive, alpha)
            beta = mean.reshape(-1, 1) - alpha * mean.reshape(1, -1)
            plan[n] = (order, into, alive, alpha, beta)
            out[n] = ordered_scores(order, saliency, link.units)
        return out

    @torch.no_grad()
    def update_weights(self, model, new_masks, context):
        for n, keep in new_masks.items():
            order, into, alive, alpha, beta = context.state["plan"][n]
            link = context.state["links"][n]
            outgoing, bias = link.outgoing(model), link.bias(model)
            removed = removed_units(keep, alive).tolist()
            prefix = order[: len(removed)].tolist()
            assert set(prefix) == set(removed), "correlation_merge: pruned units are not a prefix"
            for j, i in zip(prefix, into[: len(prefix)].tolist(), strict=True):
                if i < 0:  # the layer's last unit has nowhere to go
                    continue
                a_j = outgoing[:, j].clone()
                outgoing[:, i] += float(alpha[j, i]) * a_j
                bias += float(beta[j, i]) * a_j.sum(dim=-1)
                outgoing[:, j] = 0


@register("criterion", "sensitivity", section="3.3")
class Sensitivity(_UnitCriterion):
    """Input-output sensitivity of a unit (Engelbrecht & Cloete 1996; Engelbrecht 2001).

    The sensitivity of output ``o_k`` to unit ``j`` is ``d o_k / d z_j``; a unit to which no
    output is sensitive, on any example, can go.  Score: ``sqrt(mean_n sum_k (d o_k /
    d z_nj)^2)``, the root mean square over the data (and a feature map's positions) of
    the sensitivity of the network's outputs (logits) to the unit's pre-activation ``z``.
    It is large when the sensitivity has a large mean or a large variance, the two
    quantities Engelbrecht's variance-nullity test looks at.  Pattern: ``channel``.
    """

    name = "sensitivity"

    def group_scores(self, model, names, pattern, context):
        modules = {n: module_of(model, n, self.name) for n in names}
        totals: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        with evaluating(model):
            for x, _ in context.batches(self.batches, labels=False):
                probes: dict[str, torch.Tensor] = {}

                def hook(key, inputs, output, probes=probes):
                    # a zero added to the output: its gradient is d(outputs) / d(z)
                    probes[key] = torch.zeros_like(output, requires_grad=True)
                    return output + probes[key]

                with forward_hooks(modules, hook):
                    out = model(x).reshape(len(x), -1)
                keys = list(probes)
                # one backward pass per output, batched: row k of the identity picks o_k
                picks = torch.eye(out.shape[1], dtype=out.dtype)
                picks = picks.unsqueeze(1).expand(-1, len(x), -1)
                grads = torch.autograd.grad(
                    out, [probes[key] for key in keys], picks, is_grads_batched=True
                )
                for key, g in zip(keys, grads, strict=True):
                    g = g.detach().double().reshape(g.shape[0], g.shape[1], g.shape[2], -1)
                    totals[key] = totals.get(key, 0) + g.pow(2).sum(dim=(0, 1, 3))
                    counts[key] = counts.get(key, 0) + g.shape[1] * g.shape[3]
        return {n: (totals[n] / counts[n]).sqrt() for n in names}


# --- reconstruction of the next layer: ThiNet and LASSO channel selection ---------------


def channel_gram(weight: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``G[c, c'] = <y_c, y_c'>`` summed over the data, where ``y_c`` is the contribution of
    input channel ``c`` to the layer's output.

    With unfolded inputs ``X`` and weights ``W`` (``out x (C K)``), ``y_c = W[:, c] X[c]``,
    so ``G = sum over kernel taps of (W^T W) * (X^T X)`` (elementwise).  Removing a set
    ``T`` of channels changes the output by ``sum_{c in T} y_c``, of squared norm
    ``sum_{c, c' in T} G[c, c']``.
    """
    channels = weight.shape[1]
    w = weight.reshape(weight.shape[0], -1).double()
    per = (w.T @ w * gram).reshape(channels, w.shape[1] // channels, channels, -1)
    return per.sum(dim=(1, 3))


def input_alive(model: nn.Module, name: str) -> torch.Tensor:
    """Bool per input channel of ``name``: True unless the whole channel is masked."""
    mask = masks.get_mask(model, name)
    channels = masks.weight(model, name).shape[1]
    if mask is None:
        return torch.ones(channels, dtype=torch.bool)
    return mask.transpose(0, 1).reshape(channels, -1).bool().any(dim=1).cpu()


def thinet_order(g: torch.Tensor, alive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ThiNet's greedy: remove, one at a time, the channel that least increases the error.

    Returns the channels in removal order and the relative error ``|sum_{c in T} y_c|^2 /
    |sum_c y_c|^2`` after each removal (``g`` from :func:`channel_gram`).
    """
    gram, left = g.double().cpu().numpy(), alive.cpu().numpy().copy()
    total = max(float(gram[left][:, left].sum()), 1e-300)
    cross = np.zeros(len(left))  # sum over the removed set T of G[t, c]
    diagonal, error = gram.diagonal().copy(), 0.0
    order, relative = [], []
    for _ in range(int(left.sum())):
        candidate = np.where(left, error + 2 * cross + diagonal, np.inf)
        c = int(np.argmin(candidate))
        error = float(candidate[c])
        cross += gram[c]
        left[c] = False
        order.append(c)
        relative.append(error / total)
    return torch.tensor(order, dtype=torch.long), torch.tensor(relative, dtype=torch.float64)


class _InputCriterion(GroupCriterion):
    """Chooses a layer's input channels to reconstruct its output (``input`` pattern)."""

    needs_data = True
    supported_patterns = ("input",)

    def __init__(self, batches: int | None = None, refit: bool = True, damp: float = 1e-6):
        self.batches, self.refit, self.damp = batches, refit, damp

    def _grams(self, model, names, context):
        found = context.state["reconstruction"] = {}
        for n in names:
            gram, rows = input_gram(model, n, context, self.batches)
            weight = masks.weight(model, n).detach()
            found[n] = (gram, channel_gram(weight, gram), input_alive(model, n), rows)
        return found

    def _kept(self, keep: torch.Tensor) -> torch.Tensor:
        return keep.transpose(0, 1).reshape(keep.shape[1], -1).any(dim=1).cpu()

    def _ridge(self, matrix: torch.Tensor) -> torch.Tensor:
        """``matrix`` plus a small multiple of its mean diagonal, for a stable solve."""
        lam = self.damp * matrix.diagonal().mean().clamp_min(1e-12)
        return matrix + lam * torch.eye(len(matrix), dtype=matrix.dtype)


@register("criterion", "thinet", section="3.3")
class ThiNet(_InputCriterion):
    """ThiNet (Luo et al. 2017): greedy channel selection from the next layer's statistics.

    A layer's output is ``y = sum_c y_c``, one term per input channel (filter ``c`` of the
    layer before).  Channels are removed greedily, each time the one whose removal least
    increases ``||sum_{c in T} y_c||^2`` over the data; the score is the relative error
    after its removal (running maximum, so scores compare across layers).  Changes weights
    (``refit=True``, as in the paper): the kept channels are rescaled by the least-squares
    factors ``s`` minimising ``||y - sum_{c kept} s_c y_c||^2``.  Pattern: ``input``.
    """

    name = "thinet"

    def group_scores(self, model, names, pattern, context):
        out = {}
        for n, (_, g, alive, _) in self._grams(model, names, context).items():
            order, relative = thinet_order(g, alive)
            out[n] = ordered_scores(order, relative, len(alive))
        return out

    @torch.no_grad()
    def update_weights(self, model, new_masks, context):
        if not self.refit:
            return
        for n, keep in new_masks.items():
            _, g, alive, _ = context.state["reconstruction"][n]
            kept = self._kept(keep) & alive
            if bool((kept == alive).all()):
                continue
            target = g[kept][:, alive].sum(dim=1)  # <y_c, y> for the kept channels
            scale = torch.linalg.solve(self._ridge(g[kept][:, kept]), target)
            w = masks.dense_weight(model, n)
            view = w.view(w.shape[0], w.shape[1], -1)
            view[:, kept] *= scale.to(w.dtype).reshape(1, -1, 1)


@register("criterion", "lasso_channel", section="3.3")
class LassoChannel(_InputCriterion):
    """LASSO channel selection (He et al. 2017), then a least-squares refit.

    With ``y = sum_c beta_c y_c`` the layer's output written per input channel, He et al.
    solve ``min_beta ||y - sum_c beta_c y_c||^2 + lambda |beta|_1`` and raise ``lambda``
    until few enough channels have ``beta_c != 0``.  Score of a channel: the largest
    ``lambda`` (relative to the first) at which it is in the LASSO solution, from the exact
    LARS path, so the kept channels at any sparsity are those the LASSO keeps longest.
    Changes weights (``refit=True``): the kept columns are refit by least squares,
    ``W_K = W X X_K^T (X_K X_K^T)^-1``.  Pattern: ``input``.
    """

    name = "lasso_channel"

    def group_scores(self, model, names, pattern, context):
        out = {}
        for n, (_, g, alive, rows) in self._grams(model, names, context).items():
            out[n] = lasso_entry(g, alive, rows)
        return out

    @torch.no_grad()
    def update_weights(self, model, new_masks, context):
        if not self.refit:
            return
        for n, keep in new_masks.items():
            gram, _, alive, _ = context.state["reconstruction"][n]
            kept = self._kept(keep) & alive
            if bool((kept == alive).all()):
                continue
            w = masks.dense_weight(model, n)
            flat = masks.weight(model, n).detach().reshape(w.shape[0], -1).double()
            cols = kept.repeat_interleave(flat.shape[1] // len(kept))
            refit = torch.linalg.solve(self._ridge(gram[cols][:, cols]), (flat @ gram[:, cols]).T)
            w.view(w.shape[0], -1)[:, cols] = refit.T.to(w.dtype)


def lasso_entry(g: torch.Tensor, alive: torch.Tensor, rows: int) -> torch.Tensor:
    """For each channel, the largest LASSO ``lambda`` (over the first one) where it is active.

    ``g`` is the channel Gram matrix; the target is the full output, so ``X^T y = G 1``.
    Channels that never enter score 0, dead ones ``-inf``.
    """
    # imported here: scikit-learn takes seconds to import, and every process that imports
    # the library (DDP workers included) would pay for it
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import lars_path_gram

    idx = torch.nonzero(alive).flatten()
    sub = g[idx][:, idx].numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # collinear channels at the end
        alphas, _, coefs = lars_path_gram(
            sub.sum(axis=1), sub, n_samples=max(rows, 1), method="lasso"
        )
    active = np.abs(coefs) > 0
    entered = np.where(active.any(axis=1), active.argmax(axis=1), -1)
    top = alphas[0] if alphas[0] > 0 else 1.0
    value = np.where(entered >= 0, alphas[np.maximum(entered - 1, 0)] / top, 0.0)
    out = torch.full((len(alive),), -math.inf, dtype=torch.float64)
    out[idx] = torch.from_numpy(value.astype(np.float64))
    return out


# --- NISP -------------------------------------------------------------------------------


def inf_fs(features: torch.Tensor, alpha: float = 0.5, factor: float = 0.9) -> torch.Tensor:
    """Infinite feature selection (Roffo et al. 2015): one score per column of ``features``.

    Affinity ``A_ij = alpha max(s_i, s_j) + (1 - alpha)(1 - |rho_ij|)`` with ``s`` the
    standard deviations scaled to [0, 1] and ``rho`` the Pearson correlation (a constant
    feature counts as fully correlated with everything).  Scores are the row sums of
    ``sum_{l >= 1} (r A)^l = (I - r A)^-1 - I`` with ``r = factor / spectral_radius(A)``:
    the weight of every path through the feature graph.
    """
    x = features.double()
    x = x - x.mean(dim=0)
    std = x.pow(2).mean(dim=0).sqrt()
    constant = std <= 1e-12 * std.max().clamp_min(1e-300)
    unit = x / torch.where(constant, torch.ones_like(std), std)
    rho = (unit.T @ unit) / len(x)
    rho[constant] = 1.0
    rho[:, constant] = 1.0
    spread = std / std.max().clamp_min(1e-300)
    a = alpha * torch.maximum(spread.reshape(-1, 1), spread.reshape(1, -1))
    a = a + (1 - alpha) * (1 - rho.abs().clamp(max=1))
    radius = torch.linalg.eigvalsh(a).abs().max().clamp_min(1e-300)
    eye = torch.eye(len(a), dtype=a.dtype)
    paths = torch.linalg.inv(eye - factor / radius * a) - eye
    return paths.sum(dim=1)


@register("criterion", "nisp", section="3.3")
class NISP(_UnitCriterion):
    """Neuron importance score propagation, NISP (Yu et al. 2018).

    The units of the final response layer (the inputs of the classifier) are ranked from
    data by infinite feature selection (:func:`inf_fs`); their importance flows back
    through the network, ``s_l = |W_{l+1}|^T s_{l+1}``, summing a unit's outgoing weights
    over the positions a flattened feature map gives it.  Classifier outputs score 1.
    ``final_scores`` replaces the data-driven ranking of the final response layer.
    Pattern: ``channel``; the layers must form a chain (next Linear/Conv in module order,
    or ``next_layers``).
    """

    name = "nisp"

    def __init__(
        self,
        batches: int | None = None,
        next_layers: dict | None = None,
        final_scores: torch.Tensor | None = None,
    ) -> None:
        super().__init__(batches)
        self.next_layers, self.final_scores = next_layers, final_scores

    @property
    def needs_data(self) -> bool:
        """Data only serve the final layer's ranking, which ``final_scores`` can give."""
        return self.final_scores is None

    def group_scores(self, model, names, pattern, context):
        chain = default_targets(model)
        if any(n not in chain for n in names):
            raise ValueError(f"nisp scores Linear/Conv weights of {chain}, got {names}")
        classifier = chain[-1]
        found = links(model, chain[:-1], self.next_layers, self.name)
        scores = {classifier: torch.ones(masks.weight(model, classifier).shape[0]).double()}
        if len(chain) > 1:
            scores[chain[-2]] = self._final_response(model, found[chain[-2]], context)
        for n in reversed(chain[:-2]):
            link = found[n]
            outgoing = masks.weight(model, link.target).detach().double().abs()
            s_next = scores[link.target]
            outgoing = outgoing.reshape(outgoing.shape[0], link.units, -1)
            scores[n] = torch.einsum("ojk,o->j", outgoing, s_next)
        return {n: scores[n] for n in names}

    def _final_response(self, model, link: Link, context) -> torch.Tensor:
        """Importance of each unit of the final response layer (summed over its positions)."""
        if self.final_scores is not None:
            return torch.as_tensor(self.final_scores, dtype=torch.float64)
        reader = module_of(model, link.target)
        rows: list[torch.Tensor] = []

        def hook(key, inputs, output):
            rows.append(inputs.detach().reshape(len(inputs), -1).double())

        with evaluating(model), torch.no_grad(), forward_hooks({"frl": reader}, hook):
            for x, _ in context.batches(self.batches, labels=False):
                model(x)
        per_feature = inf_fs(torch.cat(rows))
        return per_feature.reshape(link.units, -1).sum(dim=1)
