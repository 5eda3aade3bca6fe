"""Progress of mode=benchmark while it steps: on a terminal a live bar, elsewhere a line every
few seconds, each with the time left; and a warning after the first step when the whole
benchmark would take over a minute on a CPU.

It never touches the device: on a GPU the host's clock is read as the steps are queued (the
host runs ahead until the queue is full, then at the GPU's pace), so no synchronisation is added
inside a timed window. Every call returns the seconds it spent reporting, which the timing
subtracts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("swin_cli")

# Seconds between progress lines when stdout is not a terminal.
LINE_EVERY_S = 5.0
# Seconds between redraws of the live bar on a terminal.
BAR_EVERY_S = 0.25
# A CPU benchmark estimated to take longer than this is warned about after its first step.
WARN_OVER_S = 60.0


@dataclass
class Phase:
    """A run of steps: its name, how many, and its cost per step relative to a training step
    (an inference step is about a third: a forward without the backward)."""
    name: str
    steps: int
    weight: float = 1.0


def duration(seconds: float) -> str:
    """Seconds as a person reads them: "45 s", "3 min 20 s", "1 h 05 min"."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class BenchmarkProgress:
    """Reports the steps of `phases` in order: call start(i) before phase i and tick() after each
    of its steps. `live`: draw a rich bar (a terminal) instead of printing lines. `warn_cpu`:
    warn after the very first step if the whole benchmark looks like taking over a minute."""

    def __init__(self, phases: list[Phase], live: bool, warn_cpu: bool, hint: str = "",
                 clock: Callable[[], float] = time.perf_counter):
        self.phases, self.warn_cpu, self.hint, self.clock = phases, warn_cpu, hint, clock
        self.index, self.done, self.first_step = 0, 0, True
        self.started = self.last_report = clock()
        self.bar = self.task = None
        if live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.bar = Progress(TextColumn("benchmark {task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[left]}"), auto_refresh=False, transient=True)
            self.bar.start()

    def start(self, index: int) -> None:
        """Phase `index` begins (its steps are counted from 0); called outside timed windows."""
        self.index, self.done = index, 0
        if self.bar is not None:
            phase = self.phases[index]
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task(phase.name, total=phase.steps, left="")
        self.started = self.last_report = self.clock()

    def tick(self) -> float:
        """One step of the current phase is done (queued, on a GPU). Returns the seconds spent here."""
        now = self.clock()
        self.done += 1
        if self.first_step:
            self.first_step = False
            self._warn_if_long(now - self.started)
        every = BAR_EVERY_S if self.bar is not None else LINE_EVERY_S
        if now - self.last_report >= every:
            self._report(now)
            self.last_report = self.clock()
        return self.clock() - now

    def seconds_left(self, now: float) -> float:
        """The current phase's remaining steps at its pace so far, and the later phases' steps
        at that pace scaled by their weight."""
        phase = self.phases[self.index]
        per_step = (now - self.started) / max(1, self.done)
        later = sum(p.steps * p.weight for p in self.phases[self.index + 1:]) / phase.weight
        return per_step * (phase.steps - self.done + later)

    def _report(self, now: float) -> None:
        phase = self.phases[self.index]
        left = f"about {duration(self.seconds_left(now))} left"
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, left=left)
            self.bar.refresh()
            return
        per_step = (now - self.started) / max(1, self.done)
        log.info(f"benchmark: {phase.name} {self.done}/{phase.steps} steps, {per_step:.2f} s/step, {left}")

    def _warn_if_long(self, first_s: float) -> None:
        if not self.warn_cpu:
            return
        phase = self.phases[self.index]
        total = first_s * sum(p.steps * p.weight for p in self.phases) / phase.weight
        if total > WARN_OVER_S:
            log.warning(f"benchmark: the first step took {first_s:.1f} s on this CPU, so the benchmark will take "
                        f"about {duration(total)}{self.hint}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
