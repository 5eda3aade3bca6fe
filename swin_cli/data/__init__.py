"""Data: sources (what the images are), storages (memory or stream), transforms, and the one
batch interface the rest of swin-cli reads. Everything outside this package imports from here.

    sources.py     digits, CIFAR, image folders (+ webdataset.py, huggingface.py): splits as
                   tensors or as random-access encoded samples
    decode.py      file or bytes -> 8-bit L/RGB pixels (every PIL mode scaled right)
    transforms.py  random resized crop, centre crop, squash; JPEG draft decoding
    memory.py      decode once into one uint8 tensor, cached on disk
    stream.py      decode while training in worker processes, deterministic per sample
    splits.py      the batch interface (ImageSplit in memory), epoch order
    stats.py       per-channel mean/std in bounded memory
    storage.py     which storage and transforms a config gets; load_data
"""

from swin_cli.data.debug import debug_subset
from swin_cli.data.decode import IMAGE_EXTENSIONS, guess_channels, open_image, to_mode
from swin_cli.data.sources import DataError, FileSamples, Samples, list_classes
from swin_cli.data.splits import Batch, EpochPlan, ImageSplit, Split, epoch_order, step_seed
from swin_cli.data.stats import channel_stats
from swin_cli.data.storage import (DataBundle, crop_pct, eval_batch_size, eval_transform, load_data, place_data,
                                   train_crop)
from swin_cli.data.stream import LoaderDied, StreamSplit, loader_death
from swin_cli.data.transforms import CenterCrop, RandomResizedCrop, Squash

__all__ = ["IMAGE_EXTENSIONS", "Batch", "CenterCrop", "DataBundle", "DataError", "EpochPlan", "FileSamples",
           "ImageSplit", "LoaderDied", "RandomResizedCrop", "Samples", "Split", "Squash", "StreamSplit",
           "channel_stats", "crop_pct", "debug_subset", "epoch_order", "eval_batch_size", "eval_transform", "guess_channels",
           "list_classes", "load_data", "loader_death", "open_image", "place_data", "step_seed", "to_mode", "train_crop"]
