"""What a run shows before it starts: the model stage by stage (with FLOPs), data and recipe.

Rendered with rich into plain text, so the same panel goes to the terminal and to the run's
log file. `swin-train mode=summary` prints it and exits without training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from swin_cli.cache import written_cache_line
from swin_cli.config import plain
from swin_cli.model import SwinTransformer, count_parameters
from swin_cli.sizes import hw
from swin_cli.text import plural


@torch.no_grad()
def forward_flops(model: SwinTransformer, image_size: Any, in_chans: int) -> tuple[int, list[int]]:
    """FLOPs of one image's forward pass (matmuls, convs, attention) at image_size (a side or
    [H, W]), in total and per stage."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, in_chans, *hw(image_size), device=device))
    model.train(was_training)
    by_module = counter.get_flop_counts()
    stages = [sum(by_module.get(f"SwinTransformer.stages.{i}", {}).values()) for i in range(len(model.stages))]
    return counter.get_total_flops(), stages


def describe(cfg: Any, run_dir: Any) -> str:
    """mode=summary: the panel a run of `cfg` would start with, without building anything it
    would train with (the data is loaded for its sizes and classes)."""
    from swin_cli.build import batch_plan, build_model, select_device
    from swin_cli.data import load_data, settle_auto

    device = select_device(plain(cfg.device))
    data = load_data(cfg.data, statistics=False, settled=settle_auto(cfg))
    model = build_model(cfg.model, cfg.data.image_size, data.in_chans, data.num_classes).to(device)
    batch_size, steps_per_epoch = batch_plan(cfg, len(data.train))
    return start_panel(cfg, model, data, run_dir, device_name(device), steps_per_epoch, batch_size)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the device type (with the thread count on a CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type + (f", {plural(torch.get_num_threads(), 'thread')}" if device.type == "cpu" else "")


def augment_text(a: Any) -> str:
    """The augmentation a training batch actually gets, op by op ("none" when it gets none),
    whatever the aug preset is called: aug=none with aug.auto_augment=trivialaugment is
    "trivialaugment"."""
    policy = plain(a.auto_augment)
    if policy == "autoaugment":  # which learnt policy
        policy += f" {plain(a.autoaugment_policy)}"
    ops = [f"crop pad {a.crop_padding}" if a.crop_padding else "", "hflip" if a.hflip else "",
           "" if policy == "none" else policy,
           f"erase {a.random_erasing}" if a.random_erasing else "",
           f"mixup {a.mixup_alpha}" if a.mixup_alpha else "", f"cutmix {a.cutmix_alpha}" if a.cutmix_alpha else ""]
    return ", ".join(x for x in ops if x) or "none"


def stage_table(model: SwinTransformer, stage_flops: list[int]) -> Any:
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("stage", "resolution", "window", "shift", "heads", "dim", "depth", "params", "MFLOPs"):
        table.add_column(column, justify="right")
    for i, (stage, flops) in enumerate(zip(model.stage_summary(), stage_flops)):
        h, w = stage["resolution"]
        table.add_row(str(i), f"{h}x{w}", str(stage["window"]), str(stage["shift"]), str(stage["heads"]),
                      str(stage["dim"]), str(stage["depth"]), f"{stage['params']:,}", f"{flops / 1e6:.1f}")
    return table


def render(renderable: Any, width: int = 110) -> str:
    from rich.console import Console

    console = Console(width=width, record=True, file=None, force_terminal=False, color_system=None)
    with console.capture() as capture:
        console.print(renderable)
    return capture.get().rstrip()


def start_panel(cfg: Any, model: SwinTransformer, data: Any, run_dir: Any, device_name: str,
                steps_per_epoch: int, batch_size: int, processes: int = 1) -> str:
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    m, o, s, t = cfg.model, cfg.optimizer, cfg.scheduler, cfg.train
    settled = getattr(data, "settled", {})
    total, per_stage = forward_flops(model, cfg.data.image_size, data.in_chans)
    lines = [
        ("run dir", str(run_dir)),
        ("device", device_name),
        ("data", f"{plain(cfg.data.name)}: {data.sizes()}, {plural(data.num_classes, 'class')}, "
                 f"{data.in_chans}x{'x'.join(map(str, hw(cfg.data.image_size)))}"),
        ("storage", storage_text(cfg.data, data)),
        ("model", f"swin-{m.name}{' (V2)' if m.version == 2 else ''}: {count_parameters(model):,} params, "
                  f"{total / 1e6:,.1f} MFLOPs/image forward, "
                  f"{plain(m.stem)} stem, patch {m.patch_size}, embed {m.embed_dim}, drop path {m.drop_path_rate}, "
                  f"attention {model.attn_impl}" + (", grad checkpointing" if m.grad_checkpointing else "")),
        ("optimizer", f"{plain(o.name)} lr {o.lr:g} weight decay {o.weight_decay:g}, {plain(s.name)} schedule"
                      + (f", warmup {plural(s.warmup_epochs, 'epoch')}" if s.warmup_epochs else "")),
        ("training", f"{plural(cfg.epochs, 'epoch')} x {plural(steps_per_epoch, 'step')} of {batch_size}"
                     + (f" x {t.accumulate} accumulated" if t.accumulate > 1 else "")
                     + (f" x {plural(processes, 'process')} = global batch {batch_size * t.accumulate * processes}"
                        if processes > 1 else "")
                     + f", {plain(t.precision)}"
                     + (f", compiled ({plain(t.compile_mode)})" if t.compile else "")
                     + (f", EMA {t.ema.decay}" if t.ema.decay else "")
                     + (f", label smoothing {t.label_smoothing}" if t.label_smoothing else "")
                     + f", seed {cfg.seed}"),
        ("augment", augment_text(cfg.aug) + (f", repeated x{cfg.data.repeats}" if cfg.data.repeats > 1 else "")
         + (f"; {settled['aug']}" if "aug" in settled else "")),
    ]
    # Why the size and the augmentation are what they are, when the data chose (swin_cli/data/auto.py).
    lines[3:3] = [(key, settled[key]) for key in ("size", "split") if key in settled]
    lines[3:3] = class_lines(cfg, data)
    cache = written_cache_line()  # only when loading the data wrote into data.cache_dir
    if cache:
        lines.append(("cache", cache))
    text = Text()
    for key, value in lines:
        text.append(f"{key:<10}", style="bold")
        text.append(value + "\n")
    return render(Panel(Group(text, stage_table(model, per_stage), Text(), config_tree(cfg)),
                        title="swin-train", expand=False))


def class_lines(cfg: Any, data: Any) -> list[tuple[str, str]]:
    """The training split's images per class and its imbalance ratio, on imbalanced data the keys
    to try (none when the counts are unknown without reading the data), and the metric that picks
    best.pt, with why."""
    from swin_cli.data.class_counts import class_counts, label_counts
    from swin_cli.imbalance import counts_text, suggestion
    from swin_cli.loop_state import METRIC_NAMES, choose_select_metric

    train = getattr(data, "train", None)  # a data set that cannot list its training split has no counts
    counts = class_counts(train, data.num_classes) if train is not None else None
    multilabel = getattr(data, "task", "single") == "multilabel"
    metric, why = choose_select_metric(plain(cfg.train.select_metric), counts, multilabel)
    selection = [("best.pt", f"by validation {METRIC_NAMES[metric]}; {why}")]
    if multilabel:  # images per label; the imbalance keys of one class per image do not apply
        positives = label_counts(train) if train is not None else None
        return ([("labels", f"images per class: {counts_text(positives)}")] if positives else []) + selection
    if not counts:
        return selection
    advice = suggestion(cfg, counts)
    return [("classes", counts_text(counts))] + ([("imbalance", advice)] if advice else []) + selection


def storage_text(data_cfg: Any, data: Any) -> str:
    """Which storage the run reads from, why, and the views of an image it trains and tests on."""
    from swin_cli.data import crop_pct, data_source, eval_batch_size, train_crop

    text = f"{data.storage} ({data.storage_reason})"
    if data.storage == "stream":
        text += f", {data.train.workers} worker processes"
    if not data_source(plain(data_cfg.name)).held_by_reader:  # views of image files apply
        crop = train_crop(data_cfg)
        scale = "-".join(f"{v:g}" for v in data_cfg.crop_scale)
        text += (f"; train: {'random resized crop, scale ' + scale if crop == 'random_resized' else 'resize'}"
                 f"; eval: centre crop {crop_pct(data_cfg):g}")
    return text + f"; eval batch {eval_batch_size(data_cfg)}"


# The groups a reader looks at first; the rest of the resolved config follows them.
FIRST_GROUPS = ("model", "data", "optimizer", "scheduler", "aug", "train")


def config_tree(cfg: Any) -> Any:
    """The resolved config as a tree: one branch per group, its keys on one wrapped line."""
    from omegaconf import OmegaConf
    from rich.text import Text
    from rich.tree import Tree

    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    tree = Tree("resolved config (all of it: .hydra/config.yaml)")
    groups = [g for g in FIRST_GROUPS if g in container] + [g for g in container if g not in FIRST_GROUPS]
    top = []
    for group in groups:
        value = container[group]
        if isinstance(value, dict):
            flat = " ".join(f"{k}={_short(v)}" for k, v in value.items())
            tree.add(Text.assemble((group, "bold"), f": {flat}"))  # Text: values are never markup
        else:
            top.append(f"{group}={_short(value)}")
    tree.add(Text.assemble(("run", "bold"), ": " + " ".join(top)))
    return tree


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_short(v) for v in value) + "]"
    return str(value)


# What a finished run dir holds, in the order a reader wants it.
RUN_FILES = [
    ("results.json", "best/test accuracy, epochs, time, params, why it stopped"),
    ("metrics.csv", "one row per epoch"),
    ("metrics.jsonl", "the same rows as JSON lines"),
    ("best.pt", "the best val accuracy's weights (eval, export, fine-tuning)"),
    ("last.pt", "checkpoint after the last epoch (resume=)"),
    ("top.json", "the kept best epochs, best first: top-e<epoch>.pt (checkpoint.keep_top)"),
    ("average.pt", "the kept best epochs' weights averaged (checkpoint.average)"),
    ("curves.png", "loss and accuracy curves"),
    ("lr.png", "learning-rate schedule"),
    ("confusion.png", "test confusion matrix"),
    ("per_class.csv", "the test's precision, recall, F1 and support per class"),
    ("reliability.png", "test confidence against accuracy (ECE)"),
    ("swin-train.log", "everything printed"),
    (".hydra/config.yaml", "the resolved config"),
    ("tb", "TensorBoard scalars (logger=tensorboard)"),
    ("wandb", "the W&B run (logger=wandb)"),
]


def end_panel(run_dir: Any) -> str:
    """The files a run wrote, for the last thing on screen."""
    from pathlib import Path

    from rich.panel import Panel
    from rich.table import Table

    table = Table(box=None, show_header=False, pad_edge=False)
    for name, what in RUN_FILES:
        if (Path(run_dir) / name).exists():
            table.add_row(name, what)
    return render(Panel(table, title=f"written to {run_dir}", expand=False))
