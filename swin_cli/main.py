"""Entry point of `swin-train` and `python -m swin_cli`: Hydra composes the config, we run it.

Errors a user can fix end as one `swin-train: error: ...` line on stderr and a non-zero exit:
2 for a bad config value, 1 for other problems (data, checkpoint, NaN loss, disk), and
128+signal after Ctrl-C/SIGTERM (130/143) once a resumable checkpoint is saved. A run that fails
before its first step takes back its run dir unless it holds a checkpoint or results, and says
which (run_dirs.py); resume= onto a finished run says there is nothing left to train, exit 0.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from swin_cli.config import ConfigError, register_configs, validate
from swin_cli.errors import SwinCliError
from swin_cli.run_dirs import RunDir, register_resolver

log = logging.getLogger("swin_cli")

register_configs()
register_resolver()  # hydra.run.dir's ${swin_run_dir:...}

# The command the user typed, for the first word of every error line (swin-eval sets its own).
program = "swin-train"


def _print_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def print_error(line: str) -> None:
    """An error line on stderr, from rank 0 only under torchrun: every rank meets the same bad
    config or missing file, and one line says it (the others exit with the same code)."""
    from swin_cli import distributed

    if distributed.reports_errors():
        print(line, file=sys.stderr, flush=True)


def report_error(message: str) -> None:
    """One `<program>: error: ...` line on stderr, and the same line at the end of the run's log."""
    line = f"{program}: error: {message}"
    print_error(line)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(logging.makeLogRecord({"name": "swin_cli", "levelno": logging.ERROR,
                                                  "levelname": "ERROR", "msg": line}))


def share_machine(cfg: DictConfig, hydra_cfg: Any) -> None:
    """Under a parallel launcher (joblib), give each job its share of the cores and, on a
    multi-GPU host, its own GPU, instead of every job grabbing everything."""
    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    if "Joblib" not in launcher:
        return
    cores = os.cpu_count() or 1
    n_jobs = hydra_cfg.launcher.get("n_jobs") or 1
    n_jobs = cores if n_jobs < 0 else n_jobs  # joblib's -1: one job per core
    if cfg.threads is None:
        cfg.threads = max(1, cores // n_jobs)
    import torch

    if torch.cuda.device_count() > 1:
        torch.cuda.set_device(hydra_cfg.job.num % torch.cuda.device_count())


class _Attempt:
    """How far a run got: a Trainer that has taken its first step has a run dir worth keeping."""

    def __init__(self) -> None:
        self.trainer: Any = None

    @property
    def stepped(self) -> bool:
        return self.trainer is not None and self.trainer.first_step_s is not None


def run_mode(cfg: DictConfig, run_dir: RunDir, hydra_cfg: Any, attempt: _Attempt) -> Optional[float]:
    """Do what cfg.mode says; returns the best validation accuracy (eval: the accuracy; for
    multi-hot labels mAP) for sweepers."""
    # Imported here: the training stack is only needed once a config has been composed.
    from swin_cli.evaluate import evaluate_checkpoint, predict_folder
    from swin_cli.train import Trainer

    mode, path = cfg.mode.value, run_dir.path
    if mode == "eval":
        result = evaluate_checkpoint(cfg, path, hydra_cfg.overrides.task)
        return result["map"] if "map" in result else result["acc"]
    if mode == "summary":  # describe the model and data, train nothing, write nothing
        from swin_cli.summary import describe

        log.info(describe(cfg, "none (mode=summary writes no files)"))
        run_dir.remove_if_unstarted()
        return None
    if mode == "cache":  # list data.cache_dir and clear what cache.clear names; no run dir
        from swin_cli.cache import run_cache_mode

        log.info(run_cache_mode(cfg))
        run_dir.remove_if_unstarted()
        return None
    if mode == "predict":
        predict_folder(cfg, path)
        return None
    if mode == "benchmark":  # time the configured step on random data, train nothing
        from swin_cli.benchmark import run_benchmark

        run_benchmark(cfg, path)
        return None
    if mode == "preview":
        from swin_cli.preview import write_preview

        log.info(f"wrote {write_preview(cfg, path)}")
        return None
    sweep_dir = Path(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None
    attempt.trainer = Trainer(cfg, path, hydra_cfg.overrides.task, sweep_dir)
    results = attempt.trainer.fit()
    # What a sweeper maximises: validation accuracy, or for multi-hot labels validation mAP.
    return results["best_val_map"] if "best_val_map" in results else results["best_val_acc"]


def end_failed_run(exc: SwinCliError, run_dir: RunDir, stepped: bool) -> NoReturn:
    """Exit after a failed single run: 2 for a bad config, 1 otherwise. A config that never ran
    leaves no run dir; a run that failed before its first step removes its run dir unless it
    holds a checkpoint or results, and says which."""
    from swin_cli import distributed

    config_error = isinstance(exc, ConfigError)
    if distributed.is_main() and not (config_error and run_dir.remove_if_unstarted()):
        line = run_dir.tidy_after_failure(stepped)
        if line:
            log.info(line)
    sys.exit(2 if config_error else 1)


def run(cfg: DictConfig) -> Optional[float]:
    """Run `cfg` as Hydra composed it; returns the best validation accuracy for sweepers."""
    from swin_cli import sweep
    from swin_cli.checkpoint import NothingLeftToTrain
    from swin_cli.interrupt import TrainingInterrupted

    hydra_cfg = HydraConfig.get()
    run_dir = RunDir(Path(hydra_cfg.runtime.output_dir))
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun:
        share_machine(cfg, hydra_cfg)
    attempt = _Attempt()
    try:
        validate(cfg)
        return run_mode(cfg, run_dir, hydra_cfg, attempt)
    except NothingLeftToTrain as finished:  # resume= onto a finished run: say so, exit 0
        log.info(str(finished))
        if not multirun:
            run_dir.tidy_after_failure(stepped=False)  # nothing was written worth keeping
        return finished.results.get("best_val_acc")
    except SwinCliError as exc:
        report_error(str(exc))
        if multirun:  # the sweep goes on; its summary shows this job as failed
            return sweep.failed_job(run_dir.path, str(exc), hydra_cfg, exc)
        end_failed_run(exc, run_dir, attempt.stepped)
    except TrainingInterrupted as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        if not multirun:
            raise
        # A bug in one job should not cost the other jobs of a sweep their results.
        log.exception(f"job failed: {type(exc).__name__}: {exc}")
        return sweep.failed_job(run_dir.path, f"{type(exc).__name__}: {exc}", hydra_cfg, exc)


# Lines of Hydra/OmegaConf error text that describe internals rather than the user's mistake.
_NOISE = ("full_key:", "reference_type=", "object_type=", "Set the environment variable HYDRA_FULL_ERROR",
          "Config search path", "provider=", "To append to your config use")


# Hydra plugins that are optional extras: the missing config names the extra to install.
_PLUGIN_EXTRAS = {"hydra/launcher/joblib": "sweep", "hydra/sweeper/optuna": "sweep",
                  "hydra/launcher/submitit": "sweep", "hparams_search/": "sweep"}


def one_line(message: str) -> str:
    """Fold Hydra's multi-line composition error into one line that keeps every useful fact."""
    parts: list[str] = []
    items: list[str] = []
    for raw in message.splitlines():
        line = raw.strip()
        if not line or line.startswith(_NOISE):
            continue
        if raw.startswith("\t"):  # an option listed under "Available options in 'model':"
            items.append(line)
            continue
        if items:
            parts[-1] += " " + ", ".join(items)
            items = []
        parts.append(line)
    if items and parts:
        parts[-1] += " " + ", ".join(items)
    line = " ".join(p if p.endswith((":", ".")) else p + ";" for p in parts).rstrip(";")
    if "token recognition error" in line:
        # Only the key comes from argv: the shell may have split the value at a space (dáta set
        # -> dáta, set), so the value shown would not be the one the user meant.
        odd = next((a for a in sys.argv[1:] if "=" in a and not a.isascii()), "key=")
        key = odd.split("=", 1)[0]
        line += (f" (a value with non-ASCII characters must be quoted twice, in double quotes for Hydra "
                 f"inside single quotes for the shell: '{key}=\"...\"' with the whole value between the double quotes)")
    for config_name, extra in _PLUGIN_EXTRAS.items():
        if f"Could not find '{config_name}" in line or (f"'{config_name}" in line and "Could not" in line):
            line += f" (a Hydra plugin from an optional extra: pip install \"swin-cli[{extra}]\")"
            break
    return line


def _os_error(exc: BaseException) -> Optional[OSError]:
    """The OSError that `exc` is or was raised from (`raise ... from`), if any; not one that
    was merely being handled when it was raised, which may have nothing to do with it."""
    seen: set[int] = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


@hydra.main(version_base="1.3", config_path="pkg://swin_cli.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> Any:
    return run(cfg)


def run_hydra_app(app: Callable[[], Any], program: str, report: Callable[[str], None] = _print_stderr,
                  explain: Callable[[str], str] = lambda line: line) -> None:
    """Run a @hydra.main function as the command `program` (swin-train, swin-eval, swin-export):
    a composition error (a bad override, an unknown key or option) ends as one `<program>:
    error:` line through `report` and exit 2, a run dir or log file that cannot be written as one
    line and exit 1. `explain` may add what the program knows to a composition error's line."""
    # Hydra prints a composition error as a stack trace. With HYDRA_FULL_ERROR it raises
    # instead, and the error becomes one line here. A user who set HYDRA_FULL_ERROR=1 gets the trace.
    full_trace = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except (HydraException, OmegaConfBaseException) as exc:
        if full_trace:
            raise
        message = str(exc)
        cause = exc.__cause__ or exc.__context__
        if cause is not None and str(cause) not in message:
            message += "\n" + str(cause)
        report(f"{program}: error: {explain(one_line(message))}")
        sys.exit(2)
    except (OSError, ValueError) as exc:
        # Hydra cannot create the run dir (OSError), or cannot open the log file in a run dir
        # that exists but refuses writes (logging's ValueError, caused by the OSError).
        os_error = _os_error(exc)
        if full_trace or os_error is None:
            raise
        where = f" {os_error.filename}" if os_error.filename else ""
        report(f"{program}: error: cannot write{where}: {os_error.strerror or os_error}")
        sys.exit(1)


def main() -> None:
    if "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:
        from swin_cli.help import help_text

        print(help_text(program))
        return
    # Imported here, not at the top: printing help must not pay for importing torch.
    from swin_cli import distributed

    try:
        distributed.setup()
    except SwinCliError as exc:
        print_error(f"{program}: error: {exc}")
        sys.exit(1)
    if not distributed.is_main():
        # One run dir, one log: the other ranks write neither Hydra's files nor log lines.
        sys.argv += ["hydra.output_subdir=null", "hydra.job_logging.root.handlers=[]"]
    try:
        run_hydra_app(_hydra_main, program, print_error)
    finally:
        distributed.teardown()


def eval_main() -> None:
    """`swin-eval ckpt=...`: swin-train with mode=eval unless another mode is given."""
    global program
    program = "swin-eval"
    if not any(arg.startswith("mode=") for arg in sys.argv[1:]):
        sys.argv.insert(1, "mode=eval")
    main()


if __name__ == "__main__":
    main()
