"""One training step: the model and everything that moves its weights, built once from the config.

A `TrainStep` holds the model, the module that runs its training forward pass (compiled,
wrapped in DDP), the optimizer, GradScaler, lr schedule and EMA (through `ParameterUpdate`),
the batch preparation (augmentation, normalisation, mixing; compiled with the model) and the
loss. Called with a uint8 batch, it runs one optimizer step over `accumulate` micro-batches.
The Trainer and mode=benchmark both build theirs with `build_train_step`, so what the
benchmark times is what a run trains with.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Optional, Sequence

import torch
import torch.nn as nn

from swin_cli import checkpoint
from swin_cli.augment import TrainBatch, model_input
from swin_cli.build import autocast, build_model, build_optimizer, build_scheduler, training_module, uses_cuda_graphs
from swin_cli.config import plain
from swin_cli.errors import NonFiniteLoss
from swin_cli.host_memory import keep_freed_memory
from swin_cli.imbalance import build_imbalanced_loss
from swin_cli.multilabel_loss import MultiLabelLoss
from swin_cli.records import PrepTimer
from swin_cli.update import EMA, ParameterUpdate, match_loaded_optimizer

log = logging.getLogger("swin_cli")

# loss(logits as float32, targets) -> scalar; targets are class indices, or class probabilities
# when mixing is on (data.task=multilabel: multi-hot rows, mixed and smoothed when mixing is on).
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_loss(train_cfg: Any, mixing_active: bool, class_counts: Optional[Sequence[int]] = None,
               multilabel: bool = False, pos_weight: Optional[torch.Tensor] = None) -> nn.Module:
    """The training loss. With mixup/cutmix the targets arrive as class probabilities with the
    label smoothing already folded in, so the loss must not smooth them again. With an imbalance
    option on (train.class_weights, train.logit_adjust_tau), the cross-entropy of
    swin_cli/imbalance.py, from the training split's `class_counts`. multilabel: the BCE of
    swin_cli/multilabel_loss.py, its positives weighted by `pos_weight` (None: 1)."""
    label_smoothing = 0.0 if mixing_active else train_cfg.label_smoothing
    if multilabel:
        return MultiLabelLoss(pos_weight, label_smoothing)
    imbalanced = build_imbalanced_loss(train_cfg, label_smoothing, class_counts) if class_counts is not None else None
    return imbalanced if imbalanced is not None else nn.CrossEntropyLoss(label_smoothing=label_smoothing)


def hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """What the training accuracy counts, on the device: images whose top class is the label;
    for multi-hot labels (B, C), the label decisions right at probability 0.5 (logit 0), a
    count the Trainer divides by images x classes (per-label accuracy)."""
    if labels.dim() == 2:
        return ((logits > 0) == labels.bool()).sum()
    return (logits.argmax(1) == labels).sum()


class TrainStep:
    """One optimizer step; see the module docstring. `criterion` is a plain attribute that a
    test or an extension may replace."""

    def __init__(self, model: nn.Module, forward_model: nn.Module, update: ParameterUpdate, prepare: TrainBatch,
                 prepare_batch: Callable[..., Any], criterion: Loss, device: torch.device, precision: str,
                 channels_last: bool, cudagraphs: bool, micro_batch: int, processes: int, detect_anomaly: bool):
        self.model, self.forward_model, self.update = model, forward_model, update
        # What the update steps, named here for checkpoints and for tests.
        self.optimizer, self.scaler, self.scheduler = update.optimizer, update.scaler, update.scheduler
        self.ema = update.ema
        self.prepare, self.prepare_batch, self.criterion = prepare, prepare_batch, criterion
        self.device, self.precision, self.channels_last, self.cudagraphs = device, precision, channels_last, cudagraphs
        self.micro_batch, self.processes, self.detect_anomaly = micro_batch, processes, detect_anomaly
        self.prep_timer = PrepTimer(device)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 position: str = "this step") -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over the batch, split into micro-batches of `micro_batch`; returns
        (mean loss, #correct) as device tensors, so the host does not wait for them. `position`
        names the step in the anomaly-detection error (e.g. "step 7 (epoch 2)")."""
        if self.cudagraphs:  # a new step: the graphs may reuse the memory of the last one's outputs
            torch.compiler.cudagraph_mark_step_begin()
        self.optimizer.zero_grad(set_to_none=True)
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        micro_batches = list(zip(images.split(self.micro_batch), labels.split(self.micro_batch)))
        for i, (micro_images, micro_labels) in enumerate(micro_batches):
            # Weighted so that k micro-batches give the gradient of one k-times batch.
            weight = len(micro_labels) / len(labels)
            # Under DDP, average gradients over ranks once per step, not once per micro-batch.
            last = i == len(micro_batches) - 1
            sync = self.forward_model.no_sync() if self.processes > 1 and not last else nullcontext()
            with sync:
                loss, logits, y = self._forward_backward(micro_images, micro_labels, weight, position)
            total_loss += loss.detach() * weight
            correct += hits(logits, y)
        self.update()
        return total_loss, correct

    def _forward_backward(self, images: torch.Tensor, labels: torch.Tensor, weight: float,
                          position: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prepare one micro-batch (timed), forward, loss, backward of the weighted loss;
        returns (loss, logits, labels on the device)."""
        self.prep_timer.start()
        x, y, target = model_input(images, labels, self.device, self.prepare_batch, self.channels_last)
        self.prep_timer.stop()
        with autocast(self.device, self.precision):
            logits = self.forward_model(x)
            loss = self.criterion(logits.float(), target)
        try:
            self.scaler.scale(loss * weight).backward()
        except RuntimeError as exc:
            # Anomaly detection's own error; any other (out of memory, ...) stays as it is.
            if not self.detect_anomaly or "returned nan values" not in str(exc):
                raise
            # Torch has printed the forward op's traceback as a warning just above.
            raise NonFiniteLoss(f"anomaly detection stopped {position}: {str(exc).splitlines()[0].rstrip('.')}; "
                                f"the forward op behind it is in the traceback above") from None
        return loss, logits, y

    def anomaly_detection(self) -> ContextManager[Any]:
        """The context a run trains in: autograd's anomaly detection when train.detect_anomaly
        asks for it (a NaN then stops the step in the backward op that made it)."""
        if not self.detect_anomaly:
            return nullcontext()
        # Said once here, in our words, instead of torch's warning pointing at this line.
        warnings.filterwarnings("ignore", message="Anomaly Detection has been enabled")
        log.info("autograd anomaly detection is on (train.detect_anomaly): training runs several times slower")
        return torch.autograd.detect_anomaly()

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint keys of the weights and of what moves them."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "ema": self.ema.module.state_dict() if self.ema else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint, whatever step (eager or compiled) wrote it."""
        checkpoint.restore(state, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                           scaler=self.scaler, ema=self.ema.module if self.ema else None)
        match_loaded_optimizer(self.optimizer, self.update.compiled)


def build_train_step(cfg: Any, device: torch.device, in_chans: int, num_classes: int, mean: list[float],
                     std: list[float], micro_batch: int, steps_per_epoch: int, total_steps: int,
                     processes: int = 1, pretrained: bool = True,
                     class_counts: Optional[Sequence[int]] = None,
                     pos_weight: Optional[torch.Tensor] = None) -> TrainStep:
    """The step `cfg` describes, its model on `device` (pretrained: with model.pretrained's
    weights loaded). The model is built first: with the same seed it gets the same weights.
    `class_counts`: the training split's images per class, for the imbalance options (None:
    taken as equal, e.g. for mode=benchmark's random data). `pos_weight`: data.task=multilabel's
    per-class positive weights (train.pos_weight; None: 1)."""
    t = cfg.train
    keep_freed_memory()  # a step's large host tensors reuse the last step's pages (host_memory.py)
    compile_mode = plain(t.compile_mode)
    model = build_model(cfg.model, cfg.data.image_size, in_chans, num_classes, pretrained=pretrained).to(device)
    forward_model = training_module(model, device, processes, t.compile, compile_mode)
    optimizer = build_optimizer(cfg.optimizer, model, device, t.compile_optimizer)
    precision = plain(t.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    ema: Optional[EMA] = EMA(model, t.ema.decay) if t.ema.decay else None
    scheduler = build_scheduler(cfg.scheduler, optimizer, total_steps, steps_per_epoch)
    update = ParameterUpdate(optimizer, scaler, scheduler, model, t.grad_clip, ema, t.compile_optimizer, compile_mode)
    prepare = TrainBatch(cfg.aug, num_classes, t.label_smoothing, mean, std, device)
    # Compiled, the batch preparation is a few fused kernels instead of a few hundred small
    # launches (on an H100 the eager pipeline took 13% of a cifar10_swin step).
    prepare_batch = torch.compile(prepare, mode=compile_mode) if t.compile else prepare
    counts = class_counts if class_counts is not None else [1] * num_classes
    multilabel = plain(cfg.data.task) == "multilabel"
    criterion = build_loss(t, prepare.mix.active, counts, multilabel, pos_weight).to(device)
    return TrainStep(model, forward_model, update, prepare, prepare_batch, criterion, device,
                     precision, t.channels_last, uses_cuda_graphs(t), micro_batch, processes, t.detect_anomaly)
