"""Dense inference passes: BatchNorm folding and the exact alternative kernels, checked
against torch's own convolution, pooling and the unfolded model."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsity_lab as sl
from sparsity_lab import accel, inference, shrink


def resnet_with_statistics(seed: int = 0) -> nn.Module:
    """The small ResNet with BatchNorm statistics and affine parameters far from their
    initial values, so that a wrong fold shows."""
    torch.manual_seed(seed)
    model = sl.models.build("resnet_small", input_shape=(1, 12, 12), n_classes=10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return model.eval()


def test_folding_batchnorm_keeps_the_outputs_and_removes_every_norm():
    model = resnet_with_statistics()
    x = torch.randn(4, 1, 12, 12)
    with torch.no_grad():
        expected = model(x)
    folded = inference.fold_batchnorm(model)
    assert len(folded) == 9  # stem, two per block, two projection shortcuts
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(isinstance(model.get_submodule(n), nn.Identity) for n in folded)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


class TwoReaders(nn.Module):
    """A convolution whose output the norm and a skip both read: no fold is exact."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)

    def forward(self, x):
        y = self.conv(x)
        return self.norm(y) + y


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return self.norm(self.conv(x))
        return self.norm(self.conv(-x))


def test_a_norm_is_folded_only_where_the_fold_is_exact():
    model = TwoReaders().eval()
    assert inference.fold_batchnorm(model) == []
    offset = nn.Sequential(shrink.OffsetConv2d(2, 2, 3), nn.BatchNorm2d(2)).eval()
    assert inference.fold_batchnorm(offset) == []  # its offset would be scaled too
    assert inference.fold_batchnorm(Untraceable().eval()) == []
    with pytest.raises(ValueError, match="eval"):
        inference.fold_batchnorm(TwoReaders())


@pytest.mark.parametrize(
    ("stride", "padding", "bias"), [(1, 0, True), (2, 1, False), ((1, 2), (2, 0), True)]
)
def test_the_im2col_convolution_equals_torchs(stride, padding, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, (3, 4), stride, padding, bias=bias).double()
    twin = inference.ALTERNATIVES["im2col"][1](conv)
    assert isinstance(twin, inference.Im2colConv2d) and twin.weight is conv.weight
    x = torch.randn(2, 3, 11, 9, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), F.conv2d(x, conv.weight, conv.bias, stride, padding))


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("size", [(8, 6), (7, 6), (5, 5), (2, 2)])
def test_the_strided_max_pool_equals_torchs(ceil_mode, size):
    x = torch.randn(3, 4, *size)
    x[0, 0, 0, 0] = float("nan")  # propagated as torch's pooling does
    pool = nn.MaxPool2d(2, ceil_mode=ceil_mode)
    assert inference.ALTERNATIVES["strided_max"][0](pool)
    twin = inference.ALTERNATIVES["strided_max"][1](pool)
    torch.testing.assert_close(twin(x), pool(x), equal_nan=True)
    assert not inference.ALTERNATIVES["strided_max"][0](nn.MaxPool2d(3))
    assert not inference.ALTERNATIVES["strided_max"][0](nn.MaxPool2d(2, padding=1))


def fixed_timer(alternative_s: float):
    """A timer that reports the default kernel at 1 s and the alternative at a fixed time."""
    return lambda fns: {k: 1.0 if k == "default" else alternative_s for k in fns}


def test_kernels_are_swapped_only_when_the_alternative_is_faster_by_the_margin():
    model = sl.models.build("lenet5", input_shape=(1, 28, 28), n_classes=10).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
    kept = copy.deepcopy(model)
    chosen = inference.choose_kernels(kept, x, fixed_timer(0.95), margin=0.9)
    assert {n: c["kernel"] for n, c in chosen.items()} == dict.fromkeys(
        ["conv1", "conv2", "pool"], "default"
    )
    assert type(kept.conv1) is nn.Conv2d and type(kept.pool) is sl.pooling.MaxPool2x2
    chosen = inference.choose_kernels(model, x, fixed_timer(0.5), margin=0.9)
    assert [c["kernel"] for c in chosen.values()] == ["im2col", "im2col", "strided_max"]
    assert chosen["conv1"]["alternative_s"] == 0.5
    assert isinstance(model.conv1, inference.Im2colConv2d)
    assert isinstance(model.pool, inference.StridedMaxPool2d)
    twin = sl.models.build("lenet5", input_shape=(1, 28, 28), n_classes=10).eval()
    inference.apply_kernels(twin, chosen)  # the same choices on a model of the same layers
    assert [type(twin.get_submodule(n)) for n in chosen] == [
        type(model.get_submodule(n)) for n in chosen
    ]
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    # the chosen kernels travel through save and a weights-only load
    buffer = io.BytesIO()
    accel.save(model, buffer)
    buffer.seek(0)
    loaded = accel.load(buffer)
    assert isinstance(loaded.conv1, inference.Im2colConv2d)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)


def test_export_folds_batchnorm_in_the_shrunk_and_the_dense_shaped_copy_alike():
    model = resnet_with_statistics()
    shrink.prune_coupled(model, "channel", 0.5)
    x = torch.randn(3, 1, 12, 12)
    with torch.no_grad():
        expected = model(x)
    for use_shrink in (False, True):
        exported = accel.export(model, x, kernels=(), use_shrink=use_shrink, repeats=2)
        assert len(exported.folded_batchnorm) == 9
        assert set(exported.dense_kernels) >= {"stem.0", "stages.0.0.conv1"}
        with torch.no_grad():
            torch.testing.assert_close(exported(x), expected, rtol=1e-4, atol=1e-4)


class SharedModules(nn.Module):
    """One norm after two convolutions, and one convolution called twice: a fold into a
    shared module would change the calls it does not belong to."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
        self.norm, self.other = nn.BatchNorm2d(2), nn.BatchNorm2d(2)
        self.twice = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        y = self.norm(self.a(x)) + self.norm(self.b(x))
        return self.other(self.twice(y)) + self.twice(y)


def test_shared_modules_and_norms_left_training_are_not_folded():
    model = SharedModules().eval()
    for m in (model.norm, model.other):
        m.running_mean.uniform_(-1, 1)
    x = torch.randn(2, 2, 6, 6)
    with torch.no_grad():
        expected = model(x)
    assert inference.fold_batchnorm(model) == []
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
    training_norm = nn.Sequential(nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2)).eval()
    training_norm[1].train()
    assert inference.fold_batchnorm(training_norm) == []


def test_the_im2col_convolution_takes_an_unbatched_image_and_choices_must_fit():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    twin = inference.ALTERNATIVES["im2col"][1](conv)
    image = torch.randn(3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(twin(image), conv(image))
    model = nn.Sequential(nn.Conv2d(3, 4, 3, groups=1, dilation=2))
    with pytest.raises(ValueError, match="cannot take"):
        inference.apply_kernels(model, {"0": {"kernel": "im2col"}})


def test_a_dense_kernels_export_never_fuses_a_sparse_chain():
    """``kernels=()`` is the dense reference: the compiled CSR chain is a sparse kernel."""
    torch.manual_seed(0)
    model = sl.models.build("lenet300", input_shape=(784,), n_classes=10).eval()
    sl.prune(model, "magnitude", 0.95)
    x = torch.randn(1, 784)
    exported = accel.export(model, x, kernels=(), repeats=2)
    assert not isinstance(exported, sl.fused.FusedSparseChain)
    assert all(c.kernel == "dense" for c in exported.export_plan)
