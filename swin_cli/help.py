"""`swin-train --help`: config groups with their defaults, the top-level keys, examples.

Built from the shipped conf/ tree and the schema alone, so printing it imports neither torch
nor the training stack (under a second, where torch alone takes over one).
"""

from __future__ import annotations

import dataclasses
from importlib.resources import files

import yaml

from swin_cli.config import Config, plain

# One line per top-level key (tests check that every key of the schema has one).
TOP_LEVEL_KEYS = {
    "mode": "train | eval | predict | summary | preview (augment_preview.png) | benchmark (benchmark.json)"
            " | cache (lists data.cache_dir; cache.clear=all|<folder>|<entry> clears)",
    "epochs": "passes over the training split",
    "seed": "seeds init, shuffling and augmentation; the same seed repeats a CPU run bit for bit",
    "device": "auto (CUDA, else MPS, else CPU) | cpu | cuda | mps",
    "threads": "CPU threads for torch (null: one per core)",
    "deterministic": "deterministic kernels only: GPU runs repeat bit for bit, more slowly",
    "resume": "a run dir or .pt to continue, or auto (the newest run under outputs/ with this config)",
    "ckpt": "mode=eval/predict: a checkpoint, or a run dir (its best.pt)",
    "eval_split": "mode=eval: train | val | test",
    "predict_dir": "mode=predict: a folder of images to label into predictions.csv",
    "predict_backend": "mode=predict: torch | onnx (the checkpoint's swin-export under ONNX Runtime)",
}
GROUP_KEYS = ("model", "data", "aug", "optimizer", "scheduler", "train", "eval", "log", "logger", "benchmark",
              "cache", "checkpoint")
EXAMPLES = """\
  swin-train data=digits model=nano epochs=2                # offline, a minute on a laptop
  swin-train model=tiny model.patch_size=2 model.window_size=4 data=cifar10 epochs=10
  swin-train data=imagefolder data.root=/data/my_images     # trains at the files' own size
  swin-train experiment=cifar10_nano                         # CIFAR-10, downloaded once
  swin-train -m data=digits optimizer=adamw,sgd optimizer.lr=1e-3,3e-4 epochs=3
  swin-train mode=preview data=digits aug.auto_augment=trivialaugment   # augment_preview.png
  swin-train data=digits 'logger=[tensorboard,mlflow]'       # or logger=wandb; each needs its extra
  swin-train debug=fast model=tiny                           # 1 step each of train, val, test; run dir in /tmp
  swin-eval ckpt=outputs/DATE/TIME data=digits               # evaluate a run's best.pt
  swin-train experiment=finetune data.root=/data/my_images   # ImageNet Swin-T, fine-tuned
  swin-export ckpt=outputs/DATE/TIME                         # best.onnx, checked against torch"""
# data=imagefolder's two layouts, in three lines (swin_cli/data/imagefolder.py reads them).
IMAGE_FOLDER_LAYOUT = """\
  data.root/train/<class>/*  data.root/test/<class>/*  (optional data.root/val/<class>/*; no test/: tests on val/)
  or data.root/<class>/* with data.layout=classes: data.val_fraction, data.test_fraction of each class held
  out, seeded by data.split_seed, written to <run dir>/split.json (data.split_file=<it> reuses the split)"""
# Hydra's plugin groups, from the optional `sweep` extra.
PLUGIN_GROUPS = """\
  hydra/launcher: basic*, joblib, slurm, submitit_local, submitit_slurm   (pip install "swin-cli[sweep]")
  hydra/sweeper:  basic*, optuna (or hparams_search=cifar10_optuna)"""


def config_groups() -> dict[str, tuple[list[str], str | None]]:
    """Each config group of the shipped conf/ tree: its options and its default (None: none)."""
    conf = files("swin_cli.conf")
    defaults: dict[str, str | None] = {}
    for entry in yaml.safe_load(conf.joinpath("config.yaml").read_text())["defaults"]:
        if isinstance(entry, dict):
            (group, option), = entry.items()
            defaults[group] = option
    groups = {}
    for folder in sorted(conf.iterdir(), key=lambda p: p.name):
        if folder.is_dir() and folder.name in defaults:
            options = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
            groups[folder.name] = (options, defaults[folder.name])
    return groups


def help_text(program: str = "swin-train") -> str:
    lines = [f"{program}: train a Swin Transformer (V1: Liu et al. 2021, V2: 2022) on image classification.", "",
             f"Usage: {program} [group=option ...] [key=value ...]   (-m: one job per value of comma lists)", "",
             "Config groups (* the default):"]
    groups = config_groups()
    width = max(map(len, groups)) + 1
    for group, (options, default) in groups.items():
        shown = ", ".join(o + "*" if o == default else o for o in options)
        lines.append(f"  {group + ':':<{width}} {shown}" + ("   (default: none)" if default is None else ""))
    lines += ["", "Top-level keys (default):"]
    fields = {f.name: f for f in dataclasses.fields(Config)}
    for key, meaning in TOP_LEVEL_KEYS.items():
        field = fields[key]
        default = field.default if field.default is not dataclasses.MISSING else None
        shown = f"{key}={'null' if default is None else plain(default)}"
        lines.append(f"  {shown:<18} {meaning}")
    lines += [f"  {', '.join(k + '.*' for k in GROUP_KEYS)}: each group's own keys",
              "", "Examples:", EXAMPLES, "",
              "Image folders (data=imagefolder data.root=...):", IMAGE_FOLDER_LAYOUT, "",
              "Every key with its value: swin-train --cfg job [overrides]   (--cfg all adds Hydra's)",
              "Config search path and defaults: swin-train --info",
              "", "Hydra plugin groups:", PLUGIN_GROUPS,
              "", "Hydra's own flags (--multirun, --cfg, --info, --shell-completion, ...): swin-train --hydra-help"]
    return "\n".join(lines)
