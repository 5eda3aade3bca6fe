"""Peak memory of a command and all its child processes (data loader workers included).

Samples /proc every 0.1 s and keeps the peak of the summed RSS and of the summed PSS over the
process tree. Forked workers share the parent's pages until they write them, so summed RSS
counts shared pages once per process (an upper bound) and PSS splits them between the sharers
(what the tree really costs the machine).

    python benchmarks/peak_memory.py -- swin-train data=imagefolder data.root=/tmp/large ...
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB, 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = {line.split(":")[0]: int(line.split()[1]) for line in f if line.split()[-1] == "kB"}
        return fields.get("Rss", 0), fields.get("Pss", 0)
    except (OSError, ValueError):
        return 0, 0


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    start = time.perf_counter()
    proc = subprocess.Popen(argv)
    peak_rss = peak_pss = peak_procs = peak_main = peak_child = 0
    while proc.poll() is None:
        pids = tree(proc.pid)
        sums = [memory_kb(p) for p in pids]
        peak_rss = max(peak_rss, sum(r for r, _ in sums))
        peak_pss = max(peak_pss, sum(p for _, p in sums))
        peak_procs = max(peak_procs, len(pids))
        # The command's own process (the first below a wrapper such as a console script).
        own = max(sums, key=lambda m: m[1], default=(0, 0))[1]
        peak_main = max(peak_main, own)
        peak_child = max([peak_child] + [p for _, p in sums if p != own])
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    print(f"peak memory of the process tree: RSS {peak_rss / 2**20:.2f} GiB, PSS {peak_pss / 2**20:.2f} GiB "
          f"(up to {peak_procs} processes; largest process PSS {peak_main / 2**20:.2f} GiB, largest other "
          f"{peak_child / 2**20:.2f} GiB), {seconds:.0f} s, exit {proc.returncode}", flush=True)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
