"""The contract every registered criterion, budget, pattern and training method keeps.

Parametrized over the registry itself, so a new method is checked with no edit here:
exact counts, no revival, dense layers kept, deterministic results (ties included), N:M
where the method supports it, and no side effects on BatchNorm statistics or the global
random state.  Method-specific set-ups (a training-time score tracker, an input shape) are
the only per-name entries, and a test checks that they name registered methods.
"""

import copy
import math

import pytest
import torch
from torch import nn

import sparsity_lab as sl
from sparsity_lab import masks, patterns, registry
from sparsity_lab.criteria.first_order import ScoreTracker
from sparsity_lab.patterns import count
from sparsity_lab.train import fit

X = torch.randn(64, 12, generator=torch.Generator().manual_seed(0))
Y = (X[:, 0] + X[:, 1] > 0).long() + 2 * (X[:, 2] > 0).long()
PRUNED = ["0.weight", "2.weight", "5.weight"]


def mlp() -> nn.Module:
    """Three Linear layers with a BatchNorm between the second and the classifier."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(),
        nn.Linear(16, 4),
    )  # fmt: skip
    model.input_shape = (12,)  # synflow feeds an input of ones of this shape
    with torch.no_grad():  # BatchNorm statistics that a forward pass in train mode would move
        model[3].running_mean.uniform_(-1, 1)
        model[3].running_var.uniform_(0.5, 2)
    model.train()
    return model


# --- criteria -------------------------------------------------------------------------------

CRITERIA = registry.available("criterion")
# Criteria that fold a removed unit into the layer that reads it cannot prune the output
# layer, which has no reader.
MERGES = {"activation_variance", "correlation_merge", "neuron_merge"}
# Search criteria at sizes that finish in seconds.
OPTIONS = {"amc": {"episodes": 6}, "evolutionary": {"population": 6, "generations": 3}}
TRACKED = {"karnin", "movement", "soft_movement"}  # scores accumulated in training


def criterion_options(name: str, model: nn.Module) -> dict:
    """Options to prune: small searches, or the tracker a short training filled."""
    if name not in TRACKED:
        return dict(OPTIONS.get(name, {}))
    tracker_type = registry.get(name).tracker_type
    tracker = tracker_type()
    with torch.random.fork_rng():
        data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=16)
        trained = copy.deepcopy(model)
        fit(trained, data, epochs=1, callbacks=[tracker], progress=False, seed=0)
    assert isinstance(tracker, ScoreTracker) and tracker.scores
    return {"tracker": tracker}


def first_pattern(name: str) -> str:
    supported = registry.get(name).supported_patterns
    return "unstructured" if supported is None else supported[0]


def prune(model, name, sparsity, pattern, **kwargs):
    targets = PRUNED[:-1] if name in MERGES else PRUNED
    return sl.prune(
        model,
        name,
        sparsity,
        pattern=pattern,
        budget="uniform",
        data=(X, Y),
        targets=targets,
        **criterion_options(name, model),
        **kwargs,
    )


def test_the_set_ups_name_registered_criteria():
    assert (MERGES | set(OPTIONS) | TRACKED) <= set(CRITERIA)


@pytest.mark.parametrize("name", CRITERIA)
def test_criterion_keeps_dense_layers_prunes_whole_groups_and_never_revives(name):
    pattern = patterns.get(first_pattern(name))
    model = mlp()
    prune(model, name, 0.3, pattern, dense=["2.weight"])
    found = masks.masks(model)
    assert found and "2.weight" not in found  # dense: counted in the target, never masked
    counted = sum(masks.weight(model, n).numel() for n in found) + 16 * 16
    zeros = 0
    for n, keep in found.items():
        size = pattern.group_size(tuple(keep.shape))
        pruned = int((~keep.bool()).sum())
        assert pruned % size == 0, f"{n}: {pruned} zeros is not a number of whole groups"
        assert torch.all(masks.weight(model, n)[~keep.bool()] == 0), n
        zeros += pruned
    widest = max(pattern.group_size(tuple(k.shape)) for k in found.values())
    criterion = registry.get(name)
    if criterion.searches_layer_sparsities:  # a bound on the layers it prunes, not exact
        assert zeros >= count(0.3, counted - 16 * 16)
    else:  # exact up to a group per layer: the dense layer's share moved to the others
        assert abs(zeros - 0.3 * counted) <= len(found) * widest
    if criterion.prunes_once:
        with pytest.raises(ValueError, match="once"):
            prune(model, name, 0.4, pattern, dense=["2.weight"])
        return
    before = {n: k.clone() for n, k in found.items()}
    prune(model, name, 0.4, pattern, dense=["2.weight"])
    after = masks.masks(model)
    for n, keep in after.items():
        assert not torch.any(keep.bool() & ~before[n].bool()), f"{name} revived {n}"
    if not criterion.searches_layer_sparsities:  # a search may already be within its bound
        assert sum(int((~k.bool()).sum()) for k in after.values()) > zeros


@pytest.mark.parametrize("name", CRITERIA)
def test_criterion_meets_the_uniform_target_exactly(name):
    pattern = patterns.get(first_pattern(name))
    model = mlp()
    prune(model, name, 0.5, pattern)
    for n, keep in masks.masks(model).items():
        groups = pattern.n_groups(tuple(keep.shape))
        size = keep.numel() // groups
        zeros = int((~keep.bool()).sum())
        if registry.get(name).searches_layer_sparsities:
            assert zeros % size == 0, n  # its own layer sparsities, in whole groups
        else:
            assert zeros == count(0.5, groups) * size, n


@pytest.mark.parametrize("name", CRITERIA)
def test_criterion_is_deterministic_and_leaves_batchnorm_and_the_rng_alone(name):
    pattern = patterns.get(first_pattern(name))
    first, second = mlp(), mlp()
    buffers = {k: v.clone() for k, v in first.named_buffers()}
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    prune(first, name, 0.5, pattern, seed=3)
    assert torch.equal(torch.get_rng_state(), rng), f"{name} draws from the global generator"
    prune(second, name, 0.5, pattern, seed=3)
    for key, value in buffers.items():
        got = dict(first.named_buffers())[key]
        assert torch.equal(got, value), f"{name} changed the buffer {key}"
    assert first.training, f"{name} left the model in eval mode"
    a, b = masks.masks(first), masks.masks(second)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[n], b[n]) for n in a)


NM_CRITERIA = [
    n
    for n in CRITERIA
    if registry.get(n).supported_patterns is None or "nm" in registry.get(n).supported_patterns
]


@pytest.mark.parametrize("name", [n for n in NM_CRITERIA if n not in OPTIONS])
def test_criterion_supports_nm_exactly_where_it_says_it_does(name):
    model = mlp()
    prune(model, name, None, patterns.get("2:4"))
    for n, keep in masks.masks(model).items():
        per_group = keep.reshape(keep.shape[0], -1, 4).sum(dim=-1)
        assert torch.all(per_group == 2), n


@pytest.mark.parametrize("name", CRITERIA)
def test_criterion_refuses_the_patterns_it_does_not_support(name):
    supported = registry.get(name).supported_patterns
    if supported is None:
        pytest.skip(f"{name} supports every pattern")
    other = next(p for p in ("unstructured", "channel", "input", "nm") if p not in supported)
    with pytest.raises(ValueError, match=f"{name} supports the patterns"):
        prune(mlp(), name, None if other == "nm" else 0.5, patterns.get(other))


# --- budgets --------------------------------------------------------------------------------

SHAPES = {"a": (16, 12), "b": (32, 16), "c": (4, 32), "d": (8, 4, 3, 3)}


@pytest.mark.parametrize("budget", registry.available("budget"))
@pytest.mark.parametrize("pattern", ["unstructured", "channel", "block:2x2"])
def test_budget_meets_the_target_with_dense_layers_kept(budget, pattern):
    pat = patterns.get(pattern)
    shapes = {n: s for n, s in SHAPES.items() if not (pattern == "block:2x2" and len(s) > 2)}
    gen = torch.Generator().manual_seed(0)
    scores = {n: pat.group_scores(torch.rand(s, generator=gen)) for n, s in shapes.items()}
    plan = sl.budgets.allocate(budget, shapes, 0.6, pattern=pat, dense=["a"], scores=scores)
    assert plan["a"] == 0
    assert all(0 <= s <= 1 for s in plan.values())
    zeros = sum(
        count(plan[n], pat.n_groups(s)) * (math.prod(s) // pat.n_groups(s))
        for n, s in shapes.items()
    )
    total = sum(math.prod(s) for s in shapes.values())
    group = max(math.prod(s) // pat.n_groups(s) for s in shapes.values())
    # exact up to one group per layer (groups are the unit a budget can move)
    assert abs(zeros - 0.6 * total) <= len(shapes) * group
    again = sl.budgets.allocate(budget, shapes, 0.6, pattern=pat, dense=["a"], scores=scores)
    assert again == plan


# --- patterns -------------------------------------------------------------------------------

PATTERN_SHAPES = {"kernel": (6, 4, 3, 3), "head": (24, 8), "embedding": (10, 6)}
PATTERN_SPECS = {"head": "head:4"}


@pytest.mark.parametrize("name", registry.available("pattern"))
def test_pattern_prunes_exactly_deterministically_and_only_shrinks(name):
    pat = patterns.get(PATTERN_SPECS.get(name, name))
    shape = PATTERN_SHAPES.get(name, (8, 16))
    n_groups = pat.n_groups(shape)
    n_prune = n_groups // 2 if name != "layer" else 1
    if pat.fixed_sparsity is not None:
        n_prune = None
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(shape, generator=gen)
    keep = pat.prune_groups(scores, n_prune)
    assert keep.shape == shape and keep.dtype == torch.bool
    expected = pat.fixed_sparsity * math.prod(shape) if n_prune is None else None
    zeros = int((~keep).sum())
    if expected is None:
        assert zeros == n_prune * pat.group_size(shape)
    else:
        assert zeros == expected
    ties = torch.ones(shape)
    assert torch.equal(pat.prune_groups(ties, n_prune), pat.prune_groups(ties.clone(), n_prune))
    if n_prune is not None and n_prune < n_groups:
        more = pat.prune_groups(torch.rand(shape, generator=gen), n_prune + 1, prior=keep)
        assert not torch.any(more & ~keep)  # a group pruned before stays pruned


# --- training methods -----------------------------------------------------------------------

TRAINING_OPTIONS = {
    "acdc": {"warmup_epochs": 1, "phase_epochs": 1, "final_epochs": 1},
    "cram": {"sparsities": [0.5]},
    "cram_plus": {"sparsities": [0.5]},
    "dpf": {"update_frequency": 2},
    "dsr": {"update_frequency": 2},
    "early_bird": {"window": 1, "epsilon": 1.0},
    "gmp": {"frequency": 2},
    "imp": {"rounds": 2},
    "rigl": {"update_frequency": 2},
    "set": {"update_frequency": 2},
    "snfs": {"update_frequency": 2},
    "topkast": {"update_frequency": 2},
}
# Methods whose final model is not masked to the target by design: CrAM trains a dense
# model robust to pruning (its compression is applied after training).
DENSE_RESULT = {"cram", "cram_plus"}


def test_the_training_set_ups_name_registered_methods():
    assert (set(TRAINING_OPTIONS) | DENSE_RESULT) <= set(registry.available("training"))


def train(name: str) -> nn.Module:
    model = mlp()
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X, Y), batch_size=16, generator=torch.Generator()
    )
    data.generator.manual_seed(0)
    method = registry.get(name)(0.5, dense=["2.weight"], **TRAINING_OPTIONS.get(name, {}))
    method.fit(model, data, epochs=4, lr=0.05, seed=0, progress=False)
    return model


@pytest.mark.parametrize("name", registry.available("training"))
def test_training_method_ends_at_its_target_with_dense_layers_kept(name):
    model = train(name)
    found = masks.masks(model)
    assert "2.weight" not in found
    if name in DENSE_RESULT:
        return
    zeros = sum(int((~k.bool()).sum()) for k in found.values())
    total = sum(masks.weight(model, n).numel() for n in PRUNED)
    assert zeros == count(0.5, total) or abs(zeros / total - 0.5) < 0.02, (zeros, total)
    for n, keep in found.items():
        assert torch.all(masks.weight(model, n)[~keep.bool()] == 0), n


@pytest.mark.parametrize("name", registry.available("training"))
def test_training_method_is_deterministic(name):
    a, b = train(name), train(name)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), f"{name}: {key}"


# What a search reports after running, by design (not state the next call reads).
REPORTS = {"history", "result", "evaluations"}


@pytest.mark.parametrize("name", CRITERIA)
def test_criterion_keeps_no_state_between_calls(name):
    """State worked out while scoring travels in the call's Context, so one criterion object
    can prune two models in turn (or the same model twice) without one call seeing the other."""
    pattern = patterns.get(first_pattern(name))
    model = mlp()
    options = criterion_options(name, model)
    tracker = options.pop("tracker", None)  # a prune option, the rest the constructor's
    criterion = sl.criteria.get(name, **options)
    before = {k: v for k, v in vars(criterion).items() if k.lstrip("_") not in REPORTS}
    targets = PRUNED[:-1] if name in MERGES else PRUNED
    sl.prune(model, criterion, 0.5, pattern=pattern, budget="uniform", data=(X, Y),
             targets=targets, tracker=tracker)  # fmt: skip
    after = {k: v for k, v in vars(criterion).items() if k.lstrip("_") not in REPORTS}
    assert after.keys() == before.keys(), f"{name} added {after.keys() - before.keys()}"
    for key, value in before.items():
        assert after[key] is value, f"{name} replaced {key}"
