"""Swin Transformer v1 (Liu et al. 2021) and v2 (Liu et al. 2022) for image classification.

Numerically interchangeable with torchvision.models.swin_t/s/b (version=1) and swin_v2_t/s/b
(version=2): same maths, same parameter shapes, and a key mapping (`torchvision_to_ours` /
`ours_to_torchvision` in swin_cli.weights) between the two state_dicts.

V2 changes three things and keeps everything else (shifted windows, masks, padding, clamping):
  - scaled cosine attention: cos(q, k) times a learnable per-head scale instead of q.k / sqrt(d),
  - a continuous position bias: a small MLP over log-spaced relative offsets instead of a table,
  - residual post-norm: x + norm(f(x)) instead of x + f(x_normed), and patch merging normalises
    after its projection. Together these keep activations from growing with depth.

Tensors inside the network are channels-last, (B, H, W, C), so LayerNorm / Linear act on the last
dim with no transposes.

Any input H x W that the patch size divides runs, square or not. What depends only on geometry
(padding to a multiple of the window, the shifts, the shifted-window mask) is computed once per
input size and kept: at construction for image_size, and on the first eager call at any other
size (or ahead of time with `prepare_input_size`). Forward then only does tensor work, and a
compiled model sees the same constants at every step of a size. A map that a window does not tile
is padded to a multiple of the window, as the paper's code does; a dim that fits in one padded
window is not shifted.

One deliberate difference from torchvision: when a stage's feature map at the built image_size
fits inside one window (H <= M and W <= M) the window is clamped to the map (M_eff = max(H, W))
and the stage never shifts. torchvision instead pads the map up to M, so padded zero tokens take
part in attention. The clamp is architecture (it sizes the position-bias tables), so it is fixed
at construction; other input sizes pad to the clamped window. At 224px / window 7 (maps 56, 28,
14, 7) and at V2's 256px / window 8 (64, 32, 16, 8), the clamp never applies and the two agree
exactly at any input size.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from swin_cli.sizes import SizeError, hw, size_text
from swin_cli.text import plural

__all__ = [
    "SwinTransformer",
    "count_parameters",
]

# torchvision (and the official code) use -100 rather than -inf; keep it so softmax outputs match.
MASK_VALUE = -100.0
# V2's cosine-attention temperature is learnt as a log, capped so logits stay within [-100, 100].
MAX_LOGIT_SCALE = math.log(100.0)


# ----------------------------------------------------------------------------- geometry helpers


def relative_position_index(window: int) -> Tensor:
    """(N*N,) index into a (2M-1)^2 table for every (query, key) pair of an M x M window.

    Row-major over (dh, dw) offsets shifted to start at 0; must stay in this order because it is
    the layout of torchvision's (and the official) pretrained bias tables.
    """
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, N, N), each in [0, 2M-2]
    return (rel[0] * (2 * window - 1) + rel[1]).flatten()


def log_spaced_relative_coords(window: int) -> Tensor:
    """((2M-1)^2, 2) V2 position-MLP inputs: every (dh, dw) offset of an M x M window, in the row
    order of `relative_position_index`, scaled to [-8, 8] and log-spaced, sign(t) log2(1+|t|) / 3.

    The log spacing lets an MLP trained on one window extrapolate to bigger ones. A 1 x 1 window
    (a clamped 1 x 1 map) has only offset 0; dividing by max(M-1, 1) keeps that 0 instead of NaN.
    """
    offsets = torch.arange(-(window - 1), window, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1)  # (2M-1, 2M-1, 2)
    grid = grid / max(window - 1, 1) * 8
    return (torch.sign(grid) * torch.log2(grid.abs() + 1.0) / 3.0).reshape(-1, 2)


def window_geometry(height: int, width: int, window: int, shift: int) -> tuple[int, int, int, int]:
    """(pad_bottom, pad_right, shift_h, shift_w) for an H x W map.

    A dim that fits in a single (padded) window has nothing to shift across, so its shift is zero.
    """
    pad_b = (window - height % window) % window
    pad_r = (window - width % window) % window
    shift_h = shift if height + pad_b > window else 0
    shift_w = shift if width + pad_r > window else 0
    return pad_b, pad_r, shift_h, shift_w


def _region_ids(length: int, window: int, shift: int) -> Tensor:
    # After rolling by -shift, the last window along this axis holds two pieces that were not
    # neighbours in the image: [L-M, L-s) and the wrapped-around [L-s, L).
    ids = torch.zeros(length, dtype=torch.long)
    if shift > 0:
        ids[length - window : length - shift] = 1
        ids[length - shift :] = 2
    return ids


def shifted_window_mask(height: int, width: int, window: int, shift_h: int, shift_w: int) -> Optional[Tensor]:
    """Additive (nW, N, N) mask (0 / MASK_VALUE) for a padded, rolled H x W map; None if no shift.

    Tokens may attend to each other only if they came from the same region of the unrolled map.
    """
    if shift_h == 0 and shift_w == 0:
        return None
    regions = _region_ids(height, window, shift_h)[:, None] * 3 + _region_ids(width, window, shift_w)[None, :]
    regions = regions.view(height // window, window, width // window, window).transpose(1, 2)
    regions = regions.reshape(-1, window * window)  # (nW, N)
    differ = regions[:, :, None] != regions[:, None, :]
    return torch.zeros(differ.shape).masked_fill_(differ, MASK_VALUE)


# ----------------------------------------------------------------------------- building blocks


class DropPath(nn.Module):
    """Stochastic depth: drop a whole sample's residual branch, rescale the survivors."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p:.4f}"


class PatchEmbed(nn.Module):
    """Image to a (B, H/p, W/p, C) token map.

    stem="patch" is the paper's non-overlapping p x p projection. stem="conv" first runs a 3x3
    convolution (+BatchNorm, GELU) at full resolution, so each token sees a (p+2)x(p+2)
    neighbourhood through a nonlinearity: a convolutional tokenizer, which makes small
    transformers learn far faster from little data (Xiao et al. 2021, "Early convolutions help
    transformers see better"; Hassani et al. 2021, CCT) for ~1% more parameters and FLOPs.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, patch_norm: bool,
                 stem: str = "patch", stem_convs: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(stem_convs if stem == "conv" else 0):
            layers += [nn.Conv2d(in_chans, embed_dim, kernel_size=3, padding=1, bias=False),
                       nn.BatchNorm2d(embed_dim), nn.GELU()]
            in_chans = embed_dim
        self.stem = nn.Sequential(*layers) if layers else nn.Identity()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(self.stem(x)).permute(0, 2, 3, 1))  # (B, H, W, C)


class WindowAttention(nn.Module):
    """(Shifted) window multi-head self-attention with a relative position bias.

    Owns the block's geometry: pads to a multiple of the window, rolls, partitions, attends,
    and undoes all of it, so the block around it stays a plain pre-norm residual.
    """

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, resolution: tuple[int, int],
                 qkv_bias: bool, attn_drop: float, proj_drop: float, attn_impl: str):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.window, self.shift = window, shift
        self.tokens = window * window
        self.scale = self.head_dim ** -0.5
        self.attn_drop, self.attn_impl = attn_drop, attn_impl

        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        # Pure function of the window; rebuilt on load, so it stays out of the state_dict.
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self._init_position_bias()

        # Per map size: (pad_bottom, pad_right, shift_h, shift_w, the mask buffer's name or None).
        # Masks are buffers so that they follow the module to its device; non-persistent, so the
        # state_dict does not depend on which sizes a model has met.
        self.sizes: dict[tuple[int, int], tuple[int, int, int, int, Optional[str]]] = {}
        self.resolution = resolution
        self.prepare(*resolution)
        self.geometry = self.sizes[resolution][:4]

    def prepare(self, height: int, width: int) -> None:
        """Compute and keep the padding, shifts and mask of an H x W map (once per size)."""
        if (height, width) in self.sizes:
            return
        pad_b, pad_r, shift_h, shift_w, mask = self._computed_geometry(height, width)
        # The built resolution's mask keeps its historical name (weight converters drop it).
        name = "attn_mask" if (height, width) == self.resolution else f"attn_mask_{height}x{width}"
        if mask is not None:
            mask = mask.to(self.relative_position_index.device)
        self.register_buffer(name, mask, persistent=False)
        self.sizes[(height, width)] = (pad_b, pad_r, shift_h, shift_w, name if mask is not None else None)

    def _geometry(self, height: int, width: int, device: torch.device):
        """The kept geometry of an H x W map. A size first met inside a compiled graph is computed
        there and not kept: storing it would change what the graph was traced against."""
        if (height, width) not in self.sizes:
            pad_b, pad_r, shift_h, shift_w, mask = self._computed_geometry(height, width)
            return pad_b, pad_r, shift_h, shift_w, None if mask is None else mask.to(device)
        pad_b, pad_r, shift_h, shift_w, name = self.sizes[(height, width)]
        return pad_b, pad_r, shift_h, shift_w, None if name is None else getattr(self, name)

    def _computed_geometry(self, height: int, width: int) -> tuple[int, int, int, int, Optional[Tensor]]:
        """(pad_bottom, pad_right, shift_h, shift_w, mask or None) of an H x W map, on the CPU."""
        pad_b, pad_r, shift_h, shift_w = window_geometry(height, width, self.window, self.shift)
        mask = shifted_window_mask(height + pad_b, width + pad_r, self.window, shift_h, shift_w)
        return pad_b, pad_r, shift_h, shift_w, mask

    # The four methods below are what WindowAttentionV2 overrides; the rest is shared.

    def _init_position_bias(self) -> None:
        self.relative_position_bias_table = nn.Parameter(torch.empty((2 * self.window - 1) ** 2, self.num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def bias_table(self) -> Tensor:
        """((2M-1)^2, heads): the bias for every relative offset."""
        return self.relative_position_bias_table

    def _qkv(self, x: Tensor) -> Tensor:
        return self.qkv(x)

    def _queries_keys(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """What the attention logits are (q * self.scale) @ k^T of: plain dot product in V1."""
        return q, k

    def relative_position_bias(self) -> Tensor:
        """(heads, N, N) bias gathered from the table (learnt, so gathered every call)."""
        bias = self.bias_table()[self.relative_position_index]  # (N*N, heads)
        return bias.t().reshape(self.num_heads, self.tokens, self.tokens)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        # int(): under TorchScript tracing the dims are tensors; a trace is made for one size.
        pad_b, pad_r, shift_h, shift_w, mask = self._geometry(int(H), int(W), x.device)
        M, N, heads, hd = self.window, self.tokens, self.num_heads, self.head_dim

        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        if shift_h or shift_w:
            x = torch.roll(x, shifts=(-shift_h, -shift_w), dims=(1, 2))
        nW = (Hp // M) * (Wp // M)
        x = x.reshape(B, Hp // M, M, Wp // M, M, C).transpose(2, 3).reshape(B * nW, N, C)

        # Memory order is (B, nW, heads, N, hd) either way. Without a mask windows and batch share
        # one bias, so fold windows into the batch; with a mask fold them into the heads so a
        # (nW*heads, N, N) additive term broadcasts over the batch alone.
        bias = self.relative_position_bias()
        if mask is None:
            lead, attn_bias = B * nW, bias
        else:
            lead, attn_bias = B, (bias[None] + mask[:, None]).reshape(nW * heads, N, N)
        qkv = self._qkv(x).reshape(B * nW, N, 3, heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B*nW, heads, N, hd)
        q, k = self._queries_keys(q, k)
        q, k, v = (t.reshape(lead, -1, N, hd) for t in (q, k, v))
        attn_bias = attn_bias.to(q.dtype)  # autocast: q is bf16/fp16 while the table stays fp32
        drop = self.attn_drop if self.training else 0.0

        if self.attn_impl == "sdpa":
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=drop, scale=self.scale)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1) + attn_bias
            attn = F.dropout(attn.softmax(dim=-1), p=drop, training=self.training)
            x = attn @ v

        # reshape, never view: attention kernels choose their output's memory layout (CUDA's
        # memory-efficient kernel returns heads and tokens swapped in memory), and so may any op.
        x = x.reshape(B * nW, heads, N, hd).transpose(1, 2).reshape(B * nW, N, C)
        x = self.proj_drop(self.proj(x))
        x = x.reshape(B, Hp // M, Wp // M, M, M, C).transpose(2, 3).reshape(B, Hp, Wp, C)
        if shift_h or shift_w:
            x = torch.roll(x, shifts=(shift_h, shift_w), dims=(1, 2))
        if pad_b or pad_r:
            x = x[:, :H, :W, :]
        return x


class WindowAttentionV2(WindowAttention):
    """V2 window attention: scaled cosine attention and a continuous (MLP) position bias.

    Cosine similarity is bounded, so a few token pairs cannot dominate the logits as dot products
    do in large models; a learnt per-head temperature (initialised 10, capped at 100) sharpens
    it back. The bias comes from an MLP over log-spaced offsets, so it is defined for any window.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The temperature multiplies the normalised q, so sdpa / the math path must not rescale.
        self.scale = 1.0

    def _init_position_bias(self) -> None:
        # Stored as a log so it stays positive; shape (heads, 1, 1) as in torchvision's checkpoints.
        self.logit_scale = nn.Parameter(torch.full((self.num_heads, 1, 1), math.log(10.0)))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(), nn.Linear(512, self.num_heads, bias=False))
        self.register_buffer("relative_coords_table", log_spaced_relative_coords(self.window), persistent=False)

    def bias_table(self) -> Tensor:
        # 16 * sigmoid bounds the bias to (0, 16), the same order as the cosine logits.
        return 16 * torch.sigmoid(self.cpb_mlp(self.relative_coords_table))

    def _qkv(self, x: Tensor) -> Tensor:
        # V2 has query and value biases but no key bias (the official code's q_bias / v_bias).
        # torchvision keeps a full 3C qkv.bias and ignores its middle third; so do we, so that
        # its checkpoints load as they are (that third never gets a gradient).
        bias = self.qkv.bias
        if bias is not None:
            C = bias.shape[0] // 3
            bias = torch.cat([bias[:C], torch.zeros_like(bias[C:2 * C]), bias[2 * C:]])
        return F.linear(x, self.qkv.weight, bias)

    def _queries_keys(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        scale = torch.clamp(self.logit_scale, max=MAX_LOGIT_SCALE).exp()  # (heads, 1, 1)
        # Under autocast normalize / the fp32 scale promote to fp32; v stays low precision and
        # attention wants one dtype, so go back to the input's.
        return (F.normalize(q, dim=-1) * scale).to(q.dtype), F.normalize(k, dim=-1).to(k.dtype)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SwinBlock(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    attention = WindowAttention

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, resolution: tuple[int, int],
                 mlp_ratio: float, qkv_bias: bool, drop: float, attn_drop: float, drop_path: float,
                 attn_impl: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = self.attention(dim, num_heads, window, shift, resolution, qkv_bias, attn_drop, drop, attn_impl)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinBlockV2(SwinBlock):
    """Post-norm residual block: x + norm(attn(x)), then x + norm(mlp(x)). Each branch's output is
    normalised before it is added, so the residual stream does not grow block after block."""

    attention = WindowAttentionV2

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.norm1(self.attn(x)))
        return x + self.drop_path(self.norm2(self.mlp(x)))


def _gather_2x2(x: Tensor) -> Tensor:
    """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 4C), odd maps padded by one."""
    H, W = x.shape[1], x.shape[2]
    if H % 2 or W % 2:
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
    # Order (top-left, bottom-left, top-right, bottom-right) is what pretrained weights expect.
    return torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)


class PatchMerging(nn.Module):
    """Halve H and W, double C: concat each 2x2 neighbourhood, norm, project 4C -> 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.reduction(self.norm(_gather_2x2(x)))


class PatchMergingV2(nn.Module):
    """V2 patch merging: project 4C -> 2C first, then norm (post-norm, as in the V2 blocks)."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.reduction(_gather_2x2(x)))


class Stage(nn.Module):
    """Blocks, then the patch merging. With grad_checkpointing each block keeps only its input
    for backward and recomputes the rest: one more forward pass for most of the activation
    memory. Non-reentrant checkpointing restores the RNG, so drop path and dropout draw the
    same masks again and the gradients are those of a plain run."""

    def __init__(self, blocks: list[SwinBlock], downsample: Optional[nn.Module], grad_checkpointing: bool = False):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = downsample
        self.grad_checkpointing = grad_checkpointing

    def forward(self, x: Tensor) -> Tensor:
        # Without autograd (evaluation) there is nothing to save, so nothing to recompute.
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
        else:
            x = self.blocks(x)
        return x if self.downsample is None else self.downsample(x)


# ----------------------------------------------------------------------------- the model


class SwinTransformer(nn.Module):
    """`image_size`: one int for a square, or (H, W). It sizes the windows (a stage whose map fits
    in one window gets a window the map's size) and the geometry kept from the start; the model
    runs at any other size the patch divides."""

    def __init__(self, *, image_size: int | tuple[int, int], patch_size: int, in_chans: int, num_classes: int,
                 embed_dim: int, depths: Sequence[int], num_heads: Sequence[int], window_size: int,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1, patch_norm: bool = True,
                 attn_impl: str = "sdpa", stem: str = "patch", stem_convs: int = 1, version: int = 1,
                 grad_checkpointing: bool = False):
        super().__init__()
        depths, num_heads = list(depths), list(num_heads)
        problem = architecture_problem(
            image_size=image_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=window_size,
            mlp_ratio=mlp_ratio, attn_impl=attn_impl, stem=stem, stem_convs=stem_convs, version=version)
        if problem:
            raise ValueError(problem)
        self.attn_impl, self.version = attn_impl, version
        self.image_size, self.patch_size = hw(image_size), patch_size
        block_cls, merge_cls = (SwinBlock, PatchMerging) if version == 1 else (SwinBlockV2, PatchMergingV2)

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm, stem, stem_convs)
        total = sum(depths)
        maps = stage_maps(self.image_size, patch_size, len(depths))
        stages, k = [], 0
        for i, (depth, heads, res) in enumerate(zip(depths, num_heads, maps)):
            dim = embed_dim * 2**i
            # A map that fits in one window gets a window exactly its size. Odd blocks always
            # carry a shift: each input size's geometry drops it along a dim that one window
            # covers (no shift at the built size, a shift along W at 7 x 9, as torchvision does).
            window = min(window_size, max(res))
            shift = window // 2
            blocks = []
            for j in range(depth):
                blocks.append(block_cls(
                    dim, heads, window, shift if j % 2 else 0, res, mlp_ratio, qkv_bias,
                    drop_rate, attn_drop_rate, drop_path_rate * k / max(total - 1, 1), attn_impl))
                k += 1
            last = i == len(depths) - 1
            stages.append(Stage(blocks, None if last else merge_cls(dim), grad_checkpointing))
        self.stages = nn.ModuleList(stages)

        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    def prepare_input_size(self, size: int | tuple[int, int]) -> None:
        """Compute and keep every block's window geometry for inputs of `size` (int or (H, W)).
        Eager calls do this by themselves; call it before a compiled model first meets a size,
        so that its graph is traced against the kept geometry (one graph per size)."""
        height, width = hw(size, "the input size")
        if height % self.patch_size or width % self.patch_size:
            raise SizeError(f"an input of {size_text((height, width))} is not divisible by "
                            f"model.patch_size={self.patch_size}")
        for stage, res in zip(self.stages, stage_maps((height, width), self.patch_size, len(self.stages))):
            for block in stage.blocks:
                block.attn.prepare(*res)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.compiler.is_compiling():
            self.prepare_input_size((int(x.shape[-2]), int(x.shape[-1])))
        x = self.patch_embed(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(self.norm(x).mean(dim=(1, 2)))

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters weight decay must leave alone: norms, biases, the
        relative-position bias tables (a bias, however it is stored) and, in V2, the attention
        temperatures and the whole position-bias MLP (the bias it computes, as the V2 authors do)."""
        return {name for name, p in self.named_parameters()
                if p.ndim <= 1 or name.endswith(("relative_position_bias_table", "logit_scale"))
                or ".cpb_mlp." in name}

    def layer_depths(self) -> dict[str, int]:
        """Each parameter's depth for layer-wise lr decay: 0 for the patch embedding, 1, 2, ...
        for the blocks in order (a patch merging goes with the last block before it), and one
        past the last block for the final norm and the head."""
        depths, first = {}, 1
        for i, stage in enumerate(self.stages):
            for j in range(len(stage.blocks)):
                depths[f"stages.{i}.blocks.{j}."] = first + j
            first += len(stage.blocks)
            depths[f"stages.{i}.downsample."] = first - 1
        top = first
        return {name: next((d for prefix, d in depths.items() if name.startswith(prefix)),
                           0 if name.startswith("patch_embed.") else top)
                for name, _ in self.named_parameters()}

    def stage_summary(self) -> list[dict]:
        """Per stage: input resolution (h, w), effective window, shift of its odd blocks, heads,
        width, depth, and parameter count (its blocks plus the patch merging that follows it)."""
        summary = []
        for stage in self.stages:
            attns = [b.attn for b in stage.blocks]
            summary.append({
                "resolution": attns[0].resolution,
                "window": attns[0].window,
                "shift": max(max(a.geometry[2:]) for a in attns),
                "heads": attns[0].num_heads,
                "dim": attns[0].num_heads * attns[0].head_dim,
                "depth": len(attns),
                "params": count_parameters(stage),
            })
        return summary


def stage_maps(image_size: tuple[int, int], patch_size: int, stages: int) -> list[tuple[int, int]]:
    """Each stage's token map (h, w) for an input of image_size: the patch grid, then halved per
    stage, odd maps padded by one before merging."""
    h, w = image_size[0] // patch_size, image_size[1] // patch_size
    maps = []
    for _ in range(stages):
        maps.append((h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    return maps


def architecture_problem(*, image_size: int | tuple[int, int], patch_size: int, in_chans: int, num_classes: int,
                         embed_dim: int, depths: Sequence[int], num_heads: Sequence[int], window_size: int,
                         mlp_ratio: float = 4.0, attn_impl: str = "math", stem: str = "patch", stem_convs: int = 1,
                         version: int = 1) -> Optional[str]:
    """Why these hyperparameters cannot make a Swin, or None. The one home of these rules: the
    config check and the constructor both ask here, so the message names the config key."""
    depths, num_heads = list(depths), list(num_heads)
    try:
        height, width = hw(image_size)
    except SizeError as error:
        return str(error)
    rules = [
        (version in (1, 2), f"model.version must be 1 or 2 (got {version})"),
        (patch_size >= 1, f"model.patch_size must be >= 1 (got {patch_size})"),
        (window_size >= 1, f"model.window_size must be >= 1 (got {window_size})"),
        (stem_convs >= 1, f"model.stem_convs must be >= 1 (got {stem_convs})"),
        (embed_dim >= 1, f"model.embed_dim must be >= 1 (got {embed_dim})"),
        (mlp_ratio > 0, f"model.mlp_ratio must be > 0 (got {mlp_ratio})"),
        (len(depths) >= 1 and all(d >= 1 for d in depths),
         f"model.depths must be a non-empty list of positive ints (got {depths})"),
        (len(depths) == len(num_heads), f"model.depths and model.num_heads must have the same length "
                                        f"(got {plural(len(depths), 'stage')} of depth and {len(num_heads)} of heads)"),
        (patch_size < 1 or (height % patch_size == 0 and width % patch_size == 0),
         f"data.image_size={size_text((height, width), unit='')} is not divisible by model.patch_size={patch_size}"),
        (in_chans >= 1, f"data.channels must be >= 1 (got {in_chans})"),
        (num_classes >= 0, f"the number of classes must be >= 0 (got {num_classes})"),
        (attn_impl in ("sdpa", "math"), f"model.attn_impl must be sdpa or math (got {attn_impl!r})"),
        (stem in ("patch", "conv"), f"model.stem must be patch or conv (got {stem!r})"),
    ]
    for i, heads in enumerate(num_heads):
        width = embed_dim * 2**i
        rules.append((heads >= 1 and width % heads == 0,
                      f"model.num_heads[{i}]={heads} must divide the stage {i} width "
                      f"{width} (model.embed_dim={embed_dim} * 2^{i})"))
    return next((message for ok, message in rules if not ok), None)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
