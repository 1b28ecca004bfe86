"""Run one `ood-monitor` command in this process and print its peak memory.

    python scripts/peak_memory.py train vae --kind flow --data demo_data/images/train --out /tmp/m

Prints the peak resident set (ru_maxrss) and, sampled every 20 ms from /proc/self/status, the peaks of
anonymous memory (the process's own) and of file-backed pages (memory maps such as `train`'s frame spool,
which the kernel can reclaim). Linux only.
"""
from __future__ import annotations

import resource
import sys
import threading
import time

from ood_monitor.cli.main import main

FIELDS = ("RssAnon", "RssFile")


def watch(peak: dict[str, int], period_s: float = 0.02) -> None:
    while True:
        with open("/proc/self/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in peak:
                    peak[key] = max(peak[key], int(value.split()[0]))
        time.sleep(period_s)


if __name__ == "__main__":
    peaks = dict.fromkeys(FIELDS, 0)
    threading.Thread(target=watch, args=(peaks,), daemon=True).start()
    rc = main(sys.argv[1:])
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory: resident {maxrss_mb:.0f} MB, own (anonymous) {peaks['RssAnon'] / 1024:.0f} MB, "
          f"file-backed {peaks['RssFile'] / 1024:.0f} MB", flush=True)
    sys.exit(rc)
