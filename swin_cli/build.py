"""Config to objects: the device, the model (with its pretrained weights), the optimizer with its
parameter groups, and the learning-rate schedule. Nothing here runs a step."""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Optional

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from swin_cli import checkpoint
from swin_cli.config import plain
from swin_cli.errors import SwinCliError
from swin_cli.model import SwinTransformer
from swin_cli.weights import check_available, fit_weights, read_weights

log = logging.getLogger("swin_cli")


def select_device(requested: str) -> torch.device:
    cuda, mps = torch.cuda.is_available(), getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    if requested == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if requested == "cuda" and not cuda:
        raise SwinCliError("device=cuda was requested but no CUDA GPU is available (use device=auto or device=cpu)")
    if requested == "mps" and not mps:
        raise SwinCliError("device=mps was requested but Apple MPS is not available (use device=auto or device=cpu)")
    return torch.device(requested)


def configure_device(device: torch.device, tf32: bool, deterministic: bool = False, announce: bool = False) -> None:
    """Process-wide kernel settings. On CUDA: TF32 products for fp32 (train.tf32), and cuDNN
    autotuning, which pays because every step has the same shapes. deterministic: deterministic
    kernels only, so that GPU runs repeat bit for bit; autotuning off, and ops without a
    deterministic kernel warn (they would otherwise stop the run)."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
    if deterministic and announce:
        log.info("deterministic=true: deterministic kernels only (on a GPU expect a slower step; "
                 "ops without such a kernel warn); CPU runs repeat bit for bit without it")
    if deterministic:
        # cuBLAS reads this when it first starts; it must be set before any matmul on a GPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def autocast(device: torch.device, precision: str):
    """The autocast context for `precision` (a no-op for fp32)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def resolve_attn_impl(requested: str) -> str:
    """auto: the explicit softmax, measured faster than SDPA for window attention (16-49 tokens)
    on both devices: nano +6% on a CPU, nano +13% and tiny +3% on an H100 in bf16."""
    return "math" if requested == "auto" else requested


# ModelConfig fields that are not constructor arguments of SwinTransformer.
_NOT_ARCHITECTURE = ("name", "pretrained")


def build_model(model_cfg: Any, image_size: int, in_chans: int, num_classes: int,
                pretrained: bool = True) -> SwinTransformer:
    """The model `model_cfg` (the `model` config group, or its dict from a checkpoint) describes;
    with `pretrained`, its model.pretrained weights loaded."""
    if isinstance(model_cfg, DictConfig):
        model_cfg = OmegaConf.to_container(model_cfg, resolve=True, enum_to_str=True)
    fields = {k: v for k, v in model_cfg.items() if k not in _NOT_ARCHITECTURE}
    fields["attn_impl"] = resolve_attn_impl(fields.get("attn_impl", "auto"))
    try:
        # Weights first: a missing file or an offline download fails before the model is built.
        weights = read_weights(model_cfg["pretrained"], model_cfg.get("name")) \
            if pretrained and model_cfg.get("pretrained") else None
        model = SwinTransformer(image_size=image_size, in_chans=in_chans, num_classes=num_classes, **fields)
        if weights is not None:
            fit_weights(model, *weights)
    except (ValueError, FileNotFoundError) as exc:
        raise SwinCliError(str(exc)) from None
    return model


def check_pretrained(model_cfg: Any) -> None:
    """Stop at once when model.pretrained's weights cannot be had (offline and not cached, a
    missing file): a fine-tuning run checks this before it decodes its image folder."""
    if model_cfg.get("pretrained"):
        try:
            check_available(model_cfg.pretrained, model_cfg.get("name"))
        except ValueError as exc:
            raise SwinCliError(str(exc)) from None


def training_module(model: nn.Module, device: torch.device, processes: int, compile: bool,
                    compile_mode: str = "default") -> nn.Module:
    """The module that runs the training forward pass: wrapped in DDP across processes (which
    averages gradients during backward) and compiled when asked (train.compile_mode: default,
    reduce-overhead for CUDA graphs, max-autotune); it shares `model`'s parameters."""
    module = model
    if processes > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        module = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return torch.compile(module, mode=compile_mode) if compile else module


def uses_cuda_graphs(train_cfg: Any) -> bool:
    """Whether the compiled step replays CUDA graphs, whose every step must then be marked."""
    return bool(train_cfg.compile) and plain(train_cfg.compile_mode) == "reduce-overhead"


def model_from_checkpoint(state: dict[str, Any]) -> SwinTransformer:
    """The model a checkpoint (from `checkpoint.load`) describes, with the weights that scored
    best on validation loaded, in eval mode on the CPU."""
    saved = state["config"]
    signature = state["signature"]
    model = build_model(saved["model"], saved["data"]["image_size"], signature["in_chans"],
                        signature["num_classes"], pretrained=False)
    model.load_state_dict(checkpoint.best_weights(state))
    return model.eval()


def param_groups(model: SwinTransformer, weight_decay: float, lr: float,
                 layer_decay: Optional[float] = None) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only; the model names the parameters it must not shrink
    (norms, biases, position-bias tables). With layer_decay, layer-wise lr decay for fine-tuning:
    the head trains at lr and each depth below at layer_decay times the one above, so the
    pretrained early layers move least (BEiT; the Swin fine-tuning recipes). Highest lr first."""
    exempt = model.no_weight_decay()
    if layer_decay is None:
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if name in exempt else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    depths = model.layer_depths()
    top = max(depths.values())
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (top - depths[name], name in exempt)
            scale = layer_decay ** key[0]
            group = groups.setdefault(key, {"params": [], "weight_decay": 0.0 if key[1] else weight_decay,
                                            "lr": lr * scale, "lr_scale": scale})
            group["params"].append(p)
    return [groups[key] for key in sorted(groups)]


def build_optimizer(opt_cfg: Any, model: nn.Module, device: torch.device,
                    compiled_step: bool = False) -> torch.optim.Optimizer:
    name = plain(opt_cfg.name)
    groups = param_groups(model, opt_cfg.weight_decay, opt_cfg.lr, opt_cfg.layer_decay)
    # Eager: one fused kernel for all parameters on CUDA, elsewhere foreach batches the updates.
    # A compiled step (train.compile_optimizer) traces the foreach ops and fuses them itself.
    fast = {"fused": True} if device.type == "cuda" and not compiled_step else {"foreach": True}
    # Adam's step count stays on the device, which a tensor lr requires (and CUDA graphs too).
    adaptive = {**fast, "capturable": True} if compiled_step else fast
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps, **adaptive)
    if name == "adam":
        # Adam's weight decay is L2 added to the gradient, applied to the same groups.
        return torch.optim.Adam(groups, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps, **adaptive)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=opt_cfg.lr, momentum=opt_cfg.momentum,
                               nesterov=opt_cfg.nesterov and opt_cfg.momentum > 0, **fast)
    raise SwinCliError(f"optimizer.name must be one of adamw, adam, sgd (got {name!r})")


def lr_factor(step: int, sched_cfg: Any, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr after `step` optimizer steps (warmup, then the schedule)."""
    name, floor = plain(sched_cfg.name), sched_cfg.min_lr_factor
    if name == "onecycle":
        # Cosine up from warmup_start_factor to 1 over pct_start of training, cosine down after.
        peak = max(1, int(round(sched_cfg.pct_start * total_steps)))
        if step < peak:
            start = sched_cfg.warmup_start_factor
            return start + (1.0 - start) * 0.5 * (1.0 - math.cos(math.pi * step / peak))
        return _cosine_decay((step - peak) / max(1, total_steps - peak), floor)
    warmup = min(int(round(sched_cfg.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
    if step < warmup:
        start = sched_cfg.warmup_start_factor
        return start + (1.0 - start) * step / warmup
    if name == "constant":
        return 1.0
    if name == "step":
        return sched_cfg.decay_rate ** math.floor(step / (sched_cfg.decay_epochs * steps_per_epoch))
    return _cosine_decay((step - warmup) / max(1, total_steps - warmup), floor)


def _cosine_decay(progress: float, floor: float) -> float:
    """From 1 at progress 0 down to `floor` at progress >= 1, along half a cosine."""
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def batch_plan(cfg: Any, train_size: int, processes: int = 1) -> tuple[int, int]:
    """(batch size per process, optimizer steps per epoch). data.batch_size is per process, so
    under torchrun a step consumes batch x accumulate x processes images."""
    batch_size = min(cfg.data.batch_size, train_size)
    steps = max(1, train_size // (batch_size * cfg.train.accumulate * processes))
    if cfg.train.max_steps_per_epoch:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    return batch_size, steps


def build_scheduler(sched_cfg: Any, optimizer: torch.optim.Optimizer, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimizer step, along `lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, sched_cfg, total_steps, steps_per_epoch))
