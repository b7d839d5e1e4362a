"""Published claims the notebooks test, and verdicts computed from measured results.

Each :class:`Claim` names its paper, the setting it was made in, what it says, and the
published numbers; it states the claim as a relation between a *treatment* and a
*baseline* arm of an experiment (``greater``: the treatment is better; ``at_least``: it is
no worse than ``margin`` below the baseline; ``within``: the two are within ``margin`` of
each other).  :func:`verdict` compares the paired per-seed differences ``treatment -
baseline`` measured here with the claim and answers:

- **reproduced**: the whole paired interval agrees with the claim;
- **not reproduced**: the whole interval contradicts it;
- **inconclusive**: the interval covers both (more seeds would decide), or there is a
  single seed.

A notebook's "against the literature" paragraph is :func:`report` of its verdicts, so its
words follow its numbers.  A claim that is not reproduced is reported as such, with the
measured reason the notebook passes in ``reason`` (model size, training length, data).

Example::

    diffs = stats.paired(df, "method", "snip", "random", metric="test_accuracy",
                         by="sparsity")
    row = diffs[diffs.sparsity == 0.9].iloc[0]
    v = verdict("snip_beats_random_init", row)
    display(Markdown(report([v])))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from .registry import did_you_mean
from .stats import SPREAD_TOLERANCE, mean_interval

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
RELATIONS = ("greater", "at_least", "within")


@dataclass(frozen=True)
class Claim:
    """One published claim, as a relation between two arms of an experiment.

    ``margin`` is in the metric's own units (0.01 is one point of accuracy).
    """

    key: str
    paper: str
    setting: str
    statement: str
    published: str
    treatment: str
    baseline: str
    relation: str = "greater"
    margin: float = 0.0

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS:
            raise ValueError(f"relation must be one of {RELATIONS}, got {self.relation!r}")
        if self.margin < 0 or (self.relation == "within" and self.margin == 0):
            raise ValueError(f"claim {self.key!r}: margin must be >= 0 (> 0 for 'within')")


def _claims(*claims: Claim) -> dict[str, Claim]:
    return {c.key: c for c in claims}


#: The claims the notebooks test, by key.
CLAIMS: dict[str, Claim] = _claims(
    Claim(
        "heads_prunable_at_test_time",
        "Michel et al. 2019, Are sixteen heads really better than one? (NeurIPS)",
        "Transformer-large on WMT14 En-Fr and BERT-base on MNLI; heads ranked by the "
        "gradient-based importance |dL/d xi_h| and removed at test time, no fine-tuning",
        "a large share of a trained transformer's attention heads can be removed at test "
        "time with little loss",
        "20% (WMT) and 40% (BERT) of the heads removed without noticeable loss",
        treatment="pruned heads",
        baseline="all heads",
        relation="at_least",
        margin=0.01,
    ),
    Claim(
        "sparsegpt_beats_magnitude",
        "Frantar & Alistarh 2023, SparseGPT: massive language models can be accurately "
        "pruned in one-shot (ICML)",
        "OPT and BLOOM language models (up to 175B), one-shot, every linear layer of the "
        "blocks at the same sparsity, 128 calibration sequences, no fine-tuning",
        "at 50% sparsity (unstructured and 2:4) SparseGPT's layer-wise reconstruction keeps "
        "far more of the dense model's quality than magnitude pruning",
        "qualitative claim: near-dense perplexity at 50% where magnitude pruning collapses",
        treatment="sparsegpt",
        baseline="magnitude",
    ),
    Claim(
        "wanda_beats_magnitude",
        "Sun et al. 2024, A simple and effective pruning approach for large language models (ICLR)",
        "LLaMA 7B-65B, one-shot, per-output comparison groups, every linear layer of the "
        "blocks at the same sparsity, 128 calibration sequences, no fine-tuning",
        "scoring weights by |W| times their input's norm (Wanda) keeps more of the dense "
        "model's quality than magnitude pruning at the same sparsity, without weight updates",
        "qualitative claim: at 50% unstructured and 2:4 Wanda's perplexity is far below "
        "magnitude pruning's and close to SparseGPT's",
        treatment="wanda",
        baseline="magnitude",
    ),
    Claim(
        "owl_beats_uniform",
        "Yin et al. 2024, Outlier weighed layerwise sparsity (OWL): a missing secret sauce "
        "for pruning LLMs to high sparsity (ICML)",
        "LLaMA 7B-65B and OPT, one-shot with Wanda or SparseGPT, layer sparsities set by each "
        "layer's share of outlier scores (M = 5, lambda = 0.08 in most runs), no fine-tuning",
        "at high sparsity, giving layers with more outlier features a lower sparsity (OWL) "
        "keeps more of the dense model's quality than the same sparsity in every layer",
        "qualitative claim: at 70% sparsity OWL lowers Wanda's and SparseGPT's perplexity "
        "far below that of the uniform layer sparsity",
        treatment="owl",
        baseline="uniform",
    ),
    Claim(
        "lamp_beats_global_magnitude",
        "Lee et al. 2021, Layer-adaptive sparsity for the magnitude-based pruning (ICLR)",
        "VGG-16, ResNet-20, DenseNet-121, EfficientNet-B0 on CIFAR-10, iterative magnitude "
        "pruning with retraining",
        "LAMP's layer-adaptive magnitude scores keep more accuracy than a global magnitude "
        "threshold, the more so at extreme sparsity",
        "qualitative claim",
        treatment="lamp",
        baseline="global_magnitude",
    ),
    Claim(
        "cram_one_shot_beats_sgd",
        "Peste et al. 2023, CrAM (ICLR)",
        "ResNet-18/50 on CIFAR-10 and ImageNet, one-shot magnitude pruning with BatchNorm "
        "re-estimation, no fine-tuning",
        "a model trained with CrAM keeps more accuracy after one-shot pruning than one "
        "trained with SGD",
        "qualitative claim",
        treatment="cram",
        baseline="sgd",
    ),
    Claim(
        "early_bird_matches_late",
        "You et al. 2020, Drawing early-bird tickets (ICLR)",
        "VGG-16 and PreResNet-101 on CIFAR-10/100, channel masks",
        "a ticket drawn as soon as the mask settles early in training is as accurate as "
        "pruning after full training",
        "qualitative claim: masks settle in the first 10-20% of epochs and early-bird "
        "tickets match or beat pruning after training",
        treatment="early-bird",
        baseline="late",
        relation="at_least",
        margin=0.01,
    ),
    Claim(
        "synflow_beats_snip_extreme",
        "Tanaka et al. 2020, Pruning neural networks without any data by iteratively "
        "conserving synaptic flow (NeurIPS)",
        "VGG and ResNet on CIFAR-10/100 and Tiny ImageNet, pruning at initialisation",
        "SynFlow avoids layer collapse and stays trainable at extreme sparsity where SNIP "
        "collapses",
        "qualitative claim: SNIP and GraSP collapse at extreme compression, SynFlow does not",
        treatment="synflow",
        baseline="snip",
    ),
    Claim(
        "pruned_models_more_uncertain",
        "Iofinova et al. 2023, Bias in pruned vision models: in-depth analysis and "
        "countermeasures (CVPR)",
        "ResNet-18/MobileNet on CelebA attributes, populations of dense and pruned models",
        "pruned models are less certain of their outputs than dense ones, the more so at "
        "high sparsity",
        "qualitative claim",
        treatment="pruned",
        baseline="dense",
    ),
    Claim(
        "magnitude_beats_random_after_training",
        "Blalock et al. 2020, What is the state of neural network pruning? (MLSys)",
        "ShrinkBench: ResNet-56 and VGG on CIFAR-10, ResNet-18 on ImageNet; magnitude and "
        "random pruning of a trained network at the same compression, then fine-tuned",
        "pruning the smallest weights of a trained network loses far less than pruning at random",
        "qualitative claim: the random baseline lies below magnitude pruning in the paper's "
        "compression-accuracy curves",
        treatment="magnitude",
        baseline="random",
    ),
    Claim(
        "magnitude_keeps_dense_accuracy",
        "Han et al. 2015, Learning both weights and connections (NeurIPS)",
        "LeNet-300-100 on MNIST, pruned after training, then retrained",
        "a trained network pruned by magnitude and retrained keeps its dense accuracy at "
        "high sparsity",
        "LeNet-300-100 pruned 12x (92%) at 1.59% error against 1.64% dense",
        treatment="magnitude",
        baseline="dense",
        relation="at_least",
        margin=0.01,
    ),
    Claim(
        "gradual_beats_one_shot",
        "Hoefler et al. 2021, Sparsity in Deep Learning (JMLR), section 2.4, on the gradual "
        "schedule of Zhu & Gupta 2018, To prune, or not to prune (ICLR workshop)",
        "the survey's argument for gradual schedules; Zhu & Gupta prune InceptionV3, "
        "MobileNet and LSTMs gradually and compare with dense and small dense models, not "
        "with pruning once",
        "pruning gradually during training ends more accurate than pruning once and "
        "fine-tuning for the same budget",
        "qualitative: the survey recommends pruning gradually over pruning once; gradual "
        "pruning reaches 87.5% sparse InceptionV3 at 74.6% top-1 against 78.1% dense (92.5% "
        "against 94.3% top-5)",
        treatment="gradual",
        baseline="one-shot",
    ),
    Claim(
        "iterative_beats_one_shot",
        "Han et al. 2015; Frankle & Carbin 2019 (ICLR)",
        "LeNet-300-100 and Conv-2/4/6 on MNIST/CIFAR-10",
        "pruning in several rounds of prune-and-retrain beats pruning once at high sparsity",
        "iterative pruning finds winning tickets at smaller sizes than one-shot",
        treatment="iterative",
        baseline="one-shot",
    ),
    Claim(
        "init_masks_carry_layer_ratios_only",
        "Frankle et al. 2021, Pruning neural networks at initialization: why "
        "are we missing the mark? (ICLR)",
        "VGG-16, ResNet-20/18 on CIFAR-10 and Tiny ImageNet, SNIP/GraSP/SynFlow",
        "shuffling a mask found at initialisation within each layer does not hurt: the "
        "methods find per-layer sparsities, not which weights matter",
        "shuffled SNIP/SynFlow masks match the originals within noise up to ~98% sparsity",
        treatment="shuffled",
        baseline="original",
        relation="within",
        margin=0.01,
    ),
    Claim(
        "snip_beats_random_init",
        "Lee et al. 2019, SNIP (ICLR)",
        "LeNet-300-100 and LeNet-5 on MNIST at 90-99% sparsity",
        "connection sensitivity at initialisation beats a random mask",
        "LeNet-300-100 at 95% sparse: 2.4% error",
        treatment="snip",
        baseline="random",
    ),
    Claim(
        "woodfisher_beats_magnitude",
        "Singh & Alistarh 2020, WoodFisher (NeurIPS)",
        "MLP on MNIST and ResNet-50 on ImageNet, one-shot",
        "second-order (WoodFisher) pruning keeps more accuracy than global magnitude, the "
        "more so at high sparsity",
        "one-shot ResNet-50 at 80%: +8.5 points over global magnitude",
        treatment="woodfisher",
        baseline="global_magnitude",
    ),
    Claim(
        "rigl_beats_set",
        "Evci et al. 2020, Rigging the lottery (ICML)",
        "ResNet-50 on ImageNet, 80-90% sparse",
        "growing by gradient magnitude (RigL) beats growing at random (SET)",
        "ResNet-50 at 90%, uniform budget: RigL 72.0% against SET 69.6% (1x training)",
        treatment="rigl",
        baseline="set",
    ),
    Claim(
        "set_beats_static",
        "Mocanu et al. 2018, Scalable training ... adaptive sparse connectivity (Nat. Commun.)",
        "MLPs on MNIST, CIFAR-10 and others",
        "re-wiring a random sparse network during training beats keeping it fixed",
        "SET-MLP above the static-sparse MLP on every data set",
        treatment="set",
        baseline="static",
    ),
    Claim(
        "snfs_beats_set",
        "Dettmers & Zettlemoyer 2019, Sparse networks from scratch: faster training without "
        "losing performance (arXiv:1907.04840)",
        "LeNet-300-100 and LeNet-5 on MNIST, VGG and WRN on CIFAR-10, ResNet-50 on ImageNet",
        "regrowing and redistributing weights by the momentum of their gradients (sparse "
        "momentum) beats regrowing at random (SET) at the same sparsity",
        "qualitative claim: sparse momentum above SET, DeepR and DSR in every comparison",
        treatment="snfs",
        baseline="set",
    ),
    Claim(
        "dsr_beats_static",
        "Mostafa & Wang 2019, Parameter efficient training of deep convolutional neural "
        "networks by dynamic sparse reparameterization (ICML)",
        "WRN-28-2 on CIFAR-10 and ResNet-50 on ImageNet at equal parameter counts",
        "moving a fixed parameter budget between layers during training (DSR) beats a "
        "static sparse network of the same size",
        "qualitative claim: DSR above the static sparse network at every budget",
        treatment="dsr",
        baseline="static",
    ),
    Claim(
        "topkast_matches_rigl",
        "Jayakumar et al. 2020, Top-KAST: Top-K always sparse training (NeurIPS)",
        "ResNet-50 on ImageNet, 80-95% forward sparsity",
        "keeping the backward pass sparse as well (Top-KAST) costs no accuracy against "
        "RigL at the same forward sparsity",
        "qualitative claim: Top-KAST comparable to RigL at 80% and 90%",
        treatment="topkast",
        baseline="rigl",
        relation="at_least",
        margin=0.005,
    ),
    Claim(
        "dpf_beats_gmp",
        "Lin et al. 2020, Dynamic model pruning with feedback (ICLR)",
        "ResNet and WideResNet on CIFAR-10, ResNet-50 on ImageNet, unstructured, same epochs",
        "re-choosing the mask from dense weights that keep training (pruning with feedback) "
        "beats incremental gradual magnitude pruning at the same sparsity",
        "qualitative claim: DPF above incremental pruning (Zhu & Gupta 2017) at every "
        "sparsity reported",
        treatment="dpf",
        baseline="gmp",
    ),
    Claim(
        "supermask_matches_trained",
        "Ramanujan et al. 2020, What's hidden in a randomly weighted neural network? (CVPR)",
        "Conv-2 to Conv-8 on CIFAR-10 and wide ResNets on ImageNet, weights left at signed "
        "constants, edge-popup scores, about half the weights kept",
        "a random network that is wide enough contains a subnetwork that, without any "
        "weight training, is about as accurate as the same network trained",
        "qualitative claim: the supermask reaches the trained network's accuracy as width "
        "grows; a random Wide ResNet-50 hides one that matches a trained ResNet-34",
        treatment="edge_popup",
        baseline="trained dense",
        relation="at_least",
        margin=0.02,
    ),
    Claim(
        "acdc_matches_gmp",
        "Peste et al. 2021, AC/DC (NeurIPS)",
        "ResNet-50 on ImageNet, 80-90% sparse, same training length",
        "the sparse model of AC/DC matches or beats gradual magnitude pruning",
        "ResNet-50 at 90%: AC/DC 75.0% against GMP 73.9%",
        treatment="acdc",
        baseline="gmp",
        relation="at_least",
        margin=0.005,
    ),
    Claim(
        "acdc_dense_near_dense",
        "Peste et al. 2021, AC/DC (NeurIPS)",
        "ResNet-50 on ImageNet, 80-90% sparse, same training length",
        "the dense member of AC/DC (taken at the end of its last decompressed phase) is "
        "close to the dense baseline",
        "qualitative claim (the paper's dense AC/DC models)",
        treatment="acdc_dense",
        baseline="dense",
        relation="at_least",
        margin=0.01,
    ),
    Claim(
        "cram_one_shot_keeps_dense",
        "Peste et al. 2023, CrAM (ICLR)",
        "ResNet-18/50 on CIFAR-10 and ImageNet, one-shot magnitude pruning with BatchNorm "
        "re-estimation, no fine-tuning",
        "a CrAM model pruned once to a sparsity it trained for keeps its dense accuracy",
        "qualitative claim (ResNet-50 on ImageNet pruned one-shot to 70-80%)",
        treatment="cram_one_shot",
        baseline="cram_dense",
        relation="at_least",
        margin=0.01,
    ),
    Claim(
        "cram_dense_matches_sgd",
        "Peste et al. 2023, CrAM (ICLR)",
        "ResNet-18/50 on CIFAR-10 and ImageNet",
        "the dense model trained with CrAM+ is as accurate as one trained with SGD",
        "ResNet-50 ImageNet: CrAM+ dense 77.3% against 76.9% for SGD",
        treatment="cram_plus",
        baseline="sgd",
        relation="at_least",
        margin=0.005,
    ),
    Claim(
        "tickets_beat_reinit",
        "Frankle & Carbin 2019, The lottery ticket hypothesis (ICLR)",
        "LeNet-300-100 on MNIST, Conv-2/4/6 on CIFAR-10",
        "a winning ticket (mask and initial weights) trains better than the same mask "
        "re-initialised",
        "LeNet-300-100 at 3.6% of its weights: the ticket stays near dense accuracy while "
        "re-initialised nets fall well below",
        treatment="ticket",
        baseline="reinit",
    ),
    Claim(
        "large_sparse_beats_small_dense",
        "Zhu & Gupta 2018, To prune, or not to prune (ICLR workshop)",
        "InceptionV3, MobileNet, LSTMs at equal numbers of nonzeros",
        "a large pruned model beats a small dense model with as many nonzero weights",
        "sparse MobileNet 75% beats dense 0.5-width MobileNet at equal nonzeros by ~4 points",
        treatment="large_sparse",
        baseline="small_dense",
    ),
    Claim(
        "occam_hill",
        "Hoefler et al. 2021, survey section 2.1 (JMLR); Bartoldson et al. 2020 (NeurIPS)",
        "small networks on small data; moderate pruning",
        "moderate pruning can improve test accuracy over the dense model",
        "gains of a fraction of a point at moderate sparsity in several studies",
        treatment="pruned",
        baseline="dense",
    ),
    Claim(
        "unstructured_beats_channel",
        "Mao et al. 2017, Exploring the granularity of sparsity in CNNs (CVPR workshop)",
        "AlexNet, VGG-16, ResNet on ImageNet at equal sparsity",
        "fine-grained (unstructured) sparsity keeps more accuracy than coarse (channel) sparsity",
        "at equal sparsity, coarser granularity loses accuracy",
        treatment="unstructured",
        baseline="channel",
    ),
    Claim(
        "threshold_calibration_helps_hurt_classes",
        "Iofinova et al. 2023, Bias in pruned vision models: in-depth analysis and "
        "countermeasures (CVPR)",
        "ResNet-18 on CelebA attributes, per-attribute thresholds chosen on validation data",
        "per-label threshold calibration recovers part of the accuracy pruning costs the "
        "labels it hurts most",
        "qualitative claim",
        treatment="calibrated",
        baseline="uncalibrated",
    ),
    Claim(
        "magnitude_matches_l0",
        "Gale et al. 2019, The state of sparsity in deep neural networks (arXiv 1902.09574)",
        "Transformer on WMT and ResNet-50 on ImageNet at equal budgets",
        "magnitude pruning is as good as L0 regularisation",
        "ResNet-50 at 90%: magnitude 73.9% against L0 and VD not better",
        treatment="gmp",
        baseline="l0_hard_concrete",
        relation="at_least",
        margin=0.01,
    ),
    Claim(
        "magnitude_matches_variational_dropout",
        "Gale et al. 2019, The state of sparsity in deep neural networks (arXiv 1902.09574)",
        "Transformer on WMT and ResNet-50 on ImageNet at equal budgets",
        "magnitude pruning is as good as variational dropout",
        "ResNet-50 at 90%: magnitude 73.9% against L0 and VD not better",
        treatment="gmp",
        baseline="variational_dropout",
        relation="at_least",
        margin=0.01,
    ),
    Claim(
        "sparse_models_transfer",
        "Iofinova et al. 2022, How well do sparse ImageNet models transfer? (CVPR)",
        "ResNet-50 pretrained on ImageNet, linear and full fine-tuning on 12 data sets",
        "sparse models transfer about as well as dense ones with full fine-tuning, with a "
        "few points lost at high sparsity",
        "80% sparse: within about 1 point of dense on most tasks",
        treatment="sparse",
        baseline="dense",
        relation="at_least",
        margin=0.02,
    ),
    Claim(
        "lenet_stable_at_init",
        "Frankle et al. 2020, Linear mode connectivity and the lottery ticket hypothesis (ICML)",
        "LeNet-300-100 on MNIST; two copies trained from the same weights with different "
        "data orders, test error along the line between the two trained networks",
        "LeNet-300-100 is stable to SGD noise from initialisation: the error barrier between "
        "two trainings from theta_0 is about zero (the paper's threshold: 2 points), for the "
        "dense network and for IMP's sparse subnetworks",
        "LeNet: instability about 0 from k = 0, dense and sparse (deeper ResNet and VGG "
        "networks only from k > 0)",
        treatment="lowest accuracy on the line",
        baseline="mean accuracy of its ends",
        relation="at_least",
        margin=0.02,
    ),
    Claim(
        "lr_rewinding_beats_fine_tuning",
        "Renda et al. 2020, Comparing rewinding and fine-tuning in neural network pruning (ICLR)",
        "ResNet-56/110 on CIFAR-10, ResNet-50 on ImageNet and GNMT; magnitude pruning, the "
        "pruned network retrained for the same number of epochs three ways",
        "retraining the pruned network from its trained weights with the original "
        "learning-rate schedule (learning-rate rewinding) reaches higher accuracy than "
        "fine-tuning it at the schedule's final, small learning rate",
        "qualitative claim: learning-rate rewinding above fine-tuning at every sparsity and "
        "retraining budget studied",
        treatment="lr_rewinding",
        baseline="fine_tuning",
    ),
    Claim(
        "lr_rewinding_matches_weight_rewinding",
        "Renda et al. 2020, Comparing rewinding and fine-tuning in neural network pruning (ICLR)",
        "as lr_rewinding_beats_fine_tuning; weight rewinding resets the kept weights to "
        "their values early in training (theta_k) and replays the schedule",
        "learning-rate rewinding matches or beats weight rewinding at the same retraining budget",
        "qualitative claim: learning-rate rewinding at least as accurate as weight "
        "rewinding in every setting studied",
        treatment="lr_rewinding",
        baseline="weight_rewinding",
        relation="at_least",
        margin=0.005,
    ),
    Claim(
        "dsd_beats_continued_training",
        "Han et al. 2017, DSD: dense-sparse-dense training for deep neural networks (ICLR)",
        "GoogLeNet, VGG-16, ResNet-18/50 on ImageNet, LSTMs and DeepSpeech; a trained dense "
        "network pruned 30-50% and retrained, then the mask removed and the whole network "
        "retrained at a tenth of the learning rate",
        "the dense network after DSD is more accurate than the baseline, and than the "
        "baseline trained on for the same extra epochs",
        "ImageNet top-1: GoogLeNet +1.1, VGG-16 +4.3, ResNet-18 +1.2, ResNet-50 +1.1 points",
        treatment="dsd",
        baseline="continued",
    ),
)


def get(key: str) -> Claim:
    """The claim ``key`` of :data:`CLAIMS`, with a suggestion for a misspelt key."""
    if key not in CLAIMS:
        raise KeyError(f"unknown claim {key!r}.{did_you_mean(key, list(CLAIMS))}")
    return CLAIMS[key]


@dataclass(frozen=True)
class Verdict:
    """The measured result against one claim."""

    claim: Claim
    status: str
    mean: float
    ci_low: float
    ci_high: float
    n: int
    setting: str = ""
    reason: str = ""
    #: The arms of the compared runs that raised sanity flags (a paired row's ``flagged``).
    flagged: str = ""

    def numbers(self, scale: float = 100.0, unit: str = " points") -> str:
        """``"+1.7 points [+0.7, +2.7], 3 seeds (paired)"``."""
        if self.n < 2:
            return f"{self.mean * scale:+.1f}{unit}, one seed (no interval)"
        if self.ci_high - self.ci_low <= 2 * SPREAD_TOLERANCE:
            return (
                f"{self.mean * scale:+.1f}{unit} on each of {self.n} seeds (no spread, no interval)"
            )
        return (
            f"{self.mean * scale:+.1f}{unit} [{self.ci_low * scale:+.1f}, "
            f"{self.ci_high * scale:+.1f}], {self.n} seeds (paired)"
        )

    def sentence(self, scale: float = 100.0, unit: str = " points") -> str:
        """The verdict in one Markdown sentence, with the published and measured numbers."""
        c = self.claim
        where = f" ({self.setting})" if self.setting else ""
        text = (
            f"**{self.status.capitalize()}**: {c.statement} ({c.paper}; {c.published}). "
            f"Here{where}, {c.treatment} minus {c.baseline} is {self.numbers(scale, unit)}"
        )
        if c.relation != "greater":
            bound = f"{c.margin * scale:.1f}{unit}"
            text += (
                f"; the claim allows {c.treatment} to be at most {bound} below"
                if c.relation == "at_least"
                else f"; the claim is a difference within ±{bound}"
            )
        text += "."
        if self.reason:
            text += f" {self.reason}"
        return text


def decide(relation: str, low: float, high: float, n: int, margin: float = 0.0) -> str:
    """The status a paired interval ``[low, high]`` of ``n`` pairs gives a relation.

    ``relation`` is one of :data:`RELATIONS`: reproduced when the whole interval agrees,
    not reproduced when the whole interval contradicts, inconclusive otherwise, and always
    inconclusive with one pair or a zero-width interval (no spread to judge with).  The one
    rule behind :func:`verdict`, for checks that are not in :data:`CLAIMS` too.
    """
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")
    if n < 2 or high - low <= 2 * SPREAD_TOLERANCE:
        return INCONCLUSIVE
    if relation == "greater":
        agree, contradict = low > 0, high <= 0
    elif relation == "at_least":
        agree, contradict = low >= -margin, high < -margin
    else:  # within
        agree = -margin <= low and high <= margin
        contradict = low > margin or high < -margin
    return REPRODUCED if agree else NOT_REPRODUCED if contradict else INCONCLUSIVE


#: The words of a benchmark's expectation checks for the statuses of :func:`decide`.
CHECK_WORDS = {REPRODUCED: "met", NOT_REPRODUCED: "missed", INCONCLUSIVE: "inconclusive"}


def check(row: Mapping | pd.Series, relation: str, margin: float = 0.0) -> str:
    """``"met"``, ``"missed"`` or ``"inconclusive"`` for a row of :func:`sparsity_lab.stats.
    paired`: :func:`decide` in the words of an expectation that is not a cited claim."""
    status = decide(relation, row["ci_low"], row["ci_high"], int(row["n"]), margin)
    return CHECK_WORDS[status]


def verdict(
    claim: str | Claim,
    differences: Sequence[float] | pd.Series | Mapping,
    *,
    setting: str = "",
    reason: str = "",
    confidence: float = 0.95,
) -> Verdict:
    """Compare paired differences ``treatment - baseline`` with ``claim``.

    ``differences`` is either the per-seed differences themselves or a row of
    :func:`sparsity_lab.stats.paired` (``mean_diff``, ``ci_low``, ``ci_high``, ``n``).
    ``setting`` says where it was measured ("LeNet-300-100, 90%"); ``reason`` is the
    measured explanation a notebook gives, shown after the numbers (use it whenever the
    claim is not reproduced).  With one seed, or with pairs that all differ by the same
    amount (a zero-width interval), the verdict is inconclusive.
    """
    claim = get(claim) if isinstance(claim, str) else claim
    if isinstance(differences, Mapping | pd.Series) and "mean_diff" in differences:
        mean, low, high = (float(differences[k]) for k in ("mean_diff", "ci_low", "ci_high"))
        n = int(differences["n"])
    else:
        summary = mean_interval(list(differences), confidence)
        mean, low, high, n = summary["mean"], summary["ci_low"], summary["ci_high"], summary["n"]
    if n == 0 or math.isnan(mean):
        raise ValueError(f"claim {claim.key!r}: no differences to judge")
    status = decide(claim.relation, low, high, n, claim.margin)
    flagged = differences.get("flagged", "") if isinstance(differences, Mapping | pd.Series) else ""
    flagged = flagged if isinstance(flagged, str) else ""
    return Verdict(claim, status, mean, low, high, n, setting, reason, flagged)


def judge(
    claim: str | Claim,
    differences: Sequence[float] | pd.Series | Mapping,
    *,
    setting: str = "",
    reason: str = "",
    measured: str = "",
) -> Verdict:
    """:func:`verdict`, explained the way every notebook explains one.

    ``measured`` (what was measured beyond the numbers) is always said, and so are the
    flagged arms of a :func:`~sparsity_lab.stats.paired` row.  ``reason`` (why
    the result may differ from the paper's) is said only when the claim is not reproduced,
    followed by the paper's own setting; with one seed the reason is that there is no
    interval, since nothing else can be concluded.
    """
    found = verdict(claim, differences, setting=setting)
    parts = [measured]
    if found.flagged:
        # said whatever the status: a verdict on collapsed runs is not one on the methods
        parts.append(f"Sanity flags: {found.flagged}.")
    if found.status != REPRODUCED:
        if found.n < 2:
            parts.append("A single seed was run, so there is no interval.")
        else:
            parts += [reason, f"The paper: {found.claim.setting}."]
    return dataclasses.replace(found, reason=" ".join(p.strip() for p in parts if p.strip()))


def report(verdicts: Iterable[Verdict], scale: float = 100.0, unit: str = " points") -> str:
    """A Markdown list of verdict sentences: a notebook's "against the literature" text."""
    lines = [f"- {v.sentence(scale, unit)}" for v in verdicts]
    if not lines:
        raise ValueError("report needs at least one verdict")
    return "\n".join(lines)


def table(verdicts: Iterable[Verdict], scale: float = 100.0, unit: str = "points") -> pd.DataFrame:
    """The verdicts as a table: claim, paper, setting, difference and interval (``scale``
    times the fractions, in ``unit``, which the column names carry), verdict, and the
    flagged arms of the compared runs."""
    return pd.DataFrame(
        [
            {
                "claim": v.claim.key,
                "paper": v.claim.paper,
                "setting": v.setting,
                f"difference ({unit})": round(v.mean * scale, 2),
                f"ci_low ({unit})": round(v.ci_low * scale, 2) if v.n > 1 else math.nan,
                f"ci_high ({unit})": round(v.ci_high * scale, 2) if v.n > 1 else math.nan,
                "seeds": v.n,
                "verdict": v.status,
                "flagged": v.flagged,
            }
            for v in verdicts
        ]
    )
