# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: sparsity_lab
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   sparsity_lab:
#     runs_alone: true
# ---

# %% [markdown]
# # Sparse language models
#
# **What you will learn:** how magnitude, Wanda and SparseGPT, the one-shot methods made for
# large language models, compare on a small one trained here, at rising sparsity,
# unstructured and N:M, with uniform or OWL's outlier-weighted layer sparsities; what the
# input-feature outliers behind Wanda are, in a controlled experiment; how pruning combines
# with quantization, in bits per weight; and how the same calls prune a Hugging Face model.
#
# These are the survey's layer-wise reconstruction and data-driven criteria (sections 3.3
# and 3.5) at today's scale: SparseGPT (Frantar & Alistarh 2023), Wanda (Sun et al. 2024)
# and OWL (Yin et al. 2024).  The papers measure perplexity (the exponential of the mean
# negative log-likelihood per token) on models with billions of weights; this one has a few
# hundred thousand, so read the results as mechanisms at work, not as the papers' numbers.

# %%
import copy
import functools
import math
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import transformers  # the optional `hf` extra, for the last section
from IPython.display import display

import sparsity_lab as sl
from sparsity_lab import hf, quantization, recipes
from sparsity_lab.criteria import layerwise
from sparsity_lab.nb import md

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
SPARSITIES = [0.3, 0.5, 0.6, 0.7]
OWL_SPARSITIES = [0.6, 0.7]
CALIBRATION_WINDOWS = 256  # training windows per seed, drawn with the seed
EPOCHS = None  # None: the recipe's
N_TRAIN = None  # None: the data set's default
N_EVAL = None  # validation and test windows; None: the data set's default
SCALES = [1, 4, 16, 64]  # the controlled outlier experiment
BITS = [8, 4, 3]

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = [0, 1]
    SPARSITIES = [0.5, 0.7]
    OWL_SPARSITIES = [0.7]
    CALIBRATION_WINDOWS = 32
    EPOCHS = 1
    N_TRAIN = 1000
    N_EVAL = 200
    SCALES = [1, 16]
    BITS = [4]
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)

# %% [markdown]
# ## A small language model of Python's help texts
#
# The data are CPython's help pages (what `help("if")` prints, shipped with every Python),
# cut into 32-character windows, the held-out ones from text blocks never trained on
# (`sl.data.load("char_lm")`).  The model is a decoder-only transformer (`tiny_transformer`,
# `causal=True, pool="none"`, pre-LayerNorm; sizes below): each position sees only itself
# and earlier ones and predicts the next character, 32 predictions per window.  Each seed
# has its own data split, dense model (`recipes.dense`) and calibration sample.

# %%
SIZES = {"n_train": N_TRAIN, "n_val": N_EVAL, "n_test": N_EVAL}
DATA_OPTIONS = {k: v for k, v in SIZES.items() if v}
dense_models = {}


def dense_for(seed):
    """``(task, dense model, dense scores, calibration batches)`` of ``seed``."""
    if seed not in dense_models:
        t, model, dense_info = recipes.dense(
            "tiny_transformer", "char_lm", seed, epochs=EPOCHS, **DATA_OPTIONS
        )
        scores = {**recipes.evaluate_run(model, t), "flags": dense_info["flags"]}
        x = t.bundle.train.tensors[0]
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        windows = x[pick[:CALIBRATION_WINDOWS]]
        dense_models[seed] = (t, model, scores, [(b, None) for b in windows.split(64)])
    t, model, scores, calibration = dense_models[seed]
    return t, copy.deepcopy(model), scores, calibration


t0, lm, _, _ = dense_for(SEED)
BLOCKS = [n for n in sl.pruning.default_targets(lm) if n != "head.weight"]
dense_table = pd.DataFrame([{"seed": s, **dense_for(s)[2]} for s in SEEDS])
dense_table = dense_table[["seed", "accuracy", "perplexity"]]
full = dense_table["perplexity"].mean()
most_frequent = torch.bincount(t0.bundle.train.tensors[1].flatten()).argmax()
chance = float((t0.bundle.test.tensors[1] == most_frequent).float().mean())
block_weights = sum(sl.masks.weight(lm, n).numel() for n in BLOCKS)
display(dense_table.round(4))
shape = recipes.recipe_for("tiny_transformer", "char_lm").model_options
dense_flags = "".join(f"  Flag: {f}." for s in SEEDS if (f := dense_models[s][2]["flags"]))
md(
    f"The dense model ({shape['depth']} blocks of width {shape['dim']}, {shape['n_heads']} heads) "
    f"has {sum(p.numel() for p in lm.parameters()):,} parameters, {block_weights:,} of them in "
    f"the {len(BLOCKS)} linear layers of its blocks (what is pruned below; embeddings and output "
    f"head stay dense, as in the papers).  It trained on {len(t0.bundle.train):,} windows.  Test "
    f"perplexity {full:.2f} and accuracy per character {dense_table['accuracy'].mean():.1%} "
    f"(means over {len(SEEDS)} seeds); always answering the most frequent character scores "
    f"{chance:.1%}.{dense_flags}"
)

# %% [markdown]
# ## Perplexity against sparsity
#
# Every block layer gets the same sparsity (`budget="uniform"`, the papers' setting),
# unstructured or N:M (2:4 and 4:8 fix it at 50%).  Magnitude needs no data; Wanda scores
# `|W_ij| * ||X_j||` per output row on the calibration windows; SparseGPT prunes and updates
# each layer's weights to keep its outputs on those windows, layer after layer on the inputs
# the already pruned layers give.  OWL (`budget="owl"`) lets a layer whose Wanda (or
# SparseGPT) scores hold more outliers (above 5 times the layer's mean) keep more weights:
# the layers' sparsities span a band at most 16 points wide (the paper's 2 * lambda),
# shifted so that the whole model meets the target.  The band is centred on the target only
# when the layers are of one size, and these are not, so a layer can end more than 8 points
# from it (the sentence below the figure gives the extremes).  Below the figure, a table
# pairs the methods by seed (same dense model and windows): perplexity differences (lower
# is better) with 95% intervals.


# %%
def prune_run(method, pattern, budget, sparsity, seed):
    t, model, dense_scores, calibration = dense_for(seed)
    sl.prune(model, method, None if ":" in pattern else sparsity, pattern=pattern, budget=budget,
             data=None if method == "magnitude" else calibration, targets=BLOCKS)  # fmt: skip
    scores = recipes.evaluate_run(model, t, target_sparsity=sparsity, names=BLOCKS)
    return {"perplexity": scores["perplexity"], "test_accuracy": scores["accuracy"],
            "flags": scores["flags"], "dense_perplexity": dense_scores["perplexity"]}  # fmt: skip


METHODS = ["magnitude", "wanda", "sparsegpt"]
COLOUR = {m: f"C{i}" for i, m in enumerate(METHODS)}  # plot_mean_ci's colours, in this order
grids = [
    {"method": METHODS, "pattern": ["unstructured"], "budget": ["uniform"], "sparsity": SPARSITIES},
    {"method": METHODS, "pattern": ["2:4", "4:8"], "budget": ["uniform"], "sparsity": [0.5]},
    {"method": ["wanda", "sparsegpt"], "pattern": ["unstructured"], "budget": ["owl"],
     "sparsity": OWL_SPARSITIES},
]  # fmt: skip
sweeps = [sl.experiments.sweep(prune_run, g, seeds=SEEDS, progress=False) for g in grids]
runs = pd.concat(sweeps, ignore_index=True)
runs["arm"] = runs["method"] + " " + runs["pattern"] + " " + runs["budget"]
uniform = runs.query("pattern == 'unstructured' & budget == 'uniform'")

fig, ax = plt.subplots(figsize=(7.5, 4.5))
sl.experiments.plot_mean_ci(uniform, x="sparsity", y="perplexity", hue="method", ax=ax)
sl.viz.mean_lines(runs.query("budget == 'owl'"), "sparsity", "perplexity", "method", ax,
                  fmt="s--", colors=COLOUR, label="{}, OWL")  # fmt: skip
nm = runs[runs["pattern"].str.contains(":")]
for (method, pattern), part in nm.groupby(["method", "pattern"], sort=False):
    ax.plot(0.5, part["perplexity"].mean(), "*" if pattern == "2:4" else "P", markersize=11,
            color=COLOUR[method], label=f"{method}, {pattern}")  # fmt: skip
ax.axhline(full, color="k", linestyle="--", linewidth=0.8, label="dense")
sl.viz.plain_log_axis(ax)
ax.set_ylabel("test perplexity (mean, 95% CI; log scale)")
ax.set_title("Decoder-only LM: one-shot pruning of every block layer")
ax.legend(fontsize=8, ncol=2)
plt.show()
sl.nb.show_flags(sl.flags.table(runs, ["arm", "sparsity"]))

pairs = [("sparsegpt", "wanda"), ("wanda", "magnitude"), ("sparsegpt", "magnitude")]
settings = [("unstructured", s) for s in SPARSITIES if s >= 0.5] + [("2:4", 0.5), ("4:8", 0.5)]
COLUMNS = ["pattern", "sparsity", "comparison", "mean_diff", "ci_low", "ci_high", "n", "verdict"]
comparisons = []
for pattern, sparsity in settings:
    part = runs.query("pattern == @pattern & budget == 'uniform' & sparsity == @sparsity")
    table = sl.stats.paired_table(part, "method", pairs, {"perplexity": ""})
    comparisons.append(table.assign(pattern=pattern, sparsity=sparsity))
comparisons = pd.concat(comparisons, ignore_index=True)[COLUMNS]
display(comparisons.round(3))
ppl_words = functools.partial(sl.stats.describe, scale=1.0, unit=" perplexity")  # in words


def order_words(pattern, sparsity):
    """The paper's order (SparseGPT < Wanda < magnitude in perplexity) against the pairs."""
    rows = comparisons.query("pattern == @pattern & sparsity == @sparsity").set_index("comparison")
    first, second = rows.loc[["sparsegpt - wanda", "wanda - magnitude"], "verdict"]
    where = f"{pattern} at {sparsity:.0%}"
    if first == "better" and second == "better":
        return f"{where}: SparseGPT below Wanda below magnitude, both steps clear"
    both = "(the paper's order needs both 'better')"
    return f"{where}: SparseGPT against Wanda {first}, Wanda against magnitude {second} {both}"


ORDERED = [x for x in [("unstructured", 0.5), ("unstructured", 0.6), ("2:4", 0.5)] if x in settings]
md("\n".join(f"- {order_words(p, s)}." for p, s in ORDERED))

# %% [markdown]
# ## OWL: layer sparsities from outliers
#
# Which layers OWL spares: its sparsities for Wanda at the highest sparsity, seed `SEED`.

# %%
top = max(OWL_SPARSITIES)
t, owl_model, _, calibration = dense_for(SEED)
sl.prune(owl_model, "wanda", top, budget="owl", data=calibration, targets=BLOCKS)
layer_sparsity = pd.Series({n: sl.sparsity(owl_model, [n]) for n in BLOCKS})
fig, ax = plt.subplots(figsize=(9, 3.5))
sl.viz.value_bars(layer_sparsity.rename(lambda n: n.removesuffix(".weight")), ax,
                  reference=top, reference_label=f"uniform {top:.0%}", margin=0.05)  # fmt: skip
ax.set_ylabel("sparsity")
ax.set_title(f"OWL's layer sparsities for Wanda at {top:.0%} (seed {SEED}; bars cut below)")
plt.show()
owl_rows = {}
for m in ["wanda", "sparsegpt"]:
    part = runs.query("method == @m & pattern == 'unstructured' & sparsity == @top")
    owl_rows[m] = sl.stats.paired(part, "budget", "owl", "uniform", metric="perplexity").iloc[0]
OWL_TEXT = "; ".join(f"{m} {ppl_words(r)}" for m, r in owl_rows.items())
md(
    f"Seed {SEED}: OWL keeps the most in `{layer_sparsity.idxmin()}` "
    f"({layer_sparsity.min():.1%} sparse) and the least in `{layer_sparsity.idxmax()}` "
    f"({layer_sparsity.max():.1%}).  Perplexity at {top:.0%}, OWL minus uniform: {OWL_TEXT}."
)

# %% [markdown]
# ## Outlier features, in a controlled experiment
#
# Large language models have a few input features far larger than the rest (Dettmers et al.
# 2022), and Wanda's `||X_j||` factor keeps the weights they feed.  First, how large are the
# largest input features of each layer here, relative to the median feature?


# %%
def input_norms(model, layers, calibration):
    """Each layer's input-feature norms over the calibration windows (one forward pass)."""
    calibs = [layerwise.Calibration(layer, full=False) for layer in layers]
    hooks = [layer.register_forward_pre_hook(lambda m, a, c=c: c.add_batch(a[0]))
             for layer, c in zip(layers, calibs, strict=True)]  # fmt: skip
    with sl.modes.evaluating(model), torch.no_grad():
        for x, _ in calibration:
            model(x)
    for h in hooks:
        h.remove()
    return [c.column_norms() for c in calibs]


t, model, _, calibration = dense_for(SEED)
layers = [model.get_submodule(n.removesuffix(".weight")) for n in BLOCKS]
cols = input_norms(model, layers, calibration)
norms = pd.Series({n: float(c.max() / c.median()) for n, c in zip(BLOCKS, cols, strict=True)})
display(norms.round(2).rename("largest / median input-feature norm").to_frame())
md(
    f"The largest input feature is {norms.min():.1f} to {norms.max():.1f} times the "
    f"median one, depending on the layer (largest in `{norms.idxmax()}`)."
)

# %% [markdown]
# To see what an outlier does, make one without changing the function: in every block,
# multiply the LayerNorm gain and shift of one feature feeding `fc1` (the most used, by
# total Wanda score) by `c` and divide the weights reading it by `c`.  Outputs stay the
# same, but that feature is now `c` times larger and its weights `c` times smaller:
# magnitude sees only the smaller weights; Wanda's score `|W_ij| * ||X_j||` does not change.


# %%
def with_outlier(model, calibration, c):
    """A copy whose most used fc1 input feature in each block is ``c`` times larger."""
    out = copy.deepcopy(model)
    for block in out.blocks:
        (col,) = input_norms(out, [block.fc1], calibration)
        j = int((block.fc1.weight.detach().abs().double() * col).sum(0).argmax())
        with torch.no_grad():
            block.ln2.weight[j] *= c
            block.ln2.bias[j] *= c
            block.fc1.weight[:, j] /= c
    return out


def outlier_run(method, scale, seed):
    t, model, _, calibration = dense_for(seed)
    changed = with_outlier(model, calibration, scale)
    with torch.no_grad():
        x = t.bundle.test.tensors[0][:256]
        drift = float((changed(x) - model(x)).abs().max())
    sl.prune(changed, method, 0.5, budget="uniform", targets=BLOCKS,
             data=None if method == "magnitude" else calibration)  # fmt: skip
    scores = recipes.evaluate_run(changed, t, target_sparsity=0.5, names=BLOCKS)
    return {"perplexity": scores["perplexity"], "flags": scores["flags"], "output_drift": drift}


grid = {"method": ["magnitude", "wanda"], "scale": SCALES}
outliers = sl.experiments.sweep(outlier_run, grid, seeds=SEEDS, progress=False)
fig, ax = plt.subplots(figsize=(6, 4))
sl.experiments.plot_mean_ci(outliers, x="scale", y="perplexity", hue="method", ax=ax)
ax.set_xscale("log", base=2)
sl.viz.plain_log_axis(ax)
ax.set_xlabel("outlier factor c (the same function before pruning)")
ax.set(ylabel="test perplexity at 50% (mean, 95% CI)", title="One outlier feature per block")
plt.show()
by_scale = outliers.groupby(["method", "scale"])["perplexity"].mean().unstack()
low, high = min(SCALES), max(SCALES)
rise = {m: by_scale.loc[m, high] / by_scale.loc[m, low] for m in by_scale.index}
moved = {m: abs(r - 1) > 0.01 for m, r in rise.items()}  # a change under 1% counts as none
FACTORS = f"by a factor of {rise['magnitude']:.2f} and Wanda's by {rise['wanda']:.3f}"
EFFECT = f"changes magnitude's perplexity at 50% {FACTORS}"
small = " (a small change here: one feature per block)." if rise["magnitude"] < 1.05 else "."
if moved["magnitude"] and not moved["wanda"]:
    reading = "the outlier changes what magnitude removes, and not what Wanda removes" + small
elif not moved["magnitude"] and not moved["wanda"]:
    reading = "neither changes by more than 1%: one outlier feature per block barely matters."
else:
    reading = "Wanda's changes too, so its invariance to the rescaling does not hold here."
md(
    f"Before pruning the rescaled models differ from the originals by at most "
    f"{outliers['output_drift'].max():.1e} in any output score.  From c = {low} to c = {high} "
    f"magnitude's perplexity at 50% changes {FACTORS}: {reading}"
)

# %% [markdown]
# ## Pruning and quantization, in bits per weight
#
# Pruning removes weights; quantization stores the rest in fewer bits (symmetric, one 16-bit
# scale per output row, `sl.quantization`).  Three ways at 50% sparsity and 4 bits:
# SparseGPT then round to nearest (RTN); SparseGPT then GPTQ, spreading each column's
# rounding error over later columns; and one pass doing both in SparseGPT's column loop
# (`prune_and_quantize`).  The cost is the block layers' exact storage: values at their
# bits, a bitmap of kept positions and the scales (`quantization.storage_bits`).


# %%
def quant_run(arm, bits, seed):
    t, model, _, calibration = dense_for(seed)
    if arm == "dense, RTN":
        quantization.quantize(model, bits, targets=BLOCKS)
    elif arm == "joint":
        quantization.prune_and_quantize(model, 0.5, bits, data=calibration, targets=BLOCKS)
    else:
        sl.prune(model, "sparsegpt", 0.5, data=calibration, targets=BLOCKS)
        method = "rtn" if arm.endswith("RTN") else "gptq"
        quantization.quantize(model, bits, method=method, data=calibration, targets=BLOCKS)
    fmt = "dense" if arm == "dense, RTN" else "bitmap"
    stored = sum(quantization.storage_bits(sl.masks.weight(model, n).detach(), bits, fmt=fmt)
                 for n in BLOCKS)  # fmt: skip
    scores = recipes.evaluate_run(model, t, names=BLOCKS)
    return {"perplexity": scores["perplexity"], "flags": scores["flags"],
            "bits_per_weight": stored / block_weights}  # fmt: skip


ARMS = ["dense, RTN", "sparsegpt, RTN", "sparsegpt, GPTQ", "joint"]
quant = sl.experiments.sweep(quant_run, {"arm": ARMS, "bits": BITS}, seeds=SEEDS, progress=False)
fig, ax = plt.subplots(figsize=(7, 4.5))
sl.viz.mean_lines(quant, "bits_per_weight", "perplexity", "arm", ax, at="bits",
                  point_label="{}b")  # fmt: skip
ax.axhline(full, color="k", linestyle="--", linewidth=0.8, label="dense, 32-bit")
ax.set_xlabel("bits per block weight (values, index bitmap, scales)")
ax.set(ylabel="test perplexity (mean over seeds)", title="Sparsity with quantization")
sl.viz.plain_log_axis(ax)
ax.legend(fontsize=8)
plt.show()
quant_means = quant.groupby(["arm", "bits"])[["bits_per_weight", "perplexity"]].mean()
display(quant_means.round(3))
sl.nb.show_flags(sl.flags.table(quant, ["arm", "bits"]))
four = quant[quant["bits"] == min(BITS, key=lambda b: abs(b - 4))]
gptq_vs_rtn = sl.stats.paired(four, "arm", "sparsegpt, GPTQ", "sparsegpt, RTN", metric="perplexity")
joint_vs_gptq = sl.stats.paired(four, "arm", "joint", "sparsegpt, GPTQ", metric="perplexity")
b4 = int(four["bits"].iloc[0])
JOINT = ppl_words(joint_vs_gptq.iloc[0])
md(
    f"At {b4} bits and 50%, in perplexity: GPTQ minus RTN after SparseGPT "
    f"{ppl_words(gptq_vs_rtn.iloc[0])}; joint minus SparseGPT-then-GPTQ {JOINT}.  The sparse "
    f"{b4}-bit model takes {quant_means.loc[('joint', b4), 'bits_per_weight']:.2f} bits per block "
    "weight against 32 dense: the bitmap costs 1 bit per position, kept or not."
)

# %% [markdown]
# ## A Hugging Face model
#
# The same calls prune `transformers` causal LMs.  Nothing downloads here: a tiny GPT-2 with
# random weights, from a config, shows the steps, not a result.  GPT-2's projections are
# `Conv1D` layers (an `(in, out)` weight): `sl.hf.to_linear` swaps them for equal
# `nn.Linear` ones and `sl.saving.save_pretrained` writes them back in GPT-2's layout, for
# `from_pretrained` to load.  For your own model, `AutoModelForCausalLM.from_pretrained` on
# a local checkpoint replaces this GPT-2, and token ids of real text the random ones.

# %%
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()
config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=32,
                                 bos_token_id=0, eos_token_id=0)  # fmt: skip
gpt2 = hf.to_linear(transformers.GPT2LMHeadModel(config).eval())
ids = torch.randint(0, 64, (16, 32), generator=torch.Generator().manual_seed(SEED))
sl.prune(gpt2, "sparsegpt", 0.5, data=ids[:8], targets=hf.decoder_targets(gpt2))
with tempfile.TemporaryDirectory() as folder:
    sl.saving.save_pretrained(gpt2, folder)
    back = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
same = math.isclose(hf.perplexity(back, ids[8:]), hf.perplexity(gpt2, ids[8:]), rel_tol=1e-6)
pruned = hf.decoder_targets(gpt2)
print(f"pruned layers: {len(pruned)}, sparsity {sl.sparsity(gpt2, pruned):.1%}")
print(f"reloaded from save_pretrained with the same perplexity: {same}")

# %% [markdown]
# ## Against the literature
#
# The papers' claims, judged by paired differences in mean log-likelihood per test character
# (method minus baseline: positive means the method is better), 95% intervals over seeds.


# %%
def log_gain(part, treatment, baseline, column="method"):
    """Per seed, log(perplexity of baseline) - log(perplexity of treatment)."""
    wide = part.pivot_table(index="seed", columns=column, values="perplexity")
    return (np.log(wide[baseline]) - np.log(wide[treatment])).dropna()


LARGEST = f"The largest input feature here is at most {norms.max():.1f} times the median one"
OUTLIER_EVIDENCE = (
    f"{LARGEST} (measured above), where Wanda's premise is the far larger outlier features of "
    f"LLMs; the controlled experiment shows what one does: an outlier of factor {high} {EFFECT}."
)
SIZE = f"The model has {block_weights:,} weights in its blocks, the papers' billions."
verdicts = []
for key, method in [("sparsegpt_beats_magnitude", "sparsegpt"), ("wanda_beats_magnitude", "wanda")]:
    for pattern in ["unstructured", "2:4"]:
        part = runs.query("pattern == @pattern & budget == 'uniform' & sparsity == 0.5")
        flagged = part[part["method"].isin([method, "magnitude"]) & (part["flags"] != "")]
        reason = OUTLIER_EVIDENCE if method == "wanda" else SIZE
        reason = f"{reason}  In perplexity, {order_words(pattern, 0.5)}."
        setting = f"decoder-only character LM, {pattern} 50% per layer, one-shot, test"
        seen = f"Flagged runs: {len(flagged)}." if len(flagged) else ""
        gain = log_gain(part, method, "magnitude")
        verdicts.append(sl.claims.judge(key, gain, setting=setting, measured=seen, reason=reason))
for method in ["wanda", "sparsegpt"]:
    part = runs.query("method == @method & pattern == 'unstructured' & sparsity == @top")
    gain = log_gain(part, "owl", "uniform", column="budget")
    setting = f"decoder-only character LM, {method}, {top:.0%}, one-shot, test"
    reason = f"{LARGEST}; OWL's premise is the far larger outliers of LLMs."
    verdicts.append(sl.claims.judge("owl_beats_uniform", gain, setting=setting, reason=reason))
display(sl.claims.table(verdicts, scale=1.0, unit="nats/char"))
md(sl.claims.report(verdicts, scale=1.0, unit=" nats/char"))

# %% [markdown]
# ## Summary

# %%
best = uniform.groupby(["method", "sparsity"])["perplexity"].mean().unstack()
at = 0.5 if 0.5 in best.columns else best.columns[0]
at_ppl = ", ".join(f"{m} {best.loc[m, at]:.2f}" for m in METHODS)
lines = [
    f"Dense: perplexity {full:.2f} over {len(SEEDS)} seeds; at {at:.0%} per layer {at_ppl}.",
    *(order_words(p, s) + "." for p, s in ORDERED),
    f"OWL at {top:.0%}, OWL minus uniform: {OWL_TEXT}.",
    f"A function-preserving outlier of factor {high} {EFFECT}.",
    f"At {b4} bits, joint minus SparseGPT-then-GPTQ in perplexity: {JOINT}.",
]
md("\n".join(f"- {line}" for line in lines))

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).  The checks measure: they run the
# experiment your answer is about.
#
# **1.** Calibrate on fewer windows: prune the seed-`SEED` dense model to 50% per layer with
# Wanda and with SparseGPT, calibrated on the first 16 of its calibration windows.  Which
# of the two suffers more, measured as its test perplexity divided by its perplexity with
# all `CALIBRATION_WINDOWS` windows: `"wanda"` or `"sparsegpt"`?  Why would magnitude not?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
@functools.cache  # the checks and the solutions ask for the same prunings
def pruned_with(method, windows=CALIBRATION_WINDOWS, sparsity=0.5, **options):
    """``(task, model)``: the seed-SEED dense model pruned to ``sparsity`` per layer by
    ``method``, calibrated on the first ``windows`` of its calibration windows."""
    t, model, _, calibration = dense_for(SEED)
    first = torch.cat([x for x, _ in calibration])[:windows]
    data = [(x, None) for x in first.split(64)]
    sl.prune(model, method, sparsity, budget="uniform", data=data, targets=BLOCKS, **options)
    return t, model


@functools.cache
def perplexity_with(*args, **options):
    """Test perplexity of ``pruned_with(*args, **options)``, as the library evaluates it."""
    t, model = pruned_with(*args, **options)
    return recipes.evaluate_run(model, t, names=BLOCKS)["perplexity"]


def check_1(answer, solution=False):
    rise = {m: perplexity_with(m, 16) / perplexity_with(m) for m in ("wanda", "sparsegpt")}
    hint = "Divide each method's perplexity with 16 windows by its perplexity with all of them."
    sl.nb.check(1, answer, lambda a: rise.get(a) == max(rise.values()), hint=hint,
                solution=solution)  # fmt: skip


# %%
answer_1 = None  # "wanda" or "sparsegpt"
check_1(answer_1)


# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  Wanda needs one norm per input feature; SparseGPT estimates each layer's
# whole input covariance and fits the kept weights to it, which takes more samples to
# estimate well.  Magnitude reads no data at all, so its masks do not depend on them.  The
# perplexities are measured here by hand, not by the check's `evaluate_run`: the exponential
# of the mean cross-entropy of every next character of the test windows.
def perplexity_by_hand(t, model):
    x, y = t.bundle.test.tensors
    with torch.no_grad():
        logits = model.eval()(x)  # (windows, characters, positions)
    log_p = torch.log_softmax(logits, dim=1).gather(1, y.unsqueeze(1))
    return math.exp(-float(log_p.mean()))


rise_1 = {}
for method in ("wanda", "sparsegpt"):
    few = perplexity_by_hand(*pruned_with(method, 16))
    every = perplexity_by_hand(*pruned_with(method))
    rise_1[method] = few / every
    print(f"{method}: perplexity {few:.3f} with 16 windows, {every:.3f} with all")
solution_1 = max(rise_1, key=rise_1.get)
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** Prune the seed-`SEED` dense model to 60% per layer with SparseGPT calibrated on the
# dense model's inputs (`sl.prune(..., sequential=False)`).  What is its test perplexity
# divided by that of the sequential pipeline (the default)?  Two decimals.


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_2(answer, solution=False):
    ratio = perplexity_with("sparsegpt", sparsity=0.6, sequential=False) / perplexity_with(
        "sparsegpt", sparsity=0.6
    )
    hint = "Prune twice, with `sequential=False` and without, then divide the perplexities."
    sl.nb.check(2, answer, ratio, hint=hint, tolerance=0.005, solution=solution)


# %%
answer_2 = None  # a ratio, e.g. 1.05
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  Sequentially, each layer is fitted to the inputs the already pruned layers
# give it, so it can correct part of their error; on the dense model's inputs every layer
# is fitted to inputs it will not see once the layers before it are pruned.  Measured by
# hand, as in solution 1, on the pruned models the check evaluates.
one_pass = perplexity_by_hand(*pruned_with("sparsegpt", sparsity=0.6, sequential=False))
in_sequence = perplexity_by_hand(*pruned_with("sparsegpt", sparsity=0.6))
solution_2 = round(one_pass / in_sequence, 2)
print(f"perplexity at 60%: dense inputs {one_pass:.3f}, sequential {in_sequence:.3f}")
check_2(solution_2, solution=True)

# %% [markdown]
# **3.** Make the outlier experiment remove an outlier instead: divide the LayerNorm gain
# and shift of the same feature by `c = 16` and multiply the weights that read it by 16
# (`with_outlier(model, calibration, 1 / 16)`).  By what factor does magnitude's test
# perplexity at 50% change, on seed `SEED`, against the unchanged model (`c = 1`)?  Two
# decimals.


# %% tags=["hide-input"] jupyter={"source_hidden": true}
@functools.cache  # the answer's check and the solution's
def magnitude_with_outlier(c):
    """Test perplexity of seed SEED's model with ``with_outlier(..., c)``, pruned by
    magnitude to 50% per layer."""
    t, model, _, calibration = dense_for(SEED)
    changed = with_outlier(model, calibration, c)
    sl.prune(changed, "magnitude", 0.5, budget="uniform", targets=BLOCKS)
    return recipes.evaluate_run(changed, t, names=BLOCKS)["perplexity"]


def check_3(answer, solution=False):
    perplexity = {c: magnitude_with_outlier(c) for c in (1, 1 / 16)}
    hint = "Prune both models by magnitude at 50% per layer and divide their perplexities."
    sl.nb.check(3, answer, perplexity[1 / 16] / perplexity[1], hint=hint, tolerance=0.005,
                solution=solution)  # fmt: skip


# %%
answer_3 = None  # a factor, e.g. 0.98
check_3(answer_3)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 3.  The weights that read the shrunk feature are now 16 times larger, so
# magnitude keeps them all, whatever they contribute; the rest of each row competes for
# what is left.  How much that costs depends on how many of the kept weights it displaces
# (one row in each of a few hundred is little): the factor says.  Wanda's scores, again, do
# not change.
shrunk = outlier_run("magnitude", 1 / 16, SEED)["perplexity"]
unchanged = outlier_run("magnitude", 1, SEED)["perplexity"]
solution_3 = round(shrunk / unchanged, 2)
print(f"magnitude at 50%: perplexity {shrunk:.3f} with the feature shrunk, {unchanged:.3f} without")
check_3(solution_3, solution=True)
