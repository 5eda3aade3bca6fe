"""Batch-level augmentation and normalisation on image tensors.

Working on whole batches (on the training device) replaces per-image PIL transforms in worker
processes: one gather does every random crop of the batch, one `where` every flip, one mask every
random erasing, one `lerp` every mixup or cutmix. RandAugment and TrivialAugment draw a different
op per image, and still cost a fixed sequence of batched ops (see AutoAugment): the number of
kernel launches never depends on the batch size or on what was drawn, and nothing waits on the
host, so a GPU step never stalls on its augmentation.

Every random draw comes from torch's global RNG or the generator passed in (never Python's
`random` or numpy), because the trainer reseeds torch before each step so that a resumed run
repeats the augmentations of the run it continues.

The modules, one job each:
    normalize     Normalize: uint8 -> normalised float, on the batch's device
    pixel_ops     grayscale, smooth, autocontrast, equalize: PIL's image ops on batches
    randaugment   the op table and spaces; AutoAugment (RandAugment, TrivialAugment)
    policy        PolicyAugment: AutoAugment's learnt policies (torchvision's tables)
    batch         BatchAugment: crop, flip, the chosen policy (AUTO_AUGMENTS), random erasing
    mixing        MixBatch: mixup/cutmix and soft targets
    pipeline      TrainBatch (the whole training-time pipeline) and model_input
"""

from swin_cli.augment.batch import AUTO_AUGMENTS, BatchAugment, auto_augment
from swin_cli.augment.mixing import MixBatch
from swin_cli.augment.normalize import Normalize
from swin_cli.augment.pipeline import TrainBatch, model_input
from swin_cli.augment.pixel_ops import GRAY_WEIGHTS, autocontrast, equalize, grayscale, smooth
from swin_cli.augment.policy import INVERT, POLICY_MAX_BIN, POLICY_OPS, PolicyAugment
from swin_cli.augment.randaugment import (
    MAX_BIN,
    NO_MAGNITUDE,
    NUM_BINS,
    OPS,
    RANDAUGMENT_SPACE,
    SIGNED,
    TRIVIAL_SPACE,
    AutoAugment,
    OpSpace,
    canonical,
)

__all__ = [
    "AUTO_AUGMENTS", "GRAY_WEIGHTS", "INVERT", "MAX_BIN", "NO_MAGNITUDE", "NUM_BINS", "OPS", "POLICY_MAX_BIN",
    "POLICY_OPS", "RANDAUGMENT_SPACE", "SIGNED", "TRIVIAL_SPACE", "AutoAugment", "BatchAugment", "MixBatch",
    "Normalize", "OpSpace", "PolicyAugment", "TrainBatch", "auto_augment", "autocontrast", "canonical", "equalize",
    "grayscale", "model_input", "smooth",
]
