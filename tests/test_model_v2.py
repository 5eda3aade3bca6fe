"""Tests for Swin V2 (model.version=2): torchvision parity both ways, sizes, V2 really differs
from V1, and the V2-only details (no key bias, weight-decay exemptions, 1x1 windows)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import torchvision_reference

from swin_cli.model import SwinTransformer, count_parameters, log_spaced_relative_coords
from swin_cli.weights import load_pretrained, ours_to_torchvision, torchvision_to_ours

SWIN_V2_T = dict(image_size=256, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96,
                 depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=8, drop_path_rate=0.0, version=2)
CONF_MODEL = Path(__file__).resolve().parents[1] / "conf" / "model"
CIFAR = dict(image_size=32, patch_size=2, in_chans=3, num_classes=10, embed_dim=24,
             depths=[2, 2, 2], num_heads=[4, 4, 4], window_size=4, version=2)


def build(**overrides) -> SwinTransformer:
    return SwinTransformer(**{**CIFAR, **overrides})


def randomise_(model: torch.nn.Module) -> None:
    """Move the parameters a fresh init leaves at constants (norms, biases incl. the ignored key
    bias, temperatures) so that parity cannot pass by accident."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                p.uniform_(1.0, 5.0)  # some beyond the log(100) cap
            elif p.ndim == 1:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)


@pytest.fixture(scope="module")
def tv_swin_v2_t():
    return torchvision_reference("swin_v2_t", 256, randomise_)


# ----------------------------------------------------------------------------- torchvision parity


@pytest.mark.parametrize("attn_impl", ["sdpa", "math"])
def test_torchvision_v2_weights_give_torchvision_logits(tv_swin_v2_t, attn_impl):
    tv_state, x, ref = tv_swin_v2_t
    model = SwinTransformer(**SWIN_V2_T, attn_impl=attn_impl).eval()
    model.load_state_dict(torchvision_to_ours(tv_state), strict=True)
    with torch.no_grad():
        diff = (model(x) - ref).abs().max().item()
    print(f"swin_v2_t parity ({attn_impl}): max abs logit diff {diff:.2e}")
    assert diff <= 1e-4


def test_our_v2_weights_load_strictly_into_torchvision(tv_swin_v2_t):
    x = tv_swin_v2_t[1][:1]
    torch.manual_seed(1)
    ours = SwinTransformer(**SWIN_V2_T).eval()
    randomise_(ours)
    tv = torchvision.models.swin_v2_t(weights=None).eval()
    buffers = {k: v.clone() for k, v in tv.state_dict().items() if k.endswith(("_index", "_table"))}
    tv.load_state_dict(ours_to_torchvision(ours.state_dict()), strict=True)
    # the regenerated buffers are exactly torchvision's own
    for key, value in buffers.items():
        assert torch.equal(tv.state_dict()[key], value), key
    with torch.no_grad():
        diff = (tv(x) - ours(x)).abs().max().item()
    print(f"swin_v2_t parity (ours into torchvision): max abs logit diff {diff:.2e}")
    assert diff <= 1e-4
    back = torchvision_to_ours(ours_to_torchvision(ours.state_dict()))
    assert back.keys() == ours.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())


def test_torchvision_v2_file_loads_through_load_pretrained(tv_swin_v2_t, tmp_path):
    torch.save(tv_swin_v2_t[0], tmp_path / "swin_v2_t.pth")
    model = SwinTransformer(**{**SWIN_V2_T, "num_classes": 10})
    load_pretrained(model, str(tmp_path / "swin_v2_t.pth"))
    got = model.state_dict()
    for key, value in torchvision_to_ours(tv_swin_v2_t[0]).items():
        if not key.startswith("head."):
            assert torch.equal(got[key], value), key


def test_log_spaced_coords_match_the_formula():
    coords = log_spaced_relative_coords(8).view(15, 15, 2)
    # offset (dh, dw) = (-7, 3): t = 8 * offset / 7, then sign(t) * log2(1 + |t|) / 3
    assert coords[0, 10, 0].item() == pytest.approx(-math.log2(9) / 3)
    assert coords[0, 10, 1].item() == pytest.approx(math.log2(1 + 24 / 7) / 3)
    assert torch.equal(log_spaced_relative_coords(1), torch.zeros(1, 2))  # not 0/0


# ----------------------------------------------------------------------------- a CIFAR-sized V2


def test_cifar_v2_forward_backward_and_differs_from_v1():
    torch.manual_seed(0)
    v2 = build()
    torch.manual_seed(0)
    v1 = build(version=1)
    x = torch.randn(4, 3, 32, 32)
    out = v2(x)
    assert out.shape == (4, 10)
    out.sum().backward()
    attn = v2.stages[0].blocks[1].attn
    assert attn.logit_scale.grad is not None and attn.cpb_mlp[0].weight.grad.abs().sum() > 0
    assert not hasattr(attn, "relative_position_bias_table")
    assert v2.stages[0].downsample.norm.normalized_shape == (48,)  # norm after the 4C -> 2C reduction
    assert v1.stages[0].downsample.norm.normalized_shape == (96,)
    with torch.no_grad():
        assert not torch.allclose(v2.eval()(x), v1.eval()(x), atol=1e-3)
    summary = v2.stage_summary()
    assert [(s["resolution"], s["window"], s["shift"]) for s in summary] == \
        [((16, 16), 4, 2), ((8, 8), 4, 2), ((4, 4), 4, 0)]
    assert sum(s["params"] for s in summary) + count_parameters(v2.patch_embed) \
        + count_parameters(v2.norm) + count_parameters(v2.head) == count_parameters(v2)


def test_v2_ignores_the_key_bias():
    torch.manual_seed(0)
    model = build(drop_path_rate=0.0).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        for block in model.stages[0].blocks:
            bias = block.attn.qkv.bias
            bias[24:48].normal_()  # the middle third: keys
        assert torch.equal(model(x), before)
        model.stages[0].blocks[0].attn.qkv.bias[:24].normal_()  # queries do count
        assert not torch.allclose(model(x), before)


def test_v2_clamped_one_by_one_window_is_finite():
    # maps 8 / 4 / 2 / 1 with window 7: the last stage's window clamps to 1x1
    model = build(patch_size=4, window_size=7, depths=[2, 2, 2, 2], num_heads=[3, 6, 12, 24])
    assert [s["window"] for s in model.stage_summary()] == [7, 4, 2, 1]
    out = model(torch.randn(2, 3, 32, 32))
    assert torch.isfinite(out).all()


def test_v2_low_precision_forward_runs():
    model = build().eval().to(torch.bfloat16)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert build()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_v2_no_weight_decay_exempts_temperatures_and_position_mlp():
    model = build()
    exempt = model.no_weight_decay()
    names = dict(model.named_parameters())
    v2_only = {n for n in names if n.endswith("logit_scale") or ".cpb_mlp." in n}
    assert len(v2_only) == 6 * 4  # 6 blocks x (logit_scale, cpb_mlp.0.weight / .bias, cpb_mlp.2.weight)
    assert v2_only <= exempt
    assert "stages.0.blocks.0.attn.qkv.weight" not in exempt and "stages.0.downsample.reduction.weight" not in exempt


@pytest.mark.parametrize("version", [0, 3])
def test_invalid_version_is_rejected(version):
    with pytest.raises(ValueError, match=f"model.version must be 1 or 2 \\(got {version}\\)"):
        build(version=version)


@pytest.mark.parametrize("preset,tv_name", [("v2_tiny", "swin_v2_t"), ("v2_small", "swin_v2_s"),
                                            ("v2_base", "swin_v2_b")])
def test_v2_presets_are_torchvisions_models(preset, tv_name):
    from conftest import make_config

    from swin_cli.build import build_model

    cfg = make_config(f"model={preset}")
    assert cfg.model.version == 2
    with torch.device("meta"):
        ours = build_model(cfg.model, image_size=256, in_chans=3, num_classes=1000, pretrained=False)
        theirs = getattr(torchvision.models, tv_name)(weights=None)
    assert count_parameters(ours) == count_parameters(theirs)
    assert [b.drop_path.p for s in ours.stages for b in s.blocks][-1] == pytest.approx(
        {"v2_tiny": 0.2, "v2_small": 0.3, "v2_base": 0.5}[preset])
    # and the preset's comment states that count
    assert f"{count_parameters(theirs):,} params" in (CONF_MODEL / f"{preset}.yaml").read_text()
