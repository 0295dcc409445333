"""Serve a 1,000-client lab over OpenSSH and drive every host once; prints figures.

    python bench/bench_ssh_serve.py [--clients 1000] [--threads 16] [--dir /tmp/bench-ssh-lab]

Figures: lab generation, serve start (keys, config, 1,000+ listening sockets),
then per host one connection (handshake + auth) and one command round trip
through the real lab shell, with a thread pool like the engine's forks.
"""
from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runner.connections.ssh import SSHConnection
from runner.lab.generator import generate
from runner.lab.serve import LabServer
from runner.model import Host


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--dir", default="/tmp/bench-ssh-lab")
    ns = ap.parse_args()
    d = Path(ns.dir)
    if d.exists():
        shutil.rmtree(d)
    t0 = time.perf_counter()
    generate(d, clients=ns.clients, users_per_client=1, contacts=5, seed=3)
    t1 = time.perf_counter()
    server = LabServer(d, port=random.randint(20000, 60000))
    server.start()
    t2 = time.perf_counter()
    print(f"generate {ns.clients} clients: {t1 - t0:.1f}s; serve start ({len(server.addresses)} addresses): "
          f"{t2 - t1:.2f}s")
    v = {"ssh_key_file": str(server.client_key), "ssh_known_hosts": str(server.known_hosts),
         "ssh_agent": False, "ssh_exit_code_trailer": True, "ssh_connect_timeout": 30}

    def one(name: str) -> tuple[float, float, bool]:
        conn = SSHConnection(Host(name=name, connection="ssh", address=server.addresses[name],
                                  port=server.port, user="root", vars=v))
        a = time.perf_counter()
        try:
            conn._ensure_transport()
            b = time.perf_counter()
            ok = conn.run("echo %COMPUTERNAME%").rc == 0
            c = time.perf_counter()
            return b - a, c - b, ok
        finally:
            conn.close()

    try:
        t3 = time.perf_counter()
        with ThreadPoolExecutor(ns.threads) as pool:
            results = list(pool.map(one, list(server.addresses)))
        t4 = time.perf_counter()
    finally:
        server.stop()
    connects = [r[0] for r in results]
    rtts = [r[1] for r in results]
    failed = sum(1 for r in results if not r[2])
    print(f"{len(results)} hosts over SSH with {ns.threads} threads: {t4 - t3:.1f}s "
          f"({len(results) / (t4 - t3):.1f} hosts/s), failed: {failed}")
    print(f"connect+auth median {statistics.median(connects) * 1000:.0f} ms, "
          f"p95 {sorted(connects)[int(len(connects) * .95)] * 1000:.0f} ms")
    print(f"command round trip median {statistics.median(rtts) * 1000:.0f} ms, "
          f"p95 {sorted(rtts)[int(len(rtts) * .95)] * 1000:.0f} ms")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
