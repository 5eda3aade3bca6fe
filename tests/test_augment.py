"""Batch augmentations: RandAugment/TrivialAugment per image, random erasing, mixup and cutmix."""

from __future__ import annotations

import enum
import math
import types

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from conftest import make_config
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.transforms import InterpolationMode

from swin_cli.augment import (
    INVERT,
    MAX_BIN,
    NO_MAGNITUDE,
    NUM_BINS,
    OPS,
    POLICY_OPS,
    SIGNED,
    AutoAugment,
    BatchAugment,
    MixBatch,
    Normalize,
    PolicyAugment,
)


def aug_cfg(**overrides) -> types.SimpleNamespace:
    fields = dict(name="test", crop_padding=0, hflip=False, auto_augment="none", autoaugment_policy="cifar10",
                  op_space=None, randaugment_ops=2,
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
        BatchAugment(aug_cfg(auto_augment="augmix"))


def test_a_new_policy_is_one_entry_where_auto_augment_is_chosen(monkeypatch):
    from swin_cli.augment import AUTO_AUGMENTS

    made_for = []

    def build_invert(cfg, device):
        made_for.append(device)
        return lambda images, generator=None: 255 - images

    monkeypatch.setitem(AUTO_AUGMENTS, "invert", build_invert)
    images = identical_batch(3, 3)
    aug = BatchAugment(aug_cfg(auto_augment="invert"), torch.device("cpu"))
    assert made_for == [torch.device("cpu")] and aug.active
    assert torch.equal(aug(images), 255 - images)
    with pytest.raises(ValueError, match="must be one of none, randaugment, trivialaugment, autoaugment, invert "):
        BatchAugment(aug_cfg(auto_augment="augmix"))


def torchvision_op(image: torch.Tensor, op: str, bin_: int, negate: bool, space) -> torch.Tensor:
    """The reference: torchvision's single-image functional op with our magnitude spaces."""
    level, sign = bin_ / MAX_BIN, -1.0 if negate else 1.0
    nearest = dict(interpolation=InterpolationMode.NEAREST, fill=0.0)
    if op == "identity":
        return image
    if op in ("shear_x", "shear_y"):
        angle = math.degrees(math.atan(space.shear * level)) * sign
        shear = [angle, 0.0] if op == "shear_x" else [0.0, angle]
        return TF.affine(image, angle=0.0, translate=[0.0, 0.0], scale=1.0, shear=shear, **nearest)
    if op in ("translate_x", "translate_y"):
        side = image.shape[-1] if op == "translate_x" else image.shape[-2]
        pixels = space.translate * level * (side if space.translate_relative else 1.0) * sign
        shift = [pixels, 0.0] if op == "translate_x" else [0.0, pixels]
        return TF.affine(image, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], **nearest)
    if op == "rotate":
        return TF.rotate(image, space.rotate * level * sign, **nearest)
    factor = 1.0 + space.enhance * level * sign
    enhance = {"brightness": TF.adjust_brightness, "color": TF.adjust_saturation,
               "contrast": TF.adjust_contrast, "sharpness": TF.adjust_sharpness}
    if op in enhance:
        return enhance[op](image, factor)
    if op == "posterize":
        return TF.posterize(image, 8 - round(space.posterize * level))
    if op == "solarize":
        threshold = 256.0 * (1.0 - level)
        return image if threshold > 255 else TF.solarize(image, threshold)
    return {"autocontrast": TF.autocontrast, "equalize": TF.equalize}[op](image)


def sample_images():
    """Random images (one of them dark and low-contrast), RGB square and gray non-square."""
    g = torch.Generator().manual_seed(3)
    rgb = torch.randint(0, 256, (6, 3, 32, 32), generator=g, dtype=torch.uint8)
    gray = torch.randint(0, 256, (6, 1, 16, 24), generator=g, dtype=torch.uint8)
    rgb[1] = rgb[1] // 4 + 10
    gray[1] = gray[1] // 4 + 10
    return rgb, gray


@pytest.mark.parametrize("kind", ["randaugment", "trivialaugment"])
@pytest.mark.parametrize("op", OPS)
def test_each_op_matches_torchvision_image_by_image(kind: str, op: str):
    auto = AutoAugment(kind)
    for images in sample_images():
        for bin_, negate in [(0, False), (7, True), (20, False), (20, True), (30, False), (30, True)]:
            index = torch.full((len(images),), OPS.index(op))
            got = auto.apply(images, index, torch.full_like(index, bin_), torch.full((len(images),), negate))
            want = torch.stack([torchvision_op(img, op, bin_, negate, auto.space) for img in images])
            diff = (got.int() - want.int()).abs()
            where = f"{op} bin {bin_} negate {negate} {tuple(images.shape)}"
            if op in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"):
                # Nearest-neighbour ties (a source coordinate exactly between two pixels) may round
                # either way: a few pixels, never a shifted image.
                assert (diff > 0).float().mean() < 0.05, where
            elif op in ("brightness", "color", "contrast", "sharpness", "autocontrast"):
                # The same blend in another float order: off by one after truncation, rarely.
                assert diff.max() <= 1 and (diff > 0).float().mean() < 0.1, where
            else:
                assert torch.equal(got, want), where


# --- AutoAugment's learnt policies ----------------------------------------------------------


def policy_entries(policy: str) -> list[tuple[str, int]]:
    """Every distinct (torchvision op name, magnitude bin) a policy uses."""
    from torchvision.transforms import AutoAugment as TVAutoAugment
    from torchvision.transforms import AutoAugmentPolicy

    table = TVAutoAugment(AutoAugmentPolicy(policy)).policies
    return sorted({(name, m or 0) for sub in table for name, _, m in sub})


@pytest.mark.parametrize("policy", ["cifar10", "svhn", "imagenet"])
def test_every_op_of_a_policy_matches_torchvision_image_by_image(policy: str):
    from torchvision.transforms import AutoAugment as TVAutoAugment
    from torchvision.transforms.autoaugment import _apply_op

    auto = PolicyAugment(policy)
    for images in sample_images():
        h, w = images.shape[-2:]
        space = TVAutoAugment()._augmentation_space(10, (h, w))
        levels = auto.levels(h, w)
        for name, m in policy_entries(policy):
            where = (auto.ops == POLICY_OPS[name]) & (auto.bins == m)
            level = float(levels[where][0])
            magnitudes, signed = space[name]
            for negate in ([False, True] if signed else [False]):
                magnitude = float(magnitudes[m]) if magnitudes.ndim else 0.0
                magnitude = -magnitude if negate else magnitude
                if name in ("ShearX", "ShearY"):  # ours shear about the centre, as in RandAugment here
                    angle = math.degrees(math.atan(magnitude))
                    want = torch.stack([TF.affine(img, angle=0.0, translate=[0.0, 0.0], scale=1.0, shear=[
                        angle, 0.0] if name == "ShearX" else [0.0, angle], interpolation=InterpolationMode.NEAREST,
                        fill=0.0) for img in images])
                else:
                    want = torch.stack([_apply_op(img, name, magnitude, InterpolationMode.NEAREST, None)
                                        for img in images])
                n = len(images)
                level_per_image = torch.full((n,), level, dtype=torch.float64)
                got = auto.apply(images, torch.full((n,), POLICY_OPS[name]), level_per_image, torch.full((n,), negate))
                diff = (got.int() - want.int()).abs()
                label = f"{policy} {name} bin {m} negate {negate} {tuple(images.shape)}"
                if name in ("ShearX", "ShearY", "Rotate"):
                    assert (diff > 0).float().mean() < 0.05, label  # nearest-neighbour ties
                elif name in ("Brightness", "Color", "Contrast", "Sharpness", "AutoContrast"):
                    # The blend in another float order truncates one lower or higher, at worst
                    # (a darkening by 0.4) for one pixel in seven.
                    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.2, label
                else:  # translations by whole pixels, posterize, solarize, equalize, invert: exact
                    assert torch.equal(got, want), label


def test_a_policy_draws_sub_policies_uniformly_and_applies_each_op_with_its_probability():
    auto = PolicyAugment("cifar10")
    b = 200_000
    g = torch.Generator().manual_seed(0)
    ops, level, negate = auto.draw(b, 32, 32, torch.device("cpu"), g)
    assert ops.shape == level.shape == negate.shape == (b, 2)
    # Which sub-policy each image drew: the draw's first numbers, replayed...
    sub = torch.randint(0, len(auto), (b,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(level, auto.levels(32, 32)[sub])
    counts = torch.bincount(sub, minlength=len(auto)).double()
    assert (counts / b - 1 / len(auto)).abs().max() < 0.005
    # ...and each op is applied with its own probability, signed ops negated half of the time.
    for s in range(len(auto)):
        mine = sub == s
        for r in range(2):
            applied = (ops[mine, r] == auto.ops[s, r]).double().mean()
            p = auto.probs[s, r]
            if auto.ops[s, r] != 0:
                assert abs(applied - p) < 4 * math.sqrt(p * (1 - p) / mine.sum() + 1e-6) + 1e-3, (s, r)
    signed = torch.tensor([op in SIGNED for op in OPS] + [False])[ops]
    assert not negate[~signed].any()
    assert abs(negate[signed].double().mean() - 0.5) < 0.01


def test_a_policy_never_touches_the_global_rng_with_a_generator_and_inverts_where_it_says():
    auto = PolicyAugment("cifar10")
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    state = torch.get_rng_state()
    a = auto(images, torch.Generator().manual_seed(1))
    b = auto(images, torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state) and torch.equal(a, b)
    n = len(images)
    inverted = auto.apply(images, torch.full((n,), INVERT), torch.zeros(n, dtype=torch.float64),
                          torch.zeros(n, dtype=torch.bool))
    assert torch.equal(inverted, 255 - images)
    with pytest.raises(ValueError, match="autoaugment_policy must be one of .*cifar10"):
        PolicyAugment("cifar100")


def test_an_image_comes_out_the_same_whatever_else_is_in_its_batch():
    # Every op family runs over the whole batch; none may mix statistics across images.
    auto = AutoAugment("trivialaugment")
    images = torch.randint(0, 256, (28, 3, 12, 12), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    images[1::3] //= 4  # dark images, so per-image contrast/equalize statistics differ
    ops = torch.arange(28) % len(OPS)
    bins = torch.full((28,), 20)
    negate = torch.arange(28) % 3 == 0
    together = auto.apply(images, ops, bins, negate)
    alone = torch.cat([auto.apply(images[i:i + 1], ops[i:i + 1], bins[i:i + 1], negate[i:i + 1]) for i in range(28)])
    assert torch.equal(together, alone)


@pytest.mark.parametrize("kind", ["randaugment", "trivialaugment"])
def test_bin_zero_is_the_identity(kind: str):
    auto = AutoAugment(kind)
    for images in sample_images():
        for op in OPS:
            if op in ("autocontrast", "equalize"):
                continue
            for negate in (False, True):
                index = torch.full((len(images),), OPS.index(op))
                out = auto.apply(images, index, torch.zeros_like(index), torch.full((len(images),), negate))
                assert torch.equal(out, images), op


def test_draws_are_uniform_per_image_and_independent():
    n = 140_000
    auto = AutoAugment("trivialaugment")
    ops, bins, negate = auto.draw(n, torch.device("cpu"), torch.Generator().manual_seed(0))
    # Each op 1/14 of images: 10,000 expected, sd ~96; 5 sd bounds.
    counts = torch.bincount(ops, minlength=len(OPS))
    assert ((counts - n / len(OPS)).abs() < 500).all(), counts
    with_magnitude = torch.tensor([op not in NO_MAGNITUDE for op in OPS])[ops]
    assert (bins[~with_magnitude] == 0).all()
    bin_counts = torch.bincount(bins[with_magnitude], minlength=NUM_BINS).float()
    expected = with_magnitude.sum() / NUM_BINS
    assert ((bin_counts - expected).abs() < 5 * expected.sqrt()).all(), bin_counts
    signed = torch.tensor([op in SIGNED for op in OPS])[ops]
    assert not negate[~signed].any()
    assert abs(negate[signed].float().mean() - 0.5) < 0.01
    # Neighbouring images draw independently: how often two neighbours share an op is 1/14.
    same = (ops[1:] == ops[:-1]).float().mean()
    assert abs(same - 1 / len(OPS)) < 0.005
    # The magnitude does not depend on the op: the mean bin is the same for every op with one.
    for op in range(len(OPS)):
        if OPS[op] not in NO_MAGNITUDE:
            assert abs(bins[ops == op].float().mean() - MAX_BIN / 2) < 0.4, OPS[op]


class OpCounter(TorchDispatchMode):
    """Counts every aten op a piece of code runs (each is one kernel launch on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


def count_ops(fn) -> list[str]:
    with OpCounter() as counter:
        fn()
    return counter.ops


# Ops that read a device value back to the host, which would stall a GPU step.
HOST_SYNCS = {"_local_scalar_dense", "nonzero", "unique", "unique_consecutive", "_unique2", "item", "equal"}


@pytest.mark.parametrize("cfg,rounds", [
    (dict(crop_padding=4, hflip=True, auto_augment="trivialaugment", random_erasing=0.25,
          mixup_alpha=0.8, cutmix_alpha=1.0), 1),
    (dict(auto_augment="randaugment", randaugment_ops=2), 2),
    (dict(crop_padding=4, hflip=True, auto_augment="autoaugment", random_erasing=0.25,
          mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=0.5), 2),
], ids=["strong", "randaugment", "autoaugment"])
def test_a_batch_costs_the_same_ops_whatever_its_size_and_never_syncs(cfg, rounds):
    augment, mix = BatchAugment(aug_cfg(**cfg)), MixBatch(aug_cfg(**cfg), 10, 0.1)
    normalize = Normalize([0.5] * 3, [0.25] * 3, torch.device("cpu"))

    def one_batch(b: int) -> list[str]:
        images = torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8)
        labels = torch.randint(0, 10, (b,))
        return count_ops(lambda: mix(augment.erase(normalize(augment(images))), labels))

    one_batch(8)  # the first batch also places per-op lookup tables on the device
    small, large = one_batch(64), one_batch(1024)
    assert small == large
    assert not HOST_SYNCS & set(small), HOST_SYNCS & set(small)
    # A fixed ~200 ops (views included) per round plus ~150 for crop, erasing and mixing, not
    # one group of calls per drawn (op, magnitude, sign).
    assert len(small) < 200 * rounds + 200


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


def test_preview_titles_name_the_class_or_the_mixed_classes_with_weights():
    from swin_cli.preview import target_text

    classes = ["cat", "dog", "ship"]
    assert target_text(torch.tensor(1), classes) == "dog"
    smoothed = MixBatch(aug_cfg(), 3, 0.1).targets(torch.tensor([2]))[0]
    assert target_text(smoothed, classes) == "ship"
    assert target_text(torch.tensor([0.62, 0.0, 0.38]), classes) == "cat .62 + ship .38"


@pytest.mark.parametrize("mixing", [dict(mixup_alpha=0.8, cutmix_alpha=1.0), dict(cutmix_alpha=1.0)])
def test_the_pipeline_never_copies_from_the_host(monkeypatch, mixing):
    """On a GPU a host-to-device copy inside a step waits for the queue to drain. Run the whole
    pipeline on the `meta` device: any op that meets a CPU tensor is such a copy."""
    cfg = aug_cfg(crop_padding=4, hflip=True, auto_augment="trivialaugment", random_erasing=0.25, **mixing)
    meta = torch.device("meta")
    # Beta sampling has no meta kernel; its draw is made on the device in real runs.
    monkeypatch.setattr(torch.distributions.Beta, "sample", lambda self: torch.full((), 0.5, device=meta))
    augment, mix = BatchAugment(cfg), MixBatch(cfg, 10, 0.1)
    normalize = Normalize([0.5] * 3, [0.25] * 3, meta)
    images = torch.empty((16, 3, 32, 32), dtype=torch.uint8, device=meta)
    labels = torch.empty((16,), dtype=torch.long, device=meta)
    augment(images, None)  # the first call may place lookup tables on the device

    class HostCopies(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.found: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
            if func.overloadpacket.__name__ == "lift_fresh" or any(t.device.type == "cpu" for t in tensors):
                self.found.append(str(func))
            return out

    # torch.tensor(data, device=...) copies from the host without any op a dispatch mode sees.
    made = []
    monkeypatch.setattr(torch, "tensor", lambda *a, _make=torch.tensor, **k: made.append(a) or _make(*a, **k))
    with HostCopies() as mode:
        x, targets = mix(augment.erase(normalize(augment(images))), labels)
    assert x.device == meta and targets.shape == (16, 10)
    assert mode.found == [] and made == []


def test_op_space_picks_how_far_the_ops_reach():
    from swin_cli.augment import RANDAUGMENT_SPACE, TRIVIAL_SPACE

    assert BatchAugment(aug_cfg(auto_augment="trivialaugment")).auto.space == TRIVIAL_SPACE
    assert BatchAugment(aug_cfg(auto_augment="trivialaugment", op_space="standard")).auto.space == RANDAUGMENT_SPACE
    assert BatchAugment(aug_cfg(auto_augment="randaugment", op_space="wide")).auto.space == TRIVIAL_SPACE
    with pytest.raises(ValueError, match="op_space"):
        AutoAugment("randaugment", space="huge")


def test_basic_aug_gives_each_image_its_own_crop_of_the_padded_image_and_flip():
    images = (torch.arange(16 * 3 * 8 * 8) % 251 + 1).to(torch.uint8).view(16, 3, 8, 8)  # no zero pixels
    out = BatchAugment(make_config("aug=basic").aug)(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    choices = set()
    for i in range(len(images)):
        found = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                 if torch.equal(out[i], (lambda c: c.flip(-1) if flip else c)(padded[i, :, dy:dy + 8, dx:dx + 8]))]
        assert found, f"image {i} is not a crop of its padded self (or its mirror image)"
        choices.add(found[0])
    assert len(choices) > 4  # drawn per image, not once per batch
    assert not BatchAugment(make_config("aug=none").aug).active


def test_normalize_matches_reference():
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 0.2]
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(Normalize(mean, std, torch.device("cpu"))(images), expected, atol=1e-6)


def test_the_flip_mirrors_the_drawn_images_and_leaves_the_others():
    images = torch.randint(0, 256, (16, 3, 8, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    aug = BatchAugment(aug_cfg(hflip=True))
    out = aug(images, torch.Generator().manual_seed(3))
    flip = torch.rand(16, generator=torch.Generator().manual_seed(3)) < 0.5  # the draw the flip makes
    assert 0 < int(flip.sum()) < 16
    assert torch.equal(out[flip], images[flip].flip(-1)) and torch.equal(out[~flip], images[~flip])
