"""Weights from elsewhere: torchvision's Swin key layout both ways, timm's (and the official
repo's) into ours, torchvision's ImageNet weights by preset name, and loading a pretrained
state_dict into our model (wrappers and prefixes stripped, the head skipped when the class count
differs, relative-position tables fitted to the model's window)."""

from __future__ import annotations

import math
import os
import re
import socket
import urllib.parse
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor

from swin_cli.model import SwinTransformer, log_spaced_relative_coords, relative_position_index

__all__ = ["torchvision_to_ours", "ours_to_torchvision", "timm_to_ours", "load_pretrained",
           "resize_bias_table", "imagenet_weights", "check_available"]

_TV_BLOCK_RENAMES = {"mlp.0.": "mlp.fc1.", "mlp.3.": "mlp.fc2."}
_TV_BLOCK = re.compile(r"features\.(\d+)\.(\d+)\.(.+)")
_TV_MERGE = re.compile(r"features\.(\d+)\.((?:norm|reduction)\..+)")
_OUR_BLOCK = re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.(.+)")
_OUR_MERGE = re.compile(r"stages\.(\d+)\.downsample\.(.+)")
# Buffers torchvision saves but we rebuild from the window: dropped going in, regenerated going out.
_TV_DERIVED = ("attn.relative_position_index", "attn.relative_coords_table")
_BLOCK_PARTS = ("norm1.", "norm2.", "attn.qkv.", "attn.proj.", "attn.cpb_mlp.", "mlp.fc1.", "mlp.fc2.")
_BLOCK_PARAMS = ("attn.relative_position_bias_table", "attn.logit_scale")


def torchvision_to_ours(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a torchvision Swin state_dict (v1: swin_t / s / b; v2: swin_v2_t / s / b) to our keys.

        torchvision                                    ours
        features.0.0.{weight,bias}                     patch_embed.proj.{weight,bias}
        features.0.2.{weight,bias}                     patch_embed.norm.{weight,bias}
        features.{2i+1}.{j}.norm1.* / norm2.*          stages.{i}.blocks.{j}.norm1.* / norm2.*
        features.{2i+1}.{j}.attn.qkv.* / proj.*        stages.{i}.blocks.{j}.attn.qkv.* / proj.*
        features.{2i+1}.{j}.attn.relative_position_bias_table
                                                       stages.{i}.blocks.{j}.attn.relative_position_bias_table
        features.{2i+1}.{j}.attn.relative_position_index
                                                       dropped (ours is rebuilt from the window size)
      v2 only:
        features.{2i+1}.{j}.attn.logit_scale           stages.{i}.blocks.{j}.attn.logit_scale
        features.{2i+1}.{j}.attn.cpb_mlp.{0,2}.*       stages.{i}.blocks.{j}.attn.cpb_mlp.{0,2}.*
        features.{2i+1}.{j}.attn.relative_coords_table dropped (rebuilt from the window size)
        features.{2i+1}.{j}.mlp.0.*                    stages.{i}.blocks.{j}.mlp.fc1.*
        features.{2i+1}.{j}.mlp.3.*                    stages.{i}.blocks.{j}.mlp.fc2.*
        features.{2i+2}.norm.*                         stages.{i}.downsample.norm.*
        features.{2i+2}.reduction.weight               stages.{i}.downsample.reduction.weight
        norm.*, head.*                                 unchanged

    (v2's patch merging norms 2C after the reduction rather than 4C before it; same key names.)
    Raises ValueError on keys that fit none of these.
    """
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        new = _tv_key_to_ours(key)
        if new is None:
            if not key.endswith(_TV_DERIVED):
                unknown.append(key)
            continue
        out[new] = value
    if unknown:
        raise ValueError(f"not a torchvision Swin state_dict; unrecognised keys: {_preview(unknown)}")
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
        if m[3] in _TV_DERIVED:
            return None
        rest = m[3]
        for old, new in _TV_BLOCK_RENAMES.items():
            if rest.startswith(old):
                rest = new + rest[len(old):]
                break
        if not rest.startswith(_BLOCK_PARTS) and rest not in _BLOCK_PARAMS:
            return None
        return f"stages.{(int(m[1]) - 1) // 2}.blocks.{m[2]}.{rest}"
    m = _TV_MERGE.fullmatch(key)
    if m and int(m[1]) % 2 == 0 and int(m[1]) >= 2:
        return f"stages.{(int(m[1]) - 2) // 2}.downsample.{m[2]}"
    return None


def ours_to_torchvision(state_dict: Mapping[str, Tensor], window_size: int = 8) -> dict[str, Tensor]:
    """The inverse of `torchvision_to_ours` (see its table). torchvision keeps the relative
    position index (and, in v2, the log-spaced coordinate table) as persistent buffers, so they
    are regenerated here: for v1 from each bias table's size, for v2 (whose MLP does not reveal
    the window) from `window_size`, torchvision's one window for every stage (8 in swin_v2_*).
    The result then loads with strict=True into the matching torchvision.models.swin_* (which
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
            elif rest == "attn.logit_scale":  # one per v2 block
                side = 2 * window_size - 1
                out[prefix + "attn.relative_position_index"] = relative_position_index(window_size)
                out[prefix + "attn.relative_coords_table"] = \
                    log_spaced_relative_coords(window_size).reshape(1, side, side, 2)
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


def resize_bias_table(table: Tensor, window: int) -> Tensor:
    """A V1 relative-position table ((2S-1)^2, heads) resampled to an M window's ((2M-1)^2, heads):
    each head's (2S-1) x (2S-1) grid of offsets is treated as an image and resized bicubically,
    the way the Swin authors fine-tune a window-7 model at window 12 or 24."""
    side = math.isqrt(table.shape[0])
    if side * side != table.shape[0]:
        raise ValueError(f"a relative-position table has a square number of rows (got {table.shape[0]})")
    want = 2 * window - 1
    heads = table.shape[1]
    grid = table.t().reshape(1, heads, side, side).float()
    grid = torch.nn.functional.interpolate(grid, size=(want, want), mode="bicubic", align_corners=False)
    return grid.reshape(heads, want * want).t().contiguous().to(table.dtype)


def _fit_bias_table(table: Tensor, attn: torch.nn.Module) -> Optional[Tensor]:
    """`table` refitted to `attn`'s window, or None when the heads differ. A window that holds its
    whole map (one clamped to a small map) sees only offsets inside the bigger table: cropped,
    exact. Any other window change (the model's window_size itself) is a bicubic resize."""
    if table.ndim != 2 or table.shape[1] != attn.num_heads:
        return None
    if attn.window >= max(attn.resolution):
        cropped = _crop_bias_table(table, attn.window)
        if cropped is not None:
            return cropped
    if math.isqrt(table.shape[0]) ** 2 != table.shape[0]:
        return None
    return resize_bias_table(table, attn.window)


# ----------------------------------------------------------------------------- timm / official layout

_TIMM_BLOCK = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.(.+)")
_TIMM_MERGE = re.compile(r"layers\.(\d+)\.downsample\.(.+)")
# Buffers timm (older versions) and the official checkpoints save; ours are rebuilt from the window.
_TIMM_DERIVED = ("relative_position_index", "relative_coords_table", "attn_mask")


def timm_to_ours(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a timm (or official Microsoft) Swin v1 / v2 state_dict to our keys.

        timm / official                              ours
        patch_embed.*, norm.*                        unchanged
        layers.{i}.blocks.{j}.*                      stages.{i}.blocks.{j}.*
        layers.{i}.blocks.{j}.attn.q_bias, v_bias    stages.{i}.blocks.{j}.attn.qkv.bias = [q, 0, v] (v2)
        layers.{i+1}.downsample.*  (timm >= 0.9)     stages.{i}.downsample.*
        layers.{i}.downsample.*    (official, old timm)
        head.fc.* (timm) / head.* (official)         head.*
        ...relative_position_index, relative_coords_table, attn_mask: dropped

    Newer timm merges patches at the start of the next stage, the official code at the end of the
    stage; only the latter has a layers.0.downsample, which is how the two are told apart.
    Raises ValueError on keys that fit none of these.
    """
    merge_at_end = any(k.startswith("layers.0.downsample.") for k in state_dict)
    out: dict[str, Tensor] = {}
    q_v: dict[str, dict[str, tuple[str, Tensor]]] = {}  # ours' block prefix -> q / v bias
    unknown: list[str] = []
    for key, value in state_dict.items():
        if key.rsplit(".", 1)[-1] in _TIMM_DERIVED:
            continue
        if key.startswith("head.fc."):
            out["head." + key[len("head.fc."):]] = value
        elif key.startswith(("patch_embed.", "norm.", "head.")):
            out[key] = value
        elif m := _TIMM_BLOCK.fullmatch(key):
            prefix = f"stages.{m[1]}.blocks.{m[2]}."
            if m[3] in ("attn.q_bias", "attn.v_bias"):
                q_v.setdefault(prefix, {})[m[3]] = (key, value)
            else:
                out[prefix + m[3]] = value
        elif (m := _TIMM_MERGE.fullmatch(key)) and (stage := int(m[1]) - (0 if merge_at_end else 1)) >= 0:
            out[f"stages.{stage}.downsample.{m[2]}"] = value
        else:
            unknown.append(key)
    for prefix, parts in q_v.items():
        if set(parts) != {"attn.q_bias", "attn.v_bias"}:
            unknown += [key for key, _ in parts.values()]
            continue
        q, v = parts["attn.q_bias"][1], parts["attn.v_bias"][1]
        out[prefix + "attn.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    if unknown:
        raise ValueError(f"not a timm Swin state_dict; unrecognised keys: {_preview(unknown)}")
    return out


# ----------------------------------------------------------------------------- pretrained by name

IMAGENET = "imagenet"
# Our preset (model=<name>) -> the torchvision weights enum with its ImageNet-1k weights.
TORCHVISION_IMAGENET = {
    "tiny": "Swin_T_Weights", "small": "Swin_S_Weights", "base": "Swin_B_Weights",
    "v2_tiny": "Swin_V2_T_Weights", "v2_small": "Swin_V2_S_Weights", "v2_base": "Swin_V2_B_Weights",
}
_DOWNLOAD_TIMEOUT_S = 30.0


def imagenet_weights(preset: Optional[str]):
    """torchvision's IMAGENET1K_V1 weights entry for our preset; ValueError for one it has none for."""
    if preset not in TORCHVISION_IMAGENET:
        raise ValueError(f"model.pretrained={IMAGENET}: torchvision publishes ImageNet weights only for "
                         f"model={', '.join(TORCHVISION_IMAGENET)} (this is model={preset}); "
                         f"for others give a state_dict file")
    import torchvision.models

    return getattr(torchvision.models, TORCHVISION_IMAGENET[preset]).IMAGENET1K_V1


def check_available(source: str, preset: Optional[str] = None) -> None:
    """Raise ValueError now when the weights `source` names (see `load_pretrained`) cannot be had:
    "imagenet" neither cached nor downloadable (it is downloaded here when the network is
    there), or a file that does not exist. For a check before anything slow, such as decoding
    the data, so that an offline fine-tuning run stops at once."""
    if source == IMAGENET:
        _imagenet_cached(preset)
    elif not os.path.isfile(os.path.expanduser(source)):
        raise ValueError(f"model.pretrained={source}: no such file")


def _imagenet_cached(preset: Optional[str]):
    """torchvision's weights entry for `preset` and its label, once its file is in torch hub's
    cache (torch.hub.get_dir()/checkpoints), downloading it if need be. The cache is looked at
    first, so an offline machine with the file succeeds at once instead of waiting on the network."""
    weights = imagenet_weights(preset)
    file_name = os.path.basename(urllib.parse.urlparse(weights.url).path)
    cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    label = f"{os.path.join(cache_dir, file_name)} (torchvision {weights})"
    if not os.path.exists(os.path.join(cache_dir, file_name)):
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)  # urllib's default: a stalled link never returns
        try:  # what torch.hub.load_state_dict_from_url does, less its "Downloading" line on stdout
            os.makedirs(cache_dir, exist_ok=True)
            sha = re.search(r"-([0-9a-f]{8,})\.", file_name)
            torch.hub.download_url_to_file(weights.url, os.path.join(cache_dir, file_name),
                                           sha[1] if sha else None, progress=True)
        except Exception as e:  # noqa: BLE001 - no network, HTTP errors, a bad hash: all one message
            reason = " ".join(f"{type(e).__name__}: {e}".split())
            raise ValueError(f"model.pretrained={IMAGENET} needs {file_name}, which is not cached and could "
                             f"not be downloaded ({reason}); download {weights.url} into {cache_dir}/ "
                             f"(or set TORCH_HOME to a folder whose hub/checkpoints/ has it)") from None
        finally:
            socket.setdefaulttimeout(previous)
    return weights, label


def _imagenet_state_dict(preset: Optional[str]) -> tuple[Mapping, str]:
    """The ImageNet state_dict for `preset` through torchvision's weights API, and a label for errors."""
    weights, label = _imagenet_cached(preset)
    try:
        return weights.get_state_dict(progress=False, map_location="cpu", weights_only=True), label
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file in the cache
        raise ValueError(f"cannot read checkpoint {label}: {' '.join(str(e).split())}") from e


def load_pretrained(model: SwinTransformer, source: str, preset: Optional[str] = None) -> None:
    """Load pretrained weights into `model`, in place. `source` is either "imagenet" (torchvision's
    ImageNet-1k weights for our preset named `preset`: tiny, small, base, v2_tiny, v2_small,
    v2_base; downloaded into torch hub's cache on first use) or a state_dict file ("~" expanded)
    in our layout, torchvision's (swin_t ... swin_v2_b) or timm's / the official repo's.

    Accepts a bare state_dict or one wrapped as {"model": ...} / {"state_dict": ...} /
    {"model_state_dict": ...}, with optional "module." / "_orig_mod." prefixes (DDP / compile).
    The classifier head is skipped (left at its fresh init) when its shape differs or the model
    has none. V1 relative-position tables made for another window are refitted: centre-cropped
    (exact) for a window clamped to a small map, otherwise resized bicubically (V2's position MLP
    works at any window as it is). Anything else missing, unexpected or mis-shaped raises
    ValueError naming the keys. Prints nothing (but torch hub's download progress).
    """
    fit_weights(model, *read_weights(source, preset))


def read_weights(source: str, preset: Optional[str] = None) -> tuple[dict[str, Tensor], str]:
    """The state_dict `source` names (see `load_pretrained`), unwrapped and in our key layout,
    and a label for messages. Separate from fitting it so a missing file fails before a model
    is built."""
    if source == IMAGENET:
        obj, label = _imagenet_state_dict(preset)
    else:
        label = os.path.expanduser(source)
        try:
            obj = torch.load(label, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - unreadable files of any kind become one clear error
            raise ValueError(f"cannot read checkpoint {label}: {' '.join(str(e).split())}") from e
    for wrapper in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{label} does not hold a state_dict of tensors")

    source_sd: dict[str, Tensor] = {}
    for key, value in obj.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        source_sd[key] = value
    if any(k.startswith("features.") for k in source_sd):
        source_sd = torchvision_to_ours(source_sd)
    elif any(k.startswith("layers.") for k in source_sd):
        source_sd = timm_to_ours(source_sd)
    return source_sd, label


def fit_weights(model: SwinTransformer, source_sd: dict[str, Tensor], label: str) -> None:
    """Load a state_dict from `read_weights` into `model` (head skipped, bias tables refitted)."""
    # V2 weights carry per-head attention temperatures; V1 weights never do.
    version = 2 if any(k.endswith("attn.logit_scale") for k in source_sd) else 1
    if version != model.version:
        raise ValueError(f"{label} holds Swin V{version} weights but this is a V{model.version} model: "
                         f"set model.version={version}")

    target = model.state_dict()
    loaded: dict[str, Tensor] = {}
    skipped_head: list[str] = []
    mismatched: list[str] = []
    for key, value in source_sd.items():
        if key not in target:
            continue  # reported as unexpected below
        want = target[key].shape
        if value.shape == want:
            loaded[key] = value
        elif key.startswith("head."):
            skipped_head.append(key)
        elif key.endswith(".relative_position_bias_table") and (
                fitted := _fit_bias_table(value, model.get_submodule(key.rsplit(".", 1)[0]))) is not None \
                and fitted.shape == want:
            loaded[key] = fitted
        else:
            mismatched.append(f"{key} {tuple(value.shape)} vs model {tuple(want)}")

    # a head-less model (num_classes=0) simply has no use for the source's classifier
    skipped_head += [k for k in source_sd if k.startswith("head.") and k not in target]
    unexpected = sorted(set(source_sd) - set(target) - set(skipped_head))
    missing = sorted(set(target) - set(loaded) - set(skipped_head))
    problems = []
    if mismatched:
        problems.append(f"shape mismatch: {_preview(mismatched)}")
        first_conv = source_sd.get("patch_embed.proj.weight")
        if first_conv is not None and "patch_embed.proj.weight" in target \
                and first_conv.shape[1] != target["patch_embed.proj.weight"].shape[1]:
            problems.append(f"the weights take {first_conv.shape[1]}-channel images: "
                            f"set data.channels={first_conv.shape[1]}")
    if missing:
        problems.append(f"missing keys: {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_preview(unexpected)}")
    if problems:
        raise ValueError(f"checkpoint {label} does not fit this model; " + "; ".join(problems))
    model.load_state_dict(loaded, strict=False)
