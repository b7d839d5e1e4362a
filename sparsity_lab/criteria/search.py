"""Search-based criteria (survey section 3.8): try masks, keep what works.

* ``amc``: a small agent learns the sparsity of each layer under a FLOPs budget (He et al.
  2018), trained by policy gradient on the accuracy of the pruned network;
* ``evolutionary``: a genetic algorithm evolves the masks themselves (Whitley et al.
  1990), for tiny networks.

Both evaluate candidates without changing the model: the candidate weights go through
:func:`torch.func.functional_call` on a plain copy.

A search *selects* on its data (``data=`` of :func:`sparsity_lab.prune`, the reward or the
fitness), so its own score of the winner is optimistic.  Pass ``eval_data`` (another
split, e.g. the test set) to score the chosen masks once on data the search never saw:
``result["eval_accuracy"]`` and ``result["eval_loss"]`` are computed there, and only there.
"""

from __future__ import annotations

import math
import pickle
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .. import masks
from ..accounting import positions
from ..patterns import check_sparsity, count, prune_lowest
from ..registry import register
from .base import Context, Criterion

__all__ = ["AMC", "Evolutionary", "constrained_keep"]


def _plain_copy(model: nn.Module) -> nn.Module:
    """A copy without masks (masked entries are zero in it), for functional calls."""
    copy = pickle.loads(pickle.dumps(model))
    masks.squash(copy)
    return copy.eval()


def _batches(context: Context, limit: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches = list(context.batches(limit))
    if not batches:
        raise ValueError("the data yielded no batches; pass data=(inputs, targets) or a loader")
    return batches


def _check_eval_data(eval_data: Any, context: Context) -> None:
    """Refuse to report a search's winner on the data that chose it."""
    if eval_data is not None and eval_data is context.data:
        raise ValueError(
            "eval_data is the data the search selects on; pass another split (e.g. the test "
            "set) so that the reported score is not the one the search maximised"
        )


def _held_out(
    net: nn.Module, weights: dict[str, torch.Tensor], eval_data: Any, loss_fn
) -> dict[str, float]:
    """``{"eval_accuracy", "eval_loss"}`` of the chosen weights on every batch of
    ``eval_data``, or ``{}`` without it."""
    if eval_data is None:
        return {}
    batches = _batches(Context(data=eval_data), None)
    accuracy, loss = _evaluate(net, weights, batches, loss_fn)
    return {"eval_accuracy": accuracy, "eval_loss": loss}


@torch.no_grad()
def _evaluate(
    net: nn.Module,
    weights: dict[str, torch.Tensor],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    loss_fn,
) -> tuple[float, float]:
    """(accuracy, mean loss) of ``net`` computing with ``weights`` in place of its own."""
    correct = seen = 0
    loss = 0.0
    for x, y in batches:
        out = functional_call(net, weights, (x,))
        loss += float(loss_fn(out, y)) * len(y)
        correct += int((out.argmax(1) == y).sum())
        seen += len(y)
    return correct / seen, loss / seen


# --- AMC ------------------------------------------------------------------------------------


def constrained_keep(
    proposal: float,
    layer: int,
    sizes: list[int],
    flops_per_weight: list[int],
    kept_so_far: list[int],
    budget: float,
    max_sparsity: float,
) -> int:
    """Weights to keep in ``layer`` so that the FLOPs budget can still be met (AMC's rule).

    ``proposal`` is the agent's sparsity for the layer.  The later layers are assumed to
    be pruned as hard as allowed (``max_sparsity``); if even then the budget would be
    exceeded, the layer is pruned harder than proposed.  Each layer keeps at least
    ``1 - max_sparsity`` of its weights.  ``flops_per_weight`` is 2 x the positions at
    which a weight is applied; FLOPs = sum of kept weights x flops_per_weight.
    """
    least = [n - count(max_sparsity, n) for n in sizes]
    used = sum(k * f for k, f in zip(kept_so_far, flops_per_weight, strict=False))
    rest = sum(least[j] * flops_per_weight[j] for j in range(layer + 1, len(sizes)))
    room = math.floor((budget - used - rest) / flops_per_weight[layer])
    wanted = sizes[layer] - count(min(proposal, max_sparsity), sizes[layer])
    return max(least[layer], min(wanted, room))


@register("criterion", "amc", section="3.8")
class AMC(Criterion):
    """AutoML for model compression, AMC (He et al. 2018): an agent picks layer sparsities.

    Rule: layer by layer, a policy sees the layer's state (index, fan-in and fan-out,
    its share of the FLOPs, the FLOPs reduced so far and still to come, the previous
    action) and proposes a sparsity ``a_t = max_sparsity * sigmoid(mu_theta(state) + sigma
    * eps)``; the action is limited so that the FLOPs budget stays reachable (if the
    remaining layers pruned at ``max_sparsity`` would still exceed it, prune this one
    harder), so every episode meets the constraint.  Each layer is then pruned by
    magnitude, and the reward is the accuracy of the pruned network on the calibration
    batches (no fine-tuning).  The policy is a linear map trained by REINFORCE with a
    moving-average baseline (He et al. use DDPG; a policy gradient is enough for a few
    layers).  The best episode's sparsities are applied.

    ``sparsity`` is the fraction of the pruned layers' dense forward FLOPs to remove: the
    sparse FLOPs (``2 * nonzeros * positions`` per layer, as :func:`sparsity_lab.report`
    counts them) stay at or below ``(1 - sparsity)`` times the dense FLOPs.  The agent is
    the budget, so ``budget`` is ignored.  Supports: unstructured.  ``history`` keeps each
    episode's reward, FLOPs and sparsities; ``result`` the best episode's (its ``reward``
    is on the calibration data, which chose it).  ``eval_data`` (another split than the
    calibration data) adds ``result["eval_accuracy"]`` and ``result["eval_loss"]``: the
    chosen masks scored once on data the search never saw.
    """

    name = "amc"
    supported_patterns = ("unstructured",)
    searches_layer_sparsities = True
    needs_data = True

    def __init__(
        self,
        episodes: int = 200,
        lr: float = 0.05,
        sigma: float = 0.5,
        max_sparsity: float = 0.98,
        batches: int = 2,
        baseline_decay: float = 0.9,
        eval_data: Any = None,
    ) -> None:
        if episodes < 1:
            raise ValueError(f"episodes must be a positive integer, got {episodes}")
        if not 0 < max_sparsity < 1:
            raise ValueError(f"max_sparsity must be in (0, 1), got {max_sparsity}")
        if not sigma > 0:
            raise ValueError(f"sigma (the exploration noise) must be positive, got {sigma}")
        self.episodes, self.lr, self.sigma = int(episodes), lr, sigma
        self.max_sparsity, self.batches = max_sparsity, int(batches)
        self.baseline_decay = baseline_decay
        self.eval_data = eval_data
        self.history: list[dict[str, Any]] = []
        self.result: dict[str, Any] = {}

    def _state(self, t, sizes, shapes, flops, kept, previous):
        total = sum(n * f for n, f in zip(sizes, flops, strict=True))
        done = sum(k * f for k, f in zip(kept, flops, strict=False))
        reduced = sum(sizes[j] * flops[j] for j in range(t)) - done
        rest = sum(sizes[j] * flops[j] for j in range(t + 1, len(sizes)))
        return torch.tensor(
            [
                t / max(1, len(sizes) - 1),
                math.log(shapes[t][1] if len(shapes[t]) > 1 else 1) / 10,
                math.log(shapes[t][0]) / 10,
                sizes[t] * flops[t] / total,
                reduced / total,
                rest / total,
                previous,
                1.0,  # bias
            ]
        )

    def target(self, pattern, sparsity):
        """The fraction of the dense FLOPs to remove (not a weight sparsity)."""
        if sparsity is None:
            raise ValueError("amc needs sparsity: the fraction of FLOPs to remove, in [0, 1)")
        check_sparsity(sparsity)
        return float(sparsity)

    def choose(self, model, names, request, context):
        """Search layer sparsities under the FLOPs budget; the best episode's magnitude
        masks."""
        sparsity = request.sparsity
        _check_eval_data(self.eval_data, context)
        names = [n for n in names if n not in request.dense]
        batches = _batches(context, self.batches)
        net = _plain_copy(model)
        weights = {n: masks.weight(model, n).detach().clone() for n in names}
        priors = request.priors
        shapes = [tuple(weights[n].shape) for n in names]
        sizes = [w.numel() for w in weights.values()]
        pos = positions(net, batches[0][0][:1], names)
        flops = [2 * max(1, pos.get(n, 1)) for n in names]
        dense_flops = sum(n * f for n, f in zip(sizes, flops, strict=True))
        flop_budget = (1 - sparsity) * dense_flops
        least = sum(
            (n - count(self.max_sparsity, n)) * f for n, f in zip(sizes, flops, strict=True)
        )
        if least > flop_budget:
            raise ValueError(
                f"even at max_sparsity={self.max_sparsity} in every layer the FLOPs are "
                f"{least / dense_flops:.3f} of dense, above the budget {1 - sparsity:.3f}; "
                f"raise max_sparsity or ask for a lower sparsity"
            )
        # rank of each weight by magnitude (0 = largest): keeping k weights is rank < k
        ranks = {}
        for n, w in weights.items():
            order = torch.argsort(w.abs().flatten(), descending=True, stable=True)
            r = torch.empty_like(order)
            r[order] = torch.arange(order.numel())
            ranks[n] = r.reshape(w.shape)

        gen = torch.Generator().manual_seed(context.seed)
        with torch.random.fork_rng(devices=[]):  # its draws are zeroed: leave the user's RNG
            policy = nn.Linear(8, 1)
        with torch.no_grad():
            policy.weight.zero_()
            policy.bias.zero_()  # start at sparsity max_sparsity / 2 everywhere
        opt = torch.optim.Adam(policy.parameters(), lr=self.lr)
        baseline, best = None, None
        self.history = []
        for episode in range(self.episodes):
            kept: list[int] = []
            log_prob = 0.0
            previous = 0.0
            for t in range(len(names)):
                mu = policy(self._state(t, sizes, shapes, flops, kept, previous)).squeeze()
                eps = torch.randn((), generator=gen)
                pre = mu.detach() + self.sigma * eps
                # Gaussian log-density of the sample, up to a constant
                log_prob = log_prob - (pre - mu) ** 2 / (2 * self.sigma**2)
                proposal = self.max_sparsity * float(torch.sigmoid(pre))
                k = constrained_keep(
                    proposal, t, sizes, flops, kept, flop_budget, self.max_sparsity
                )
                kept.append(k)
                previous = 1 - k / sizes[t]
            trial = {n: weights[n] * (ranks[n] < k) for n, k in zip(names, kept, strict=True)}
            accuracy, _ = _evaluate(net, trial, batches, context.loss_fn)
            reward = accuracy
            baseline = reward if baseline is None else baseline
            opt.zero_grad()
            (-(reward - baseline) * log_prob).backward()
            opt.step()
            baseline = self.baseline_decay * baseline + (1 - self.baseline_decay) * reward
            used = sum(k * f for k, f in zip(kept, flops, strict=True))
            row = {
                "episode": episode,
                "reward": reward,
                "flops": used / dense_flops,
                **{n: 1 - k / s for n, k, s in zip(names, kept, sizes, strict=True)},
            }
            self.history.append(row)
            if best is None or reward > best[0]:
                best = (reward, kept)
        reward, kept = best
        new_masks = {}
        for n, k in zip(names, kept, strict=True):
            keep = ranks[n] < k
            if priors[n] is not None:
                keep = keep & priors[n].bool()  # out of place: expand may return a view
            new_masks[n] = keep
        used = sum(int(m.sum()) * f for m, f in zip(new_masks.values(), flops, strict=True))
        self.result = {
            "reward": reward,
            "flops": used / dense_flops,
            "flop_budget": 1 - sparsity,
            "layer_sparsity": {n: 1 - k / s for n, k, s in zip(names, kept, sizes, strict=True)},
        }
        chosen = {n: weights[n] * keep for n, keep in new_masks.items()}
        self.result.update(_held_out(net, chosen, self.eval_data, context.loss_fn))
        return new_masks


# --- evolutionary -------------------------------------------------------------------------


@register("criterion", "evolutionary", section="3.8")
class Evolutionary(Criterion):
    """Genetic search over masks (Whitley et al. 1990), for tiny networks.

    Rule: a population of masks, each with exactly the budget's number of pruned groups
    per layer (``budget`` spreads ``sparsity`` over layers from the magnitudes), evolves
    for ``generations``: fitness is minus the loss of the masked network on the
    calibration batches; parents are chosen by tournaments of ``tournament``; a child keeps
    the groups both parents keep and fills up with groups drawn at random from those only
    one parent keeps (so its counts stay exact); a mutation swaps a kept and a pruned group
    of a layer with probability ``mutation`` per layer; the ``elite`` best masks survive
    unchanged.  The population starts with the magnitude mask and random masks, so the
    result is never worse than magnitude pruning on the calibration data.  Supports:
    unstructured, channel, input, block, kernel.

    ``history`` keeps each generation's best and mean loss on the calibration (fitness)
    data; ``result["fitness_loss"]`` is the winner's.  ``eval_data`` (another split)
    adds ``result["eval_loss"]`` and ``result["eval_accuracy"]``: the winner scored once
    on data the search never saw, the number to report.
    """

    name = "evolutionary"
    supported_patterns = ("unstructured", "channel", "input", "block", "kernel")
    needs_data = True

    def __init__(
        self,
        population: int = 24,
        generations: int = 40,
        mutation: float = 0.5,
        tournament: int = 3,
        elite: int = 2,
        batches: int = 2,
        eval_data: Any = None,
    ) -> None:
        if population < 2 or generations < 1:
            raise ValueError(
                f"need population >= 2 and generations >= 1, got {population}, {generations}"
            )
        if not 0 <= mutation <= 1:
            raise ValueError(f"mutation is a probability in [0, 1], got {mutation}")
        if not 1 <= elite < population or tournament < 1:
            raise ValueError("need 1 <= elite < population and tournament >= 1")
        self.population, self.generations = int(population), int(generations)
        self.mutation, self.tournament, self.elite = mutation, int(tournament), int(elite)
        self.batches = int(batches)
        self.eval_data = eval_data
        self.history: list[dict[str, float]] = []
        self.result: dict[str, float] = {}

    def _tournament(self, pop: list, fit: list[float], gen: torch.Generator) -> dict:
        """The fittest of ``tournament`` members drawn at random."""
        idx = torch.randint(len(pop), (self.tournament,), generator=gen).tolist()
        return pop[max(idx, key=lambda i: fit[i])]

    def choose(self, model, names, request, context):
        """Evolve masks at the budget's per-layer counts; the best one."""
        pattern, dense = request.pattern, request.dense
        _check_eval_data(self.eval_data, context)
        batches = _batches(context, self.batches)
        net = _plain_copy(model)
        weights = {n: masks.weight(model, n).detach().clone() for n in names}
        priors = request.priors
        shapes = {n: tuple(w.shape) for n, w in weights.items()}
        magnitude = {
            n: pattern.group_scores(weights[n].abs(), request.reduction, priors[n])
            for n in names
            if n not in dense
        }
        layers = [n for n in names if n not in dense]
        n_groups = {n: pattern.n_groups(shapes[n]) for n in layers}
        n_prune = request.plan(shapes, magnitude)
        # groups pruned before stay pruned: they are never chosen as kept
        allowed = {n: torch.isfinite(magnitude[n]) for n in layers}
        gen = torch.Generator().manual_seed(context.seed)

        def random_genome() -> dict[str, torch.Tensor]:
            genome = {}
            for n in layers:
                noise = torch.rand(n_groups[n], generator=gen, dtype=torch.float64)
                noise[~allowed[n]] = -1.0
                genome[n] = prune_lowest(noise, n_prune[n])
            return genome

        def fitness(genome: dict[str, torch.Tensor]) -> float:
            self.evaluations += 1
            trial = dict(weights)
            for n in layers:
                trial[n] = weights[n] * pattern.expand(genome[n], shapes[n])
            return -_evaluate(net, trial, batches, context.loss_fn)[1]

        def crossover(a, b):
            child = {}
            for n in layers:
                both, either = a[n] & b[n], a[n] ^ b[n]
                keep_count = n_groups[n] - n_prune[n]
                need = keep_count - int(both.sum())
                pool = torch.nonzero(either).flatten()
                pick = pool[torch.randperm(pool.numel(), generator=gen)[:need]]
                g = both.clone()
                g[pick] = True
                child[n] = g
            return child

        def mutate(genome):
            for n in layers:
                if float(torch.rand((), generator=gen)) >= self.mutation:
                    continue
                on = torch.nonzero(genome[n]).flatten()
                off = torch.nonzero(~genome[n] & allowed[n]).flatten()
                if on.numel() and off.numel():
                    i = on[torch.randint(on.numel(), (), generator=gen)]
                    j = off[torch.randint(off.numel(), (), generator=gen)]
                    genome[n][i], genome[n][j] = False, True
            return genome

        start = {n: prune_lowest(magnitude[n], n_prune[n]) for n in layers}
        self.evaluations = 0  # fitness evaluations: the elites keep their scores
        pop = [start] + [random_genome() for _ in range(self.population - 1)]
        fit = [fitness(g) for g in pop]
        self.history = []
        for generation in range(self.generations):
            order = sorted(range(len(pop)), key=lambda i: -fit[i])
            self.history.append(
                {"generation": generation, "best": -fit[order[0]], "mean": -sum(fit) / len(fit)}
            )
            children = [pop[i] for i in order[: self.elite]]
            child_fit = [fit[i] for i in order[: self.elite]]
            while len(children) < self.population:
                a = self._tournament(pop, fit, gen)
                child = mutate(crossover(a, self._tournament(pop, fit, gen)))
                children.append(child)
                child_fit.append(fitness(child))
            pop, fit = children, child_fit
        best = pop[max(range(len(pop)), key=lambda i: fit[i])]
        self.history.append(
            {"generation": self.generations, "best": -max(fit), "mean": -sum(fit) / len(fit)}
        )
        new_masks = {}
        for n in layers:
            keep = pattern.expand(best[n], shapes[n])
            if priors[n] is not None:
                keep = keep & priors[n].bool()  # out of place: expand may return a view
            new_masks[n] = keep
        chosen = dict(weights)
        chosen.update({n: weights[n] * keep for n, keep in new_masks.items()})
        self.result = {"fitness_loss": -max(fit)}
        self.result.update(_held_out(net, chosen, self.eval_data, context.loss_fn))
        return new_masks
