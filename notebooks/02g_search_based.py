# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---


# %% [markdown]
# # How to prune VI: searching instead of regularising (AMC, genetic search)
#
# **What you will learn:** how a search (AMC, a genetic algorithm) makes a network sparse
# by trying candidates and keeping the one that scores best: AMC learns the sparsity of
# each layer under a FLOPs budget, the genetic algorithm evolves the masks themselves; why
# the winner's own score is optimistic, and what the search costs next to magnitude
# pruning.
#
# This follows section 3.8 (search) of the survey.  Both searches are registered
# *criteria*: like any other criterion, the one `sl.criteria.get("amc")` returns prunes a
# trained network with its `prune` and leaves an ordinary masked model behind.  Chapter
# [02d](02d_regularization.ipynb) covers the methods that make a network sparse *while it
# trains* instead: a term in the loss, a learned threshold or a noise model (sections 3.6
# and 3.7).

# %%
import copy

import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display
from torch import nn

import sparsity_lab as sl
from sparsity_lab import recipes

# %% tags=["parameters"]
SMOKE = False
SEED = 0
N_TRAIN = None  # None: the default MNIST split (4000 training images)
DENSE_EPOCHS = None  # None: the dense recipe's epochs (the model AMC searches)
AMC_EPISODES = 300
GA_GENERATIONS = 40

# %%
if SMOKE:  # a quick pass through every cell, for CI
    N_TRAIN = 500
    DENSE_EPOCHS = 2
    AMC_EPISODES = 40
    GA_GENERATIONS = 8
# one thread in smoke mode: CI may run notebooks side by side, and small models lose more
# to thread contention than they gain from a second core
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1 if SMOKE else None)
DATA_OPTIONS = {} if N_TRAIN is None else {"n_train": N_TRAIN}


# %% [markdown]
# ## Searching instead of regularising
#
# **AMC** (He et al. 2018) treats the per-layer sparsities as actions of an agent.  Here a
# small policy proposes, layer by layer, a sparsity; the action is limited so that the
# FLOPs budget (here: remove 70% of the FLOPs) stays reachable; each layer is pruned by
# magnitude and the reward is the accuracy on the validation split *without* fine-tuning.
# He et al. train a DDPG agent (an actor-critic with continuous actions); the policy here
# is a linear map trained by REINFORCE, a plain policy gradient, with a moving-average
# baseline: a simpler learner for a search over three layers.  The best episode is chosen
# on the validation split, so its reward is optimistic: it is reported once on the test
# split.
# The network searched is the dense LeNet-300-100 of the recipe (`recipes.dense`).

# %%
task, dense_model, dense_info = recipes.dense("lenet300", "mnist", SEED, epochs=DENSE_EPOCHS,
                                              **DATA_OPTIONS)  # fmt: skip
val_data = tuple(task.bundle.val.tensors)  # the reward: the best episode is chosen on it
test_data = tuple(task.bundle.test.tensors)  # used once, to report
amc = sl.criteria.get("amc", episodes=AMC_EPISODES, eval_data=test_data)
searched = copy.deepcopy(dense_model)
amc.prune(searched, sl.pruning.default_targets(searched), 0.7,
          pattern=sl.patterns.get("unstructured"), budget="global",
          context=sl.criteria.Context(data=val_data, seed=SEED))  # fmt: skip
episodes = pd.DataFrame(amc.history)
fig, axes = plt.subplots(1, 2, figsize=(12, 3.5), layout="constrained")
axes[0].plot(episodes["episode"], episodes["reward"], ".", alpha=0.3, label="each episode")
axes[0].plot(episodes["episode"], episodes["reward"].rolling(20, min_periods=1).mean(),
             label="mean of the last 20")  # fmt: skip
axes[0].legend()
axes[0].set_xlabel("episode")
axes[0].set_ylabel("validation accuracy after pruning (reward)")
pd.Series(amc.result["layer_sparsity"]).plot.bar(ax=axes[1], rot=0)
axes[1].set_ylabel("sparsity")
axes[1].set_title("best episode's layer sparsities")
plt.show()
uniform = sl.prune(copy.deepcopy(dense_model), "magnitude", 0.7, budget="uniform")
searched_run = recipes.evaluate_run(searched, task)
uniform_run = recipes.evaluate_run(uniform, task, target_sparsity=0.7)
assert abs(searched_run["accuracy"] - amc.result["eval_accuracy"]) < 1e-9  # same test data
flops_table = sl.report(searched).set_index("name")
kept_flops = flops_table.loc["total", "sparse_flops"] / flops_table.loc["total", "dense_flops"]
assert kept_flops <= 0.3
uni_table = sl.report(uniform).set_index("name")
uniform_kept = uni_table.loc["total", "sparse_flops"] / uni_table.loc["total", "dense_flops"]
amc_flags = [f for f in (searched_run["flags"], uniform_run["flags"], dense_info["flags"]) if f]
n = len(episodes) // 5
display(
    Markdown(
        f"Mean reward over the first {n} episodes: {episodes.reward[:n].mean():.2%}, over the "
        f"last {n}: {episodes.reward[-n:].mean():.2%}.  The best episode keeps "
        f"{kept_flops:.1%} of the FLOPs and scored {amc.result['reward']:.2%} on the "
        f"{len(val_data[1])} validation images that chose it; on the {len(test_data[1])} test "
        f"images, before any fine-tuning, it scores {searched_run['accuracy']:.2%}.  70% "
        f"uniform magnitude pruning keeps {uniform_kept:.1%} of the FLOPs and scores "
        f"{uniform_run['accuracy']:.2%} on the test images; the dense model "
        f"{dense_info['test_accuracy']:.2%} (one seed).  "
        + (f"Sanity flags: {'; '.join(amc_flags)}." if amc_flags else "No sanity flag fired.")
    )
)

# %% [markdown]
# **Genetic search** (Whitley et al. 1990) evolves the masks themselves: a population of
# masks with the same number of zeros per layer, crossed over and mutated, the fittest
# (lowest loss on the validation points) surviving.  It is hopeless for large networks but
# instructive on a tiny one: here a 2-8-2 network on two moons, pruned to 60%.  The moons
# are split into training, validation (the fitness) and test points; the winner is scored
# once on the test points.

# %%
from sklearn.datasets import make_moons

x_np, y_np = make_moons(600, noise=0.15, random_state=SEED)
x_all, y_all = torch.tensor(x_np, dtype=torch.float32), torch.tensor(y_np)
moons_train, moons_val, moons_test = [
    (x_all[i : i + 200], y_all[i : i + 200]) for i in (0, 200, 400)
]
torch.manual_seed(SEED)
tiny = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
opt = torch.optim.Adam(tiny.parameters(), lr=0.05)
for _ in range(200):
    opt.zero_grad()
    F.cross_entropy(tiny(moons_train[0]), moons_train[1]).backward()
    opt.step()
GA_POPULATION = 24
ga = sl.criteria.get("evolutionary", generations=GA_GENERATIONS, population=GA_POPULATION,
                     eval_data=moons_test)  # fmt: skip
evolved = copy.deepcopy(tiny)
ga.prune(evolved, ["0.weight", "2.weight"], 0.6, pattern=sl.patterns.get("unstructured"),
         budget="uniform", context=sl.criteria.Context(data=moons_val, seed=SEED))  # fmt: skip
by_magnitude = sl.prune(copy.deepcopy(tiny), "magnitude", 0.6, budget="uniform")
generations = pd.DataFrame(ga.history)


@torch.no_grad()
def moons_loss(net, data):
    return float(F.cross_entropy(net(data[0]), data[1]))


losses = {
    split: {name: moons_loss(net, data) for name, net in
            [("dense", tiny), ("magnitude", by_magnitude), ("evolved", evolved)]}
    for split, data in [("val", moons_val), ("test", moons_test)]
}  # fmt: skip
assert abs(losses["test"]["evolved"] - ga.result["eval_loss"]) < 1e-5
fig, ax = plt.subplots(figsize=(6, 3.3))
ax.plot(generations["generation"], generations["best"], label="best in population")
ax.plot(generations["generation"], generations["mean"], label="population mean")
ax.axhline(losses["val"]["magnitude"], color="gray", linestyle="--", label="magnitude pruning")
ax.set_xlabel("generation")
ax.set_ylabel("validation loss of the masked network")
ax.legend(fontsize=8)
plt.show()
test_loss = losses["test"]
display(
    Markdown(
        f"Loss at 60% sparsity without retraining, on the {len(moons_test[1])} test points: "
        f"magnitude {test_loss['magnitude']:.3f}, evolved mask {test_loss['evolved']:.3f} "
        f"(dense {test_loss['dense']:.3f}).  On the {len(moons_val[1])} validation points "
        f"that chose it, the evolved mask's loss was {losses['val']['evolved']:.3f} "
        f"(magnitude {losses['val']['magnitude']:.3f})."
    )
)

# %% [markdown]
# ## Summary
#
# - A search selects on the data that scores its candidates, so its own score of the
#   winner is optimistic; the winner is scored once on a split the search never saw.
#
# What this notebook's runs measured:

# %%
ga_better = test_loss["evolved"] < test_loss["magnitude"]
display(
    Markdown(
        f"- AMC's best allocation keeps {kept_flops:.1%} of the FLOPs (budget 30%) and scores "
        f"{searched_run['accuracy']:.2%} on the test images against "
        f"{uniform_run['accuracy']:.2%} for uniform magnitude pruning, which keeps "
        f"{uniform_kept:.1%} of the FLOPs (one seed, chosen on validation).\n"
        f"- On the tiny net the evolved mask's test loss is "
        f"{abs(test_loss['evolved'] - test_loss['magnitude']):.3f} "
        f"{'below' if ga_better else 'above'} magnitude pruning's (one seed, one split): the "
        f"genetic search {'found a better' if ga_better else 'did not find a better'} mask on "
        f"held-out points, at the cost of {ga.evaluations:,} fitness evaluations on the "
        f"validation points ({GA_GENERATIONS} generations of a {GA_POPULATION}-mask "
        f"population, its {ga.elite} best carried over unscored) where magnitude pruning "
        f"needs none."
    )
)

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).
#
# **1.** AMC's best episode set one sparsity per layer (`amc.result["layer_sparsity"]`).
# From those sparsities and the layers' sizes alone, what fraction of the dense FLOPs
# does its allocation keep?  Three decimals, e.g. `0.287`.  Why are the layers' sizes
# enough for LeNet-300-100, and what more would a convolutional layer need?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_1(answer, solution=False):
    hint = (
        "Every weight of a Linear layer costs the same two FLOPs per example: weight each "
        "layer's kept share by its number of weights."
    )
    # the kept FLOPs as the library's report counts them, from the pruned model's nonzeros
    sl.nb.check(1, answer, kept_flops, hint=hint, tolerance=0.0005, solution=solution)


# %%
answer_1 = None  # a fraction of the dense FLOPs, e.g. 0.287
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  A Linear layer applies each weight once per example, a multiply and an add,
# so its FLOPs are 2 x its kept weights and the factor 2 cancels in the ratio: the kept
# FLOPs are the kept weights over all weights.  A convolution applies each weight at every
# output position, so its weights would count times its number of positions (the output's
# height x width), and a layer with large feature maps would weigh more than its size.
sizes = {name: dense_model.get_parameter(name).numel() for name in amc.result["layer_sparsity"]}
kept = sum((1 - s) * sizes[name] for name, s in amc.result["layer_sparsity"].items())
solution_1 = round(kept / sum(sizes.values()), 3)
for name, s in amc.result["layer_sparsity"].items():
    print(f"{name}: {s:.1%} of its {sizes[name]:,} weights pruned")
print(f"kept {kept:,.0f} of {sum(sizes.values()):,} weights: {solution_1}")
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** How many fitness evaluations did the genetic search make?  Answer in closed form
# from its settings: the population size `GA_POPULATION`, the number of generations
# `GA_GENERATIONS` and the number of best masks carried over unscored, `ga.elite`.  Does
# that count depend on the size of the network, and why is the search still hopeless for
# large ones?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_2(answer, solution=False):
    hint = (
        "The first population is scored once; after that, each generation scores only the "
        "children that are not carried over."
    )
    # the count the search kept while it ran
    sl.nb.check(2, answer, ga.evaluations, hint=hint, solution=solution)


# %%
answer_2 = None  # a number of evaluations, e.g. 1000
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  The starting population (the magnitude mask and random ones) is scored once:
# GA_POPULATION evaluations.  Each generation keeps its ga.elite best with their scores and
# breeds the other GA_POPULATION - ga.elite, each scored once: in all
# GA_POPULATION + GA_GENERATIONS * (GA_POPULATION - ga.elite).  The count does not depend on
# the network, but each evaluation is a forward pass over the validation data, and the
# number of masks to search grows combinatorially with the weights, so a fixed number of
# evaluations explores a vanishing share of them.
solution_2 = GA_POPULATION + GA_GENERATIONS * (GA_POPULATION - ga.elite)
print(f"{GA_POPULATION} + {GA_GENERATIONS} x ({GA_POPULATION} - {ga.elite}) = {solution_2}")
check_2(solution_2, solution=True)
