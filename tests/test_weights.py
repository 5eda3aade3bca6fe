"""Tests for pretrained weights: torchvision's ImageNet weights by preset name through torch hub's
cache (offline), timm / official state_dicts, and V1 bias tables refitted to another window
(the exact crop for a clamped window is tested in test_model.py)."""

from __future__ import annotations

import os
import re
import urllib.error

import pytest
import torch
import torchvision

from swin_cli.build import build_model
from swin_cli.errors import SwinCliError
from swin_cli.model import SwinTransformer
from swin_cli.weights import load_pretrained, resize_bias_table, timm_to_ours

TINY_CFG = dict(name="tiny", patch_size=4, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                window_size=7, drop_path_rate=0.0)
V2_TINY_CFG = dict(TINY_CFG, name="v2_tiny", window_size=8, version=2)
SMALL = dict(image_size=32, patch_size=4, in_chans=3, num_classes=10, embed_dim=16,
             depths=[2, 2], num_heads=[2, 4], window_size=4)


def randomise_(model: torch.nn.Module) -> torch.nn.Module:
    """Move what a fresh init leaves constant (norms, biases, V2 temperatures), so that parity
    cannot hold by accident."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                p.uniform_(1.0, 5.0)
            elif p.ndim == 1:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    return model.eval()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty torch hub cache in tmp_path (TORCH_HOME), its checkpoints/ folder returned; no
    download may happen unless a test allows it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # get_dir() prefers a set_dir() value over TORCH_HOME; point that at the same place, restored after
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch" / "hub"))
    assert torch.hub.get_dir() == str(tmp_path / "torch" / "hub")

    def no_download(*args, **kwargs):
        raise AssertionError(f"unexpected download {args}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "torch" / "hub" / "checkpoints"


def cache_file(weights) -> str:
    return os.path.basename(weights.url)


# ----------------------------------------------------------------------------- by name


@pytest.mark.parametrize("tv_name,weights_name,cfg,size", [
    ("swin_t", "Swin_T_Weights", TINY_CFG, 224),
    ("swin_v2_t", "Swin_V2_T_Weights", V2_TINY_CFG, 256),
])
def test_imagenet_by_name_loads_torchvision_weights_from_hub_cache(hub_cache, tv_name, weights_name, cfg, size):
    torch.manual_seed(0)
    tv = randomise_(getattr(torchvision.models, tv_name)(weights=None))
    weights = getattr(torchvision.models, weights_name).IMAGENET1K_V1
    hub_cache.mkdir(parents=True)
    # not the published file, so its hash does not match the name: torch hub checks only downloads
    torch.save(tv.state_dict(), hub_cache / cache_file(weights))
    model = build_model({**cfg, "pretrained": "imagenet"}, image_size=size, in_chans=3, num_classes=1000).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        assert (model(x) - tv(x)).abs().max().item() <= 1e-4


def test_imagenet_by_name_offline_is_one_line_naming_file_and_folder(hub_cache, monkeypatch):
    tried = []

    def offline(url, dst, hash_prefix=None, progress=True):
        tried.append((url, dst, hash_prefix))
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(SwinCliError) as info:
        build_model({**TINY_CFG, "pretrained": "imagenet"}, image_size=224, in_chans=3, num_classes=10)
    message = str(info.value)
    assert "\n" not in message
    url = "https://download.pytorch.org/models/swin_t-704ceda3.pth"
    assert message == (
        "model.pretrained=imagenet needs swin_t-704ceda3.pth, which is not cached and could not be "
        "downloaded (URLError: <urlopen error [Errno -2] Name or service not known>); "
        f"download {url} into {hub_cache}/ (or set TORCH_HOME to a folder whose hub/checkpoints/ has it)")
    # straight into the cache, hash-checked, and nothing half-written left behind
    assert tried == [(url, str(hub_cache / "swin_t-704ceda3.pth"), "704ceda3")]
    assert not (hub_cache / "swin_t-704ceda3.pth").exists()


@pytest.mark.parametrize("preset", ["nano", "large", "my_own", None])
def test_imagenet_for_a_preset_without_torchvision_weights(preset):
    model = SwinTransformer(**SMALL)
    with pytest.raises(ValueError) as info:
        load_pretrained(model, "imagenet", preset)
    assert str(info.value) == (
        "model.pretrained=imagenet: torchvision publishes ImageNet weights only for model=tiny, small, base, "
        f"v2_tiny, v2_small, v2_base (this is model={preset}); for others give a state_dict file")


def test_every_preset_names_a_torchvision_weights_entry():
    from swin_cli.weights import TORCHVISION_IMAGENET, imagenet_weights

    for preset in TORCHVISION_IMAGENET:
        weights = imagenet_weights(preset)
        assert re.fullmatch(r"https://download\.pytorch\.org/models/swin_\w+-[0-9a-f]{8}\.pth", weights.url)


def test_local_path_expands_user(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    torch.manual_seed(0)
    src = SwinTransformer(**SMALL)
    torch.save(src.state_dict(), tmp_path / "mine.pt")
    cfg = dict(name="custom", **{k: v for k, v in SMALL.items() if k not in ("image_size", "in_chans", "num_classes")})
    dst = build_model({**cfg, "pretrained": "~/mine.pt"}, image_size=32, in_chans=3, num_classes=10)
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key


# ----------------------------------------------------------------------------- V1 bias tables


def test_resize_to_the_same_window_is_unchanged():
    table = torch.randn(13 * 13, 3)
    assert torch.allclose(resize_bias_table(table, 7), table, atol=1e-6)


def test_resize_keeps_the_centre_offset_and_constants():
    table = torch.randn(13 * 13, 3)
    table[:, 2] = 0.25
    out = resize_bias_table(table, 12)  # window 7 -> 12, as the official fine-tuning at 384px
    assert out.shape == (23 * 23, 3)
    assert torch.allclose(out.view(23, 23, 3)[11, 11], table.view(13, 13, 3)[6, 6], atol=1e-6)
    assert torch.allclose(out[:, 2], torch.full((23 * 23,), 0.25), atol=1e-6)


@pytest.mark.parametrize("window", [8, 4])
def test_window7_tables_load_into_another_window(tmp_path, window):
    # 64px / patch 4: maps 16 and 8. Window 8: stage 1 holds its whole map but the window-7 table is
    # too small to crop, so both stages resize; window 4: no clamping, both resize.
    kw = dict(SMALL, image_size=64)
    torch.manual_seed(0)
    src = SwinTransformer(**dict(kw, window_size=7))
    torch.save(src.state_dict(), tmp_path / "w7.pt")
    dst = SwinTransformer(**dict(kw, window_size=window))
    load_pretrained(dst, str(tmp_path / "w7.pt"))
    for s in range(2):
        a, b = src.stages[s].blocks[1].attn, dst.stages[s].blocks[1].attn
        assert b.window == window
        assert torch.equal(b.relative_position_bias_table,
                           resize_bias_table(a.relative_position_bias_table.detach(), window))
        assert torch.equal(dst.stages[s].blocks[1].attn.qkv.weight, src.stages[s].blocks[1].attn.qkv.weight)
    dst(torch.randn(1, 3, 64, 64))


# ----------------------------------------------------------------------------- timm layout


def to_timm_layout(state: dict, merge_at_start: bool) -> dict:
    """Our keys renamed to timm's (merge_at_start, timm >= 0.9) or the official repo's layout, with
    the buffers those save."""
    out = {}
    for key, value in state.items():
        key = key.replace("stages.", "layers.")
        if m := re.fullmatch(r"layers\.(\d+)\.downsample\.(.+)", key):
            key = f"layers.{int(m[1]) + merge_at_start}.downsample.{m[2]}"
        if key.startswith("head.") and merge_at_start:
            key = "head.fc." + key[len("head."):]
        out[key] = value
        if key.endswith("relative_position_bias_table"):
            out[key.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(3)
            if not merge_at_start:
                out[key.replace("attn.relative_position_bias_table", "attn_mask")] = torch.zeros(3)
    return out


@pytest.mark.parametrize("merge_at_start", [True, False], ids=["timm", "official"])
def test_timm_and_official_layouts_load_with_the_same_logits(tmp_path, merge_at_start):
    torch.manual_seed(0)
    src = randomise_(SwinTransformer(**SMALL))
    timm_state = to_timm_layout(src.state_dict(), merge_at_start)
    assert ("layers.1.downsample.reduction.weight" in timm_state) == merge_at_start
    torch.save({"model": timm_state}, tmp_path / "timm.pth")
    dst = SwinTransformer(**SMALL).eval()
    load_pretrained(dst, str(tmp_path / "timm.pth"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))


def test_timm_v2_query_and_value_biases_become_qkv_bias():
    q, v = torch.randn(4), torch.randn(4)
    out = timm_to_ours({"layers.0.blocks.0.attn.q_bias": q, "layers.0.blocks.0.attn.v_bias": v})
    assert torch.equal(out["stages.0.blocks.0.attn.qkv.bias"], torch.cat([q, torch.zeros(4), v]))
    with pytest.raises(ValueError, match=r"unrecognised keys: layers\.0\.blocks\.0\.attn\.q_bias"):
        timm_to_ours({"layers.0.blocks.0.attn.q_bias": q})


@pytest.mark.slow  # ~6 s each on a CPU; the synthetic layouts above cover the default run
@pytest.mark.parametrize("timm_name,version,size,window", [
    ("swin_tiny_patch4_window7_224", 1, 224, 7),
    ("swinv2_tiny_window8_256", 2, 256, 8),
])
def test_real_timm_model_parity(tmp_path, timm_name, version, size, window):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = randomise_(timm.create_model(timm_name, pretrained=False))
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    ours = SwinTransformer(image_size=size, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96,
                           depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=window,
                           drop_path_rate=0.0, version=version).eval()
    load_pretrained(ours, str(tmp_path / "timm.pth"))
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("saved,wanted", [(2, 1), (1, 2)])
def test_weights_of_the_other_swin_version_say_which_version_to_set(tmp_path, saved, wanted):
    torch.save(SwinTransformer(**SMALL, version=saved).state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match=rf"holds Swin V{saved} weights but this is a V{wanted} model: "
                                         rf"set model.version={saved}$"):
        load_pretrained(SwinTransformer(**SMALL, version=wanted), str(tmp_path / "w.pt"))


def test_offline_finetune_stops_on_the_weights_before_decoding_the_data(hub_cache, monkeypatch, tmp_path):
    from conftest import make_config

    import swin_cli.train
    from swin_cli.train import Trainer

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the weights were checked")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(swin_cli.train, "load_data", no_data)
    cfg = make_config("experiment=finetune", f"data.root={tmp_path}", "threads=1")
    with pytest.raises(SwinCliError, match="needs swin_t-704ceda3.pth, which is not cached"):
        Trainer(cfg, tmp_path / "run")
    cfg = make_config("experiment=finetune", f"data.root={tmp_path}", f"model.pretrained={tmp_path}/nope.pth")
    with pytest.raises(SwinCliError, match=f"model.pretrained={tmp_path}/nope.pth: no such file"):
        Trainer(cfg, tmp_path / "run")


# ----------------------------------------------------------------------------- to a new size


def test_finetune_384_takes_224_window_7_weights_to_window_12(hub_cache):
    """experiment=finetune_384 offline: torchvision-layout Swin-T weights (made here, placed where
    model.pretrained=imagenet looks) load into the 384 px / window 12 model with every bias table
    resized from 13x13 offsets to 23x23, the rest as they were; the model runs at 384."""
    from conftest import make_config

    from swin_cli.weights import torchvision_to_ours

    torch.manual_seed(0)
    tv = torchvision.models.swin_t().state_dict()
    hub_cache.mkdir(parents=True)
    torch.save(tv, hub_cache / cache_file(torchvision.models.Swin_T_Weights.IMAGENET1K_V1))
    cfg = make_config("experiment=finetune_384", "data.root=/some/folder")
    assert (cfg.data.image_size, cfg.model.window_size, cfg.epochs, cfg.scheduler.warmup_epochs) == (384, 12, 30, 5)
    assert (cfg.optimizer.weight_decay, cfg.train.grad_clip, cfg.data.crop_pct) == (1e-8, 5.0, 1.0)
    model = build_model(cfg.model, cfg.data.image_size, 3, 5).eval()
    ours = torchvision_to_ours(tv)
    state = model.state_dict()
    tables = [k for k in state if k.endswith("relative_position_bias_table")]
    assert len(tables) == 12
    for key in tables:
        assert state[key].shape[0] == 23 * 23
        assert torch.equal(state[key], resize_bias_table(ours[key], 12))
    assert torch.equal(state["stages.2.blocks.5.mlp.fc1.weight"], ours["stages.2.blocks.5.mlp.fc1.weight"])
    assert [s["window"] for s in model.stage_summary()] == [12, 12, 12, 12]
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 384, 384))
    assert logits.shape == (1, 5) and torch.isfinite(logits).all()


def test_finetune_at_a_non_square_size(hub_cache):
    """experiment=finetune data.image_size=[384,512]: the 224 weights as they are (window 7), the
    model built for the box, and a 384 x 512 image through it."""
    from conftest import make_config

    torch.manual_seed(0)
    hub_cache.mkdir(parents=True)
    torch.save(torchvision.models.swin_t().state_dict(),
               hub_cache / cache_file(torchvision.models.Swin_T_Weights.IMAGENET1K_V1))
    cfg = make_config("experiment=finetune", "data.root=/some/folder", "data.image_size=[384,512]")
    model = build_model(cfg.model, cfg.data.image_size, 3, 4).eval()
    assert [s["resolution"] for s in model.stage_summary()] == [(96, 128), (48, 64), (24, 32), (12, 16)]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 384, 512)).shape == (1, 4)
