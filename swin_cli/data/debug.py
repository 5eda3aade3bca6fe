"""The smaller data a debug run uses (debug=fast, debug=overfit)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from swin_cli.data.schema import plain
from swin_cli.data.sources import DataError
from swin_cli.data.storage import DataBundle, eval_batch_size


def debug_subset(data: DataBundle, cfg: Any, processes: int) -> DataBundle:
    """The splits a debug run uses: with train.overfit_batches, the first that many batches of
    the training split, validated on themselves (in eval mode, so a model that fits them scores
    ~100% there too); with train.limit_eval_batches, the first that many eval batches of the
    validation and test splits. The data as it is otherwise."""
    t = cfg.train
    if not (t.overfit_batches or t.limit_eval_batches):
        return data
    train, val, test = data.train, data.val, data.test
    if not all(split.random_access for split in (train, val, test)):
        raise DataError(f"train.overfit_batches / train.limit_eval_batches (debug=fast, debug=overfit) need "
                        f"random access to the data, which data={plain(cfg.data.name)} does not give")
    if t.overfit_batches:
        batch_images = min(cfg.data.batch_size, len(train)) * t.accumulate * processes
        train = val = train.subset(torch.arange(min(len(train), t.overfit_batches * batch_images)))
    if t.limit_eval_batches:
        keep = t.limit_eval_batches * eval_batch_size(cfg.data)
        val, test = (split.subset(torch.arange(min(len(split), keep))) for split in (val, test))
    return dataclasses.replace(data, train=train, val=val, test=test)
