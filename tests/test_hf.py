"""Hugging Face causal LMs of the three styles (GPT-2 with Conv1D, OPT, Llama), built tiny
from a config: pruned by the layer-wise pipeline, saved, reloaded and fine-tuned."""

import copy
import math

import pytest
import torch
from torch import nn

import sparsity_lab as sl
from sparsity_lab import hf, masks, saving

transformers = pytest.importorskip("transformers")

VOCAB = 64


def tiny(style, seed=0):
    torch.manual_seed(seed)
    if style == "gpt2":
        config = transformers.GPT2Config(
            n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=32,
            bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        return transformers.GPT2LMHeadModel(config).eval()
    if style == "opt":
        config = transformers.OPTConfig(
            num_hidden_layers=2, hidden_size=32, ffn_dim=64, num_attention_heads=4,
            vocab_size=VOCAB, max_position_embeddings=32, word_embed_proj_dim=32,
            bos_token_id=0, eos_token_id=0, pad_token_id=1,
        )  # fmt: skip
        return transformers.OPTForCausalLM(config).eval()
    config = transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=32,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def token_ids(n=8, length=16, seed=1):
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_to_linear_computes_what_gpt2s_conv1d_did_and_converts_back_exactly():
    model = tiny("gpt2")
    before = copy.deepcopy(model.state_dict())
    ids = token_ids()
    expected = logits(model, ids)
    with pytest.raises(ValueError, match="to_linear"):
        hf.decoder_targets(model)
    hf.to_linear(model)
    assert hf.converted(model)
    assert not any(hf.is_conv1d(m) for m in model.modules())
    torch.testing.assert_close(logits(model, ids), expected)
    hf.to_conv1d(model)
    assert not hf.converted(model)
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key in before:
        assert torch.equal(after[key], before[key]), key


@pytest.mark.parametrize("style", ["gpt2", "opt", "llama"])
def test_decoder_targets_are_the_blocks_linear_weights_without_the_tied_head(style):
    model = hf.to_linear(tiny(style))
    names = hf.decoder_targets(model)
    assert "lm_head.weight" not in names
    per_block = {"gpt2": 4, "opt": 6, "llama": 7}[style]  # attention and MLP projections
    assert len(names) == 2 * per_block
    assert all(isinstance(model.get_submodule(n.rpartition(".")[0]), nn.Linear) for n in names)


@pytest.mark.parametrize("style", ["gpt2", "opt", "llama"])
@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_layerwise_pruning_of_each_style_is_exact_and_leaves_the_embeddings(style, method):
    model = hf.to_linear(tiny(style))
    embeddings = model.get_input_embeddings().weight.detach().clone()
    names = hf.decoder_targets(model)
    sl.prune(model, method, 0.5, data=token_ids(), targets=names)
    for n in names:
        mask = masks.get_mask(model, n)
        assert int((mask == 0).sum()) == mask.numel() // 2, n  # the papers' uniform 50%
    assert torch.equal(model.get_input_embeddings().weight, embeddings)
    assert "lm_head.weight" not in masks.masks(model)
    assert math.isfinite(hf.perplexity(model, token_ids(seed=2)))


@pytest.mark.parametrize("style", ["gpt2", "opt", "llama"])
def test_a_pruned_model_saves_reloads_and_keeps_its_zeros_through_fine_tuning(style, tmp_path):
    """GPT-2 is saved in its Conv1D layout, which from_pretrained expects."""
    model = hf.to_linear(tiny(style))
    sl.prune(model, "sparsegpt", 0.5, data=token_ids(), targets=hf.decoder_targets(model))
    ids = token_ids(seed=3)
    expected = logits(model, ids)
    saving.save_pretrained(model, tmp_path)
    assert hf.converted(model) == (style == "gpt2")  # the model itself is left as it was
    back = type(model).from_pretrained(tmp_path).eval()
    if style == "gpt2":
        assert hf.is_conv1d(back.transformer.h[0].attn.c_attn)
    torch.testing.assert_close(logits(back, ids), expected)
    saving.load_pretrained_masks(back, tmp_path)  # masks in the Conv1D layout
    hf.to_linear(back)  # ... moved with the weights
    for n, mask in masks.masks(model).items():
        assert torch.equal(masks.get_mask(back, n).bool(), mask.bool()), n
    back.train()
    optimizer = torch.optim.AdamW(back.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        back(ids, labels=ids).loss.backward()
        optimizer.step()
    for n, mask in masks.masks(back).items():
        assert torch.all(masks.weight(back, n)[~mask.bool()] == 0), n
    assert not torch.equal(logits(back.eval(), ids), expected)  # it did train


def test_perplexity_of_uniform_predictions_is_the_vocabulary_size():
    class Uniform(nn.Module):
        def forward(self, ids):
            return torch.zeros(*ids.shape, 10)

    assert hf.perplexity(Uniform(), torch.randint(0, 10, (5, 7))) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="two tokens"):
        hf.perplexity(Uniform(), torch.zeros(3, 1, dtype=torch.long))


def test_a_pruned_models_state_dict_loads_with_weights_only_into_a_fresh_one(tmp_path):
    model = hf.to_linear(tiny("gpt2"))
    sl.prune(model, "wanda", 0.5, data=token_ids(), targets=hf.decoder_targets(model))
    path = tmp_path / "pruned.pt"
    torch.save(model.state_dict(), path)
    fresh = hf.to_linear(tiny("gpt2", seed=5))  # other weights, no masks
    masks.load_state_dict(fresh, torch.load(path, weights_only=True))
    ids = token_ids(seed=4)
    torch.testing.assert_close(logits(fresh, ids), logits(model, ids))
    for n, mask in masks.masks(model).items():
        assert torch.equal(masks.get_mask(fresh, n), mask), n
