"""``prune``: every pattern x budget on a CNN, options, repeated pruning and errors."""

import math
import warnings

import pytest
import torch
from helpers import mlp
from torch import nn

import sparsity_lab as sl


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 8)
        self.out = nn.Linear(8, 4)
        self.input_shape = (1, 4, 4)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.out(torch.relu(self.fc(x.flatten(1))))


NAMES = ["conv1.weight", "conv2.weight", "fc.weight", "out.weight"]


def test_default_targets_are_linear_and_conv_weights():
    assert sl.pruning.default_targets(SmallCNN()) == NAMES


@pytest.mark.parametrize("budget", ["global", "uniform", "er", "erk"])
@pytest.mark.parametrize("method", ["magnitude", "random"])
def test_unstructured_prune_hits_the_target_exactly(budget, method):
    model = sl.prune(SmallCNN(), method, 0.8, budget=budget)
    total = sum(sl.masks.weight(model, n).numel() for n in NAMES)
    zeros = sum(int((sl.masks.weight(model, n) == 0).sum()) for n in NAMES)
    assert zeros == math.floor(0.8 * total + 0.5)
    assert sl.sparsity(model) == zeros / total


@pytest.mark.parametrize("budget", ["global", "uniform", "erk"])
def test_channel_prune_removes_whole_filters_and_neurons(budget):
    model = sl.prune(SmallCNN(), "magnitude", 0.5, pattern="channel", budget=budget)
    for n in NAMES:
        w = sl.masks.weight(model, n).reshape(sl.masks.weight(model, n).shape[0], -1)
        rows_zero = (w == 0).all(dim=1)
        rows_kept = (w != 0).all(dim=1)
        assert torch.all(rows_zero | rows_kept), n
    assert abs(sl.sparsity(model) - 0.5) < 0.1


def test_nm_prune_with_exclusions():
    model = sl.prune(SmallCNN(), "magnitude", None, pattern="2:4", exclude=["conv1.weight"])
    assert not sl.masks.is_masked(model, "conv1.weight")
    for n in NAMES[1:]:
        w = sl.masks.weight(model, n)
        groups = w.movedim(1, -1).reshape(-1, 4)
        assert torch.all((groups != 0).sum(1) <= 2)
        assert torch.all(sl.masks.get_mask(model, n).movedim(1, -1).reshape(-1, 4).sum(1) == 2)


def test_nm_with_a_contradicting_sparsity_fails():
    with pytest.raises(ValueError, match="fixes the sparsity at 0.5"):
        sl.prune(SmallCNN(), "magnitude", 0.8, pattern="2:4", exclude=["conv1.weight"])


def test_nm_on_an_incompatible_layer_names_it():
    with pytest.raises(ValueError, match="conv1.weight"):
        sl.prune(SmallCNN(), "magnitude", 0.5, pattern="2:4")


def test_block_prune():
    model = sl.prune(
        SmallCNN(),
        "magnitude",
        0.5,
        pattern="block:4x4",
        budget="uniform",
        exclude=["conv1.weight"],
    )
    m = sl.masks.get_mask(model, "fc.weight").reshape(8, 256)
    tiles = m.reshape(2, 4, 64, 4).permute(0, 2, 1, 3).reshape(-1, 16)
    assert torch.all((tiles.sum(1) == 0) | (tiles.sum(1) == 16))


def test_dense_layers_stay_dense_and_the_total_holds():
    model = sl.prune(
        SmallCNN(), "magnitude", 0.7, budget="erk", dense=["conv1.weight", "out.weight"]
    )
    assert not sl.masks.is_masked(model, "conv1.weight")
    assert int((sl.masks.weight(model, "out.weight") == 0).sum()) == 0
    total = sum(sl.masks.weight(model, n).numel() for n in NAMES)
    assert sl.sparsity(model) == math.floor(0.7 * total + 0.5) / total


def test_repeated_pruning_continues_from_the_previous_mask():
    model = sl.prune(SmallCNN(), "random", 0.5, seed=1)
    first = {n: m.clone() for n, m in sl.masks.masks(model).items()}
    sl.prune(model, "random", 0.8, seed=2)  # another random draw: must not revive anything
    for n, m in sl.masks.masks(model).items():
        assert torch.all(m <= first[n])
    assert sl.sparsity(model) == pytest.approx(0.8, abs=1e-3)


def test_random_is_seeded():
    a = sl.prune(SmallCNN(), "random", 0.6, seed=3)
    b = sl.prune(SmallCNN(), "random", 0.6, seed=3)
    c = sl.prune(SmallCNN(), "random", 0.6, seed=4)
    assert all(torch.equal(sl.masks.get_mask(a, n), sl.masks.get_mask(b, n)) for n in NAMES)
    assert not all(torch.equal(sl.masks.get_mask(a, n), sl.masks.get_mask(c, n)) for n in NAMES)


def test_pruned_model_trains_with_masks_intact():
    model = sl.prune(SmallCNN(), "magnitude", 0.9, dense_grad=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x, y = torch.randn(8, 1, 4, 4), torch.randint(0, 4, (8,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert sl.sparsity(model) >= 0.9


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(method="magnitud", sparsity=0.5), KeyError, "Did you mean 'magnitude'"),
        (dict(method="magnitude", sparsity=1.2), ValueError, r"\[0, 1\)"),
        (dict(method="magnitude", sparsity=0.5, budget="globl"), KeyError, "'global'"),
        (dict(method="magnitude", sparsity=0.5, pattern="diagonal"), ValueError, "pattern"),
        (dict(method="magnitude", sparsity=0.5, exclude=["fc.bias"]), ValueError, "not pruning"),
    ],
)
def test_bad_arguments_fail_clearly(kwargs, error, match):
    with pytest.raises(error, match=match):
        sl.prune(SmallCNN(), **kwargs)


def test_asking_for_less_sparsity_than_the_model_has_fails_instead_of_reviving():
    model = sl.prune(SmallCNN(), "magnitude", 0.9)
    with pytest.raises(ValueError, match="never revives"):
        sl.prune(model, "magnitude", 0.5)


def test_a_new_budget_never_revives_what_an_old_one_pruned():
    model = sl.prune(SmallCNN(), "magnitude", 0.6, budget="global")
    before = {n: m.clone() for n, m in sl.masks.masks(model).items()}
    sl.prune(model, "magnitude", 0.7, budget="uniform")
    for n, m in sl.masks.masks(model).items():
        assert torch.all(m <= before[n]), n
    assert sl.sparsity(model) >= 0.7


def test_unknown_options_name_what_the_criterion_accepts():
    with pytest.raises(
        TypeError, match="unknown option.*pattren.*prune\\(\\) itself takes pattern"
    ):
        sl.prune(SmallCNN(), "magnitude", 0.5, pattren="channel")


@pytest.mark.parametrize("pattern", ["channel", "input", "block:4x4", "unstructured"])
def test_structured_pruning_can_be_repeated(pattern):
    exclude = ["conv1.weight"] if pattern.startswith("block") else []
    model = sl.prune(SmallCNN(), "magnitude", 0.3, pattern=pattern, exclude=exclude)
    first = {n: m.clone() for n, m in sl.masks.masks(model).items()}
    sl.prune(model, "magnitude", 0.6, pattern=pattern, exclude=exclude)
    for n, m in sl.masks.masks(model).items():
        assert torch.all(m <= first[n]), n
    assert sl.sparsity(model, list(first)) > 0.5


def test_a_layer_emptied_by_the_budget_is_warned_about():
    """Global magnitude at 99% empties a layer whose weights are all small."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(50, 40), torch.nn.Linear(40, 10))
    with torch.no_grad():
        model[1].weight.mul_(1e-3)  # the head's weights are all below fc1's
    with pytest.warns(UserWarning, match=r"pruned 1\.weight to 100%.*dense=\["):
        sl.prune(model, "magnitude", 0.95, budget="global")
    kept = torch.nn.Sequential(torch.nn.Linear(50, 40), torch.nn.Linear(40, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sl.prune(kept, "magnitude", 0.95, budget="uniform")


def test_min_density_keeps_the_best_of_every_layer_and_still_meets_the_target():
    """The layer the global threshold would empty keeps ceil(min_density * n) weights, its
    largest; the rest of the target comes from the other layer, lowest first (brute force)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(50, 40), torch.nn.Linear(40, 10))
    with torch.no_grad():
        model[1].weight.mul_(1e-3)
    w0, w1 = model[0].weight.detach().abs().clone(), model[1].weight.detach().abs().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no layer emptied: no warning
        sl.prune(model, "magnitude", 0.95, budget="global", min_density=0.02)
    kept1 = sl.masks.get_mask(model, "1.weight").bool()
    assert int(kept1.sum()) == 8  # ceil(0.02 * 400)
    assert torch.equal(kept1.flatten(), w1.flatten() >= w1.flatten().topk(8).values[-1])
    zeros = round(0.95 * (2000 + 400))
    kept0 = sl.masks.get_mask(model, "0.weight").bool()
    assert int((~kept0).sum()) + 392 == zeros
    lowest = torch.argsort(w0.flatten(), stable=True)[: zeros - 392]
    expected = torch.ones(2000, dtype=torch.bool)
    expected[lowest] = False
    assert torch.equal(kept0.flatten(), expected)


def test_min_density_counts_whole_groups_under_a_structured_pattern():
    model = mlp(20, 16, 8, 4)
    with torch.no_grad():
        model[2].weight.mul_(1e-3)  # the global threshold would take all of its rows first
    sl.prune(model, "magnitude", 0.4, pattern="channel", min_density=0.3)
    for name, mask in sl.masks.masks(model).items():
        rows = mask.bool().any(dim=1)
        assert int(rows.sum()) >= math.ceil(0.3 * len(rows)), name
    assert int(sl.masks.get_mask(model, "2.weight").bool().any(dim=1).sum()) == 3  # ceil(2.4)


def test_min_density_errors_say_how_to_fix_them():
    model = mlp(6, 8, 3)
    with pytest.raises(ValueError, match="min_density applies to the global budget"):
        sl.prune(model, "magnitude", 0.5, budget="uniform", min_density=0.1)
    with pytest.raises(ValueError, match=r"min_density must be in \[0, 1\)"):
        sl.prune(model, "magnitude", 0.5, min_density=1.0)
    with pytest.raises(ValueError, match="keeps too much(.|\n)*lower min_density"):
        sl.prune(model, "magnitude", 0.9, min_density=0.5)
    with pytest.raises(ValueError, match="coupled=True(.|\n)*min_density"):
        sl.prune(model, "magnitude", 0.5, pattern="channel", coupled=True, min_density=0.1)
    assert not sl.masks.masks(model)  # nothing was pruned on the way to an error


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m: sl.prune(m, "magnitude", 0.5, targets="0.weight"), TypeError, r"\['0.weight'\]"),
        (lambda m: sl.prune(m, None, 0.5), TypeError, "named by a string"),
        (lambda m: sl.prune(m, "magnitude", 0.0, dense=["0.weight", "2.weight"]), ValueError,
         "every target is kept dense"),
        (lambda m: sl.prune(m, "random", 0.5, seed="a"), TypeError, "seed must be an int"),
        (lambda m: sl.prune(m, "magnitude", 0.5, budget="ERK"), KeyError, "'erk'"),
        (lambda m: sl.prune(m, "rigl", 0.5), KeyError, "training method, not a criterion.*fit"),
    ],
)  # fmt: skip
def test_common_mistakes_get_errors_that_say_how_to_fix_them(call, error, match):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 2))
    with pytest.raises(error, match=match):
        call(model)


@pytest.mark.parametrize("method", ["snip", "force", "woodfisher"])
def test_a_frozen_model_can_be_scored_and_stays_frozen(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 2)).requires_grad_(False)
    x = torch.randn(32, 12)
    sl.prune(model, method, 0.5, data=(x, (x[:, 0] > 0).long()))
    assert sl.sparsity(model) == pytest.approx(0.5)
    assert not any(p.requires_grad for p in model.parameters())


def test_a_model_pruned_by_torch_gets_an_error_that_shows_how_to_adopt_its_masks():
    from torch.nn.utils import prune as torch_prune

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 2))
    torch_prune.l1_unstructured(model[0], "weight", amount=0.5)
    with pytest.raises(ValueError, match="torch.nn.utils.prune.*masks.attach"):
        sl.prune(model, "magnitude", 0.7)
    mask = model[0].weight_mask.clone()
    torch_prune.remove(model[0], "weight")
    sl.masks.attach(model, "0.weight", mask)
    sl.prune(model, "magnitude", 0.7)  # continues from the adopted mask
    assert not torch.any(sl.masks.get_mask(model, "0.weight").bool() & ~mask.bool())


def test_a_rising_schedule_of_uniform_targets_meets_every_target_exactly():
    """Largest-remainder rounding can give a layer fewer zeros at a higher total (the Alabama
    paradox); its pruned weights stay pruned, so the other layers must give the difference
    back, or the next step of a schedule finds the model already past its target."""
    from sparsity_lab import models, schedules
    from sparsity_lab.patterns import count

    torch.manual_seed(0)
    model = models.build("cnn1d", input_shape=(40,), n_classes=10)
    names = sl.targets.default_targets(model)
    total = sum(model.get_parameter(n).numel() for n in names)
    gen = torch.Generator().manual_seed(0)
    for step in range(1, 201):
        with torch.no_grad():  # training moves the weights between pruning steps
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.01)
        target = schedules.cubic(step, 0.8, 0, 200)
        sl.prune(model, "magnitude", float(target), budget="uniform")
        zeros = sum(int((m == 0).sum()) for m in sl.masks.masks(model).values())
        assert zeros == count(target, total), step


@pytest.mark.parametrize("norm", ["parametrization", "hook"])
def test_a_weight_norm_layer_gets_an_error_that_says_how_to_remove_it(norm):
    layer = nn.Linear(4, 3)
    if norm == "parametrization":
        layer = nn.utils.parametrizations.weight_norm(layer)
        match = "remove_parametrizations"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch deprecates the hook form
            layer = nn.utils.weight_norm(layer)
        match = "remove_weight_norm"
    with pytest.raises(ValueError, match=match):
        sl.prune(nn.Sequential(layer), "magnitude", 0.5)


def test_tied_weights_are_refused_with_both_uses_named():
    embed, head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
    head.weight = embed.weight  # the usual tying of input and output embeddings
    model = nn.ModuleDict({"embed": embed, "head": head})
    with pytest.raises(ValueError, match=r"'head.weight' is tied.*embed.weight"):
        sl.prune(model, "magnitude", 0.5, targets=["head.weight"])
    head.weight = nn.Parameter(embed.weight.detach().clone())  # untied: fine
    sl.prune(model, "magnitude", 0.5, targets=["head.weight"])
    assert sl.sparsity(model, ["head.weight"]) == pytest.approx(0.5)


@pytest.mark.parametrize("n", [1, 100, 331, 463])
def test_a_whole_number_prunes_exactly_that_many_weights(n):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 17))
    sl.prune(model, "magnitude", n)
    assert sum(int((m == 0).sum()) for m in sl.masks.masks(model).values()) == n
    with pytest.raises(ValueError, match="cannot prune 464 weights"):
        sl.prune(model, "magnitude", 464)
