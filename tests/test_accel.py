"""Sparse inference export: exact outputs on every bundled model, dispatch, saving, N:M packing."""

import io
import math
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsity_lab as sl
from sparsity_lab import accel, models, shrink
from sparsity_lab.patterns import NM

MODELS = {
    "lenet300": {"input_shape": (784,)},
    "lenet5": {"input_shape": (1, 28, 28)},
    "cnn1d": {"input_shape": (1, 40)},
    "resmlp": {"input_shape": (40,)},
    "resnet_small": {"input_shape": (1, 12, 12)},
    "tiny_transformer": {"input_shape": (10,), "vocab_size": 24},
}
FORCED = ["torch_csr", "scipy_csr", "torch_bsr"]


@pytest.fixture(autouse=True)
def _quiet_sparse_beta_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*Sparse.*support is in beta")
        yield


def pruned(name, sparsity=0.9, seed=0, **prune_options):
    torch.manual_seed(seed)
    model = models.build(name, n_classes=10, **MODELS[name])
    sl.prune(model, "magnitude", sparsity, **prune_options)
    return model.eval()


def sparse_weight(shape, sparsity, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=gen)
    return weight * (torch.rand(shape, generator=gen) >= sparsity)


# ---------------------------------------------------------------------------- sparse layers


@pytest.mark.parametrize("kernel", FORCED)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(1,), (5,), (2, 3)])
def test_sparse_linear_equals_dense_linear(kernel, bias, lead):
    weight = sparse_weight((8, 12), 0.7)
    b = torch.randn(8) if bias else None
    layer = accel.SparseLinear(weight, b, kernel=kernel, block=(2, 2))
    x = torch.randn(*lead, 12)
    expected = F.linear(x, weight, b)
    for _ in range(2):  # a second call must not see state left by the first
        assert torch.allclose(layer(x), expected, atol=1e-5)


@pytest.mark.parametrize("kernel", FORCED)
@pytest.mark.parametrize(
    "conv",
    [
        lambda: nn.Conv2d(3, 4, 3, padding=1),
        lambda: nn.Conv2d(3, 4, (3, 2), stride=2, padding=(1, 0), dilation=(1, 2), bias=False),
        lambda: nn.Conv1d(2, 4, 5, stride=2, padding=2),
    ],
)
def test_sparse_conv_equals_the_convolution(kernel, conv):
    torch.manual_seed(0)
    layer = conv().requires_grad_(False)
    layer.weight.mul_(torch.rand(layer.weight.shape) > 0.6)
    x = torch.randn(3, layer.in_channels, *([9, 8] if isinstance(layer, nn.Conv2d) else [11]))
    sparse = accel.SparseConv(layer, kernel, block=(1, 1))
    assert torch.allclose(sparse(x), layer(x), atol=1e-5)


def test_sparse_conv_refuses_grouped_convolutions():
    with pytest.raises(ValueError, match="keep it dense"):
        accel.SparseConv(nn.Conv2d(4, 4, 3, groups=2))


def test_weights_changed_after_building_are_used():
    weight = sparse_weight((4, 6), 0.5)
    layer = accel.SparseLinear(weight, kernel="torch_csr")
    x = torch.randn(2, 6)
    layer(x)  # builds the cached sparse tensor
    with torch.no_grad():
        layer.weight.values.mul_(2)  # an in-place change, as load_state_dict makes
    assert torch.allclose(layer(x), x @ (2 * weight).T, atol=1e-5)


# ---------------------------------------------------------------------------------- export


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("dispatch", ["measure", "predict", *FORCED])
def test_export_equals_the_masked_model_on_every_bundled_model(name, dispatch):
    model = pruned(name, 0.9)
    exported = accel.export(model, dispatch=dispatch, repeats=1, budget_s=1e-4)
    x = shrink.example_batch(model, batch=3, seed=11)  # not the batch export checked on
    with torch.no_grad():
        assert torch.allclose(exported(x), model(x), atol=1e-4)
    kernels = {c.kernel for c in exported.export_plan}
    if dispatch in ("torch_csr", "scipy_csr"):
        assert kernels == {dispatch}  # forced: every Linear/Conv layer
    assert not exported.training and model.training is False


@pytest.mark.parametrize("dispatch", ["torch_csr", "scipy_csr"])
def test_one_example_takes_the_matrix_vector_path_and_still_equals_the_masked_model(dispatch):
    # batch 1 is the latency case with its own fast path in SparseLinear.linear
    model = pruned("lenet300", 0.95)
    exported = accel.export(model, dispatch=dispatch, repeats=1, budget_s=1e-4)
    x = shrink.example_batch(model, batch=1, seed=5)
    with torch.no_grad():
        assert torch.allclose(exported(x), model(x), atol=1e-5)


def test_export_leaves_the_model_untouched():
    model = pruned("lenet300", 0.8).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    accel.export(model, dispatch="torch_csr")
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sl.masks.masks(model)  # still masked


def test_structured_masks_are_removed_by_shrink():
    model = pruned("lenet300", 0.0)
    shrink.prune_coupled(model, "channel", 0.5)
    exported = accel.export(model, dispatch="dense")
    assert exported.fc1.out_features == 150 and exported.fc2.in_features == 150
    assert exported.fc2.out_features == 50
    x = torch.randn(4, 784)
    with torch.no_grad():
        assert torch.allclose(exported(x), model(x), atol=1e-5)
    kept = accel.export(model, dispatch="dense", use_shrink=False)
    assert kept.fc1.out_features == 300


def test_weights_below_min_sparsity_stay_dense_without_timing():
    model = pruned("lenet300", 0.3, budget="uniform")
    exported = accel.export(model, min_sparsity=0.5)
    assert all(c.kernel == "dense" and c.dense_s is None for c in exported.export_plan)


def test_predict_goes_sparse_exactly_above_the_break_even():
    model = pruned("lenet300", 0.0)
    sl.masks.attach(model, "fc1.weight", sparse_weight((300, 784), 0.97) != 0)
    sl.masks.attach(model, "fc2.weight", sparse_weight((100, 300), 0.5) != 0)
    exported = accel.export(model, dispatch="predict", use_shrink=False)
    plan = {c.name: c.kernel for c in exported.export_plan}
    assert plan == {"fc1": "scipy_csr", "fc2": "dense", "fc3": "dense"}
    big_batch = accel.export(model, torch.randn(32, 784), dispatch="predict", use_shrink=False)
    assert big_batch.export_plan[0].kernel == "torch_csr"


def test_measure_records_the_timings_it_chose_on():
    model = pruned("lenet300", 0.9, budget="uniform")
    exported = accel.export(model, repeats=3, budget_s=1e-3)
    table = accel.plan(exported)
    assert list(table["name"]) == ["fc1", "fc2", "fc3"]
    for row in table.itertuples():
        assert row.dense_us > 0 and row.sparse_us > 0
        if row.kernel != "dense":  # chosen only when at most margin x the dense time
            assert row.sparse_us <= 0.9 * row.dense_us


def test_export_errors_say_how_to_fix():
    model = pruned("lenet300", 0.5)
    with pytest.raises(ValueError, match="dispatch must be one of"):
        accel.export(model, dispatch="fast")
    with pytest.raises(ValueError, match="unknown kernels"):
        accel.export(model, kernels=["mkl"])
    with pytest.raises(ValueError, match="margin"):
        accel.export(model, margin=1.5)
    with pytest.raises(ValueError, match="unknown kernel"):
        accel.SparseLinear(torch.ones(2, 2), kernel="cuda")
    with pytest.raises(ValueError, match="square blocks"):
        accel.SparseLinear(torch.ones(4, 4), kernel="torch_bsr", block=(2, 1))


# -------------------------------------------------------------------------------- save/load


@pytest.mark.parametrize("name", ["lenet5", "resmlp", "tiny_transformer"])
def test_exported_model_saves_and_loads_with_weights_only(name):
    model = pruned(name, 0.9)
    exported = accel.export(model, dispatch="scipy_csr")
    buffer = io.BytesIO()
    accel.save(exported, buffer)
    buffer.seek(0)
    loaded = accel.load(buffer)
    x = shrink.example_batch(model, batch=2, seed=3)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-4)
    # its state_dict is plain tensors: it loads with weights_only into a loaded copy
    buffer = io.BytesIO()
    torch.save(exported.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = accel.load(io.BytesIO(_saved(exported)))
    for t in fresh.state_dict().values():
        if t.is_floating_point():
            t.zero_()
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(fresh(x), model(x), atol=1e-4)


def _saved(model):
    buffer = io.BytesIO()
    accel.save(model, buffer)
    return buffer.getvalue()


class _Unlisted(nn.Module):
    def forward(self, x):
        return x


def test_load_refuses_classes_outside_the_allowlist():
    buffer = io.BytesIO(_saved(nn.Sequential(_Unlisted())))
    with pytest.raises(pickle.UnpicklingError, match="_Unlisted"):
        accel.load(buffer)


# ------------------------------------------------------------------------------------ N:M


def test_pack_two_four_by_hand():
    weight = torch.tensor([[0.0, 1.5, 0.0, -2.0, 3.0, 0.0, 0.0, 4.0]])
    packed = accel.pack_nm(weight, 2, 4)
    assert packed.index_bits == 2
    assert packed.values.tolist() == [[1.5, -2.0], [3.0, 4.0]]
    # positions 1, 3, 0, 3 as 2-bit fields, lowest first: 0b11_00_11_01
    assert packed.metadata.tolist() == [0b11001101]
    assert torch.equal(accel.unpack_nm(packed), weight)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8), (2, 8), (1, 2)])
def test_pack_unpack_is_exact_with_log2_m_bits(n, m):
    weight = torch.randn(6, 4 * m) * NM(n, m).mask(torch.rand(6, 4 * m))
    packed = accel.pack_nm(weight, n, m)
    kept = weight.numel() * n // m
    assert packed.metadata.dtype == torch.uint8
    assert packed.metadata.numel() == math.ceil(kept * math.ceil(math.log2(m)) / 8)
    assert packed.nbytes() == kept * 4 + packed.metadata.numel()
    assert torch.equal(accel.unpack_nm(packed), weight)


def test_pack_refuses_a_tensor_that_is_not_nm():
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        accel.pack_nm(torch.ones(2, 8))


# ------------------------------------------------------------------------------------ GPU


@pytest.mark.skipif(accel.gpu_available(), reason="checks the error raised without a GPU")
def test_gpu_export_without_a_suitable_gpu_says_so():
    with pytest.raises(RuntimeError, match="CUDA GPU|compute capability"):
        accel.export(pruned("lenet300", 0.5), device="cuda")


@pytest.mark.skipif(not accel.gpu_available(), reason="needs a CUDA GPU with capability >= 8.0")
def test_gpu_semi_structured_export_matches():  # pragma: no cover - no GPU in CI
    torch.manual_seed(0)
    model = models.build("lenet300", input_shape=(256,), n_classes=10, hidden=(128, 64))
    sl.prune(model, "magnitude", 0.5, pattern="2:4", exclude=["fc3.weight"])
    exported = accel.export(model.eval(), torch.randn(32, 256), device="cuda", tolerance=1e-2)
    assert "semi_structured" in {c.kernel for c in exported.export_plan}


def test_time_forward_splits_the_hooked_copies_and_leaves_the_models_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    other = nn.Sequential(nn.Linear(16, 4))
    found = accel.time_forward({"a": model, "b": other}, torch.randn(8, 16), 3, split=["a"])
    assert list(found) == ["a", "b", "a, hooked"]
    for name in ("a", "b"):  # no hooks: nothing is inside, the rest is the pass
        assert found[name]["inside"] == 0.0
        assert found[name]["rest"] == found[name]["total"]
    hooked = found["a, hooked"]
    assert 0.0 < hooked["inside"] < hooked["total"]
    assert hooked["rest"] > 0.0
    # the hooks went on a copy: the model itself times no layer
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    # timed in eval mode, then every module's own mode back (the caller's models are theirs)
    assert model.training and other.training


def test_time_forward_gives_each_module_its_mode_back_even_when_a_pass_raises():
    model = nn.Sequential(nn.Linear(16, 8), nn.Dropout(0.5), nn.Linear(8, 4))
    model[1].eval()  # a mixed setup: dropout frozen in a training model
    frozen = nn.Sequential(nn.Linear(16, 4)).eval()
    accel.time_forward({"a": model, "b": frozen}, torch.randn(2, 16), 1)
    assert [m.training for m in model] == [True, False, True]
    assert not frozen.training
    with pytest.raises(RuntimeError):  # the second model cannot take the input
        accel.time_forward({"a": model, "bad": nn.Linear(3, 4)}, torch.randn(2, 16), 1)
    assert [m.training for m in model] == [True, False, True]


def test_time_forward_needs_at_least_one_round():
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        accel.time_forward({"a": nn.Linear(2, 2)}, torch.randn(1, 2), 0)
