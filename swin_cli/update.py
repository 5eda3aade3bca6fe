"""What follows backward once per optimizer step: gradient clipping, the optimizer step, the EMA of
the weights and the lr schedule, eager or compiled into one graph (train.compile_optimizer)."""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn as nn


class EMA:
    """Exponential moving average of a model's weights (buffers are copied as they are)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        # Kept as lists: rebuilding them every step is Python work a compiled step would trace.
        self.params, self.buffers = list(self.module.parameters()), list(self.module.buffers())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        torch._foreach_lerp_(self.params, list(model.parameters()), 1.0 - self.decay)
        if self.buffers:
            torch._foreach_copy_(self.buffers, list(model.buffers()))


def use_tensor_lr(optimizer: torch.optim.Optimizer, tensor: bool) -> None:
    """Hold each param group's lr (and its scheduler's initial_lr) as a 0-d tensor or as a float.
    A compiled optimizer step needs the tensor: the schedule then fills it in place every step
    instead of handing the graph a new constant, which would recompile it. Also run after a
    checkpoint is loaded, which brings back whichever kind the run that wrote it used."""
    for group in optimizer.param_groups:
        for key in ("lr", "initial_lr"):
            if key in group:
                value = float(group[key])
                group[key] = torch.tensor(value, dtype=torch.float64) if tensor else value


def match_loaded_optimizer(optimizer: torch.optim.Optimizer, tensor_lr: bool) -> None:
    """After load_state_dict: a checkpoint brings back the param-group options of the run that
    wrote it (a compiled step's capturable, a fused kernel), which this run's step may not take;
    set them to this optimizer's own, move the step counts where its kernels keep them, and hold
    the lr as this run does."""
    for group in optimizer.param_groups:
        for key in ("capturable", "foreach", "fused"):
            if key in optimizer.defaults:
                group[key] = optimizer.defaults[key]
        on_device = bool(group.get("capturable") or group.get("fused"))
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if torch.is_tensor(step):
                optimizer.state[p]["step"] = step.to(p.device if on_device else "cpu", torch.float32)
    use_tensor_lr(optimizer, tensor_lr)


class ParameterUpdate:
    """Called after backward: clip the global gradient norm when asked (unscaled first under
    fp16), step the optimizer through the scaler, update the EMA, step the lr schedule.

    compiled: clipping, the optimizer and the EMA run as one compiled function (four graphs:
    torch.optim breaks the graph on either side of its step so that no_grad holds inside), fused
    kernels on a GPU rather than a multi-tensor launch per op and parameter group. The lr is then
    a tensor (use_tensor_lr), so the schedule never recompiles it. fp16 stays eager (the config
    refuses train.compile_optimizer with it): its GradScaler decides on the host whether to skip
    each step."""

    def __init__(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, scheduler, model: nn.Module,
                 grad_clip: Optional[float], ema: Optional[EMA] = None, compiled: bool = False,
                 compile_mode: str = "default"):
        self.optimizer, self.scaler, self.scheduler = optimizer, scaler, scheduler
        self.model, self.grad_clip, self.ema = model, grad_clip, ema
        self.compiled = compiled and not scaler.is_enabled()
        use_tensor_lr(optimizer, self.compiled)
        self._apply = torch.compile(self._clip_step_average, mode=compile_mode) if self.compiled \
            else self._clip_step_average

    def _clip_step_average(self) -> None:
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        # The class's own step: the scheduler wraps the instance's in a function dynamo skips.
        type(self.optimizer).step(self.optimizer)
        if self.ema is not None:
            self.ema.update(self.model)

    def __call__(self) -> None:
        if self.scaler.is_enabled():  # fp16: unscale before clipping; the scaler may skip the step
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.model)
        else:
            self._apply()
            self.optimizer._opt_called = True  # what the scheduler's wrapper would have noted
        self.scheduler.step()
