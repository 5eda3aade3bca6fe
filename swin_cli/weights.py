"""Weights from elsewhere: torchvision's Swin key layout both ways, and loading a pretrained
state_dict into our model (wrappers and prefixes stripped, the head skipped when the class count
differs, relative-position tables fitted to the model's window)."""

from __future__ import annotations

import math
import re
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor

from swin_cli.model import SwinTransformer, relative_position_index

__all__ = ["torchvision_to_ours", "ours_to_torchvision", "load_pretrained"]

_TV_BLOCK_RENAMES = {"mlp.0.": "mlp.fc1.", "mlp.3.": "mlp.fc2."}
_TV_BLOCK = re.compile(r"features\.(\d+)\.(\d+)\.(.+)")
_TV_MERGE = re.compile(r"features\.(\d+)\.((?:norm|reduction)\..+)")
_OUR_BLOCK = re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.(.+)")
_OUR_MERGE = re.compile(r"stages\.(\d+)\.downsample\.(.+)")


def torchvision_to_ours(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a torchvision Swin v1 state_dict (swin_t / swin_s / swin_b) to this module's keys.

        torchvision                                    ours
        features.0.0.{weight,bias}                     patch_embed.proj.{weight,bias}
        features.0.2.{weight,bias}                     patch_embed.norm.{weight,bias}
        features.{2i+1}.{j}.norm1.* / norm2.*          stages.{i}.blocks.{j}.norm1.* / norm2.*
        features.{2i+1}.{j}.attn.qkv.* / proj.*        stages.{i}.blocks.{j}.attn.qkv.* / proj.*
        features.{2i+1}.{j}.attn.relative_position_bias_table
                                                       stages.{i}.blocks.{j}.attn.relative_position_bias_table
        features.{2i+1}.{j}.attn.relative_position_index
                                                       dropped (ours is rebuilt from the window size)
        features.{2i+1}.{j}.mlp.0.*                    stages.{i}.blocks.{j}.mlp.fc1.*
        features.{2i+1}.{j}.mlp.3.*                    stages.{i}.blocks.{j}.mlp.fc2.*
        features.{2i+2}.norm.*                         stages.{i}.downsample.norm.*
        features.{2i+2}.reduction.weight               stages.{i}.downsample.reduction.weight
        norm.*, head.*                                 unchanged

    Raises ValueError on keys that fit none of these (e.g. a Swin v2 checkpoint).
    """
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        new = _tv_key_to_ours(key)
        if new is None:
            if not key.endswith("attn.relative_position_index"):
                unknown.append(key)
            continue
        out[new] = value
    if unknown:
        raise ValueError(f"not a torchvision Swin v1 state_dict; unrecognised keys: {_preview(unknown)}")
    return out


def _tv_key_to_ours(key: str) -> Optional[str]:
    if key.startswith(("norm.", "head.")):
        return key
    if key.startswith("features.0.0."):
        return "patch_embed.proj." + key[len("features.0.0."):]
    if key.startswith("features.0.2."):
        return "patch_embed.norm." + key[len("features.0.2."):]
    m = _TV_BLOCK.fullmatch(key)
    if m and int(m[1]) % 2 == 1:
        if m[3] == "attn.relative_position_index":
            return None
        rest = m[3]
        for old, new in _TV_BLOCK_RENAMES.items():
            if rest.startswith(old):
                rest = new + rest[len(old):]
                break
        if not rest.startswith(("norm1.", "norm2.", "attn.qkv.", "attn.proj.", "mlp.fc1.", "mlp.fc2.")) \
                and rest != "attn.relative_position_bias_table":
            return None
        return f"stages.{(int(m[1]) - 1) // 2}.blocks.{m[2]}.{rest}"
    m = _TV_MERGE.fullmatch(key)
    if m and int(m[1]) % 2 == 0 and int(m[1]) >= 2:
        return f"stages.{(int(m[1]) - 2) // 2}.downsample.{m[2]}"
    return None


def ours_to_torchvision(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of `torchvision_to_ours` (see its table). torchvision keeps the relative
    position index as a persistent buffer, so it is regenerated here from each bias table's size;
    the result then loads with strict=True into the matching torchvision.models.swin_* (which
    needs in_chans=3 and patch_norm=True, as torchvision has no other variant)."""
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if key.startswith(("norm.", "head.")):
            out[key] = value
        elif key.startswith("patch_embed.proj."):
            out["features.0.0." + key[len("patch_embed.proj."):]] = value
        elif key.startswith("patch_embed.norm."):
            out["features.0.2." + key[len("patch_embed.norm."):]] = value
        elif m := _OUR_BLOCK.fullmatch(key):
            rest = m[3]
            for tv, ours in _TV_BLOCK_RENAMES.items():
                if rest.startswith(ours):
                    rest = tv + rest[len(ours):]
                    break
            prefix = f"features.{2 * int(m[1]) + 1}.{m[2]}."
            out[prefix + rest] = value
            if rest == "attn.relative_position_bias_table":
                window = (math.isqrt(value.shape[0]) + 1) // 2
                out[prefix + "attn.relative_position_index"] = relative_position_index(window)
        elif m := _OUR_MERGE.fullmatch(key):
            out[f"features.{2 * int(m[1]) + 2}.{m[2]}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"not a swin_cli SwinTransformer state_dict; unrecognised keys: {_preview(unknown)}")
    return out


def _preview(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _crop_bias_table(table: Tensor, window: int) -> Optional[Tensor]:
    """Central (2M-1)^2 part of a bigger relative-position table: exactly the offsets an M window
    can see, so a pretrained window-7 table transfers losslessly to a clamped, smaller window."""
    side = math.isqrt(table.shape[0])
    want = 2 * window - 1
    if side * side != table.shape[0] or side < want:
        return None
    start = (side - want) // 2
    grid = table.reshape(side, side, -1)[start:start + want, start:start + want]
    return grid.reshape(want * want, -1).clone()


def load_pretrained(model: SwinTransformer, path: str) -> None:
    """Load a torchvision Swin v1 state_dict file or one of ours into `model`, in place.

    Accepts a bare state_dict or one wrapped as {"model": ...} / {"state_dict": ...} /
    {"model_state_dict": ...}, with optional "module." / "_orig_mod." prefixes (DDP / compile).
    The classifier head is skipped (left at its fresh init) when its shape differs or the model
    has none; relative
    position tables larger than the model's window are centre-cropped (exact). Anything else
    missing, unexpected or mis-shaped raises ValueError naming the keys. Prints nothing.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unreadable files of any kind become one clear error
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e
    for wrapper in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state_dict of tensors")

    source: dict[str, Tensor] = {}
    for key, value in obj.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        source[key] = value
    if any(k.startswith("features.") for k in source):
        source = torchvision_to_ours(source)

    target = model.state_dict()
    loaded: dict[str, Tensor] = {}
    skipped_head: list[str] = []
    mismatched: list[str] = []
    for key, value in source.items():
        if key not in target:
            continue  # reported as unexpected below
        want = target[key].shape
        if value.shape == want:
            loaded[key] = value
        elif key.startswith("head."):
            skipped_head.append(key)
        elif key.endswith("relative_position_bias_table") and (
                cropped := _crop_bias_table(value, (math.isqrt(want[0]) + 1) // 2)) is not None \
                and cropped.shape == want:
            loaded[key] = cropped
        else:
            mismatched.append(f"{key} {tuple(value.shape)} vs model {tuple(want)}")

    # a head-less model (num_classes=0) simply has no use for the source's classifier
    skipped_head += [k for k in source if k.startswith("head.") and k not in target]
    unexpected = sorted(set(source) - set(target) - set(skipped_head))
    missing = sorted(set(target) - set(loaded) - set(skipped_head))
    problems = []
    if mismatched:
        problems.append(f"shape mismatch: {_preview(mismatched)}")
        first_conv = source.get("patch_embed.proj.weight")
        if first_conv is not None and "patch_embed.proj.weight" in target \
                and first_conv.shape[1] != target["patch_embed.proj.weight"].shape[1]:
            problems.append(f"the weights take {first_conv.shape[1]}-channel images: "
                            f"set data.channels={first_conv.shape[1]}")
    if missing:
        problems.append(f"missing keys: {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_preview(unexpected)}")
    if problems:
        raise ValueError(f"checkpoint {path} does not fit this model; " + "; ".join(problems))
    model.load_state_dict(loaded, strict=False)
