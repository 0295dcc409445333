"""Benchmark: how long `runner lab init` takes for small and large labs.

Usage: python bench/bench_lab_init.py [CLIENTS ...]   (default: 50 1000 10000)
Prints seconds, users and contacts per lab; the target is ~1 s for 50
clients and well under a minute for 10,000.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from runner.lab.generator import generate


def main(sizes: list[int]) -> None:
    for n in sizes:
        d = Path(tempfile.mkdtemp(prefix="bench-lab-")) / "lab"
        t0 = time.perf_counter()
        generate(d, clients=n, users_per_client=2, contacts=20, seed=1)
        dt = time.perf_counter() - t0
        man = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
        contacts = sum(len(m["contacts"]) for u in man["users"].values() for m in u["machines"].values())
        print(f"{n:>6} clients  {len(man['users']):>6} users  {contacts:>8} contact entries  {dt:7.2f} s")
        shutil.rmtree(d.parent)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [50, 1000, 10000])
