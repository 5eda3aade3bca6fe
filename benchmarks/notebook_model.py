"""The reference notebook's simplified Swin, rebuilt as a speed and accuracy baseline only.

What it leaves out of Swin v1, as described in its write-up: no shifted windows (so no
attention mask), no relative position bias, and no residual connection around attention.
Patch embedding, window attention, the MLP with its residual, and patch merging are as in
swin_cli.model. Not used by swin-cli itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        b, h, w, c = x.shape
        m = self.window
        windows = x.view(b, h // m, m, w // m, m, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, m * m, c)
        q, k, v = self.qkv(windows).view(len(windows), m * m, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(len(windows), m * m, c)
        out = self.proj(out).view(b, h // m, w // m, m, m, c).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(b, h, w, c)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = self.attn(self.norm1(x))  # the notebook's block: no residual around attention
        return x + self.mlp(self.norm2(x))


class Merge(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class NotebookSwin(nn.Module):
    def __init__(self, image_size: int = 32, patch_size: int = 2, in_chans: int = 3, num_classes: int = 10,
                 embed_dim: int = 24, depths=(2, 2, 2), num_heads=(4, 4, 4), window_size: int = 4):
        super().__init__()
        self.patch = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        layers: list[nn.Module] = []
        dim, size = embed_dim, image_size // patch_size
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            window = min(window_size, size)
            layers += [Block(dim, heads, window) for _ in range(depth)]
            if i < len(depths) - 1:
                layers.append(Merge(dim))
                dim, size = dim * 2, size // 2
        self.layers = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(self.patch(x).permute(0, 2, 3, 1))
        return self.head(self.norm(x).mean(dim=(1, 2)))
