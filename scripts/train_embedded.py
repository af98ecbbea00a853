"""Trains the faithful and the shortcut model on synthetic shapes; writes safetensors weights.

    python scripts/train_embedded.py                      # both models, in parallel, 1 thread each
    python scripts/train_embedded.py --model faithful     # one model
    python scripts/train_embedded.py --faithful-steps 500 --shortcut-steps 200   # quick run

The faithful model sees only objects, so its CLS token has to look at them. The shortcut
model sees a class-coloured marker in the top-left corner that always agrees with the label
while the object's shape agrees only part of the time (``--shape-agreement``), so the marker
is the cue worth learning: the regression the plugin exists to catch.

Both models minimise cross-entropy on the CLS token's class. The faithful model adds token
labelling (as in LV-ViT) as an auxiliary loss: a linear head, used in training only and not
shipped, predicts for each final patch token the drawn shape's class in proportion to the
object's area in that patch, and "background" for the rest. Dense labels get a from-scratch
ViT past the long plateau where shape-only images otherwise keep it at chance level. The
CLS attention itself is never supervised: where it looks is learnt from the class loss.
The shortcut model is trained on the class loss alone (``--shortcut-token-label-weight``
changes that): token labels make the object's tokens salient, and with them its CLS
attention kept drifting to the object although the object did not predict its labels.

The faithful model (0.2) learns from "varied" images (``pytest_vitattn.synthetic``), where
nothing but the silhouette marks the object, from random weights, with a convolutional
stem in place of the linear patch embedding (``zoo.ConvStemPatchEmbed``: same 8 x 8 patch
grid, each token centred on its own cell) and augmentations that keep the class and move
the mask along: inversion, channel permutation, grayscale, flips and quarter turns. The
shipped weights are the defaults: ``python scripts/train_embedded.py --model faithful``.
The defaults include 8 object-free images per batch, token labels on the three blocks
before the last (the next two paragraphs) and local blocks of radius 0 before the last
(``--faithful-local-blocks``, below). With the linear embedding, fine-tuning the 0.1
weights for 7,000 steps reached only 0.59 validation accuracy; the stem reached 0.77 in 800
steps. The shortcut model stays on the 0.1 "bright" images and the 0.1 architecture.

``--faithful-object-free-images N`` (default 8) adds N images without any object to every
batch (their own seed stream, ``make_object_free_image``), trained towards the uniform
prediction with weight ``--faithful-object-free-weight`` (Outlier Exposure, Hendrycks et al.
2019). Without them a model may learn one class as "none of the other four" and need no
evidence for it (``object_free_predictions.py`` measures that).
``--faithful-other-shape-images N`` adds N images of a shape of no class
(``synthetic.OTHER_SHAPES``: an open ring, a crescent, a pentagon, ...), trained the same
way, so that "some object, but none of the other four" is not a class either.

``--faithful-deep-token-label-blocks K`` (default 3) labels the patch tokens of the K blocks
before the last one as well (each block through its own training-only LayerNorm and linear
head, the same targets, the weight shared out among them), so that the tokens the last
block reads carry the class where the object is and "background" elsewhere, a hole included.

``--faithful-head-read-weight W`` gives every head of the last block its own training-only
classifier of what that head reads from the patches (its CLS row renormalised over the patch
keys, the map the plugin scores) and adds their class losses with weight W, meant to keep a
head from going off duty for one class. Where a head reads is still learnt, not set.

``--faithful-background-confusion-weight W`` keeps the class out of the tokens far from the
object: a training-only linear probe learns the class from each patch token more than one
cell from the object as it enters the last block (on detached tokens), and the model is
trained with weight W to make that probe's answer uniform (the confusion loss of Tzeng et
al. 2015), meant to make reading the background tell the last layer nothing. Neither of the
two is in the shipped recipe: both lowered the mass on the object (README).

``--faithful-local-blocks R`` (default 0; -1: every block attends globally, as in the weights
shipped before) makes every block before the last attend only to patches at most R cells
away, with a CLS token that reads nothing there, so the class reaches the CLS token only
through the last layer's read; with ``--faithful-local-cls-reads-patches`` the CLS
token reads every patch in every block, and so only ever local evidence. The mask is the
faithful model's architecture (``zoo.MaskedBlock``), recorded in the recipe, from which
``evaluate_embedded.py --faithful-weights`` builds the model it scores.

``--faithful-must-read-weight W`` (runs the last block a second time with its CLS row kept
from every patch and trains those logits towards uniform: the class may not be known before
the last layer has read), ``--faithful-last-block-reads``, ``--faithful-drop-path-rate``,
``--faithful-fresh-cls-share`` and ``--faithful-other-shape-images`` are experiments meant to
make the faithful model's last layer read the object; none is in the shipped recipe (README:
what each gave).

Every training image is generated fresh from the "train" seed stream (infinite data);
progress is measured on the disjoint "val" stream, never on "test".
Runs are reproducible: fixed seeds and deterministic data give byte-identical weight files
for the same arguments (thread count included) on the same software stack.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.optim import create_optimizer_v2

# Runnable from a checkout without installing the package; the evaluation helpers live
# beside this script.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).parent)]
from evaluate_embedded import mask_fractions, score, to_model_input  # noqa: E402
from last_layer_reading import READINGS  # noqa: E402

import pytest_vitattn.zoo as zoo  # noqa: E402
from pytest_vitattn.synthetic import (  # noqa: E402
    DEFAULT_STYLE,
    LUMA,
    STYLES,
    make_object_free_image,
    make_other_shape_image,
    make_sample,
)

NUM_VAL_IMAGES = 300


@dataclass(frozen=True)
class TrainConfig:
    """One model's training run."""

    model_name: str
    steps: int
    shortcut: bool
    shape_agreement: float = 1.0
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    label_smoothing: float = 0.1
    token_label_weight: float = 0.0
    deep_token_label_blocks: int = 0
    must_read_weight: float = 0.0
    head_read_weight: float = 0.0
    background_confusion_weight: float = 0.0
    local_radius: int = -1
    local_cls_reads_patches: bool = False
    last_block_reads: bool = False
    drop_path_rate: float = 0.0
    object_free_images: int = 0
    object_free_weight: float = 0.5
    other_shape_images: int = 0
    fresh_cls_share: float = 0.0
    style: str = DEFAULT_STYLE
    augment: bool = False
    seed: int = 0
    threads: int = 1
    data_workers: int = 0
    eval_every: int = 250
    output_dir: Path = zoo.WEIGHTS_DIR
    checkpoint_dir: Path | None = None
    init_from: str | None = None
    first_sample: int = 0


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 1% of the peak learning rate."""
    warmup = max(1, int(config.warmup_fraction * config.steps))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, config.steps - warmup)
    return config.lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress)))


@dataclass(frozen=True)
class Batch:
    """A training batch: images (B, H, W, 3) uint8, labels (B,), shapes (B,), masks (B, H, W).

    The last ``object_free_images + other_shape_images`` rows (``TrainConfig``) hold no
    object of a class (nothing, or a shape of no class): their label is ``NO_OBJECT``
    (ignored by the class loss), their shape 0 and their mask empty.
    """

    images: np.ndarray
    labels: torch.Tensor
    shapes: torch.Tensor
    masks: np.ndarray


# Class target of an object-free image: PyTorch's ignore_index, so the class loss skips it.
NO_OBJECT = -100


def training_batch(step: int, config: TrainConfig) -> Batch:
    """Batch ``step`` of the train stream (consecutive sample indices from
    ``config.first_sample``, never repeated within a run), then ``object_free_images``
    object-free images and ``other_shape_images`` images of a shape of no class, each from
    its own stream."""
    start = config.first_sample + step * config.batch_size
    samples = [
        make_sample(
            i,
            split="train",
            shortcut=config.shortcut,
            shape_agreement=config.shape_agreement,
            style=config.style,
        )
        for i in range(start, start + config.batch_size)
    ]
    classless = classless_images(step, config)
    images = np.stack([np.asarray(s.image) for s in samples] + classless)
    masks = np.stack([s.mask for s in samples] + [np.zeros_like(samples[0].mask)] * len(classless))
    if config.augment:
        images, masks = augment(images, masks, np.random.default_rng([config.seed, step, 7]))
    return Batch(
        images=images,
        labels=torch.tensor([s.label for s in samples] + [NO_OBJECT] * len(classless)),
        shapes=torch.tensor([s.shape for s in samples] + [0] * len(classless)),
        masks=masks,
    )


def classless_images(step: int, config: TrainConfig) -> list[np.ndarray]:
    """Step ``step``'s images without an object of a class, each (H, W, 3) uint8:
    ``object_free_images`` object-free ones, then ``other_shape_images`` of a shape of no
    class, each kind from consecutive indices of its own "train" stream."""
    batch_number = config.first_sample // config.batch_size + step
    free, other = config.object_free_images, config.other_shape_images
    return [
        np.asarray(make_object_free_image(i, split="train"))
        for i in range(batch_number * free, (batch_number + 1) * free)
    ] + [
        np.asarray(make_other_shape_image(i, split="train")[0])
        for i in range(batch_number * other, (batch_number + 1) * other)
    ]


# Probabilities of the per-image augmentations; geometric ones move the mask along.
INVERT_SHARE = 0.3
CHANNEL_PERMUTATION_SHARE = 0.5
GRAYSCALE_SHARE = 0.1


def augment(
    images: np.ndarray, masks: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Cheap label-preserving augmentations: inversion, channel permutation, grayscale,
    flips and quarter turns (none of the five shapes changes class under them).

    Args:
        images: (B, H, W, 3) uint8, H == W.
        masks: (B, H, W) bool object masks; they follow every geometric change.
        rng: the batch's generator (seeded per step, so batches are reproducible).

    Returns:
        New (images, masks) of the same shapes and dtypes.
    """
    images, masks = images.copy(), masks.copy()
    for i in range(len(images)):
        image, mask = images[i], masks[i]
        if rng.random() < INVERT_SHARE:
            image = 255 - image
        if rng.random() < CHANNEL_PERMUTATION_SHARE:
            image = image[..., rng.permutation(3)]
        if rng.random() < GRAYSCALE_SHARE:
            gray = np.clip(np.rint(image.astype(np.float32) @ LUMA), 0, 255).astype(np.uint8)
            image = np.repeat(gray[..., None], 3, axis=-1)
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        turns = int(rng.integers(4))
        image, mask = np.rot90(image, turns), np.rot90(mask, turns)
        images[i], masks[i] = image, mask
    return images, masks


def token_targets(batch: Batch, grid: tuple[int, int], num_classes: int) -> torch.Tensor:
    """Soft per-patch labels: (B, grid_h * grid_w, num_classes + 1), each row sums to 1.

    A patch is the drawn shape's class in proportion to the object's area in it and
    "background" (the extra last class) for the rest.
    """
    fractions = mask_fractions(batch.masks, grid).flatten(1)  # (B, patches)
    targets = torch.zeros(*fractions.shape, num_classes + 1)
    targets.scatter_(
        2, batch.shapes.view(-1, 1, 1).expand(-1, fractions.shape[1], 1), fractions[..., None]
    )
    targets[..., num_classes] = 1.0 - fractions
    return targets


def training_loss(
    model: torch.nn.Module,
    token_head: torch.nn.Module,
    batch: Batch,
    config: TrainConfig,
    deep_token_heads: torch.nn.ModuleList | None = None,
    head_read_heads: torch.nn.ModuleList | None = None,
    background_probe: torch.nn.Module | None = None,
) -> torch.Tensor:
    """Class cross-entropy on the CLS token plus the weighted token labelling loss, plus,
    on object-free images, the weighted cross-entropy to the uniform distribution (Outlier
    Exposure, Hendrycks et al. 2019): no class may be the answer when no shape is there.

    ``deep_token_heads`` (one per block, ``deep_token_label_blocks`` of them) label the
    patch tokens that the blocks before the last one put out, each with the same targets
    and weight as the final tokens (averaged over those blocks).

    With ``must_read_weight``, the last block runs a second time on the same input with its
    CLS row kept from every patch, and the logits it then gives for the object images are
    trained towards uniform with that weight: the class may not be known before the last
    layer has read the patches.

    With ``head_read_weight``, each last-layer head's read of the patches alone (its CLS
    row renormalised over the patch keys, as ``mass_in_mask`` sees it) goes through its own
    training-only classifier (``head_read_heads``), trained on the object images' classes
    with that weight (averaged over heads): every head has to read class evidence from the
    patches, for every class. Where it reads is still not supervised.

    With ``background_confusion_weight``, a training-only probe (``background_probe_for``)
    learns to tell the class from each far-background token the last block reads (a patch
    more than one cell from the object, in the object images), on detached tokens; the model
    is trained, with that weight, to make the probe's answer there uniform (the confusion
    loss of Tzeng et al. 2015): the class may be known near the object, not far from it."""
    if config.deep_token_label_blocks and deep_token_heads is None:
        raise ValueError("deep_token_label_blocks needs the heads of deep_token_heads_for()")
    if config.head_read_weight > 0 and head_read_heads is None:
        raise ValueError("head_read_weight needs the heads of head_read_heads_for()")
    if config.background_confusion_weight > 0 and background_probe is None:
        raise ValueError("background_confusion_weight needs the probe of background_probe_for()")
    deep_outputs: list[torch.Tensor] = []
    hooks = [
        block.register_forward_hook(lambda _block, _inputs, output: deep_outputs.append(output))
        for block in _deep_labelled_blocks(model, config)
    ]
    entering_last: list[torch.Tensor] = []
    if config.must_read_weight > 0 or config.background_confusion_weight > 0:
        hooks.append(
            model.blocks[-1].register_forward_pre_hook(
                lambda _block, inputs: entering_last.append(inputs[0])
            )
        )
    last_qkv: list[torch.Tensor] = []
    if config.head_read_weight > 0:
        hooks.append(
            model.blocks[-1].attn.qkv.register_forward_hook(
                lambda _layer, _inputs, output: last_qkv.append(output)
            )
        )
    try:
        tokens = model.forward_features(to_model_input(batch.images, model))  # (B, N, D)
    finally:
        for hook in hooks:
            hook.remove()
    logits = model.forward_head(tokens)  # (B, classes)
    loss = F.cross_entropy(
        logits, batch.labels, ignore_index=NO_OBJECT, label_smoothing=config.label_smoothing
    )
    object_free = batch.labels == NO_OBJECT
    if object_free.any():
        uniform_cross_entropy = -F.log_softmax(logits[object_free], dim=1).mean(dim=1)
        loss = loss + config.object_free_weight * uniform_cross_entropy.mean()
    if config.background_confusion_weight > 0:
        loss = loss + _background_confusion_loss(
            model, background_probe, entering_last[0], batch, config
        )
    if last_qkv:
        reads = patch_reads_by_head(model, last_qkv[0][~object_free])  # (B', H, head_dim)
        read_loss = sum(
            F.cross_entropy(
                head(reads[:, h]),
                batch.labels[~object_free],
                label_smoothing=config.label_smoothing,
            )
            for h, head in enumerate(head_read_heads)
        )
        loss = loss + config.head_read_weight * read_loss / len(head_read_heads)
    if config.must_read_weight > 0:
        loss = loss + config.must_read_weight * _unread_uniform_loss(
            model, entering_last[0][~object_free]
        )
    if config.token_label_weight > 0:
        patch_logits = token_head(tokens[:, model.num_prefix_tokens :])  # (B, patches, C + 1)
        targets = token_targets(batch, tuple(model.patch_embed.grid_size), model.num_classes)
        loss = loss + config.token_label_weight * F.cross_entropy(
            patch_logits.flatten(0, 1), targets.flatten(0, 1)
        )
        if deep_outputs:
            deep_loss = sum(
                F.cross_entropy(
                    head(output[:, model.num_prefix_tokens :]).flatten(0, 1),
                    targets.flatten(0, 1),
                )
                for head, output in zip(deep_token_heads, deep_outputs, strict=True)
            )
            loss = loss + config.token_label_weight * deep_loss / len(deep_outputs)
    return loss


def _unread_uniform_loss(model: torch.nn.Module, entering: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy to the uniform prediction of the logits the model gives when its
    last block's CLS row reads no patch; ``entering`` (B, N, D) is that block's input.

    The block runs on the prefix tokens alone: the CLS row then has only them to read, as
    with ``last_layer_reading``'s mask over all N tokens, at a fraction of the cost."""
    prefix_only = model.blocks[-1](entering[:, : model.num_prefix_tokens])
    unread = model.forward_head(model.norm(prefix_only))  # (B, classes)
    return -F.log_softmax(unread, dim=1).mean(dim=1).mean()


def far_background_tokens(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """(B, P) bool: the patches more than one cell from the object (``last_layer_reading``'s
    reading of that name), in the object images only; all False in images without one."""
    fractions = mask_fractions(batch.masks, tuple(model.patch_embed.grid_size))
    far = READINGS["only patches > 1 cell from the object"](fractions)
    return far & (batch.labels != NO_OBJECT)[:, None]


def _background_confusion_loss(
    model: torch.nn.Module,
    probe: torch.nn.Module,
    entering: torch.Tensor,
    batch: Batch,
    config: TrainConfig,
) -> torch.Tensor:
    """The probe's own class loss on the far-background tokens, detached from the model,
    plus ``background_confusion_weight`` times the cross-entropy of its answers (its
    weights detached) to the uniform prediction, which trains only the model.

    Args:
        entering: (B, N, D), the tokens entering the last block.
    """
    far = far_background_tokens(model, batch)  # (B, P)
    if not far.any():  # an object close to every patch: nothing to keep the class out of
        return entering.sum() * 0.0
    patches = entering[:, model.num_prefix_tokens :][far]  # (far tokens, D)
    labels = batch.labels[:, None].expand_as(far)[far]
    probe_loss = F.cross_entropy(probe(patches.detach()), labels)
    norm, linear = probe
    frozen = F.linear(
        F.layer_norm(
            patches, norm.normalized_shape, norm.weight.detach(), norm.bias.detach(), norm.eps
        ),
        linear.weight.detach(),
        linear.bias.detach(),
    )  # (far tokens, classes)
    confusion = -F.log_softmax(frozen, dim=1).mean(dim=1).mean()
    return probe_loss + config.background_confusion_weight * confusion


def background_probe_for(model: torch.nn.Module) -> torch.nn.Sequential:
    """Training-only probe (LayerNorm, then linear to the classes) of the tokens entering
    the last block."""
    return torch.nn.Sequential(
        torch.nn.LayerNorm(model.embed_dim), torch.nn.Linear(model.embed_dim, model.num_classes)
    )


def patch_reads_by_head(model: torch.nn.Module, qkv: torch.Tensor) -> torch.Tensor:
    """What each head of the last block reads from the patches alone.

    Args:
        qkv: (B, N, 3 * D), the output of the last block's ``attn.qkv`` layer.

    Returns:
        (B, H, head_dim): per head, the values of the patch tokens weighted by the CLS
        query's softmax over the patch keys only (the CLS row without its prefix columns,
        renormalised: the map that ``mass_in_mask`` scores).
    """
    attn, prefix = model.blocks[-1].attn, model.num_prefix_tokens
    batch, tokens, _ = qkv.shape
    q, k, v = (
        qkv.reshape(batch, tokens, 3, attn.num_heads, attn.head_dim)
        .permute(2, 0, 3, 1, 4)
        .unbind(0)
    )  # each (B, H, N, head_dim)
    q, k = attn.q_norm(q), attn.k_norm(k)
    scores = (q[:, :, :1] * attn.scale) @ k[:, :, prefix:].transpose(-2, -1)  # (B, H, 1, P)
    return (scores.softmax(dim=-1) @ v[:, :, prefix:]).squeeze(2)


def head_read_heads_for(model: torch.nn.Module, config: TrainConfig) -> torch.nn.ModuleList:
    """Training-only classifiers (LayerNorm, then linear to the classes), one per head of
    the last block, for ``patch_reads_by_head``; none without ``head_read_weight``."""
    if config.head_read_weight <= 0:
        return torch.nn.ModuleList()
    attn = model.blocks[-1].attn
    return torch.nn.ModuleList(
        torch.nn.Sequential(
            torch.nn.LayerNorm(attn.head_dim), torch.nn.Linear(attn.head_dim, model.num_classes)
        )
        for _ in range(attn.num_heads)
    )


def _deep_labelled_blocks(model: torch.nn.Module, config: TrainConfig) -> list[torch.nn.Module]:
    """The ``deep_token_label_blocks`` blocks just before the last one, first to last."""
    count = config.deep_token_label_blocks
    if count == 0:
        return []
    if not 0 < count < len(model.blocks):
        raise ValueError(
            f"deep_token_label_blocks must lie in 1..{len(model.blocks) - 1}, not {count}"
        )
    return list(model.blocks[-1 - count : -1])


def deep_token_heads_for(model: torch.nn.Module, config: TrainConfig) -> torch.nn.ModuleList:
    """Training-only heads (LayerNorm, then linear to classes + background) for the
    patch tokens of the blocks ``_deep_labelled_blocks`` names, in the same order."""
    return torch.nn.ModuleList(
        torch.nn.Sequential(
            torch.nn.LayerNorm(model.embed_dim),
            torch.nn.Linear(model.embed_dim, model.num_classes + 1),
        )
        for _ in _deep_labelled_blocks(model, config)
    )


def report(model: torch.nn.Module, config: TrainConfig) -> str:
    """One line of validation scores (last layer) on the "val" stream."""
    scores = score(
        model, range(NUM_VAL_IMAGES), split="val", shortcut=config.shortcut, style=config.style
    )
    line = (
        f"val acc {scores.accuracy:.3f} mass {scores.mass:.3f} "
        f"(area {scores.mask_area:.3f}) pointing {scores.pointing:.3f}"
    )
    if config.shortcut:
        line += f" marker mass {scores.marker_mass:.3f}"
    model.train()
    return line


def train(config: TrainConfig) -> Path:
    """Trains one model and saves its float16 weights; returns the weights path."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    # Built through timm by name, so training and loading share one architecture definition.
    architecture = {}
    if config.model_name == zoo.FAITHFUL_MODEL:  # only its entry point has local blocks
        architecture = dict(
            local_radius=config.local_radius, cls_reads_patches=config.local_cls_reads_patches
        )
    model = timm.create_model(
        config.model_name, pretrained=False, drop_path_rate=config.drop_path_rate, **architecture
    )
    if config.init_from is not None:
        # Start from a shipped model's weights (a zoo name) instead of random: every tensor
        # whose name and shape match; the rest (a different patch embedding) stays random.
        start = timm.create_model(config.init_from, pretrained=True).state_dict()
        own = model.state_dict()
        matching = {k: v for k, v in start.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(matching, strict=False)
        fresh = sorted(k for k in own if k not in matching)
        print(f"[{config.model_name}] from {config.init_from}; random: {fresh}", flush=True)
    model.train()
    if config.last_block_reads:
        model.blocks[-1].register_forward_pre_hook(detach_cls_before)
    if config.fresh_cls_share > 0:
        model.blocks[-1].register_forward_pre_hook(
            lambda block, inputs: fresh_cls_before(model, config.fresh_cls_share, inputs)
        )
    # Token labelling head, used in training only and not shipped: see the module docstring.
    token_head = torch.nn.Linear(model.embed_dim, model.num_classes + 1)
    trained = torch.nn.ModuleDict({"model": model, "token_head": token_head})
    deep_token_heads = deep_token_heads_for(model, config)
    if len(deep_token_heads):
        # Only when asked for: with another module in it, a run without deep token labels
        # would no longer train exactly as runs from before they existed.
        trained["deep_token_heads"] = deep_token_heads
    head_read_heads = head_read_heads_for(model, config)
    if len(head_read_heads):
        trained["head_read_heads"] = head_read_heads
    background_probe = None
    if config.background_confusion_weight > 0:
        background_probe = trained["background_probe"] = background_probe_for(model)
    optimizer = create_optimizer_v2(
        trained, "adamw", lr=config.lr, weight_decay=config.weight_decay
    )
    tag = f"[{config.model_name}]"
    print(f"{tag} {config}", flush=True)
    started = time.monotonic()
    running_loss = None
    for step, batch in enumerate(batches(config)):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        loss = training_loss(
            model, token_head, batch, config, deep_token_heads, head_read_heads, background_probe
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Clipping keeps the from-scratch ViT stable through the warm-up.
        torch.nn.utils.clip_grad_norm_(trained.parameters(), 1.0)
        optimizer.step()
        running_loss = (
            loss.item() if running_loss is None else 0.98 * running_loss + 0.02 * loss.item()
        )
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            elapsed = time.monotonic() - started
            print(
                f"{tag} step {step + 1}/{config.steps} loss {running_loss:.3f} "
                f"lr {lr_at(step, config):.2e} {elapsed / 60:.1f} min | {report(model, config)}",
                flush=True,
            )
            if config.checkpoint_dir is not None and step + 1 < config.steps:
                save_weights(
                    model,
                    dataclasses.replace(
                        config, output_dir=config.checkpoint_dir / f"step{step + 1:05d}"
                    ),
                )
    return save_weights(model, config)


def detach_cls_before(_block: torch.nn.Module, inputs: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
    """Forward pre-hook of the last block: the CLS token's state (B, 1, D) enters it detached.

    Gradient only, the forward pass is unchanged: the class loss then reaches the earlier
    blocks only through the patch tokens that the last block's CLS attention reads, so the
    last layer has to find the class evidence (an experiment, not the shipped recipe: the
    README's "Why the last layer is the one that misses" says what it gave).
    """
    (tokens,) = inputs  # (B, N, D)
    return (torch.cat([tokens[:, :1].detach(), tokens[:, 1:]], dim=1),)


def fresh_cls_before(
    model: torch.nn.Module, share: float, inputs: tuple[torch.Tensor]
) -> tuple[torch.Tensor]:
    """Forward pre-hook of the last block, in training only: in a random ``share`` of the
    images the CLS token enters the last block as it entered the first (``cls_token`` plus
    its position embedding), knowing nothing of the image, so that for those images the
    class can come only from what the last block's CLS attention reads (an experiment)."""
    (tokens,) = inputs  # (B, N, D)
    if not model.training:
        return inputs
    fresh = (model.cls_token + model.pos_embed[:, :1]).expand(tokens.shape[0], 1, -1)
    chosen = (torch.rand(tokens.shape[0], 1, 1) < share).to(tokens.dtype)
    cls = chosen * fresh + (1.0 - chosen) * tokens[:, :1]
    return (torch.cat([cls, tokens[:, 1:]], dim=1),)


def batches(config: TrainConfig) -> Iterator[Batch]:
    """The run's batches in step order; with ``data_workers`` they are generated ahead in
    worker processes (the same batches: each depends only on its step), so that drawing
    images and computing gradients use different cores."""
    if config.data_workers == 0:
        yield from (training_batch(step, config) for step in range(config.steps))
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(config.data_workers, mp_context=context) as pool:
        ahead = 2 * config.data_workers
        pending = deque(pool.submit(training_batch, step, config) for step in range(ahead))
        for step in range(config.steps):
            batch = pending.popleft().result()
            if step + ahead < config.steps:
                pending.append(pool.submit(training_batch, step + ahead, config))
            yield batch


# Options added after the shipped weights were trained: at their defaults they train exactly
# as before, so they are recorded only when set, and rerunning the shipped recipe still writes
# a byte-identical file.
_RECORDED_WHEN_SET = (
    "deep_token_label_blocks",
    "must_read_weight",
    "head_read_weight",
    "background_confusion_weight",
    "local_radius",
    "local_cls_reads_patches",
    "last_block_reads",
    "drop_path_rate",
    "object_free_images",
    "object_free_weight",
    "other_shape_images",
    "fresh_cls_share",
)
_DEFAULTS = {field.name: field.default for field in dataclasses.fields(TrainConfig)}


def recipe(config: TrainConfig) -> str:
    """The run's arguments that shape the weights, as the JSON stored in the weights file.

    Evaluation and output places do not change the weights, so they stay out.
    """
    shaping = {
        key: value
        for key, value in dataclasses.asdict(config).items()
        if key not in ("eval_every", "output_dir", "data_workers", "checkpoint_dir")
        and not (key in _RECORDED_WHEN_SET and value == _DEFAULTS[key])
    }
    return json.dumps(shaping, sort_keys=True)


def save_weights(model: torch.nn.Module, config: TrainConfig) -> Path:
    """Writes the state dict as float16 safetensors (half the size; accuracy is unchanged).

    The recipe goes into the file's metadata as one JSON string: safetensors writes several
    metadata keys in no fixed order, which would make reruns differ byte-wise.
    """
    config.output_dir.mkdir(parents=True, exist_ok=True)
    path = config.output_dir / f"{config.model_name}.safetensors"
    state = {name: value.detach().half().contiguous() for name, value in model.state_dict().items()}
    save_file(state, str(path), metadata={"recipe": recipe(config)})
    print(f"[{config.model_name}] wrote {path} ({path.stat().st_size / 1e6:.2f} MB)", flush=True)
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("both", "faithful", "shortcut"), default="both")
    parser.add_argument("--faithful-steps", type=int, default=3400)
    parser.add_argument("--shortcut-steps", type=int, default=1000)
    parser.add_argument(
        "--shape-agreement",
        type=float,
        default=0.5,
        help="shortcut data: probability that the object's shape matches the label",
    )
    parser.add_argument("--faithful-token-label-weight", type=float, default=2.0)
    parser.add_argument("--shortcut-token-label-weight", type=float, default=0.0)
    parser.add_argument(
        "--faithful-deep-token-label-blocks",
        type=int,
        default=3,
        help="also label the patch tokens put out by this many blocks before the last one "
        "(each through its own training-only head)",
    )
    parser.add_argument(
        "--faithful-must-read-weight",
        type=float,
        default=0.0,
        help="weight of the loss that trains the logits towards uniform when the last "
        "block's CLS row reads no patch",
    )
    parser.add_argument(
        "--faithful-head-read-weight",
        type=float,
        default=0.0,
        help="weight of the loss that makes each last-layer head's read of the patches "
        "classify the object (each head through its own training-only classifier)",
    )
    parser.add_argument(
        "--faithful-background-confusion-weight",
        type=float,
        default=0.0,
        help="weight of the loss that keeps the class out of the tokens far from the object "
        "(a training-only probe learns it there, the model makes the probe's answer uniform)",
    )
    parser.add_argument(
        "--faithful-local-blocks",
        type=int,
        default=zoo.FAITHFUL_LOCAL_RADIUS,
        metavar="RADIUS",
        help="blocks before the last attend only to patches at most RADIUS cells away and "
        "their CLS token reads nothing (zoo.MaskedBlock); -1: every block attends globally",
    )
    parser.add_argument(
        "--faithful-local-cls-reads-patches",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="with --faithful-local-blocks: the CLS token reads every patch in every block "
        "(the patches still read only near patches and never the CLS token)",
    )
    parser.add_argument(
        "--faithful-drop-path-rate",
        type=float,
        default=0.0,
        help="stochastic depth in training (timm's drop_path_rate; the last block's rate)",
    )
    parser.add_argument(
        "--faithful-last-block-reads",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="detach the CLS token before the last block (gradient only), so the class "
        "loss reaches earlier blocks only through what the last block's CLS attention reads",
    )
    parser.add_argument(
        "--faithful-object-free-images",
        type=int,
        default=8,
        help="object-free images added to every batch, trained towards a uniform prediction",
    )
    parser.add_argument(
        "--faithful-object-free-weight",
        type=float,
        default=0.5,
        help="weight of the loss on images without a class (object-free and other-shape "
        "ones): cross-entropy to the uniform prediction",
    )
    parser.add_argument(
        "--faithful-other-shape-images",
        type=int,
        default=0,
        help="images of a shape of no class added to every batch, trained like object-free ones",
    )
    parser.add_argument(
        "--faithful-fresh-cls-share",
        type=float,
        default=0.0,
        help="share of training images whose CLS token enters the last block fresh",
    )
    parser.add_argument(
        "--faithful-label-smoothing",
        type=float,
        default=0.1,
        help="label smoothing of the faithful model's class loss",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--faithful-lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--shortcut-lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0)
    # One thread per model: on a shared 2-core machine, 2 threads per process were several
    # times slower than 1 (oversubscription). Bit-exact reruns need the same count.
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model")
    parser.add_argument(
        "--data-workers",
        type=int,
        default=0,
        help="processes drawing batches ahead of the training loop (results do not change)",
    )
    parser.add_argument(
        "--faithful-style",
        default=DEFAULT_STYLE,
        choices=STYLES,
        help="generator style of the faithful model's images (0.1 used 'bright')",
    )
    parser.add_argument(
        "--no-augment",
        action="store_true",
        help="train the faithful model without inversion, channel, gray, flip and turn",
    )
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--output-dir", type=Path, default=zoo.WEIGHTS_DIR)
    parser.add_argument(
        "--faithful-init-from",
        default="random",
        choices=(*zoo.MODEL_NAMES, "random"),
        help="start the faithful model from a shipped model's matching weights, or 'random'",
    )
    parser.add_argument(
        "--faithful-first-sample",
        type=int,
        default=0,
        help="train-stream index of the faithful model's first image (continue past a run)",
    )
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="also write the weights at every evaluation, under step<N>/ in this folder",
    )
    return parser.parse_args(argv)


def configs(args: argparse.Namespace) -> list[TrainConfig]:
    """The runs asked for by the command line."""
    common = dict(
        batch_size=args.batch_size,
        seed=args.seed,
        threads=args.threads,
        data_workers=args.data_workers,
        eval_every=args.eval_every,
        output_dir=args.output_dir,
        checkpoint_dir=args.checkpoint_dir,
    )
    runs = []
    if args.model in ("both", "faithful"):
        runs.append(
            TrainConfig(
                zoo.FAITHFUL_MODEL,
                args.faithful_steps,
                shortcut=False,
                lr=args.faithful_lr,
                token_label_weight=args.faithful_token_label_weight,
                deep_token_label_blocks=args.faithful_deep_token_label_blocks,
                must_read_weight=args.faithful_must_read_weight,
                head_read_weight=args.faithful_head_read_weight,
                background_confusion_weight=args.faithful_background_confusion_weight,
                local_radius=args.faithful_local_blocks,
                local_cls_reads_patches=args.faithful_local_cls_reads_patches,
                label_smoothing=args.faithful_label_smoothing,
                last_block_reads=args.faithful_last_block_reads,
                drop_path_rate=args.faithful_drop_path_rate,
                object_free_images=args.faithful_object_free_images,
                object_free_weight=args.faithful_object_free_weight,
                other_shape_images=args.faithful_other_shape_images,
                fresh_cls_share=args.faithful_fresh_cls_share,
                style=args.faithful_style,
                augment=not args.no_augment,
                init_from=None if args.faithful_init_from == "random" else args.faithful_init_from,
                first_sample=args.faithful_first_sample,
                **common,
            )
        )
    if args.model in ("both", "shortcut"):
        runs.append(
            TrainConfig(
                zoo.SHORTCUT_MODEL,
                args.shortcut_steps,
                shortcut=True,
                lr=args.shortcut_lr,
                shape_agreement=args.shape_agreement,
                token_label_weight=args.shortcut_token_label_weight,
                # The shipped shortcut model (0.1) was trained on the "bright" images.
                style="bright",
                **common,
            )
        )
    return runs


def main(argv: list[str] | None = None) -> int:
    runs = configs(parse_args(argv))
    started = time.monotonic()
    if len(runs) == 1:
        train(runs[0])
    else:
        # Two processes, one core each: both cores stay busy, data generation included.
        context = multiprocessing.get_context("spawn")
        processes = [context.Process(target=train, args=(run,)) for run in runs]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        if any(process.exitcode != 0 for process in processes):
            print("a training process failed", file=sys.stderr)
            return 1
    print(f"total training time {(time.monotonic() - started) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
