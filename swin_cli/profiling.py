"""torch.profiler around a few calls of a step: a Chrome/Perfetto trace and the ops that took
the time. The one place the profiler is set up, for benchmark.profile=true and debug=profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch.profiler import ProfilerActivity, profile


def profile_steps(step: Callable[[], Any], steps: int, device: torch.device, trace_path: Path,
                  top: int = 15) -> list[dict[str, Any]]:
    """Run `step` `steps` times under the profiler, write the trace to `trace_path` (open it in
    chrome://tracing or ui.perfetto.dev), and return the `top` ops by self time per step."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:  # the kernels still queued belong to the profiled steps
            torch.cuda.synchronize(device)
    prof.export_chrome_trace(str(trace_path))
    return top_ops(prof.key_averages(), steps, cuda, top)


def top_ops(averages: Any, steps: int, cuda: bool, top: int) -> list[dict[str, Any]]:
    """Ops by self time (time in the op itself, not in ops it calls, so the rows add up): on a GPU
    the kernels' time, on a CPU the host's."""
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = [e for e in averages if getattr(e, attr) > 0]
    total = sum(getattr(e, attr) for e in rows) or 1.0
    rows.sort(key=lambda e: getattr(e, attr), reverse=True)
    return [{"op": e.key, "self_ms_per_step": getattr(e, attr) / 1000.0 / steps,
             "share": getattr(e, attr) / total, "calls_per_step": e.count / steps} for e in rows[:top]]


def format_top_ops(rows: list[dict[str, Any]], width: int = 60) -> str:
    lines = [f"{'op':<{width}} {'ms/step':>9} {'share':>6} {'calls':>6}"]
    for r in rows:
        name = r["op"] if len(r["op"]) <= width else r["op"][:width - 3] + "..."
        lines.append(f"{name:<{width}} {r['self_ms_per_step']:>9.3f} {100 * r['share']:>5.1f}% "
                     f"{r['calls_per_step']:>6.0f}")
    return "\n".join(lines)
