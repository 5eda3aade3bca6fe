"""Evaluation: the scores of a model on a split (loss, accuracy, balanced accuracy, macro-F1,
top-5, calibration, per class: metrics.py; used by training as well), of a saved checkpoint
(mode=eval), and labels for a folder of new images (mode=predict). A checkpoint's model is
rebuilt from the config saved inside it, so only the checkpoint and the data are needed, not the
command line that trained it. eval.json, per_class.csv and predictions.csv go to the run dir
Hydra made: for a checkpoint in a run dir, `<that run dir>/eval/<date>_<time>` (run_dirs.py)."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from swin_cli import checkpoint, class_report, distributed
from swin_cli.atomic_io import write_text_atomic
from swin_cli.augment import Normalize
from swin_cli.build import autocast, configure_device, model_from_checkpoint, select_device
from swin_cli.config import plain
from swin_cli.data import IMAGE_EXTENSIONS, Split, eval_batch_size, eval_transform, load_data
from swin_cli.errors import SwinCliError
from swin_cli.metrics import ClassificationMeter, Scores
from swin_cli.text import plural

log = logging.getLogger("swin_cli")
# The scores eval.json (and, for the test split, results.json as test_<name>) gains beside acc and loss.
NEW_SCORES = ("balanced_acc", "macro_f1", "top5_acc", "ece", "nll")


@torch.no_grad()
def eval_logits(model: nn.Module, split: Split, normalize: Normalize, device: torch.device, batch_size: int,
                tta: str = "none", precision: str = "fp32") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(float32 logits, labels) on `device`, batch by batch, of this rank's share of `split`
    (under torchrun each rank takes every world-th image). tta="flip" averages the logits of
    each image and its mirror image; precision is the autocast dtype of the forward passes, as
    in training. The model is in eval mode meanwhile, and back in its own mode after."""
    was_training = model.training
    model.eval()
    try:
        for images, labels in split.eval_batches(batch_size, distributed.rank(), distributed.world_size()):
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            x = normalize(images)
            with autocast(device, precision):
                logits = model(x).float()
                if tta == "flip":
                    logits = (logits + model(x.flip(-1)).float()) / 2
            yield logits, labels
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_split(model: nn.Module, split: Split, normalize: Normalize, device: torch.device, batch_size: int,
                   num_classes: Optional[int] = None, tta: str = "none", precision: str = "fp32",
                   logit_offset: Optional[Any] = None, temperature: float = 1.0) -> Scores:
    """The scores (metrics.py) of `model` on `split`, summed over ranks. What is scored is
    `(logits - logit_offset) / temperature`: a post-hoc logit adjustment (a per-class offset,
    such as the log class prior) and a calibration temperature; by default the logits as they
    are. num_classes: the width of the logits (None: read from the first batch)."""
    offset = None if logit_offset is None else torch.as_tensor(logit_offset, dtype=torch.float32, device=device)
    meter = ClassificationMeter(num_classes, device) if num_classes is not None else None
    for logits, labels in eval_logits(model, split, normalize, device, batch_size, tta, precision):
        if offset is not None:
            logits = logits - offset
        if temperature != 1.0:
            logits = logits / temperature
        if meter is None:
            meter = ClassificationMeter(logits.shape[1], device)
        meter.update(logits, labels)
    return (meter if meter is not None else ClassificationMeter(0, device)).scores()


def _load_model(cfg: Any) -> tuple[nn.Module, dict[str, Any], torch.device]:
    path = Path(cfg.ckpt).expanduser()
    state = checkpoint.load(path / "best.pt" if path.is_dir() else path)
    device = select_device(plain(cfg.device))
    configure_device(device, cfg.train.tf32, cfg.deterministic)
    return model_from_checkpoint(state).to(device), state, device


def _names_data(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return key == "data" or key.startswith("data.")


def checkpoint_data_config(cfg: Any, state: dict[str, Any], overrides: Sequence[str] = ()) -> Any:
    """The data a checkpoint is scored on: the data config it was trained with (source, root,
    splits, transforms), unless the command line names `data=`; `data.*` keys given on the
    command line apply on top. Image size, channels and normalisation are always the model's."""
    signature = state["signature"]
    given = [o.split("=", 1)[0].lstrip("+~") for o in overrides if _names_data(o)]
    if "data" in given or "data" not in state["config"]:
        data_cfg = cfg.data
    else:
        data_cfg = OmegaConf.merge(cfg.data, state["config"]["data"])
        for key in given:  # data.root=... and friends from the command line win
            OmegaConf.update(data_cfg, key[len("data."):], OmegaConf.select(cfg, key), merge=False)
    return OmegaConf.merge(data_cfg, {"image_size": signature["data.image_size"], "channels": signature["in_chans"],
                                      "mean": state["mean"], "std": state["std"]})


def evaluate_checkpoint(cfg: Any, run_dir: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """mode=eval: the scores of a checkpoint on one split of the data it was trained on (or of
    the data the command line names): eval.json, and its per-class table as per_class.csv."""
    model, state, device = _load_model(cfg)
    data_cfg = checkpoint_data_config(cfg, state, overrides)
    data = load_data(data_cfg, device)
    name = plain(data_cfg.name)
    if data.classes != state["classes"]:
        raise SwinCliError(f"the checkpoint was trained on classes {state['classes'][:5]}... "
                           f"but data={name} has {data.classes[:5]}...")
    split = {"train": data.train, "val": data.val, "test": data.test}[cfg.eval_split]
    scores = evaluate_split(model, split, Normalize(state["mean"], state["std"], device), device,
                            eval_batch_size(data_cfg), len(data.classes), tta=plain(cfg.eval.tta))
    shown = cfg.eval_split
    if shown == "test" and data.test_source != "test":
        shown = f"test (the {data.test_source}/ folder)"
    per_class = class_report.named(scores.per_class, data.classes)
    result = {"checkpoint": state["path"], "data": name, "data_root": data.where, "split": cfg.eval_split,
              "test_split": data.test_source, "images": len(split), "loss": scores.loss, "acc": scores.acc,
              **{key: getattr(scores, key) for key in NEW_SCORES},
              "tta": plain(cfg.eval.tta), "skipped_images": split.skipped, "per_class": per_class}
    if cfg.eval_split == "test":  # the names results.json gives them too
        result.update({f"test_{key}": getattr(scores, key) for key in NEW_SCORES})
    out = Path(run_dir) / "eval.json"
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    table = class_report.write_csv(per_class, Path(run_dir))
    top5 = f" top5 {scores.top5_acc:.2f}%" if scores.top5_acc is not None else ""
    log.info(f"{state['path']}: {shown} acc {scores.acc:.2f}% bal {scores.balanced_acc:.2f}%{top5} "
             f"(loss {scores.loss:.4f}, ECE {scores.ece:.2f}%) on {plural(len(split), 'image')} "
             f"of data={name} ({data.where})")
    log.info(class_report.summary_line(per_class, state.get("class_counts"), data.classes))
    log.info(f"wrote {out} and {table.name}")
    return result


@torch.no_grad()
def predict_folder(cfg: Any, run_dir: Path) -> Path:
    """mode=predict: classify every image under predict_dir; write predictions.csv."""
    folder = Path(cfg.predict_dir).expanduser()
    if not folder.is_dir():
        raise SwinCliError(f"predict_dir={cfg.predict_dir} does not exist or is not a folder")
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
    if not files:
        raise SwinCliError(f"predict_dir={cfg.predict_dir} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    model, info, device = _predictor(cfg)
    size, channels, classes = info["image_size"], info["channels"], info["classes"]
    normalize = Normalize(info["mean"], info["std"], device)
    top = min(5, len(classes))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "prediction", "confidence"] + [f"top{k + 1}" for k in range(top)])
    unreadable: list[str] = []
    view = eval_transform(info["data"], size, channels)
    # Sized for the command line's data.image_size as always; left unset (auto), the model's size.
    sized = cfg.data if cfg.data.image_size is not None else OmegaConf.merge(cfg.data, {"image_size": size})
    batch = eval_batch_size(sized)
    for start in range(0, len(files), batch):
        chunk = files[start:start + batch]
        decoded = [_decoded(view, f) for f in chunk]
        good = [(f, d) for f, d in zip(chunk, decoded) if d is not None]
        unreadable += [str(f) for f, d in zip(chunk, decoded) if d is None]
        if not good:
            continue
        images = torch.from_numpy(np.stack([d for _, d in good]))
        probs = model(normalize(images.to(device))).float().softmax(1)
        conf, idx = probs.topk(top, dim=1)
        for (f, _), c, i in zip(good, conf.tolist(), idx.tolist()):
            writer.writerow([str(f), classes[i[0]], f"{c[0]:.4f}"] + [classes[k] for k in i])
    out = Path(run_dir) / "predictions.csv"
    write_text_atomic(out, buffer.getvalue())
    if unreadable:
        log.warning(f"skipped {plural(len(unreadable), 'unreadable image')}: {', '.join(unreadable[:5])}"
                    + (" ..." if len(unreadable) > 5 else ""))
    skipped = f" ({len(unreadable)} unreadable skipped)" if unreadable else ""
    log.info(f"wrote {plural(len(files) - len(unreadable), 'prediction')} ({info['backend']}) to {out}{skipped}")
    return out


def _decoded(view: Callable, path: Path) -> Optional[np.ndarray]:
    try:
        return view(str(path))
    except Exception:  # PIL raises many types for truncated/corrupt files
        return None


def _predictor(cfg: Any) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any], torch.device]:
    """What scores images for mode=predict, what it expects (image size, channels, mean, std)
    and its classes: the checkpoint's model in torch, or with predict_backend=onnx its export
    (swin-export) under ONNX Runtime, so a user sees the deployed model's answers."""
    if plain(cfg.predict_backend) == "onnx":
        from swin_cli.onnx_runtime import OnnxClassifier, default_output, resolve_checkpoint

        path = default_output(resolve_checkpoint(cfg.ckpt), "onnx", None)
        if not path.is_file():
            raise SwinCliError(f"predict_backend=onnx needs {path}; make it with: swin-export ckpt={cfg.ckpt}")
        onnx_model = OnnxClassifier(path)
        info = {k: getattr(onnx_model, k) for k in ("image_size", "channels", "mean", "std", "classes")}
        view = {"crop_pct": onnx_model.meta.get("crop_pct"), "interpolation": onnx_model.meta.get("interpolation")}
        return onnx_model, {**info, "data": view, "backend": f"ONNX Runtime, {path.name}"}, torch.device("cpu")
    model, state, device = _load_model(cfg)
    info = {"image_size": state["signature"]["data.image_size"], "channels": state["signature"]["in_chans"],
            "mean": state["mean"], "std": state["std"], "classes": state["classes"], "backend": "torch",
            "data": state["config"].get("data", {})}
    return model, info, device
