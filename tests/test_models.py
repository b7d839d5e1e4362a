"""Tests for sparsity_lab.models: shapes, closed-form sizes, attention, residuals, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsity_lab import data, models

# each model with its natural input
NATURAL = [
    ("lenet300", (784,), {}),
    ("lenet300", (1, 28, 28), {}),
    ("lenet5", (1, 28, 28), {}),
    ("lenet5", (1, 8, 8), {}),
    ("cnn1d", (1, 40), {}),
    ("resmlp", (1, 40), {}),
    ("resmlp", (20,), {"width": 16, "depth": 3}),
    ("resnet_small", (1, 28, 28), {}),
    ("tiny_transformer", (16,), {"vocab_size": 50}),
]


def _example_batch(model: nn.Module, batch: int = 5) -> torch.Tensor:
    if isinstance(model, models.TinyTransformer):
        return torch.randint(1, model.tok_emb.num_embeddings, (batch, *model.input_shape))
    return torch.randn(batch, *model.input_shape)


def test_available_names():
    assert models.available() == sorted(
        ["lenet300", "lenet5", "cnn1d", "resmlp", "resnet_small", "tiny_transformer"]
    )
    assert {name for name, _, _ in NATURAL} == set(models.available())


@pytest.mark.parametrize(("name", "shape", "options"), NATURAL)
def test_builds_and_returns_logits(name, shape, options):
    torch.manual_seed(0)
    model = models.build(name, input_shape=shape, n_classes=7, **options)
    assert model.input_shape == shape
    model.eval()
    logits = model(_example_batch(model))
    assert logits.shape == (5, 7)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("name", "shape", "options"), NATURAL)
def test_same_seed_same_weights(name, shape, options):
    def weights(seed):
        torch.manual_seed(seed)
        return models.build(name, input_shape=shape, n_classes=3, **options).state_dict()

    a, b, c = weights(0), weights(0), weights(1)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_lenet300_parameter_count_closed_form():
    model = models.build("lenet300", input_shape=(1, 28, 28), n_classes=10)
    assert _n_params(model) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10


def test_lenet5_parameter_count_closed_form_on_28x28():
    model = models.build("lenet5", input_shape=(1, 28, 28), n_classes=10)
    conv1 = 1 * 6 * 5 * 5 + 6
    conv2 = 6 * 16 * 5 * 5 + 16
    fc1 = 16 * 5 * 5 * 120 + 120  # 28 -> pool 14 -> conv 10 -> pool 5
    assert _n_params(model) == conv1 + conv2 + fc1 + 120 * 84 + 84 + 84 * 10 + 10


def test_image_models_reject_flat_input_with_a_hint():
    with pytest.raises(ValueError, match="flatten=False"):
        models.build("lenet5", input_shape=(784,), n_classes=10)
    with pytest.raises(ValueError, match="flatten=False"):
        models.build("resnet_small", input_shape=(64,), n_classes=10)


def test_unknown_name_and_option():
    with pytest.raises(KeyError, match="lenet300"):
        models.build("lenet30", input_shape=(784,), n_classes=10)
    with pytest.raises(TypeError, match="width"):
        models.build("resmlp", input_shape=(40,), n_classes=10, widht=8)


def test_cnn1d_accepts_flat_signals_as_one_channel():
    torch.manual_seed(0)
    channel_first = models.build("cnn1d", input_shape=(1, 40), n_classes=10)
    torch.manual_seed(0)
    flat = models.build("cnn1d", input_shape=(40,), n_classes=10)
    x = torch.randn(4, 1, 40)
    torch.testing.assert_close(channel_first(x), flat(x.flatten(1)))


def test_resmlp_block_is_identity_plus_branch():
    block = models.ResidualMLPBlock(8)
    x = torch.randn(4, 8)
    with torch.no_grad():
        branch = block.fc2(torch.relu(block.fc1(x)))
        torch.testing.assert_close(block(x), torch.relu(x + branch))
        nn.init.zeros_(block.fc2.weight)
        nn.init.zeros_(block.fc2.bias)
        # with the branch pruned away the skip still carries the signal
        torch.testing.assert_close(block(x), torch.relu(x))


# --------------------------------------------------------------------------------------
# resnet_small


def test_resnet_small_batchnorm_train_then_eval():
    torch.manual_seed(0)
    model = models.build("resnet_small", input_shape=(1, 28, 28), n_classes=10)
    assert _n_params(model) < 100_000
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) >= 7  # stem + two per block + one per projection
    x = torch.randn(8, 1, 28, 28) * 2 + 1

    model.train()
    before = norms[0].running_mean.clone()
    model(x)
    assert not torch.equal(norms[0].running_mean, before)  # train mode updates statistics

    model.eval()
    frozen = [n.running_mean.clone() for n in norms]
    full = model(x)
    assert all(torch.equal(n.running_mean, f) for n, f in zip(norms, frozen, strict=True))
    # eval mode uses stored statistics, so an example does not depend on its batch
    torch.testing.assert_close(model(x[:1]), full[:1], atol=1e-5, rtol=1e-5)


def test_resnet_small_shortcuts_project_only_when_shape_changes():
    model = models.build("resnet_small", input_shape=(1, 28, 28), n_classes=10)
    blocks = [m for m in model.modules() if isinstance(m, models.BasicBlock)]
    assert len(blocks) == 3
    kinds = []
    for block in blocks:
        same_shape = (
            block.conv1.stride == (1, 1) and block.conv1.in_channels == block.conv2.out_channels
        )
        kinds.append(same_shape)
        if same_shape:
            assert isinstance(block.shortcut, nn.Identity)
        else:
            conv, norm = block.shortcut
            assert conv.kernel_size == (1, 1) and conv.stride == block.conv1.stride
            assert isinstance(norm, nn.BatchNorm2d)
    assert kinds == [True, False, False]  # widths (8, 16, 32) after an 8-channel stem


def test_basic_block_adds_its_shortcut():
    torch.manual_seed(0)
    block = models.BasicBlock(4, 6, stride=2).eval()
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        main = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
        torch.testing.assert_close(block(x), torch.relu(main + block.shortcut(x)))
    assert block(x).shape == (2, 6, 5, 5)


# --------------------------------------------------------------------------------------
# attention and the tiny transformer


def _padding_mask(lengths: list[int], seq_len: int) -> torch.Tensor:
    return torch.arange(seq_len)[None, :] >= torch.tensor(lengths)[:, None]


def test_attention_matches_scaled_dot_product_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 3, 4, 7, 8).unbind(0)  # (B=3, H=4, L=7, d=8)
    v = torch.randn(3, 4, 7, 5)  # a value size of its own
    torch.testing.assert_close(models.attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    pad = _padding_mask([7, 4, 1], 7)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=~pad[:, None, None, :])
    torch.testing.assert_close(models.attention(q, k, v, key_padding_mask=pad), expected)


def test_attention_weights_ignore_padded_keys():
    torch.manual_seed(0)
    q, k = torch.randn(2, 2, 3, 6, 4).unbind(0)
    pad = _padding_mask([6, 2], 6)
    weights = models.attention_weights(q, k, pad)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 6))
    assert torch.all(weights[1, :, :, 2:] == 0)
    # an all-pad row stays finite
    assert torch.isfinite(models.attention_weights(q, k, _padding_mask([0, 0], 6))).all()


def test_self_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    ours = models.MultiHeadSelfAttention(dim=16, n_heads=4)
    ref = nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q.weight, ours.k.weight, ours.v.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.q.bias, ours.k.bias, ours.v.bias]))
        ref.out_proj.weight.copy_(ours.out.weight)
        ref.out_proj.bias.copy_(ours.out.bias)
    x = torch.randn(3, 5, 16)
    pad = _padding_mask([5, 3, 1], 5)
    expected, _ = ref(x, x, x, key_padding_mask=pad, need_weights=False)
    torch.testing.assert_close(ours(x, key_padding_mask=pad), expected, atol=1e-5, rtol=1e-5)


def test_self_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="divisible"):
        models.MultiHeadSelfAttention(dim=10, n_heads=4)


def _padded_tokens(seq_len: int = 12) -> torch.Tensor:
    torch.manual_seed(1)
    tokens = torch.randint(1, 30, (4, seq_len))
    return tokens.masked_fill(_padding_mask([12, 9, 5, 1], seq_len), 0)


def test_transformer_ignores_the_pad_embedding():
    torch.manual_seed(0)
    model = models.build("tiny_transformer", input_shape=(12,), n_classes=3, vocab_size=30).eval()
    tokens = _padded_tokens()
    with torch.no_grad():
        before = model(tokens)
        model.tok_emb.weight[0] = torch.randn(model.tok_emb.embedding_dim) * 5
        after = model(tokens)
        torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-6)
        # a change to a word in use does change the output
        model.tok_emb.weight[tokens[3, 0]] += torch.randn(model.tok_emb.embedding_dim)
        assert not torch.allclose(model(tokens)[3], before[3], atol=1e-3)


def test_transformer_trailing_padding_changes_nothing():
    torch.manual_seed(0)
    model = models.build("tiny_transformer", input_shape=(12,), n_classes=3, vocab_size=30).eval()
    tokens = torch.randint(1, 30, (2, 7))
    padded = torch.cat([tokens, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded), model(tokens), atol=1e-6, rtol=1e-6)


def test_transformer_rejects_feature_shapes():
    with pytest.raises(ValueError, match="seq_len"):
        models.build("tiny_transformer", input_shape=(1, 28, 28), n_classes=2)


# --------------------------------------------------------------------------------------
# a real, if short, training run


def test_lenet300_learns_digits_in_two_epochs():
    torch.manual_seed(0)
    bundle = data.load("digits", seed=0)
    model = models.build("lenet300", input_shape=bundle.input_shape, n_classes=bundle.n_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train, val, _ = bundle.loaders(batch_size=32, seed=0)
    for _ in range(2):
        model.train()
        for x, y in train:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(dim=1) == y).sum().item() for x, y in val)
    assert correct / len(bundle.val) > 0.8
