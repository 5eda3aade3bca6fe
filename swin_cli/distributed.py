"""Multi-process training under torchrun: one process per GPU (or CPU slot, with gloo).

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; with WORLD_SIZE > 1 swin-train joins the process
group before Hydra starts, so that rank 0 can pick the run dir's timestamp and hand it to
the others (one run dir per run, not one per rank). Every rank trains on its own slice of
each global batch; only rank 0 writes logs, metrics and checkpoints.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional, TypeVar

import torch
import torch.distributed as dist

from swin_cli.errors import SwinCliError
from swin_cli.text import plural

# Read by conf/config.yaml's run dir, so every rank resolves the same folder.
STAMP_VARIABLE = "SWIN_CLI_RUN_STAMP"

T = TypeVar("T")


def requested() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if initialised() else 0


def world_size() -> int:
    return dist.get_world_size() if initialised() else 1


def is_main() -> bool:
    return rank() == 0


def reports_errors() -> bool:
    """Whether this process prints error lines: rank 0 only, so that a mistake every rank makes
    is reported once (the others exit with the same code, silently). Read from torchrun's
    RANK, so it holds before the process group exists and after it is gone."""
    return int(os.environ.get("RANK", "0")) == 0


def local_device() -> Optional[torch.device]:
    """This rank's GPU when running distributed on CUDA."""
    if initialised() and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return None


def setup() -> None:
    """Join the process group and agree on the run dir's timestamp (rank 0's clock)."""
    if not requested() or initialised():
        return
    if torch.cuda.is_available():
        # Every rank checks the node's process count, not its own index, so that all of them
        # stop here: rank 0 would otherwise wait for the others in init_process_group.
        per_node, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count()
        if per_node > gpus:
            raise SwinCliError(f"torchrun started {plural(per_node, 'process')} on this node but it has "
                               f"{gpus} GPU{'' if gpus == 1 else 's'}: use --nproc_per_node={gpus}")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    stamp = [time.strftime("%Y-%m-%d/%H-%M-%S")]
    dist.broadcast_object_list(stamp, src=0)
    os.environ[STAMP_VARIABLE] = stamp[0]


def teardown() -> None:
    if initialised():
        dist.destroy_process_group()


def sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (a no-op in a single process)."""
    if initialised():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, rank 0's first, as one tensor on every rank (the tensor itself in a
    single process). Ranks may hold different numbers of rows (each evaluates every world-th
    image): all_gather needs equal shapes, so each pads to the longest and the padding is cut."""
    if not initialised():
        return tensor
    count = torch.tensor([len(tensor)], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    lengths = [int(c) for c in counts]
    padded = torch.zeros((max(lengths), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[:len(tensor)] = tensor
    parts = [torch.empty_like(padded) for _ in lengths]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, lengths)])


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if `flag` is true on any rank, so all ranks take the same branch."""
    if not initialised():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    if initialised():
        dist.barrier()


def computed_once(compute: Callable[[], T]) -> T:
    """`compute()` run on rank 0 only, its result sent to every other rank (which wait for it).

    For work whose answer is the same on every rank but costs real time, such as the channel
    statistics of a streamed split: one rank pays for it instead of all of them. In a single
    process it is just `compute()`. The result must be picklable. An error on rank 0 is sent
    too and raised on every rank, which would otherwise wait for an answer that never comes."""
    if not initialised():
        return compute()
    box: list[Any] = [None]
    if is_main():
        try:
            box = [(True, compute())]
        except Exception as exc:
            box = [(False, exc)]
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value
