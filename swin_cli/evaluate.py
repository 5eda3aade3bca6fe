"""Evaluation: the scores of a model on a split (loss, accuracy, balanced accuracy, macro-F1,
top-5, calibration, per class: metrics.py; for data.task=multilabel mAP and F1 at the per-class
thresholds: multilabel_metrics.py; used by training as well), of a saved checkpoint (mode=eval),
and labels for a folder of new images (mode=predict). A checkpoint's model is
rebuilt from the config saved inside it, so only the checkpoint and the data are needed, not the
command line that trained it. eval.json, per_class.csv and predictions.csv go to the run dir
Hydra made: for a checkpoint in a run dir, `<that run dir>/eval/<date>_<time>` (run_dirs.py)."""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from swin_cli import checkpoint, class_report, distributed, thresholds
from swin_cli.atomic_io import write_text_atomic
from swin_cli.augment import Normalize
from swin_cli.build import autocast, configure_device, model_from_checkpoint, select_device
from swin_cli.calibration import UNCALIBRATED, LogitCalibration, from_prior
from swin_cli.config import plain
from swin_cli.data import (
    IMAGE_EXTENSIONS,
    Settled,
    Split,
    crop_pct,
    data_source,
    eval_batch_size,
    eval_transform,
    load_data,
)
from swin_cli.data.class_counts import class_counts
from swin_cli.errors import SwinCliError
from swin_cli.metrics import ClassificationMeter, Scores
from swin_cli.multilabel_metrics import RESULT_SCORES as MULTILABEL_SCORES
from swin_cli.multilabel_metrics import MultiLabelMeter, MultiLabelScores
from swin_cli.sizes import hw, json_size, size_text
from swin_cli.text import plural

log = logging.getLogger("swin_cli")
# The scores eval.json (and, for the test split, results.json as test_<name>) gains beside acc and loss.
NEW_SCORES = ("balanced_acc", "macro_f1", "top5_acc", "ece", "nll")
# predictions.csv names this many of each image's top classes.
TOP = 5


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
                   calibration: LogitCalibration = UNCALIBRATED,
                   thresholds: Optional[Sequence[float]] = None) -> Scores | MultiLabelScores:
    """The scores (metrics.py) of `model` on `split`, summed over ranks. What is scored is the
    logits through `calibration` (calibration.py): a post-hoc logit adjustment (a per-class
    offset, such as the log class prior) and a temperature; by default the logits as they are.
    num_classes: the width of the logits (None: read from the first batch). thresholds: a
    multi-label model's per-class thresholds (its labels multi-hot): the scores are then
    multilabel_metrics.py's, the F1 at these thresholds."""
    calibrated = calibration.on(device)

    def meter_for(classes: int) -> Any:
        if thresholds is not None:
            return MultiLabelMeter(classes, device, thresholds)
        return ClassificationMeter(classes, device)

    meter = meter_for(num_classes) if num_classes is not None else None
    for logits, labels in eval_logits(model, split, normalize, device, batch_size, tta, precision):
        logits = calibrated(logits)
        if meter is None:
            meter = meter_for(logits.shape[1])
        meter.update(logits, labels)
    return (meter if meter is not None else meter_for(0)).scores()


@torch.no_grad()
def split_probabilities(model: nn.Module, split: Split, normalize: Normalize, device: torch.device,
                        batch_size: int, num_classes: int, tta: str = "none",
                        precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """A multi-label model's sigmoid probabilities (N, C) float64 and the bool labels (N, C)
    of every image of `split`, all ranks' together, on the CPU (to choose thresholds on)."""
    meter = MultiLabelMeter(num_classes, device)
    for logits, labels in eval_logits(model, split, normalize, device, batch_size, tta, precision):
        meter.update(logits, labels)
    probs, truth, _ = meter.gathered()
    return probs, truth


# evaluator(model, split, full) -> Scores (metrics.py), or with data.task=multilabel MultiLabelScores
# (multilabel_metrics.py): how the Trainer scores a model on a split (a seam for tests); full: the
# final test (its per-class table is reported)
Evaluator = Callable[[nn.Module, Split, bool], Scores | MultiLabelScores]


@dataclass(frozen=True)
class EvalSetup:
    """How a run's evaluation passes go, whatever model and split they score: its
    normalisation, device, batch size, test-time augmentation and autocast precision. The
    Trainer makes one, for validation, the final test and what is fitted on validation."""
    normalize: Normalize
    device: torch.device
    batch_size: int
    num_classes: int
    tta: str = "none"
    precision: str = "fp32"

    def logits(self, model: nn.Module, split: Split) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return eval_logits(model, split, self.normalize, self.device, self.batch_size, self.tta, self.precision)

    def scores(self, model: nn.Module, split: Split, calibration: LogitCalibration = UNCALIBRATED,
               thresholds: Optional[Sequence[float]] = None) -> Scores | MultiLabelScores:
        return evaluate_split(model, split, self.normalize, self.device, self.batch_size, self.num_classes, self.tta,
                              self.precision, calibration, thresholds)

    def probabilities(self, model: nn.Module, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        return split_probabilities(model, split, self.normalize, self.device, self.batch_size, self.num_classes,
                                   self.tta, self.precision)


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
    if cfg.eval.image_sizes is not None:
        return evaluate_at_sizes(cfg, run_dir, model, state, device, data_cfg)
    scores, data, split, calibration, chosen = _score_checkpoint(cfg, model, state, device, data_cfg)
    name, multilabel = plain(data_cfg.name), chosen is not None
    shown = cfg.eval_split
    if shown == "test" and data.test_source != "test":
        shown = f"test (the {data.test_source}/ folder)"
    per_class = class_report.named(scores.per_class, data.classes)
    names = MULTILABEL_SCORES if multilabel else ("acc", *NEW_SCORES)
    result = {"checkpoint": state["path"], "data": name, "data_root": data.where, "split": cfg.eval_split,
              "test_split": data.test_source, "images": len(split), "loss": scores.loss,
              **{key: getattr(scores, key) for key in names},
              **({"thresholds": chosen} if multilabel else {}),
              "tta": plain(cfg.eval.tta), "calibration": calibration.to_dict(), "skipped_images": split.skipped,
              "per_class": per_class}
    if cfg.eval_split == "test":  # the names results.json gives them too
        result.update({f"test_{key}": getattr(scores, key) for key in names if key != "acc"})
    out = Path(run_dir) / "eval.json"
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    table = class_report.write_csv(per_class, Path(run_dir))
    if not calibration.identity:
        log.info(f"scored as calibrated: {calibration.describe()}")
    log.info(f"{state['path']}: {shown} {scores_text(scores)} on {plural(len(split), 'image')} "
             f"of data={name} ({data.where})")
    counts = state.get("label_counts" if multilabel else "class_counts")
    log.info(class_report.summary_line(per_class, counts, data.classes))
    log.info(f"wrote {out} and {table.name}")
    return result


def _score_checkpoint(cfg: Any, model: nn.Module, state: dict[str, Any], device: torch.device, data_cfg: Any,
                      opened: Optional[Settled] = None) -> tuple[Any, Any, Split, LogitCalibration,
                                                                 Optional[list[float]]]:
    """(scores, data, the scored split, the calibration applied, a multi-label model's thresholds
    or None) of the checkpoint's model on cfg.eval_split of `data_cfg`'s data; `opened`: its
    source, already open."""
    data = load_data(data_cfg, device, statistics=False, settled=opened)  # scored with the checkpoint's mean, std
    name = plain(data_cfg.name)
    if data.classes != state["classes"]:
        raise SwinCliError(f"the checkpoint was trained on classes {state['classes'][:5]}... "
                           f"but data={name} has {data.classes[:5]}...")
    task = checkpoint_task(state)
    if data.task != task:
        raise SwinCliError(f"the checkpoint was trained with data.task={task} but data={name} is read with "
                           f"data.task={data.task}: add data.task={task}")
    chosen = (thresholds.checked(state.get("thresholds"), len(data.classes), state["path"])
              if task == "multilabel" else None)
    split = {"train": data.train, "val": data.val, "test": data.test}[cfg.eval_split]
    calibration = scoring_calibration(cfg, state, data)
    scores = evaluate_split(model, split, Normalize(state["mean"], state["std"], device), device,
                            eval_batch_size(data_cfg), len(data.classes), tta=plain(cfg.eval.tta),
                            calibration=calibration, thresholds=chosen)
    return scores, data, split, calibration, chosen


def evaluate_at_sizes(cfg: Any, run_dir: Path, model: nn.Module, state: dict[str, Any], device: torch.device,
                      data_cfg: Any) -> dict[str, Any]:
    """swin-eval eval.image_sizes=[...]: the checkpoint scored at each input size (the eval view
    resizes and crops to it; the model's windows follow), a row per size, and the best named.
    Models trained on random-resized crops often score best a little above their training size
    (Touvron et al. 2019, "Fixing the train-test resolution discrepancy")."""
    trained = hw(state["signature"]["data.image_size"])
    sizes = [hw(size, f"eval.image_sizes[{i}]") for i, size in enumerate(cfg.eval.image_sizes)]
    for size in sizes:  # all checked before any decoding
        if size[0] % model.patch_size or size[1] % model.patch_size:
            raise SwinCliError(f"eval.image_sizes: {size_text(size)} is not divisible by the checkpoint's "
                               f"model.patch_size={model.patch_size}")
    # The crop ratio of the training size at every size (data.crop_pct's automatic value
    # changes at 64 px): only the resolution varies along the rows. Streamed from the files as
    # they are: a size decodes the scored split alone, not every split into the decode cache,
    # nor into a prepared copy per size (sources held in memory by their reader stay there).
    pct = crop_pct(data_cfg)
    entry = data_source(plain(data_cfg.name))
    streamed = {} if entry.held_by_reader else {"storage": "stream", "prepare": False}
    # Opened once: a source does not depend on the size (the storage sizes its images), and a
    # folder scanned or a table read per size would cost as much as scoring a small split.
    opened = Settled(entry.load(data_cfg))
    rows, key = [], None
    for size in sizes:
        sized = OmegaConf.merge(data_cfg, {"image_size": json_size(size),
                                           "crop_pct": pct, **streamed})
        scores, data, split, calibration, chosen = _score_checkpoint(cfg, model, state, device, sized, opened)
        key = "map" if chosen is not None else "acc"
        names = MULTILABEL_SCORES if chosen is not None else ("acc", *NEW_SCORES)
        rows.append({"image_size": list(size), "images": len(split), "loss": scores.loss,
                     **{name: getattr(scores, name) for name in names}})
        mark = " (the training size)" if size == trained else ""
        log.info(f"{size_text(size):>12}: {cfg.eval_split} {scores_text(scores)}{mark}")
    best = max(rows, key=lambda row: row[key])
    best_size = tuple(best["image_size"])
    at_trained = next((row for row in rows if tuple(row["image_size"]) == trained), None)
    if best_size == trained:
        versus = ", the training size"
    elif at_trained is not None:
        versus = f"; {at_trained[key]:.2f}% at the training size, {size_text(trained)}"
    else:
        versus = f" (trained at {size_text(trained)})"
    log.info(f"best {cfg.eval_split} {key}: {best[key]:.2f}% at {size_text(best_size)}{versus}")
    result = {"checkpoint": state["path"], "data": plain(data_cfg.name), "split": cfg.eval_split,
              "trained_image_size": list(trained), "tta": plain(cfg.eval.tta), "ranked_by": key,
              "best_image_size": list(best_size), key: best[key], "sizes": rows}
    out = Path(run_dir) / "eval.json"
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    log.info(f"wrote {out}")
    return result


def checkpoint_task(state: dict[str, Any]) -> str:
    """The data.task a checkpoint was trained for (single in checkpoints older than the key)."""
    return plain(state["config"].get("data", {}).get("task") or "single")


def scores_text(scores: Any) -> str:
    """A split's scores as swin-eval's line shows them."""
    if isinstance(scores, MultiLabelScores):
        return (f"mAP {scores.map:.2f}% (micro {scores.map_micro:.2f}%) F1 {scores.f1:.2f}% "
                f"(loss {scores.loss:.4f})")
    top5 = f" top5 {scores.top5_acc:.2f}%" if scores.top5_acc is not None else ""
    return (f"acc {scores.acc:.2f}% bal {scores.balanced_acc:.2f}%{top5} "
            f"(loss {scores.loss:.4f}, ECE {scores.ece:.2f}%)")


def scoring_calibration(cfg: Any, state: dict[str, Any], data: Any = None) -> LogitCalibration:
    """What the checkpoint's logits pass through before scoring: the calibration its run saved
    (calibration.py), with eval.logit_adjust_tau from the command line replacing the saved offset
    (the training prior: the checkpoint's class counts, else the training split's)."""
    saved = LogitCalibration.from_dict(state.get("calibration"))
    tau = cfg.eval.logit_adjust_tau
    if tau is None:
        return saved
    counts = state.get("class_counts")
    if counts is None and data is not None:
        counts = class_counts(data.train, len(data.classes))
    if counts is None:
        raise SwinCliError("eval.logit_adjust_tau needs the training class counts: the checkpoint does not "
                           "hold them and the training split cannot say (webdataset shards)")
    return from_prior(counts, tau).with_temperature(saved.temperature)


@torch.no_grad()
def predict_folder(cfg: Any, run_dir: Path) -> Path:
    """mode=predict: classify every image under predict_dir; write predictions.csv: per image
    its class, confidence and top 5; of a multi-label model its label set (the classes at or
    over their thresholds, joined by data.label_separator, as a data=csv table holds them) and
    every class's probability."""
    folder = Path(cfg.predict_dir).expanduser()
    if not folder.is_dir():
        raise SwinCliError(f"predict_dir={cfg.predict_dir} does not exist or is not a folder")
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
    if not files:
        raise SwinCliError(f"predict_dir={cfg.predict_dir} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    model, info, device = _predictor(cfg)
    log.info(f"predict: {info['backend']}")
    calibration = info["calibration"]
    if not calibration.identity:
        log.info(f"confidences calibrated: {calibration.describe()}")
    size, channels, classes = info["image_size"], info["channels"], info["classes"]
    normalize = Normalize(info["mean"], info["std"], device)
    multilabel = info["task"] == "multilabel"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if multilabel:
        writer.writerow(["path", "labels"] + [f"p_{name}" for name in classes])
    else:
        writer.writerow(["path", "prediction", "confidence"] + [f"top{k + 1}" for k in range(min(TOP, len(classes)))])
    unreadable: list[str] = []
    view = eval_transform(info["data"], size, channels)
    # Sized for the command line's data.image_size as always; left unset (auto), the model's size.
    sized = cfg.data if cfg.data.image_size is not None else OmegaConf.merge(cfg.data, {"image_size": size})
    batch = eval_batch_size(sized)
    calibrated = calibration.on(device)
    for start in range(0, len(files), batch):
        chunk = files[start:start + batch]
        decoded = [_decoded(view, f) for f in chunk]
        good = [(f, d) for f, d in zip(chunk, decoded) if d is not None]
        unreadable += [str(f) for f, d in zip(chunk, decoded) if d is None]
        if not good:
            continue
        images = torch.from_numpy(np.stack([d for _, d in good]))
        logits = calibrated(model(normalize(images.to(device))).float())
        paths = [str(f) for f, _ in good]
        writer.writerows(label_set_rows(paths, logits, classes, info["thresholds"], info["label_separator"])
                         if multilabel else top_class_rows(paths, logits, classes))
    out = Path(run_dir) / "predictions.csv"
    write_text_atomic(out, buffer.getvalue())
    if unreadable:
        log.warning(f"skipped {plural(len(unreadable), 'unreadable image')}: {', '.join(unreadable[:5])}"
                    + (" ..." if len(unreadable) > 5 else ""))
    skipped = f" ({len(unreadable)} unreadable skipped)" if unreadable else ""
    log.info(f"wrote {plural(len(files) - len(unreadable), 'prediction')} ({info['backend']}) to {out}{skipped}")
    return out


def top_class_rows(paths: Sequence[str], logits: torch.Tensor, classes: Sequence[str]) -> list[list[str]]:
    """predictions.csv rows of one class per image: path, class, confidence, the top 5."""
    conf, idx = logits.softmax(1).topk(min(TOP, len(classes)), dim=1)
    return [[path, classes[i[0]], f"{c[0]:.4f}"] + [classes[k] for k in i]
            for path, c, i in zip(paths, conf.tolist(), idx.tolist())]


def label_set_rows(paths: Sequence[str], logits: torch.Tensor, classes: Sequence[str], chosen: Sequence[float],
                   separator: str) -> list[list[str]]:
    """predictions.csv rows of a multi-label model: path, label set, every class's probability."""
    probs = logits.float().sigmoid()
    said = thresholds.predicted(probs, chosen)
    return [[path, separator.join(name for name, yes in zip(classes, row) if yes)] + [f"{p:.4f}" for p in ps]
            for path, row, ps in zip(paths, said.tolist(), probs.tolist())]


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
        from swin_cli.onnx_runtime import OnnxClassifier, default_output, resolve_checkpoint, sidecar_path
        from swin_cli.quantize import saturation_warning

        # ckpt= an .onnx file (quantize=int8's best.int8.onnx, say) is run as it is.
        given = Path(cfg.ckpt).expanduser()
        path = given if given.suffix == ".onnx" else default_output(resolve_checkpoint(cfg.ckpt), "onnx", None)
        if not path.is_file():
            make = f"swin-export ckpt={cfg.ckpt}"
            if given.suffix == ".onnx":  # an export of the run dir it lies in (best.int8.onnx: quantize=int8's)
                int8 = " quantize=int8" if path.name.endswith(".int8.onnx") else ""
                make = f"swin-export ckpt={path.parent}{int8}"
            raise SwinCliError(f"predict_backend=onnx needs {path}; make it with: {make}")
        onnx_model = OnnxClassifier(path)
        info = {k: getattr(onnx_model, k) for k in ("image_size", "channels", "mean", "std", "classes")}
        info["calibration"] = LogitCalibration.from_dict(onnx_model.meta.get("calibration"))
        info.update(task_info(onnx_model.meta.get("task") or "single", onnx_model.meta.get("thresholds"),
                              onnx_model.meta.get("label_separator"), len(onnx_model.classes),
                              str(sidecar_path(path))))
        view = {"crop_pct": onnx_model.meta.get("crop_pct"), "interpolation": onnx_model.meta.get("interpolation")}
        backend = f"ONNX Runtime, {onnx_model.precision} ({path.name})"
        warning = saturation_warning(onnx_model.meta, path.name)
        if warning:
            log.warning(warning)
        return onnx_model, {**info, "data": view, "backend": backend}, torch.device("cpu")
    if Path(cfg.ckpt).suffix == ".onnx":
        raise SwinCliError(f"ckpt={cfg.ckpt} is an ONNX file: add predict_backend=onnx")
    model, state, device = _load_model(cfg)
    info = {"image_size": state["signature"]["data.image_size"], "channels": state["signature"]["in_chans"],
            "mean": state["mean"], "std": state["std"], "classes": state["classes"],
            "backend": f"torch, fp32 ({Path(state['path']).name})",
            "data": state["config"].get("data", {}), "calibration": scoring_calibration(cfg, state)}
    info.update(task_info(checkpoint_task(state), state.get("thresholds"), info["data"].get("label_separator"),
                          len(state["classes"]), state["path"]))
    return model, info, device


def task_info(task: str, saved: Optional[Sequence[float]], separator: Optional[str], num_classes: int,
              where: str) -> dict[str, Any]:
    """What predict needs of a model's task: for a multi-label one its checked thresholds and the
    separator of its label sets (a checkpoint's or a sidecar's, at `where`)."""
    multilabel = task == "multilabel"
    return {"task": task, "thresholds": thresholds.checked(saved, num_classes, where) if multilabel else None,
            "label_separator": separator or " "}
