"""The `model` config group: the Swin architecture's keys, and their checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from swin_cli.choices import choices
from swin_cli.config.errors import check, check_problem

AttnImpl = choices("AttnImpl", "auto", "sdpa", "math")
Stem = choices("Stem", "patch", "conv")


@dataclass
class ModelConfig:
    name: str = MISSING
    # 1: Swin (Liu et al. 2021). 2: Swin V2 (Liu et al. 2022): scaled cosine attention, a
    # continuous position bias from a small MLP, residual post-norm.
    version: int = 1
    patch_size: int = 2
    embed_dim: int = 24
    depths: list[int] = field(default_factory=lambda: [2, 2, 2])
    num_heads: list[int] = field(default_factory=lambda: [4, 4, 4])
    window_size: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    patch_norm: bool = True
    # patch: the paper's p x p patch projection. conv: a 3x3 conv + BatchNorm + GELU before it
    # (a convolutional tokenizer; much faster learning on small data, see swin_cli/model.py).
    stem: Stem = Stem.patch
    # How many 3x3 conv + BatchNorm + GELU layers (embed_dim wide) a conv stem has.
    stem_convs: int = 1
    # sdpa: F.scaled_dot_product_attention; math: explicit softmax (same numbers). auto: the one
    # measured faster for windows this small, math, on CPUs (nano +6%) and on an H100 (nano +13%,
    # tiny +3%; benchmarks/RESULTS.md).
    attn_impl: AttnImpl = AttnImpl.auto
    # Weights to start from: `imagenet` (exactly that spelling) for torchvision's ImageNet-1k
    # weights of this preset (tiny, small, base, v2_tiny, v2_small, v2_base; downloaded once into
    # torch hub's cache, $TORCH_HOME/hub/checkpoints), or a state_dict file: torchvision's, timm's
    # or swin-cli's. The head is dropped when the number of classes differs.
    pretrained: Optional[str] = None
    # Recompute each block's activations during backward instead of keeping them (torch.utils
    # .checkpoint): less activation memory for more compute; the gradients are the same.
    grad_checkpointing: bool = False


def architecture_problem_of(cfg: Any) -> Optional[str]:
    """Why cfg's model cannot be built for its data, in one line naming the key, or None. With
    data.image_size still null (settled once the data is open) the size's own rules wait: the
    data's side is checked again then, by swin_cli/data/auto.py, with the same message."""
    # Imported here: the model module imports torch, which --help must not pay for.
    from swin_cli.model import architecture_problem

    m, d = cfg.model, cfg.data
    # A stand-in side that passes the size rules, so the rest are checked before any data is read.
    size = d.image_size if d.image_size is not None else m.patch_size
    return architecture_problem(
        image_size=size, patch_size=m.patch_size, in_chans=d.channels or 1, num_classes=0,
        embed_dim=m.embed_dim, depths=list(m.depths), num_heads=list(m.num_heads), window_size=m.window_size,
        mlp_ratio=m.mlp_ratio, stem_convs=m.stem_convs, version=m.version)


def check_model(cfg: Any) -> None:
    """The architecture (the model builds for data.image_size and data.channels) and dropout rates."""
    m = cfg.model
    check_problem(architecture_problem_of(cfg))
    for key in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
        value = getattr(m, key)
        check(0.0 <= value < 1.0, f"model.{key} must be in [0, 1) (got {value})")
