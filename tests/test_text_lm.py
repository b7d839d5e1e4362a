"""Tests for the ``chars`` next-character task and the transformer's ``pool`` option."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparsity_lab import data, models, train

SMALL = {"n_train": 3000, "n_val": 300, "n_test": 300}
SEQ_LEN = 32  # the default


@pytest.fixture(scope="module")
def bundle() -> data.DataBundle:
    return data.load("chars", seed=0, **SMALL)


@pytest.fixture(scope="module")
def starts() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    (train_starts, val_starts, test_starts), _ = data.char_windows(0, **SMALL)
    return train_starts, val_starts, test_starts


def _mapped_corpus(vocab: list[str]) -> str:
    """The corpus as the model sees it: characters outside ``vocab`` become UNKNOWN_CHAR."""
    known = set(vocab[2:])
    return "".join(c if c in known else data.UNKNOWN_CHAR for c in data.char_corpus())


def _inputs(split) -> set[tuple[int, ...]]:
    """The distinct input windows of a split, as tuples of ids."""
    return {tuple(row) for row in split.tensors[0].tolist()}


# --------------------------------------------------------------------------------------
# the data set


def test_chars_is_registered_with_its_options():
    assert "chars" in data.available()
    with pytest.raises(TypeError, match="its options are seq_len, n_train"):
        data.load("chars", n_samples=10)


def test_sizes_shapes_dtypes_and_vocabulary(bundle):
    assert bundle.name == "chars"
    assert bundle.input_shape == (SEQ_LEN,)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (3000, 300, 300)
    assert bundle.n_classes == len(bundle.vocab) == 64
    assert bundle.vocab[data.PAD_ID] == data.PAD
    assert bundle.vocab[data.UNKNOWN_ID] == data.UNKNOWN_CHAR
    characters = bundle.vocab[2:]
    assert all(len(c) == 1 for c in characters)
    assert len(set(characters)) == len(characters)
    assert data.UNKNOWN_CHAR not in characters
    for split in (bundle.train, bundle.val, bundle.test):
        x, y = split.tensors
        assert x.shape == (len(split), SEQ_LEN)
        assert x.dtype == y.dtype == torch.int64
        assert 0 <= y.min() and y.max() < bundle.n_classes


def test_id_zero_is_never_a_character(bundle):
    for split in (bundle.train, bundle.val, bundle.test):
        x, y = split.tensors
        assert (x != data.PAD_ID).all()
        assert (y != data.PAD_ID).all()


def test_the_corpus_holds_each_paragraph_once():
    paragraphs = data.char_corpus().split("\n\n")
    assert len(paragraphs) == len(set(paragraphs))
    assert len(data.char_corpus()) > 100_000  # real text, not a stub


def test_held_out_windows_share_no_text_position_with_train(starts):
    train_starts, val_starts, test_starts = starts
    covered = np.zeros(len(data.char_corpus()), dtype=bool)
    # a window reads seq_len characters and its label: seq_len + 1 positions
    span = np.arange(SEQ_LEN + 1)
    covered[(train_starts[:, None] + span).ravel()] = True
    for held_out in (val_starts, test_starts):
        assert not covered[(held_out[:, None] + span).ravel()].any()
    val_positions = set((val_starts[:, None] + span).ravel().tolist())
    assert not val_positions & set((test_starts[:, None] + span).ravel().tolist())


@pytest.mark.parametrize("options", [SMALL, {}], ids=["small", "default"])
def test_no_held_out_window_appears_in_train(options):
    """Not even as the same text elsewhere: recurring text is filtered out of val/test."""
    bundle = data.load("chars", seed=1, **options)
    train_inputs = _inputs(bundle.train)
    assert not _inputs(bundle.val) & train_inputs
    assert not _inputs(bundle.test) & train_inputs


def test_held_out_windows_are_not_in_the_whole_train_text(starts):
    """Stronger than the sampled train windows: no held-out input occurs anywhere in the
    train blocks, where a memorising model could have seen it."""
    train_starts, val_starts, test_starts = starts
    _, vocab = data.char_windows(0, **SMALL)
    text = _mapped_corpus(vocab)
    block = data.CHAR_BLOCK_LEN
    train_blocks, _, _ = data._char_blocks(0, len(text))
    assert set((train_starts // block).tolist()) <= set(train_blocks.tolist())
    # train inputs cover a block but its last character (a label only)
    train_text = [text[b * block : (b + 1) * block - 1] for b in train_blocks]
    for held_out in (val_starts[:50], test_starts[:50]):
        for s in held_out.tolist():
            window = text[s : s + SEQ_LEN]
            assert not any(window in t for t in train_text)


def test_labels_are_the_next_character_of_the_raw_text(bundle, starts):
    text = _mapped_corpus(bundle.vocab)
    for split, split_starts in zip((bundle.train, bundle.val, bundle.test), starts, strict=True):
        x, y = split.tensors
        assert len(split_starts) == len(x)
        for i in (0, 1, len(x) // 2, len(x) - 1):
            s = int(split_starts[i])
            assert bundle.decode(x[i]) == text[s : s + SEQ_LEN]
            assert bundle.decode(y[i]) == text[s + SEQ_LEN]
            assert y[i].item() == bundle.vocab.index(text[s + SEQ_LEN])


def test_every_example_is_contiguous_text(bundle):
    """Without the start offsets: window then label is a piece of the corpus."""
    text = _mapped_corpus(bundle.vocab)
    x, y = bundle.test.tensors
    for i in range(0, len(x), 37):
        assert bundle.decode(x[i]) + bundle.decode(y[i]) in text


def test_the_vocabulary_comes_from_the_train_text_by_frequency(bundle):
    # the most frequent label of train is the most frequent character: the space
    labels = bundle.train.tensors[1]
    assert bundle.vocab[int(torch.bincount(labels).argmax())] == " " == bundle.vocab[2]


def test_decode_joins_characters_and_keeps_text_words():
    chars = data.load("chars", seed=0, **SMALL)
    ids = [chars.vocab.index(c) for c in "if x:"]
    assert chars.decode(ids) == "if x:"
    assert chars.decode([*ids, data.PAD_ID]) == "if x:"
    text = data.load("text", seed=0, n_samples=100)
    words = ["the", "film", "was", "good"]
    assert text.decode(data.encode([words], 16)[0]) == "the film was good"


def test_same_seed_same_data_other_seed_other_split():
    a = data.load("chars", seed=0, **SMALL)
    b = data.load("chars", seed=0, **SMALL)
    c = data.load("chars", seed=1, **SMALL)
    for x, y in zip((a.train, a.val, a.test), (b.train, b.val, b.test), strict=True):
        for t, u in zip(x.tensors, y.tensors, strict=True):
            assert torch.equal(t, u)
    assert a.vocab == b.vocab
    (_, val0, test0), _ = data.char_windows(0, **SMALL)
    (_, val1, test1), _ = data.char_windows(1, **SMALL)
    block = data.CHAR_BLOCK_LEN
    assert set((val0 // block).tolist()) != set((val1 // block).tolist())
    assert set((test0 // block).tolist()) != set((test1 // block).tolist())
    assert not torch.equal(a.val.tensors[0], c.val.tensors[0])


def test_loading_does_not_touch_the_global_rngs():
    torch.manual_seed(0)
    np.random.seed(0)
    expected = torch.rand(1), np.random.rand()
    torch.manual_seed(0)
    np.random.seed(0)
    data.load("chars", seed=3, **SMALL)
    assert (torch.rand(1), np.random.rand()) == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"seq_len": 0}, r"seq_len must be in \[1, 512\), got 0"),
        ({"seq_len": 600}, r"seq_len must be in \[1, 512\), got 600"),
        ({"vocab_size": 2}, r"vocab_size must be in \[3, 256\].*got 2"),
        ({"vocab_size": 300}, r"vocab_size must be in \[3, 256\].*got 300"),
        ({"n_val": 10**6}, r"n_val must be in \[1, \d+\].*pass a smaller n_val"),
        ({"n_train": 0}, r"n_train must be in \[1, \d+\]"),
    ],
)
def test_bad_options_say_what_is_allowed(options, message):
    with pytest.raises(ValueError, match=message):
        data.load("chars", **{**SMALL, **options})


def test_a_small_vocabulary_maps_rare_characters_to_unknown():
    small = data.load("chars", seed=0, vocab_size=8, **SMALL)
    assert small.n_classes == len(small.vocab) == 8
    x, y = small.train.tensors
    assert (x == data.UNKNOWN_ID).any() and (y == data.UNKNOWN_ID).any()


# --------------------------------------------------------------------------------------
# the transformer's pooling


def _padded(seq_len: int = 12) -> tuple[torch.Tensor, list[int]]:
    """Random tokens right-padded to lengths 12, 9, 5 and 1."""
    torch.manual_seed(1)
    lengths = [12, 9, 5, 1]
    tokens = torch.randint(1, 30, (len(lengths), seq_len))
    for row, n in enumerate(lengths):
        tokens[row, n:] = 0
    return tokens, lengths


def _transformer(**options) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build(
        "tiny_transformer", input_shape=(12,), n_classes=5, vocab_size=30, **options
    ).eval()


def test_mean_pool_is_the_default_and_changes_nothing():
    tokens, _ = _padded()
    default, mean = _transformer(), _transformer(pool="mean")
    assert default.pool == mean.pool == "mean"
    for (k, v), (k2, v2) in zip(
        default.state_dict().items(), mean.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)
    with torch.no_grad():
        assert torch.equal(default(tokens), mean(tokens))


def test_mean_pool_matches_a_manual_average_of_the_non_pad_positions():
    model = _transformer()
    tokens, lengths = _padded()
    seen = {}
    model.ln_f.register_forward_hook(lambda module, args, out: seen.update(h=out))
    with torch.no_grad():
        logits = model(tokens)
        manual = torch.stack([seen["h"][row, :n].mean(dim=0) for row, n in enumerate(lengths)])
        torch.testing.assert_close(logits, model.head(manual))


def test_last_pool_has_the_same_parameters():
    """Pruning code addresses tensors by name: the option adds or renames none."""
    mean, last = _transformer(), _transformer(pool="last")
    for (k, v), (k2, v2) in zip(mean.state_dict().items(), last.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)


def test_last_pool_matches_a_manual_computation():
    model = _transformer(pool="last")
    tokens, lengths = _padded()
    seen = {}
    model.ln_f.register_forward_hook(lambda module, args, out: seen.update(h=out))
    with torch.no_grad():
        logits = model(tokens)
        manual = torch.stack([seen["h"][row, n - 1] for row, n in enumerate(lengths)])
        torch.testing.assert_close(logits, model.head(manual))
        # and it differs from the mean: the option does something
        assert not torch.allclose(logits, _transformer()(tokens))


def test_last_pool_ignores_right_padding():
    model = _transformer(pool="last")
    tokens, lengths = _padded()
    with torch.no_grad():
        batch = model(tokens)
        for row, n in enumerate(lengths):
            alone = model(tokens[row : row + 1, :n])  # the same tokens, no padding at all
            torch.testing.assert_close(batch[row : row + 1], alone, atol=1e-6, rtol=1e-6)
        # a different embedding of the pad token changes nothing either
        model.tok_emb.weight[0] = torch.randn(model.tok_emb.embedding_dim) * 5
        torch.testing.assert_close(model(tokens), batch, atol=1e-6, rtol=1e-6)


def test_last_pool_reads_the_last_token():
    model = _transformer(pool="last")
    tokens = torch.randint(1, 30, (1, 12), generator=torch.Generator().manual_seed(2))
    changed = tokens.clone()
    changed[0, -1] = tokens[0, -1] % 29 + 1  # another real token
    with torch.no_grad():
        assert not torch.allclose(model(tokens), model(changed), atol=1e-4)


def test_an_all_pad_row_gives_finite_logits():
    tokens = torch.zeros(2, 12, dtype=torch.long)
    for pool in ("mean", "last"):
        with torch.no_grad():
            assert torch.isfinite(_transformer(pool=pool)(tokens)).all()


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        ("lats", r"unknown pool 'lats'\. Did you mean 'last'\? Choose 'mean'"),
        ("max", r"unknown pool 'max'\..*Choose 'mean' .*'last' .* or 'none'"),
        (None, r"unknown pool None\..*Choose 'mean'"),
    ],
)
def test_a_bad_pool_says_which_pools_exist(pool, message):
    with pytest.raises(ValueError, match=message):
        _transformer(pool=pool)


def test_build_lists_pool_among_the_options():
    with pytest.raises(TypeError, match="mlp_ratio, pool"):
        models.build("tiny_transformer", input_shape=(8,), n_classes=2, pooling="last")


# --------------------------------------------------------------------------------------
# the task is learnable, and not trivially


def test_a_short_run_beats_the_unigram_baseline_on_held_out_text():
    # short windows and few examples keep this to a few seconds; it reaches about 0.25
    bundle = data.load("chars", seed=0, seq_len=16, n_train=6000, n_val=500, n_test=500)
    torch.manual_seed(0)
    model = models.build(
        "tiny_transformer",
        input_shape=bundle.input_shape,
        n_classes=bundle.n_classes,
        vocab_size=len(bundle.vocab),
        pool="last",
    )
    loaders = bundle.loaders(batch_size=128, seed=0)
    train.fit(
        model,
        loaders[0],
        epochs=3,
        optimizer="adamw",
        lr=3e-3,
        lr_schedule="cosine",
        seed=0,
        progress=False,
    )
    result = train.evaluate(model, loaders[1])
    labels = bundle.val.tensors[1]
    unigram = (labels == torch.bincount(bundle.train.tensors[1]).argmax()).float().mean().item()
    assert result["accuracy"] > unigram + 0.05
    assert result["accuracy"] < 0.9  # far from solved: a pruned model has room to lose


# --- the decoder-only language model (char_lm) --------------------------------------------------


def test_char_lm_labels_are_the_inputs_moved_on_by_one_character():
    lm = data.load("char_lm", seed=0, n_train=200, n_val=50, n_test=50)
    chars = data.load("chars", seed=0, n_train=200, n_val=50, n_test=50)
    x, y = lm.train.tensors
    assert y.shape == x.shape
    assert torch.equal(y[:, :-1], x[:, 1:])  # position t is labelled with character t + 1
    assert torch.equal(x, chars.train.tensors[0])  # the same windows as chars ...
    assert torch.equal(y[:, -1], chars.train.tensors[1])  # ... whose label is the last one


def test_causal_attention_equals_torchs_and_sees_no_later_token():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=gen) for _ in range(3))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(models.attention(q, k, v, causal=True), expected)
    lm = models.build(
        "tiny_transformer", input_shape=(8,), n_classes=20, vocab_size=20, pool="none", causal=True
    ).eval()
    ids = torch.randint(2, 20, (3, 8), generator=gen)
    changed = ids.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 18 + 2
    with torch.no_grad():
        a, b = lm(ids), lm(changed)
    assert a.shape == (3, 20, 8)  # classes on dim 1, one score vector per position
    torch.testing.assert_close(a[..., :5], b[..., :5])  # positions before 5 cannot see it
    assert not torch.allclose(a[..., 5:], b[..., 5:])


def test_evaluate_counts_every_position_of_a_sequence_label():
    """Per-token accuracy and mean loss: 3 of the 4 positions of each sequence right."""
    scores = torch.full((2, 3, 4), -5.0)
    targets = torch.tensor([[0, 1, 2, 0], [2, 2, 1, 0]])
    scores[0, [0, 1, 2, 1], [0, 1, 2, 3]] = 5.0  # last position wrong
    scores[1, [2, 2, 1, 2], [0, 1, 2, 3]] = 5.0  # last position wrong

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return scores[x[:, 0]]

    loader = [(torch.tensor([[0], [1]]), targets)]
    result = train.evaluate(Fixed(), loader)
    assert result["accuracy"] == pytest.approx(0.75)
    expected = torch.nn.functional.cross_entropy(scores, targets)
    assert result["loss"] == pytest.approx(float(expected))


def test_evaluate_run_scores_a_language_model_per_character():
    from sparsity_lab import recipes

    t = recipes.task("tiny_transformer", "char_lm", seed=0, n_train=200, n_val=50, n_test=50)
    torch.manual_seed(0)
    lm = models.build(
        "tiny_transformer", input_shape=(32,), n_classes=t.bundle.n_classes, pool="none",
        causal=True,
    )  # fmt: skip
    result = recipes.evaluate_run(lm, t)
    x, y = t.bundle.test.tensors
    with torch.no_grad():
        logits = lm.eval()(x)
    assert result["accuracy"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    loss = torch.nn.functional.cross_entropy(logits, y)
    assert result["perplexity"] == pytest.approx(math.exp(float(loss)), rel=1e-5)
