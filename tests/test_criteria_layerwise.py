"""Layer-wise reconstruction criteria against independent computations: least squares on the
calibration inputs, brute-force greedy OBS, Wanda's formula, and the sequential pipeline
re-done by hand."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import mlp
from sklearn.datasets import load_digits
from torch import nn

import sparsity_lab as sl
from sparsity_lab import curvature, masks, models
from sparsity_lab.criteria import layerwise as lw
from sparsity_lab.patterns import NM, prune_lowest


def correlated_inputs(n=400, cols=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=gen, dtype=torch.float64)
    scale = torch.logspace(-1, 1, cols, dtype=torch.float64)  # features of uneven size
    return (torch.randn(n, cols, generator=gen, dtype=torch.float64) @ mix) * scale


def random_weight(rows=8, cols=24, seed=1):
    return torch.randn(
        rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def hessian(x):
    return 2 * x.T @ x / len(x)


def refit(w, x, keep):
    """Least squares on the inputs: each row's kept weights re-fitted to the dense outputs."""
    out = torch.zeros_like(w)
    for r in range(len(w)):
        cols = keep[r].nonzero().flatten()
        sol = torch.linalg.lstsq(x[:, cols], x @ w[r]).solution
        out[r, cols] = sol
    return out


# --- calibration and counting ------------------------------------------------------------------


def test_calibration_accumulates_the_layer_hessian_over_batches_and_positions():
    layer = nn.Conv1d(2, 3, 3, padding=1)
    x = torch.randn(5, 2, 7)
    calib = lw.Calibration(layer)
    calib.add_batch(x[:2])
    calib.add_batch(x[2:])
    rows = curvature.layer_input_rows(layer, x).double()
    torch.testing.assert_close(calib.hessian(), 2 * rows.T @ rows / len(rows))
    torch.testing.assert_close(calib.column_norms(), rows.norm(dim=0))
    calib.free()
    with pytest.raises(ValueError, match="add_batch"):
        calib.column_norms()


def test_spread_meets_the_total_within_floors_and_capacities():
    assert lw.spread(10, [4, 4, 4]) == [4, 3, 3]
    assert lw.spread(7, [10, 10], floor=[6, 0]) == [6, 1]
    assert lw.spread(3, [5, 5], floor=[2, 2]) == [2, 2]  # earlier zeros stay
    k = lw.spread(1000, [37, 512, 451])
    assert sum(k) == 1000 and all(0 <= a <= c for a, c in zip(k, [37, 512, 451], strict=True))


# --- Wanda ---------------------------------------------------------------------------------------


def one_layer(rows=6, cols=16, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(cols, rows))


def test_wanda_equals_its_formula_compared_within_each_output_row():
    model = one_layer()
    x = correlated_inputs(n=64, cols=16).float()
    pruned = sl.prune(copy.deepcopy(model), "wanda", 0.5, data=(x, None), budget="uniform")
    w = model[0].weight.detach().double()
    score = w.abs() * x.double().norm(dim=0)  # |W_ij| * ||X_j||_2, by hand
    keep = masks.get_mask(pruned, "0.weight").bool()
    for r in range(len(w)):
        expected = prune_lowest(score[r], 8)  # 16 columns, half of them in every row
        assert torch.equal(keep[r], expected)
    torch.testing.assert_close(masks.weight(pruned, "0.weight"), model[0].weight * keep)


def test_wanda_n_m_keeps_the_best_n_of_every_m_inputs_per_row():
    model = one_layer()
    x = correlated_inputs(n=64, cols=16).float()
    pruned = sl.prune(copy.deepcopy(model), "wanda", None, data=(x, None), pattern="2:4")
    score = model[0].weight.detach().double().abs() * x.double().norm(dim=0)
    keep = masks.get_mask(pruned, "0.weight").bool()
    groups = score.reshape(6, 4, 4)
    best = torch.zeros_like(groups, dtype=torch.bool)
    best.scatter_(-1, groups.topk(2, dim=-1).indices, True)
    assert torch.equal(keep, best.reshape(6, 16))


# --- SparseGPT, OBC and L-OBS on one matrix ------------------------------------------------------


def test_sparsegpt_with_the_pruned_columns_first_is_the_exact_least_squares_refit():
    """Pruning columns in order with the Cholesky rows of H^-1 is exact OBS when the pruned
    columns come first: the remaining weights end at the least-squares optimum."""
    x, w = correlated_inputs(), random_weight()
    prior = torch.ones_like(w, dtype=torch.bool)
    prior[:, :9] = False  # forced: the first 9 columns of every row
    new, keep = lw.sparsegpt(w, hessian(x), 9 * 8, prior=prior, damp=1e-12)
    assert torch.equal(keep, prior)
    torch.testing.assert_close(new, refit(w, x, keep), atol=1e-6, rtol=1e-6)


def test_sparsegpt_prunes_exactly_and_its_update_lowers_the_error():
    x, w = correlated_inputs(), random_weight()
    for kwargs in [dict(n_prune=96), dict(nm=(2, 4)), dict(n_prune=120, block_size=8)]:
        new, keep = lw.sparsegpt(w, hessian(x), **kwargs)
        assert int((~keep).sum()) == kwargs.get("n_prune", 96)
        assert torch.all(new[~keep] == 0)
        assert lw.reconstruction_error(w, new, x) < lw.reconstruction_error(w, w * keep, x)
    _, keep = lw.sparsegpt(w, hessian(x), nm=(2, 4))
    assert torch.all(keep.reshape(8, 6, 4).sum(-1) == 2)


@pytest.mark.parametrize("kwargs", [dict(n_prune=96), dict(nm=(2, 4)), dict(n_prune=150)])
def test_sparsegpt_in_float32_agrees_with_the_float64_reference(kwargs):
    """The single-precision solve (the paper's code's precision) makes the same choices and
    reaches the same reconstruction error as the float64 reference, up to rounding."""
    x, w = correlated_inputs(n=400, cols=64), random_weight(rows=32, cols=64)
    ref_w, ref_keep = lw.sparsegpt(w, hessian(x), block_size=16, **kwargs)
    new, keep = lw.sparsegpt(w, hessian(x), block_size=16, dtype=torch.float32, **kwargs)
    assert new.dtype == torch.float32 and int((~keep).sum()) == int((~ref_keep).sum())
    assert (keep != ref_keep).float().mean() <= 0.01  # a near-tie may round the other way
    ref_err = lw.reconstruction_error(w, ref_w, x)
    assert lw.reconstruction_error(w, new, x) == pytest.approx(ref_err, rel=1e-3)
    assert ref_err < lw.reconstruction_error(w, w * ref_keep, x)


@pytest.mark.parametrize("method", ["sparsegpt", "obc", "lobs"])
def test_precision_option_reaches_the_solver(method, monkeypatch):
    used, solve = [], getattr(lw, method)

    def spy(*args, **kwargs):
        used.append(kwargs["dtype"])
        return solve(*args, **kwargs)

    monkeypatch.setattr(lw, method, spy)
    model = mlp(6, 8, 3, seed=0)
    data = [(torch.randn(32, 6, generator=torch.Generator().manual_seed(s)), None) for s in (1, 2)]
    pruned = {}
    for precision in ("float64", "float32"):
        pruned[precision] = sl.prune(
            copy.deepcopy(model), method, 0.5, budget="uniform", data=data, precision=precision
        )
    assert used == [torch.float64] * 2 + [torch.float32] * 2  # two layers each
    for name in masks.masks(pruned["float64"]):
        torch.testing.assert_close(
            masks.weight(pruned["float32"], name), masks.weight(pruned["float64"], name),
            atol=1e-5, rtol=1e-4,
        )  # fmt: skip
    with pytest.raises(ValueError, match="precision must be one of float64, float32"):
        sl.registry.get(method)(precision="half")


@pytest.mark.parametrize("solver", ["obc", "lobs"])
def test_obc_and_lobs_in_float32_agree_with_the_float64_reference(solver):
    x, w = correlated_inputs(n=400, cols=24), random_weight(rows=16, cols=24)
    ref_w, ref_keep = getattr(lw, solver)(w, hessian(x), 150)
    new, keep = getattr(lw, solver)(w, hessian(x), 150, dtype=torch.float32)
    assert new.dtype == torch.float32 and torch.equal(keep, ref_keep)
    torch.testing.assert_close(new.double(), ref_w, atol=1e-4, rtol=1e-4)


def test_obc_gives_the_same_result_whatever_its_chunk_of_rows():
    x, w = correlated_inputs(), random_weight()
    ref_w, ref_keep = lw.obc(w, hessian(x), 96, chunk_bytes=2**30)  # every row at once
    for chunk_bytes in (1, 3 * 8 * 24 * 24):  # a row at a time; three rows
        new, keep = lw.obc(w, hessian(x), 96, chunk_bytes=chunk_bytes)
        assert torch.equal(keep, ref_keep)
        torch.testing.assert_close(new, ref_w, atol=1e-12, rtol=1e-12)


def greedy_obs_by_brute_force(w_row, x, steps):
    """For each step try every remaining weight, refit by least squares, keep the best."""
    keep = torch.ones_like(w_row, dtype=torch.bool)
    best_w = w_row
    for _ in range(steps):
        trials = []
        for q in keep.nonzero().flatten():
            k = keep.clone()
            k[q] = False
            cand = refit(w_row[None], x, k[None])[0]
            trials.append((lw.reconstruction_error(w_row[None], cand[None], x), int(q), cand))
        _, q, best_w = min(trials)
        keep[q] = False
    return best_w, keep


def test_obc_is_greedy_exact_obs_row_by_row():
    x, w = correlated_inputs(n=200, cols=10), random_weight(rows=1, cols=10)
    for steps in (1, 2, 5):
        new, keep = lw.obc(w, hessian(x), steps, damp=1e-12)
        expected_w, expected_keep = greedy_obs_by_brute_force(w[0], x, steps)
        assert torch.equal(keep[0], expected_keep)
        torch.testing.assert_close(new[0], expected_w, atol=1e-6, rtol=1e-6)


def test_obc_error_is_no_higher_than_sparsegpt_on_a_small_layer():
    x, w = correlated_inputs(), random_weight()
    for kwargs in [dict(n_prune=96), dict(n_prune=150), dict(nm=(2, 4))]:
        obc_w, obc_keep = lw.obc(w, hessian(x), **kwargs)
        gpt_w, gpt_keep = lw.sparsegpt(w, hessian(x), **kwargs)
        assert int((~obc_keep).sum()) == int((~gpt_keep).sum())
        assert lw.reconstruction_error(w, obc_w, x) <= lw.reconstruction_error(w, gpt_w, x)
    _, keep = lw.obc(w, hessian(x), nm=(2, 4))
    assert torch.all(keep.reshape(8, 6, 4).sum(-1) == 2)


def test_lobs_ranks_by_obs_saliency_and_refits_each_row():
    x, w = correlated_inputs(), random_weight()
    new, keep = lw.lobs(w, hessian(x), 100, damp=1e-12)
    hinv_diag = torch.linalg.inv(hessian(x)).diagonal()
    saliency = w**2 / (2 * hinv_diag)  # the same H^-1 column for every row
    assert saliency[~keep].max() <= saliency[keep].min()
    torch.testing.assert_close(new, refit(w, x, keep), atol=1e-6, rtol=1e-6)


# --- the reconstruction ordering on a trained model ----------------------------------------------


@pytest.fixture(scope="module")
def trained_digits_mlp():
    """An MLP trained on raw digit pixels (features of uneven scale, as Wanda assumes)."""
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=gen)
    x, y = x[order[:1200]], y[order[:1200]]
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x[:256]


def test_reconstruction_error_sparsegpt_below_wanda_below_magnitude(trained_digits_mlp):
    model, x = trained_digits_mlp
    inputs = {}
    layers = [m for m in model if isinstance(m, nn.Linear)]
    hooks = [
        layer.register_forward_pre_hook(lambda m, a: inputs.__setitem__(m, a[0].double()))
        for layer in layers
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for layer in layers:
        w, xin = layer.weight.detach().double(), inputs[layer]
        k = w.numel() // 2
        magnitude = w * prune_lowest(w.abs().flatten(), k).reshape(w.shape)
        wanda = w * lw.wanda(w, xin.norm(dim=0), k)
        gpt, _ = lw.sparsegpt(w, hessian(xin), k)
        errors = [lw.reconstruction_error(w, v, xin) for v in (gpt, wanda, magnitude)]
        assert errors[0] <= errors[1] <= errors[2], (layer, errors)


# --- the sequential pipeline ----------------------------------------------------------------------


def two_layer_mlp():
    return mlp(12, 16, 8, 3)


def test_later_layers_are_calibrated_on_the_outputs_of_pruned_earlier_layers():
    model = two_layer_mlp()
    x = torch.randn(96, 12, generator=torch.Generator().manual_seed(0))
    batches = [(x[:48], None), (x[48:], None)]
    pruned = sl.prune(copy.deepcopy(model), "sparsegpt", 0.5, data=batches, budget="uniform")
    # redo it by hand: layer by layer, each on the inputs the pruned layers before it give
    by_hand = copy.deepcopy(model)
    for i in (0, 2, 4):
        layer = by_hand[i]
        xin = by_hand[:i](x).detach().double() if i else x.double()
        w = layer.weight.detach().double()
        new, keep = lw.sparsegpt(w, hessian(xin), w.numel() // 2)
        with torch.no_grad():
            layer.weight.copy_(new)
        torch.testing.assert_close(masks.get_mask(pruned, f"{i}.weight").bool(), keep)
        torch.testing.assert_close(masks.weight(pruned, f"{i}.weight"), layer.weight)


def test_sequential_false_calibrates_every_layer_on_the_dense_models_inputs():
    model = two_layer_mlp()
    x = torch.randn(96, 12, generator=torch.Generator().manual_seed(0))
    batches = [(x[:48], None), (x[48:], None)]
    pruned = sl.prune(
        copy.deepcopy(model), "sparsegpt", 0.5, data=batches, budget="uniform", sequential=False
    )
    for i in (0, 2, 4):  # by hand: each layer on what the *dense* layers before it give
        xin = model[:i](x).detach().double() if i else x.double()
        w = model[i].weight.detach().double()
        new, keep = lw.sparsegpt(w, hessian(xin), w.numel() // 2)
        torch.testing.assert_close(masks.get_mask(pruned, f"{i}.weight").bool(), keep)
        torch.testing.assert_close(masks.weight(pruned, f"{i}.weight"), new.float())
    sequential = sl.prune(copy.deepcopy(model), "sparsegpt", 0.5, data=batches, budget="uniform")
    assert not torch.equal(masks.weight(sequential, "4.weight"), masks.weight(pruned, "4.weight"))


@pytest.mark.parametrize("method", ["sparsegpt", "obc", "lobs"])
def test_update_false_gives_the_same_mask_on_the_original_weights(method):
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(1))
    one = one_layer(rows=8, cols=12)
    a = sl.prune(copy.deepcopy(one), method, 0.6, data=(x, None))
    b = sl.prune(copy.deepcopy(one), method, 0.6, data=(x, None), update=False)
    mask = masks.get_mask(a, "0.weight")
    assert torch.equal(mask, masks.get_mask(b, "0.weight"))
    torch.testing.assert_close(masks.weight(b, "0.weight"), one[0].weight * mask)
    assert not torch.allclose(masks.weight(a, "0.weight"), masks.weight(b, "0.weight"))


@pytest.mark.parametrize("method", ["sparsegpt", "obc", "lobs"])
def test_absolute_damping_is_the_relative_one_scaled_by_the_mean_diagonal(method):
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(3))
    one = one_layer(rows=8, cols=12)
    lam = 0.5  # large enough that the two forms would differ if the mode were ignored
    mean_diag = float(hessian(x.double()).diagonal().mean())
    a = sl.prune(copy.deepcopy(one), method, 0.6, data=(x, None), damp=lam, damp_mode="absolute")
    b = sl.prune(copy.deepcopy(one), method, 0.6, data=(x, None), damp=lam / mean_diag)
    c = sl.prune(copy.deepcopy(one), method, 0.6, data=(x, None), damp=lam)
    torch.testing.assert_close(masks.weight(a, "0.weight"), masks.weight(b, "0.weight"))
    assert not torch.allclose(masks.weight(a, "0.weight"), masks.weight(c, "0.weight"))
    with pytest.raises(ValueError, match="damp_mode must be one of relative, absolute"):
        sl.criteria.get(method, damp_mode="percent")


def test_pruning_again_keeps_the_earlier_zeros_and_meets_the_new_total():
    model = two_layer_mlp()
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(2))
    sl.prune(model, "sparsegpt", 0.4, data=(x, None))
    before = {n: m.clone() for n, m in masks.masks(model).items()}
    sl.prune(model, "sparsegpt", 0.7, data=(x, None))
    total = sum(m.numel() for m in before.values())
    assert sum(int((m == 0).sum()) for m in masks.masks(model).values()) == round(0.7 * total)
    for n, m in masks.masks(model).items():
        assert torch.all(m[before[n] == 0] == 0)


# --- every model family --------------------------------------------------------------------------


def model_and_data(name):
    gen = torch.Generator().manual_seed(0)
    if name == "cnn":  # convolutions with input channels a multiple of 8, for N:M
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2),
            nn.Flatten(),
            nn.Linear(32, 4),
        )
        return model, (torch.randn(16, 1, 6, 6, generator=gen), None)
    if name == "tiny_transformer":
        model = models.build(name, input_shape=(8,), n_classes=3, vocab_size=20)
        return model, (torch.randint(0, 20, (16, 8), generator=gen), None)
    shape = {"lenet300": (20,), "lenet5": (1, 8, 8), "cnn1d": (1, 16)}[name]
    kwargs = {"hidden": (16, 8)} if name == "lenet300" else {}
    model = models.build(name, input_shape=shape, n_classes=4, **kwargs)
    return model, (torch.randn(16, *shape, generator=gen), None)


def nm_groups_hold(mask, n, m):
    return bool(torch.all(NM(n, m)._grouped(mask.bool()).sum(1) == n))


@pytest.mark.parametrize("name", ["lenet300", "lenet5", "cnn1d", "tiny_transformer"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "obc", "lobs"])
def test_layerwise_criteria_prune_mlps_cnns_and_the_transformer(name, method):
    model, data = model_and_data(name)
    targets = [
        n
        for n in sl.pruning.default_targets(model)
        if method != "obc" or math.prod(masks.weight(model, n).shape[1:]) <= 128
    ]
    sl.prune(model, method, 0.6, data=data, targets=targets, budget="uniform")
    total = sum(masks.weight(model, n).numel() for n in targets)
    zeros = sum(int((masks.get_mask(model, n) == 0).sum()) for n in targets)
    assert zeros == round(0.6 * total)
    out = model(data[0])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["lenet300", "lenet5", "cnn1d", "tiny_transformer"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_one_calibration_pass_equals_running_the_model_again_up_to_each_layer(name, method):
    """The fast path (all batches stacked, each layer pruned in a hook just before it runs)
    against the reference loop that re-runs the model up to every layer."""
    model, (x, _) = model_and_data(name)
    batches = [(x[:8], None), (x[8:], None)]
    fast = sl.registry.get(method, "criterion")()
    slow = sl.registry.get(method, "criterion")()
    slow.one_pass = False
    a = sl.prune(copy.deepcopy(model), fast, 0.6, data=batches, budget="uniform")
    b = sl.prune(copy.deepcopy(model), slow, 0.6, data=batches, budget="uniform")
    names = list(masks.masks(a))
    assert names == list(masks.masks(b)) and len(names) >= 3
    for n in names:
        assert torch.equal(masks.get_mask(a, n), masks.get_mask(b, n)), n
        torch.testing.assert_close(masks.weight(a, n), masks.weight(b, n))


def test_one_calibration_pass_runs_the_model_once_however_deep():
    """The reference loop runs the model up to each layer for each batch, a cost that grows
    with the square of depth; the fast path runs it once (plus one to find the order)."""
    depth = 6
    model = nn.Sequential(*[nn.Linear(10, 10) for _ in range(depth)])
    calls = []
    model[0].register_forward_pre_hook(lambda mod, args: calls.append(len(args[0])))
    x = torch.randn(12, 10, generator=torch.Generator().manual_seed(0))
    data = [(x[:6], None), (x[6:], None)]
    sl.prune(copy.deepcopy(model), "sparsegpt", 0.5, data=data)
    assert calls == [6, 12]  # the forward order on one batch, then all batches at once
    slow = sl.registry.get("sparsegpt", "criterion")()
    slow.one_pass = False
    calls.clear()
    sl.prune(copy.deepcopy(model), slow, 0.5, data=data)
    assert calls == [6] + [6, 6] * depth


def test_batches_of_different_shapes_take_the_reference_loop():
    model, _ = model_and_data("tiny_transformer")
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randint(0, 20, (4, 8), generator=gen), None)]
    batches.append((torch.randint(0, 20, (4, 6), generator=gen), None))
    assert lw._stack([x for x, _ in batches]) is None
    sl.prune(model, "sparsegpt", 0.5, data=batches)
    assert sl.accounting.report(model)["sparsity"].iloc[-1] > 0.4


@pytest.mark.parametrize("name", ["cnn", "tiny_transformer"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_n_m_patterns_hold_on_convolutions_and_the_transformer(name, method, pattern):
    model, data = model_and_data(name)
    n, m = map(int, pattern.split(":"))
    targets = sl.pruning.default_targets(model)
    targets = [t for t in targets if model.get_parameter(t).shape[1] % m == 0]
    assert len(targets) >= 3
    sl.prune(model, method, None, pattern=pattern, data=data, targets=targets)
    for t in targets:
        assert nm_groups_hold(masks.get_mask(model, t), n, m), t


def test_global_budget_ranks_each_methods_saliency_and_counts_exactly():
    model = two_layer_mlp()
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(3))
    sl.prune(model, "wanda", 0.8, data=(x, None))
    total = sum(m.numel() for m in masks.masks(model).values())
    assert sum(int((m == 0).sum()) for m in masks.masks(model).values()) == round(0.8 * total)


def test_layerwise_errors_say_how_to_fix_them():
    model = two_layer_mlp()
    x = torch.randn(8, 12)
    with pytest.raises(ValueError, match="calibration data"):
        sl.prune(model, "sparsegpt", 0.5)
    with pytest.raises(ValueError, match="supports the patterns unstructured, nm,"):
        sl.prune(model, "wanda", 0.5, data=(x, None), pattern="channel")
    with pytest.raises(ValueError, match="supports the patterns unstructured,"):
        sl.prune(model, "lobs", None, data=(x, None), pattern="2:4", targets=["0.weight"])
    with pytest.raises(ValueError, match="fixes the sparsity"):
        sl.prune(model, "sparsegpt", 0.3, data=(x, None), pattern="2:4", targets=["0.weight"])
    with pytest.raises(ValueError, match="never called"):
        sl.prune(WithUnusedLayer(), "wanda", 0.5, data=(x, None))


class WithUnusedLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Linear(12, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.used(x)


def test_reconstruction_errors_compare_each_layer_on_the_pruned_models_inputs():
    model = two_layer_mlp()
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(4))
    pruned = sl.prune(copy.deepcopy(model), "magnitude", 0.5, budget="uniform")
    errors = lw.reconstruction_errors(model, pruned, (x, None))
    assert list(errors) == ["0.weight", "2.weight", "4.weight"]
    xin = pruned[:2](x).detach().double()  # what the pruned first layers feed layer 2
    w = model[2].weight.detach().double()
    expected = lw.reconstruction_error(w, masks.weight(pruned, "2.weight"), xin) / (
        (xin @ w.T).pow(2).sum()
    )
    assert errors["2.weight"] == pytest.approx(float(expected))


def test_layerwise_methods_default_to_the_papers_uniform_budget():
    x = torch.randn(64, 12)
    for method in ("wanda", "sparsegpt"):
        model = two_layer_mlp()
        sl.prune(model, method, 0.5, data=(x, None))
        for n, keep in sl.masks.masks(model).items():
            assert (~keep.bool()).float().mean().item() == pytest.approx(0.5), (method, n)
    assert sl.criteria.get("magnitude").default_budget == "global"
