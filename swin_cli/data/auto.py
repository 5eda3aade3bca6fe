"""What a config leaves to the data becomes concrete here, once, right after the source is opened
and before anything is decoded or built: data.image_size=null (the images' own side) and
aug=auto (crop and flip that fit the images). The architecture and data checks that read the
size run again on the settled one, with the messages of start-up's.

Everything after reads plain values from the config: the model, the storage's views, the eval
batch, checkpoint.shape_signature and the header every checkpoint carries, so export and
swin-eval see the size trained at. Only headers are read to size an image set (PIL opens a
file lazily), a few dozen of them, never a whole decode.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from swin_cli.data.decode import open_image
from swin_cli.data.registry import Source, data_source
from swin_cli.data.schema import plain
from swin_cli.data.sources import SourceData
from swin_cli.data.views import train_crop
from swin_cli.sizes import hw, size_text
from swin_cli.text import plural

log = logging.getLogger(__name__)

# Headers read to size an image set: evenly spread over its training split.
SIZE_PROBES = 32
# The largest side data.image_size=null picks: Swin's largest recipe (Swin-B at 384). Larger
# files are trained at 384 unless data.image_size says otherwise.
LARGEST_AUTO_SIZE = 384
# An explicit data.image_size this many times off the files' own side, either way, is said.
FAR_OFF = 2.0


@dataclass
class Settled:
    """What settle_auto opened and chose: the source (None for a source held by its reader, which
    load_data opens itself) and, for the start panel, why each value is what it is."""

    source: Optional[SourceData] = None
    notes: dict[str, str] = field(default_factory=dict)


def image_sides(samples: Any, count: int = SIZE_PROBES) -> list[tuple[int, int]]:
    """(width, height) of up to `count` images spread evenly over `samples`, from their headers;
    unreadable ones are passed over (the storage names them when it decodes)."""
    n = len(samples)
    picks = sorted({i * n // count for i in range(count)}) if n > count else range(n)
    sides = []
    for i in picks:
        try:
            image = open_image(samples.read(i))
            sides.append(tuple(image.size))
        except Exception:  # a bad file: the next one
            continue
    return sides


def own_size(sides: list[tuple[int, int]], patch_size: int, stages: int) -> tuple[int, str]:
    """(side, why) of images of these (width, height)s: their common shorter side, or the median
    shorter side, brought within [the side that leaves the last stage 1x1, 384] and down to a
    multiple of the patch."""
    shorter = [min(w, h) for w, h in sides]
    if len(set(sides)) == 1:
        w, h = sides[0]
        side, why = shorter[0], f"the files' own size: all {len(sides)} looked at are {w}x{h}"
    else:
        side = int(statistics.median(shorter))
        why = f"the median shorter side of {plural(len(sides), 'file')} looked at ({min(shorter)}-{max(shorter)} px)"
    smallest = patch_size * 2 ** (stages - 1)
    size = min(max(side, smallest), LARGEST_AUTO_SIZE)
    size = max(patch_size, size - size % patch_size)
    if size != side:
        bound = ("the largest auto size" if side > LARGEST_AUTO_SIZE else
                 "the model's smallest" if side < smallest else "a multiple of model.patch_size")
        why += f", {side} px brought to {size} ({bound})"
    return size, why


def settle_image_size(cfg: Any, entry: Source, source: Optional[SourceData], model: Any = None) -> str:
    """Fill data.image_size=null in `cfg` (the data group) in place, or say in one warning when
    an explicit size is over 2x off the files' own; returns the panel's note."""
    patch, stages = (model.patch_size, len(model.depths)) if model is not None else (1, 1)
    if entry.default_size is not None:  # digits, CIFAR: the size they have always trained at
        side, why = entry.default_size
        if cfg.image_size is None:
            cfg.image_size = side
            return f"{side} px: {why} (data.image_size=null)"
        return f"{size_text(cfg.image_size)} (data.image_size)"
    sides = image_sides(source.train) if source is not None and hasattr(source.train, "read") else []
    if not sides:
        if cfg.image_size is None:
            cfg.image_size = 32
            return f"32 px: data={plain(cfg.name)} is not sized from its files; set data.image_size"
        return f"{size_text(cfg.image_size)} (data.image_size)"
    size, why = own_size(sides, patch, stages)
    if cfg.image_size is None:
        cfg.image_size = size
        return f"{size} px: {why} (data.image_size=null)"
    native = int(statistics.median(min(w, h) for w, h in sides))
    shorter = min(hw(cfg.image_size))  # a box's shorter side meets the files' shorter side
    if not native / FAR_OFF <= shorter <= native * FAR_OFF:
        way = "up" if shorter > native else "down"
        log.warning(f"data.image_size={size_text(cfg.image_size, unit='')} scales the files ({native} px shorter "
                    f"side) {way} {max(shorter, native) / min(shorter, native):.1f}x; "
                    f"data.image_size=null trains at their own size")
    return f"{size_text(cfg.image_size)} (data.image_size; the files are {native} px)"


def write_split(source: SourceData, run_dir: Path) -> Optional[str]:
    """<run dir>/split.json for a source that drew its own split (data.layout=classes); the
    panel's note, or None."""
    split = source.extra.get("split")
    if split is None:
        return None
    from swin_cli.atomic_io import write_text_atomic

    path = Path(run_dir) / "split.json"
    write_text_atomic(path, json.dumps(split, indent=1) + "\n")
    return f"written to {path} (data.split_file=<that file> trains on the same split again)"


def settle_auto(cfg: Any, run_dir: Optional[Path] = None) -> Settled:
    """Open cfg's data source (unless its reader holds it: load_data opens that one) and settle
    data.image_size and aug=auto in `cfg` in place; check the model and data keys again at the
    settled size (ConfigError, the start-up message). `run_dir`: where split.json goes, if the
    source drew a split (None: nowhere, as mode=summary)."""
    from swin_cli.config.errors import ConfigError
    from swin_cli.config.model import architecture_problem_of
    from swin_cli.data.registry import data_problem

    d = cfg.data
    entry = data_source(plain(d.name))
    source = None if entry.held_by_reader else entry.load(d)
    settled = Settled(source)
    settled.notes["size"] = settle_image_size(d, entry, source, cfg.model)
    problem = architecture_problem_of(cfg) or data_problem(d)
    if problem:
        raise ConfigError(problem)
    channels = d.channels or (source.channels if source is not None else entry.channels) or 3
    random_resized = not entry.held_by_reader and train_crop(d) == "random_resized"
    from swin_cli.config.aug import settle_auto_aug

    aug_note = settle_auto_aug(cfg.aug, channels, random_resized)
    if aug_note:
        settled.notes["aug"] = aug_note
    if source is not None and run_dir is not None:
        split_note = write_split(source, run_dir)
        if split_note:
            settled.notes["split"] = split_note
    return settled
