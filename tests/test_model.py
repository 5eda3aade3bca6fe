"""Tests for swin_cli.model: torchvision parity, masks, odd geometries, checkpoints, validation."""

from __future__ import annotations

import itertools

import pytest
import torch
import torchvision
from conftest import torchvision_reference

from swin_cli.model import (
    MASK_VALUE,
    SwinTransformer,
    WindowAttention,
    count_parameters,
    shifted_window_mask,
)
from swin_cli.weights import load_pretrained, ours_to_torchvision, torchvision_to_ours

SWIN_T = dict(image_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96,
              depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, drop_path_rate=0.0)
NANO = dict(image_size=32, patch_size=2, in_chans=3, num_classes=10, embed_dim=24,
            depths=[2, 2, 2], num_heads=[4, 4, 4], window_size=4)


def build(**overrides) -> SwinTransformer:
    return SwinTransformer(**{**NANO, **overrides})


@pytest.fixture(scope="module")
def tv_swin_t():
    return torchvision_reference("swin_t", 224)


# ----------------------------------------------------------------------------- torchvision parity


@pytest.mark.parametrize("attn_impl", ["sdpa", "math"])
def test_torchvision_weights_give_torchvision_logits(tv_swin_t, attn_impl):
    tv_state, x, ref = tv_swin_t
    model = SwinTransformer(**SWIN_T, attn_impl=attn_impl).eval()
    model.load_state_dict(torchvision_to_ours(tv_state), strict=True)
    with torch.no_grad():
        out = model(x)
    assert (out - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("built", [224, (224, 288)])
def test_non_square_inputs_give_torchvision_logits(tv_swin_t, built):
    """torchvision computes masks and paddings per call; ours keeps them per size. At 224 x 288
    (maps 56x72 ... 7x9: the last stage pads its width to 14 and shifts along it alone) and at
    160 x 96 (maps 40x24 ... 5x3: padded to one window, never shifted) the logits agree, whether
    the model was built at 224 or at the box itself."""
    tv_state = tv_swin_t[0]
    tv = torchvision.models.swin_t(weights=None).eval()
    tv.load_state_dict(tv_state)
    model = SwinTransformer(**{**SWIN_T, "image_size": built}).eval()
    model.load_state_dict(torchvision_to_ours(tv_state), strict=True)
    torch.manual_seed(3)
    for height, width in [(224, 288), (160, 96)]:
        x = torch.randn(1, 3, height, width)
        with torch.no_grad():
            assert (model(x) - tv(x)).abs().max().item() <= 1e-4, (height, width)
    last = model.stages[-1].blocks[1].attn
    assert last.sizes[(7, 9)][:4] == (0, 5, 0, 3)


def test_a_size_the_patch_does_not_divide_is_one_line():
    from swin_cli.sizes import SizeError

    model = build()
    with pytest.raises(SizeError, match=r"an input of 31x32 px is not divisible by model.patch_size=2"):
        model.prepare_input_size((31, 32))
    with pytest.raises(ValueError, match=r"data.image_size=30x32 is not divisible by model.patch_size=4"):
        SwinTransformer(**{**NANO, "image_size": (30, 32), "patch_size": 4})


def test_our_weights_load_strictly_into_torchvision(tv_swin_t):
    x = tv_swin_t[1][:1]
    torch.manual_seed(1)
    ours = SwinTransformer(**SWIN_T).eval()
    tv = torchvision.models.swin_t(weights=None).eval()
    tv.load_state_dict(ours_to_torchvision(ours.state_dict()), strict=True)
    with torch.no_grad():
        assert (tv(x) - ours(x)).abs().max().item() <= 1e-4
    # and the round trip is the identity on our keys
    back = torchvision_to_ours(ours_to_torchvision(ours.state_dict()))
    assert back.keys() == ours.state_dict().keys()


def test_mapping_rejects_unknown_keys():
    with pytest.raises(ValueError, match="features.1.0.attn.weird"):
        # logit_scale is a known (v2) key; the unknown one beside it is still named
        torchvision_to_ours({"features.1.0.attn.logit_scale": torch.zeros(3, 1, 1),
                             "features.1.0.attn.weird": torch.zeros(3)})
    with pytest.raises(ValueError, match="blocks.weird"):
        ours_to_torchvision({"blocks.weird": torch.zeros(3)})


def test_load_pretrained_torchvision_file_drops_head(tv_swin_t, tmp_path):
    tv_state, _, _ = tv_swin_t
    torch.save(tv_state, tmp_path / "swin_t.pth")
    model = SwinTransformer(**{**SWIN_T, "num_classes": 10})
    head_before = model.head.weight.clone()
    load_pretrained(model, str(tmp_path / "swin_t.pth"))
    got = model.state_dict()
    for key, value in torchvision_to_ours(tv_state).items():
        if not key.startswith("head."):
            assert torch.equal(got[key], value), key
    assert torch.equal(model.head.weight, head_before) and model.head.weight.shape == (10, 768)


@pytest.mark.parametrize("wrap", [
    lambda sd: {"model": sd},
    lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 1},
])
def test_load_pretrained_unwraps_torchvision_format(wrap, tmp_path):
    torch.manual_seed(0)
    src = build()
    torch.save(wrap(ours_to_torchvision(src.state_dict())), tmp_path / "tv.pth")
    dst = build()
    load_pretrained(dst, str(tmp_path / "tv.pth"))
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key


def test_load_pretrained_our_own_checkpoint_and_errors(tmp_path):
    torch.manual_seed(0)
    src = build()
    torch.save({"model": src.state_dict(), "epoch": 3}, tmp_path / "ours.pt")
    dst = build()
    load_pretrained(dst, str(tmp_path / "ours.pt"))
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key

    with pytest.raises(ValueError, match=r"patch_embed\.proj\.weight .* set data\.channels=3;"):
        load_pretrained(build(in_chans=1), str(tmp_path / "ours.pt"))
    with pytest.raises(ValueError, match="missing keys"):
        load_pretrained(build(depths=[2, 2, 2, 2], num_heads=[4, 4, 4, 4]), str(tmp_path / "ours.pt"))
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        load_pretrained(build(), str(tmp_path / "junk.pt"))


def test_load_pretrained_crops_bias_table_for_clamped_window(tmp_path):
    # window 7 everywhere at 56px (maps 14 / 7); at 32px the second stage (4x4 map) clamps to 4
    torch.manual_seed(0)
    kw = dict(patch_size=4, embed_dim=24, depths=[2, 2], num_heads=[2, 4], window_size=7)
    big = build(image_size=56, **kw)
    torch.save(big.state_dict(), tmp_path / "big.pt")
    small = build(image_size=32, **kw)
    load_pretrained(small, str(tmp_path / "big.pt"))
    src, dst = big.stages[1].blocks[0].attn, small.stages[1].blocks[0].attn
    assert (src.window, dst.window) == (7, 4)
    # the kept rows are exactly the relative offsets in [-3, 3]^2 of the window-7 table
    table7 = src.relative_position_bias_table.view(13, 13, -1)
    table4 = dst.relative_position_bias_table.view(7, 7, -1)
    assert torch.equal(table4, table7[3:10, 3:10])


# ----------------------------------------------------------------------------- shifted-window mask


def naive_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """Region id per token via the three slices per axis, then pairwise comparison inside windows."""
    region = torch.zeros(height, width, dtype=torch.long)
    slices_h = [slice(0, height - window), slice(height - window, height - shift), slice(height - shift, height)]
    slices_w = [slice(0, width - window), slice(width - window, width - shift), slice(width - shift, width)]
    for n, (sh, sw) in enumerate(itertools.product(slices_h, slices_w)):
        region[sh, sw] = n
    masks = []
    for wy in range(0, height, window):
        for wx in range(0, width, window):
            ids = [region[wy + i, wx + j].item() for i in range(window) for j in range(window)]
            masks.append([[0.0 if a == b else MASK_VALUE for b in ids] for a in ids])
    return torch.tensor(masks)


def no_wrap_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """Independent check: after rolling by -shift, two tokens in one window may attend iff their
    original positions were not pulled apart by the wrap-around (offsets survive un-rolling)."""
    masks = []
    for wy in range(0, height, window):
        for wx in range(0, width, window):
            cells = [(wy + i, wx + j) for i in range(window) for j in range(window)]
            orig = [((y + shift) % height, (x + shift) % width) for y, x in cells]
            masks.append([[0.0 if (o1[0] - o2[0], o1[1] - o2[1]) == (c1[0] - c2[0], c1[1] - c2[1]) else MASK_VALUE
                           for c2, o2 in zip(cells, orig)] for c1, o1 in zip(cells, orig)])
    return torch.tensor(masks)


@pytest.mark.parametrize("size,window,shift", [(8, 4, 2), (12, 4, 2), (14, 7, 3)])
def test_shift_mask_matches_naive_region_comparison(size, window, shift):
    mask = shifted_window_mask(size, size, window, shift, shift)
    assert torch.equal(mask, naive_mask(size, size, window, shift))
    assert torch.equal(mask, no_wrap_mask(size, size, window, shift))


def test_shift_mask_of_padded_map_is_cached_buffer():
    # a 6x6 map with window 4 is padded to 8x8 before the shift; the mask is built on the padded map
    attn = WindowAttention(dim=8, num_heads=2, window=4, shift=2, resolution=(6, 6), qkv_bias=True,
                           attn_drop=0.0, proj_drop=0.0, attn_impl="sdpa")
    assert attn.geometry == (2, 2, 2, 2)
    assert torch.equal(attn.attn_mask, naive_mask(8, 8, 4, 2))
    assert "attn_mask" not in attn.state_dict()  # built at construction, never saved
    # unshifted blocks carry no mask at all
    plain = WindowAttention(8, 2, 4, 0, (6, 6), True, 0.0, 0.0, "sdpa")
    assert plain.attn_mask is None


def test_other_resolution_is_computed_once_and_matches_a_model_built_for_it():
    torch.manual_seed(0)
    kw = dict(depths=[2, 2], num_heads=[2, 4], drop_path_rate=0.0)
    at32, at48 = build(**kw).eval(), build(image_size=48, **kw).eval()
    at48.load_state_dict(at32.state_dict())
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        a, b = at32(x), at32(x)
        ref = at48(x)
    assert torch.allclose(a, ref, atol=1e-5) and torch.equal(a, b)
    assert list(at32.stages[0].blocks[1].attn.sizes) == [(16, 16), (24, 24)]  # kept once, reused on the second call


# ----------------------------------------------------------------------------- odd geometries


def test_map_not_multiple_of_window_runs_forward_backward():
    model = build(image_size=36, depths=[2, 2, 2], num_heads=[2, 4, 8])  # maps 18 / 9 / 5, window 4
    summary = model.stage_summary()
    assert [s["resolution"] for s in summary] == [(18, 18), (9, 9), (5, 5)]
    assert [(s["window"], s["shift"]) for s in summary] == [(4, 2)] * 3
    out = model(torch.randn(2, 3, 36, 36))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert model.patch_embed.proj.weight.grad is not None


def test_map_smaller_than_window_is_clamped_without_shift():
    model = build(image_size=32, patch_size=4, window_size=7, depths=[2, 2, 2, 2], num_heads=[3, 6, 12, 24],
                  embed_dim=24)
    summary = model.stage_summary()
    assert [s["resolution"] for s in summary] == [(8, 8), (4, 4), (2, 2), (1, 1)]
    assert [s["window"] for s in summary] == [7, 4, 2, 1]
    assert [s["shift"] for s in summary] == [3, 0, 0, 0]
    assert model.stages[3].blocks[0].attn.relative_position_bias_table.shape == (1, 24)
    assert sum(s["params"] for s in summary) + count_parameters(model.patch_embed) \
        + count_parameters(model.norm) + count_parameters(model.head) == count_parameters(model)
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert model.patch_embed.proj.weight.grad is not None


# ----------------------------------------------------------------------------- sdpa vs math


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("overrides", [{}, {"image_size": 36, "num_heads": [2, 4, 8]}])
def test_sdpa_and_math_agree_on_outputs_and_grads(overrides, version):
    torch.manual_seed(0)
    sdpa = build(attn_impl="sdpa", drop_path_rate=0.0, version=version, **overrides)
    math = build(attn_impl="math", drop_path_rate=0.0, version=version, **overrides)
    math.load_state_dict(sdpa.state_dict())
    size = overrides.get("image_size", 32)
    x = torch.randn(3, 3, size, size)
    out_s, out_m = sdpa(x), math(x)
    assert torch.allclose(out_s, out_m, atol=1e-5)
    out_s.square().sum().backward()
    out_m.square().sum().backward()
    for (name, p), q in zip(sdpa.named_parameters(), math.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), name
    attn = sdpa.stages[0].blocks[1].attn  # the position bias learns (a table in V1, an MLP in V2)
    bias_grad = attn.relative_position_bias_table.grad if version == 1 else attn.cpb_mlp[0].weight.grad
    assert bias_grad.abs().sum() > 0


def test_low_precision_forward_runs():
    model = build().eval().to(torch.bfloat16)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16


# ----------------------------------------------------------------------------- sizes and validation


@pytest.mark.parametrize("name,embed_dim,depths,heads,version", [
    ("swin_t", 96, [2, 2, 6, 2], [3, 6, 12, 24], 1),
    ("swin_s", 96, [2, 2, 18, 2], [3, 6, 12, 24], 1),
    ("swin_b", 128, [2, 2, 18, 2], [4, 8, 16, 32], 1),
    ("swin_v2_t", 96, [2, 2, 6, 2], [3, 6, 12, 24], 2),
    ("swin_v2_s", 96, [2, 2, 18, 2], [3, 6, 12, 24], 2),
    ("swin_v2_b", 128, [2, 2, 18, 2], [4, 8, 16, 32], 2),
])
def test_parameter_counts_match_torchvision(name, embed_dim, depths, heads, version):
    # shapes are all that matter for counting, so skip allocating ~90M floats
    size, window = (224, 7) if version == 1 else (256, 8)
    with torch.device("meta"):
        ours = SwinTransformer(image_size=size, patch_size=4, in_chans=3, num_classes=1000, embed_dim=embed_dim,
                               depths=depths, num_heads=heads, window_size=window, version=version)
        theirs = getattr(torchvision.models, name)(weights=None)
    print(f"{name}: {count_parameters(ours):,} parameters")
    assert count_parameters(ours) == count_parameters(theirs)


@pytest.mark.parametrize("overrides,message", [
    ({"num_heads": [5, 4, 4]}, r"model.num_heads\[0\]=5 must divide the stage 0 width 24"),
    ({"num_heads": [4, 4]}, "same length"),
    ({"image_size": 33}, "data.image_size=33 is not divisible by model.patch_size=2"),
    ({"window_size": 0}, "model.window_size must be >= 1"),
    ({"patch_size": 0}, "model.patch_size must be >= 1"),
    ({"attn_impl": "flash"}, "model.attn_impl must be sdpa or math"),
    ({"stem": "resnet"}, "model.stem must be patch or conv"),
    ({"stem": "conv", "stem_convs": 0}, "model.stem_convs must be >= 1"),
])
def test_invalid_configs_raise_readable_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        build(**overrides)


# ----------------------------------------------------------------------------- stochastic depth


def test_drop_path_rates_rise_linearly_over_all_blocks():
    model = build(drop_path_rate=0.3)
    rates = [b.drop_path.p for s in model.stages for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    assert rates == pytest.approx([0.3 * k / 5 for k in range(6)])


def test_stochastic_depth_is_random_in_train_only():
    torch.manual_seed(0)
    model = build(drop_path_rate=0.5)
    x = torch.randn(8, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.allclose(model(x), model(x))


# ----------------------------------------------------------------------------- nano preset


@pytest.mark.parametrize("in_chans", [3, 1])
def test_nano_shapes(in_chans):
    model = build(in_chans=in_chans)
    assert model(torch.randn(4, in_chans, 32, 32)).shape == (4, 10)


def test_headless_model_loads_weights_with_a_head(tmp_path):
    model = build(attn_impl="math", num_classes=0)
    assert model.attn_impl == "math"
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 96)
    torch.save(build().state_dict(), tmp_path / "with_head.pt")
    load_pretrained(model, str(tmp_path / "with_head.pt"))


# ----------------------------------------------------------------------------- conv stem


def test_conv_stem_adds_a_full_resolution_conv_before_the_patch_projection():
    patch, conv = build(), build(stem="conv")
    # 3x3 conv 3->24 (no bias) + BatchNorm(24), and the projection now reads 24 channels, not 3.
    extra = 3 * 9 * 24 + 2 * 24 + (24 - 3) * 2 * 2 * 24
    assert count_parameters(conv) - count_parameters(patch) == extra
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    conv(x).sum().backward()
    # Every token depends on a (p+2)x(p+2) input neighbourhood, not only its own p x p patch.
    tokens = conv.eval().patch_embed(x)
    grad = torch.autograd.grad(tokens[0, 5, 5].sum(), x)[0][0].abs().sum(0)
    rows, cols = grad.nonzero().unbind(1)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (9, 12, 9, 12)
    # A second 3x3 conv widens that to (p+4)x(p+4) and adds one 24->24 conv + BatchNorm.
    deeper = build(stem="conv", stem_convs=2)
    assert count_parameters(deeper) - count_parameters(conv) == 24 * 9 * 24 + 2 * 24
    assert build(stem_convs=3).patch_embed.stem.__class__ is torch.nn.Identity  # patch stem ignores it


def test_nano_config_states_its_true_parameter_counts():
    import re

    from conftest import CONF

    text = (CONF / "model" / "nano.yaml").read_text()
    stated = [int(n.replace(",", "")) for n in re.findall(r"(\d{3},\d{3}) params|\((\d{3},\d{3}) for", text)
              for n in n if n]
    assert stated == [count_parameters(build(in_chans=3)), count_parameters(build(in_chans=1))]
