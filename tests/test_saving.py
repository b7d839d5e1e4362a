"""Saving pruned models as safetensors and exporting them to ONNX."""

import io

import numpy as np
import pytest
import torch
from torch import nn

import sparsity_lab as sl
from sparsity_lab import masks, models, saving

pytest.importorskip("safetensors")


def pruned_lenet5(pattern="unstructured", sparsity=0.9):
    torch.manual_seed(0)
    model = models.build("lenet5", input_shape=(1, 28, 28), n_classes=10)
    sl.prune(model, "magnitude", sparsity, pattern=pattern)
    return model.eval()


def fresh_lenet5():
    torch.manual_seed(1)  # other weights than the pruned model's, so loading must change them
    return models.build("lenet5", input_shape=(1, 28, 28), n_classes=10).eval()


def test_squashed_safetensors_hold_plain_keys_and_the_pruned_values(tmp_path):
    model = pruned_lenet5()
    path = saving.save_safetensors(model, tmp_path / "m.safetensors")
    from safetensors.torch import load_file

    state = load_file(str(path))
    assert set(state) == set(nn.Module.state_dict(masks.squash(pruned_lenet5())))
    for name, mask in masks.masks(model).items():
        assert torch.equal(state[name], masks.weight(model, name))
        assert int((state[name] != 0).sum()) <= int(mask.sum())
    # about half of the masked state dict, which stores the dense weights and float masks
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    assert path.stat().st_size < 0.6 * buffer.getbuffer().nbytes
    plain = saving.load_safetensors(fresh_lenet5(), path)
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(plain(x), model(x)) and not masks.masks(plain)


def test_saved_masks_come_back_and_keep_the_zeros_through_training(tmp_path):
    model = pruned_lenet5()
    path = saving.save_safetensors(model, tmp_path / "m.safetensors", with_masks=True)
    loaded = saving.load_safetensors(fresh_lenet5(), path)
    assert masks.masks(loaded).keys() == masks.masks(model).keys()
    for name, mask in masks.masks(model).items():
        assert torch.equal(masks.masks(loaded)[name].bool(), mask.bool())
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    opt = torch.optim.SGD(loaded.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(2):
        opt.zero_grad()
        loaded.train()(x).sum().backward()
        opt.step()
    for name, mask in masks.masks(model).items():
        assert (masks.weight(loaded, name)[mask == 0] == 0).all()


def test_a_plain_file_loaded_into_a_masked_model_keeps_its_masks(tmp_path):
    dense = fresh_lenet5()
    path = saving.save_safetensors(dense, tmp_path / "dense.safetensors")
    model = pruned_lenet5()
    saving.load_safetensors(model, path)
    for name, mask in masks.masks(model).items():
        assert (masks.weight(model, name)[mask == 0] == 0).all()
        kept = mask.bool()
        assert torch.equal(masks.weight(model, name)[kept], masks.weight(dense, name)[kept])


def test_a_file_of_another_model_is_refused_with_the_keys(tmp_path):
    path = saving.save_safetensors(nn.Linear(3, 2), tmp_path / "linear.safetensors")
    with pytest.raises(RuntimeError, match="Missing key"):
        saving.load_safetensors(fresh_lenet5(), path)


@pytest.fixture
def onnxruntime():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    return pytest.importorskip("onnxruntime")


def _run(onnxruntime, path, x):
    session = onnxruntime.InferenceSession(str(path))
    return session.run(None, {"input": x.numpy()})[0]


def test_onnx_of_a_pruned_model_computes_what_it_computes(tmp_path, onnxruntime):
    model = pruned_lenet5()
    path = saving.export_onnx(model, tmp_path / "m.onnx", torch.randn(2, 1, 28, 28))
    x = torch.randn(5, 1, 28, 28)  # another batch size than the example's: the batch is dynamic
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(_run(onnxruntime, path, x), expected, rtol=1e-5, atol=1e-6)
    assert masks.masks(model)  # the model itself is left masked
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    zeros = sum(int((numpy_helper.to_array(t) == 0).sum()) for t in graph.initializer)
    pruned = sum(int((m == 0).sum()) for m in masks.masks(model).values())
    assert zeros >= pruned  # the zeros travel as zeros


def test_onnx_of_a_shrunk_model_is_smaller_and_computes_the_same(tmp_path, onnxruntime):
    model = pruned_lenet5(pattern="channel", sparsity=0.5)
    example = torch.randn(2, 1, 28, 28)
    full = saving.export_onnx(model, tmp_path / "full.onnx", example, external_data=False)
    small = saving.export_onnx(
        model, tmp_path / "small.onnx", example, shrink=True, external_data=False
    )
    assert small.stat().st_size < 0.7 * full.stat().st_size
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(_run(onnxruntime, small, x), expected, rtol=1e-4, atol=1e-5)


# --- Hugging Face ---------------------------------------------------------------------------


def tiny_bert(seed=0):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(config).eval()


def test_hugging_face_save_pretrained_of_a_masked_model_reloads_dense_and_untrained(tmp_path):
    # why sl.saving.save_pretrained exists: the model's own method loses the pruned weights
    model = tiny_bert()
    sl.prune(model, "magnitude", 0.5, targets=["classifier.weight"], budget="uniform")
    model.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path)
    assert not torch.equal(back.classifier.weight, masks.weight(model, "classifier.weight"))
    assert int((back.classifier.weight == 0).sum()) == 0


def test_save_pretrained_gives_the_pruned_model_back_and_its_masks(tmp_path):
    model = tiny_bert()
    names = [n for n, p in model.named_parameters() if p.dim() == 2 and "embeddings" not in n]
    sl.prune(model, "magnitude", 0.5, targets=names, budget="uniform")
    ids = torch.randint(0, 50, (3, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    saving.save_pretrained(model, tmp_path)
    assert masks.masks(model)  # the model keeps its own masks
    back = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids).logits, expected)
    for name in names:  # the pruned values, as plain weights
        assert torch.equal(back.get_parameter(name), masks.weight(model, name).detach())
    saving.load_pretrained_masks(back, tmp_path)
    for name in names:
        assert torch.equal(masks.get_mask(back, name).bool(), masks.get_mask(model, name).bool())
    without = tmp_path / "without"
    saving.save_pretrained(model, without, with_masks=False)
    with pytest.raises(FileNotFoundError, match="saved without masks"):
        saving.load_pretrained_masks(type(model).from_pretrained(without), without)
    with pytest.raises(TypeError, match="save_safetensors"):
        saving.save_pretrained(nn.Linear(2, 2), tmp_path / "plain")
