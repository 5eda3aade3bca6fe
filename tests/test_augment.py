"""Batch augmentations: RandAugment/TrivialAugment per image, random erasing, mixup and cutmix."""

from __future__ import annotations

import enum
import types

import pytest
import torch
import torch.nn.functional as F

from swin_cli.augment import OPS, RANDAUGMENT_SPACE, TRIVIAL_SPACE, BatchAugment, MixBatch, apply_op


def aug_cfg(**overrides) -> types.SimpleNamespace:
    fields = dict(name="test", crop_padding=0, hflip=False, auto_augment="none", randaugment_ops=2,
                  randaugment_magnitude=9, random_erasing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, mix_prob=1.0,
                  mix_switch_prob=0.5)
    fields.update(overrides)
    return types.SimpleNamespace(**fields)


def identical_batch(n: int, channels: int, size: int = 16) -> torch.Tensor:
    """n copies of one image with structure (a gradient plus noise), so every op changes it."""
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(20, 230, size).view(1, 1, size)
    image = (ramp + ramp.transpose(1, 2)) / 2 + torch.randint(-20, 20, (channels, size, size), generator=g)
    return image.clamp(0, 255).to(torch.uint8).expand(n, -1, -1, -1).contiguous()


# --- RandAugment / TrivialAugment -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["randaugment", "trivialaugment"])
@pytest.mark.parametrize("channels", [1, 3])
def test_auto_augment_draws_ops_per_image_and_follows_the_seed(kind: str, channels: int):
    aug = BatchAugment(aug_cfg(auto_augment=kind))
    assert aug.active
    images = identical_batch(32, channels)

    torch.manual_seed(1)
    out = aug(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    # Identical inputs only come out different when each image drew its own ops.
    distinct = {tuple(img.flatten().tolist()) for img in out}
    assert len(distinct) > 8

    torch.manual_seed(1)
    assert torch.equal(aug(images), out)
    torch.manual_seed(2)
    assert not torch.equal(aug(images), out)


def test_auto_augment_with_a_generator_leaves_the_global_rng_alone():
    aug = BatchAugment(aug_cfg(auto_augment="randaugment", crop_padding=2, hflip=True))
    images = identical_batch(8, 3)
    state = torch.get_rng_state()
    first = aug(images, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(aug(images, torch.Generator().manual_seed(5)), first)


def test_auto_augment_accepts_an_enum_and_rejects_unknown_names():
    class Kind(str, enum.Enum):
        trivialaugment = "trivialaugment"

    assert BatchAugment(aug_cfg(auto_augment=Kind.trivialaugment)).auto is not None
    assert not BatchAugment(aug_cfg()).active
    with pytest.raises(ValueError, match="auto_augment"):
        BatchAugment(aug_cfg(auto_augment="autoaugment"))


@pytest.mark.parametrize("op", OPS)
def test_ops_on_a_group_equal_ops_on_each_image(op: str):
    # The grouping in AutoAugment relies on ops never mixing statistics across images.
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (4, 3, 12, 12), generator=g, dtype=torch.uint8)
    images[1] //= 4  # a dark image, so per-image contrast/equalize statistics differ
    together = apply_op(images, op, 20, True, RANDAUGMENT_SPACE)
    alone = torch.cat([apply_op(img[None], op, 20, True, RANDAUGMENT_SPACE) for img in images])
    assert torch.equal(together, alone)


@pytest.mark.parametrize("op", [op for op in OPS if op not in ("autocontrast", "equalize")])
@pytest.mark.parametrize("space", [RANDAUGMENT_SPACE, TRIVIAL_SPACE])
def test_bin_zero_is_the_identity(op: str, space):
    images = torch.randint(0, 256, (2, 3, 12, 12), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    assert torch.equal(apply_op(images, op, 0, True, space), images)


# --- random erasing -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 3, 32, 32), (64, 1, 20, 40)])
def test_erase_fills_one_rectangle_per_image(shape):
    aug = BatchAugment(aug_cfg(random_erasing=1.0))
    assert aug.active
    x = torch.full(shape, 0.75)
    torch.manual_seed(0)
    out = aug.erase(x)
    changed = out != x
    # Whole pixels are erased: all channels or none.
    assert torch.equal(changed.all(1), changed.any(1))
    changed = changed.any(1)
    h, w = shape[-2:]
    for mask in changed:
        count = int(mask.sum())
        assert 0.02 <= count / (h * w) <= 0.33
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box == count  # a filled rectangle
    # The fill is noise, not a constant.
    assert out[changed[:, None].expand_as(out)].std() > 0.5


def test_erase_probability():
    x = torch.zeros(400, 1, 8, 8)
    assert BatchAugment(aug_cfg()).erase(x) is x
    torch.manual_seed(0)
    erased = (BatchAugment(aug_cfg(random_erasing=0.5)).erase(x) != 0).flatten(1).any(1).float().mean()
    assert 0.4 < erased < 0.6


# --- mixup / cutmix -------------------------------------------------------------------------


def batch(b: int = 8, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, 3, 16, 16, generator=g), torch.arange(b) % classes


def test_mixup_blends_with_the_reversed_batch():
    x, labels = batch()
    mix = MixBatch(aug_cfg(mixup_alpha=1.0), num_classes=10)
    assert mix.active
    for seed in range(5):
        torch.manual_seed(seed)
        images, targets = mix(x, labels)
        lam = targets[0, labels[0]]
        assert torch.allclose(targets.sum(1), torch.ones(8))
        assert torch.allclose(targets[torch.arange(8), labels.flip(0)], 1 - lam)
        assert torch.allclose(images, lam * x + (1 - lam) * x.flip(0), atol=1e-6)


def test_cutmix_pastes_one_box_and_weights_targets_by_its_area():
    x, labels = batch()
    mix = MixBatch(aug_cfg(cutmix_alpha=1.0), num_classes=10)
    fractions = []
    for seed in range(20):
        torch.manual_seed(seed)
        images, targets = mix(x, labels)
        from_partner = images == x.flip(0)
        assert torch.all(from_partner | (images == x))
        # One box for the whole batch, every channel.
        pasted = from_partner[0, 0]
        assert torch.all(from_partner == pasted)
        fraction = pasted.float().mean()
        assert torch.allclose(targets[torch.arange(8), labels.flip(0)], fraction.expand(8))
        assert torch.allclose(targets.sum(1), torch.ones(8))
        fractions.append(float(fraction))
    assert min(fractions) < 0.3 and max(fractions) > 0.5  # lam really varies


@pytest.mark.parametrize("switch_prob, expect_cutmix", [(0.0, False), (1.0, True)])
def test_switch_probability_picks_mixup_or_cutmix(switch_prob: float, expect_cutmix: bool):
    x, labels = batch()
    mix = MixBatch(aug_cfg(mixup_alpha=1.0, cutmix_alpha=1.0, mix_switch_prob=switch_prob), num_classes=10)
    torch.manual_seed(0)
    images, _ = mix(x, labels)
    copied = (images == x) | (images == x.flip(0))
    assert bool(copied.all()) == expect_cutmix


def test_inactive_mixing_returns_smoothed_one_hot():
    x, labels = batch()
    for cfg in (aug_cfg(), aug_cfg(mixup_alpha=1.0, mix_prob=0.0)):
        mix = MixBatch(cfg, num_classes=10, label_smoothing=0.1)
        assert not mix.active
        images, targets = mix(x, labels)
        assert images is x
        expected = torch.full((8, 10), 0.01)
        expected[torch.arange(8), labels] = 0.91
        assert torch.allclose(targets, expected)
    _, plain = MixBatch(aug_cfg(), num_classes=10)(x, labels)
    assert torch.equal(plain, F.one_hot(labels, 10).float())


def test_mix_probability_leaves_some_batches_alone():
    x, labels = batch()
    mix = MixBatch(aug_cfg(mixup_alpha=1.0, cutmix_alpha=1.0, mix_prob=0.5), num_classes=10)
    torch.manual_seed(0)
    untouched = sum(torch.equal(mix(x, labels)[0], x) for _ in range(40))
    assert 8 < untouched < 32


def test_smoothing_and_mixing_keep_rows_summing_to_one():
    x, labels = batch()
    mix = MixBatch(aug_cfg(mixup_alpha=0.4, cutmix_alpha=1.0), num_classes=10, label_smoothing=0.2)
    torch.manual_seed(0)
    _, targets = mix(x, labels)
    assert torch.allclose(targets.sum(1), torch.ones(8))
    assert float(targets.min()) >= 0.2 / 10 - 1e-6
    torch.manual_seed(0)
    assert torch.equal(mix(x, labels)[1], targets)


def test_cross_entropy_accepts_the_soft_targets():
    x, labels = batch()
    mix = MixBatch(aug_cfg(mixup_alpha=1.0, cutmix_alpha=1.0), num_classes=10, label_smoothing=0.1)
    torch.manual_seed(0)
    images, targets = mix(x, labels)
    logits = torch.randn(8, 10, requires_grad=True)
    assert targets.shape == logits.shape and targets.dtype == logits.dtype
    loss = F.cross_entropy(logits, targets)
    assert loss.shape == ()
    expected = -(targets * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(loss, expected)
    loss.backward()
    assert logits.grad is not None
