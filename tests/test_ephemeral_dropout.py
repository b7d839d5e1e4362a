"""The dropout family: drop rates, the eval identity, block shapes and layer pruning."""

import math

import pytest
import torch
import torch.nn.functional as F

from sparsity_lab import models, registry
from sparsity_lab.ephemeral import dropout as D


def _binomial_ok(hits: float, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(hits - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_registered():
    for name, obj in [
        ("dropout", D.Dropout),
        ("dropconnect", D.DropConnect),
        ("dropblock", D.DropBlock),
        ("stochastic_depth", D.StochasticDepth),
        ("layerdrop", D.LayerDrop),
    ]:
        assert registry.get(name) is obj


def test_dropout_rate_scale_and_eval_identity():
    torch.manual_seed(0)
    drop = D.Dropout(0.3)
    x = torch.rand(100, 100) + 0.5
    y = drop(x)
    zeros = int((y == 0).sum())
    assert _binomial_ok(zeros, x.numel(), 0.3)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.7)
    assert drop.sparsity == pytest.approx(zeros / x.numel())
    drop.eval()
    assert torch.equal(drop(x), x)


def test_dropconnect_resamples_weights_and_leaves_eval_alone():
    torch.manual_seed(0)
    model = models.build("lenet300", input_shape=(12,), n_classes=3, hidden=(8, 6))
    x = torch.randn(4, 12)
    model.eval()
    dense = model(x)
    names_before = sorted(n for n, _ in model.named_parameters())
    handle = D.dropconnect(model, 0.5)
    torch.testing.assert_close(model(x), dense)  # eval: plain weights
    model.train()
    out = model(x)
    # recompute by hand with the masks the layers just drew
    h = x
    for name in ("fc1", "fc2", "fc3"):
        layer = getattr(model, name)
        drop = layer.parametrizations.weight[0]
        w = layer.parametrizations.weight.original * drop.last_mask / 0.5
        h = F.linear(h, w, layer.bias)
        h = F.relu(h) if name != "fc3" else h
        fraction = float(drop.last_mask.float().mean())
        assert 0.2 < fraction < 0.8
    torch.testing.assert_close(out, h)
    handle.remove()
    assert sorted(n for n, _ in model.named_parameters()) == names_before
    model.eval()
    torch.testing.assert_close(model(x), dense)


def _opening(dropped: torch.Tensor, b: int) -> torch.Tensor:
    """Morphological opening with a b x b square: what survives is a union of squares."""
    eroded = -F.max_pool2d(-dropped, b, stride=1, padding=b // 2)
    return F.max_pool2d(eroded, b, stride=1, padding=b // 2)


def test_dropblock_zeros_whole_blocks_and_keeps_the_mean():
    torch.manual_seed(0)
    block = D.DropBlock(p=0.2, block_size=3)
    x = torch.ones(8, 4, 16, 16)
    y = block(x)
    dropped = (y == 0).float()
    # every zero lies in a 3x3 square of zeros (ignoring the map's border, where the
    # opening's own padding cuts squares): the union of squares survives an opening
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert torch.equal(_opening(dropped, 3)[inner], dropped[inner])
    # survivors are rescaled so the total is unchanged, per batch
    assert float(y.sum()) == pytest.approx(float(x.sum()), rel=1e-5)
    # gamma is set for a drop rate near p (overlapping blocks make it a little lower)
    assert 0.1 < float(dropped.mean()) < 0.25
    block.eval()
    assert torch.equal(block(x), x)


def test_dropblock_1d_drops_runs():
    torch.manual_seed(1)
    block = D.DropBlock(p=0.3, block_size=5)
    y = block(torch.ones(16, 2, 40))
    dropped = (y == 0).float().reshape(-1, 1, 40)
    eroded = -F.max_pool1d(-dropped, 5, stride=1, padding=2)
    opened = F.max_pool1d(eroded, 5, stride=1, padding=2)
    assert torch.equal(opened[..., 2:-2], dropped[..., 2:-2])
    assert dropped.mean() > 0


def test_add_to_outputs_applies_a_fresh_module_per_layer():
    torch.manual_seed(0)
    model = models.build("lenet300", input_shape=(10,), n_classes=2, hidden=(50, 40))
    x = torch.randn(200, 10)
    hooks = D.add_to_outputs(model, ["fc1"], lambda: D.Dropout(0.5))
    assert set(hooks.modules) == {"fc1"}
    model.eval()
    eval_out = model(x)
    model.train()
    model(x)
    drop = hooks.modules["fc1"]
    assert _binomial_ok(drop.zeros, 200 * 50, 0.5)
    hooks.remove()
    model.eval()
    torch.testing.assert_close(model(x), eval_out)


def test_stochastic_depth_survival_and_expected_branch():
    torch.manual_seed(0)
    model = models.build("resmlp", input_shape=(6,), n_classes=2, width=8, depth=4)
    gates = D.StochasticDepth(model, p_last=0.5)
    assert [gates.survival(d) for d in (1, 2, 3, 4)] == pytest.approx([0.875, 0.75, 0.625, 0.5])
    model.eval()
    x = torch.randn(3, 6)
    with torch.no_grad():
        h = F.relu(model.stem(x))
        for depth, block in enumerate(model.blocks, start=1):
            h = F.relu(h + gates.survival(depth) * block.fc2(F.relu(block.fc1(h))))
        expected = model.head(h)
    torch.testing.assert_close(model(x), expected)
    model.train()
    runs = 400
    for _ in range(runs):
        model(x)
    for depth, path in enumerate(gates.blocks, start=1):
        assert _binomial_ok(gates.drops[path], runs, 1 - gates.survival(depth))


def test_layerdrop_prunes_every_other_layer_exactly():
    assert D.every_other(8, 0.25) == [4, 8]
    assert D.every_other(2, 0.5) == [2]
    torch.manual_seed(0)
    model = models.build("tiny_transformer", input_shape=(6,), n_classes=2, depth=4)
    gates = D.LayerDrop(model, p=0.5)
    assert gates.prune() == ["blocks.1", "blocks.3"]
    tokens = torch.randint(1, 60, (3, 6))
    model.eval()
    small = D.drop_layers(model, gates.dropped)
    with torch.no_grad():
        pad = tokens == 0
        x = model.tok_emb(tokens) + model.pos_emb(torch.arange(6))
        for i in (0, 2):  # the kept blocks; a dropped transformer block is the identity
            x = model.blocks[i](x, key_padding_mask=pad)
        expected = model.head(model.ln_f(x).mean(dim=1))
        torch.testing.assert_close(model(tokens), expected)
        torch.testing.assert_close(small(tokens), expected)
    n = sum(p.numel() for p in model.parameters())
    per_block = sum(p.numel() for p in model.blocks[1].parameters())
    assert sum(p.numel() for p in small.parameters()) == n - 2 * per_block


def test_layerdrop_training_rate_and_residual_block_kinds():
    torch.manual_seed(0)
    model = models.build("resnet_small", input_shape=(1, 8, 8), n_classes=3)
    gates = D.LayerDrop(model, p=0.3)
    x = torch.randn(2, 1, 8, 8)
    model.train()
    runs = 200
    for _ in range(runs):
        model(x)
    for path in gates.blocks:
        assert _binomial_ok(gates.drops[path], runs, 0.3)
    gates.prune(layers=["stages.1.0"])
    model.eval()
    small = D.drop_layers(model, ["stages.1.0"])
    torch.testing.assert_close(small(x), model(x))
    block = model.get_submodule("stages.1.0")
    with torch.no_grad():
        z = torch.randn(2, 8, 8, 8)
        torch.testing.assert_close(D.SkippedBlock(block)(z), F.relu(block.shortcut(z)))


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        D.Dropout(1.0)
    with pytest.raises(ValueError, match="odd"):
        D.DropBlock(0.1, block_size=4)
    with pytest.raises(ValueError, match="expects"):
        D.DropBlock(0.1)(torch.ones(2, 3))
    with pytest.raises(ValueError, match="no residual blocks"):
        D.LayerDrop(models.build("lenet300", input_shape=(4,), n_classes=2))
    model = models.build("resmlp", input_shape=(4,), n_classes=2)
    with pytest.raises(ValueError, match="unknown layers"):
        D.LayerDrop(model).prune(layers=["blocks.9"])
    with pytest.raises(KeyError, match="not a tensor"):
        D.dropconnect(model, 0.5, names=["stem.nothing"])


def test_zeroed_share_counts_the_drops_and_takes_the_modules_off():
    torch.manual_seed(0)
    model = models.build("lenet300", input_shape=(10,), n_classes=2, hidden=(50, 40))
    x = torch.randn(200, 10)
    layers = ["fc1", "fc2"]
    assert D.zeroed_share(model.eval(), layers, lambda: D.Dropout(0.5), x, steps=3) == 0
    share = D.zeroed_share(model.train(), layers, lambda: D.Dropout(0.3), x, steps=3)
    assert _binomial_ok(share * 3 * 200 * 90, 3 * 200 * 90, 0.3)
    assert not model.fc1._forward_hooks and not model.fc2._forward_hooks  # taken off again
