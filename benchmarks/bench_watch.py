"""What `selfguard watch` costs a host: its CPU, and the latency it adds per connect, at ~10,000 connections/s.

Run (root): python benchmarks/bench_watch.py [--rate N] [--seconds S] [--rounds R]

In a network namespace of its own (unshare -n), a server process accepts and closes,
and a client process opens and closes TCP connections to it on loopback, paced to
--rate per second, timing each connect(). Each round runs the load once without and once
with `selfguard watch` running (the order alternates between rounds), and reads the
watcher's CPU time (utime + stime of its process) over the load. The watcher sees every
namespace, so it also sees this one. A benchmark, not a test: it prints numbers and fails
only if it cannot run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

LOAD = r"""
import json, os, socket, sys, time
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 5000))
server.listen(4096)
child = os.fork()
if child == 0:
    while True:
        conn, _ = server.accept()
        conn.close()
server.close()
times = []
interval = 1.0 / rate
start = time.perf_counter()
next_at = start
while time.perf_counter() - start < seconds:
    sock = socket.socket()
    t0 = time.perf_counter_ns()
    sock.connect(("127.0.0.1", 5000))
    times.append(time.perf_counter_ns() - t0)
    sock.close()
    next_at += interval
    pause = next_at - time.perf_counter()
    if pause > 0:
        time.sleep(pause)
elapsed = time.perf_counter() - start
os.kill(child, 9)
times.sort()
print(json.dumps({"rate": len(times) / elapsed, "median_us": times[len(times) // 2] / 1000,
                  "p99_us": times[int(len(times) * 0.99)] / 1000}))
"""

NAMESPACE = r"""
import subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
done = subprocess.run([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]], capture_output=True, text=True)
sys.stdout.write(done.stdout)
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(rate: float, seconds: float) -> dict[str, float]:
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", NAMESPACE, LOAD, str(rate), str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit(f"the load could not run: {done.stderr}")
    result: dict[str, float] = json.loads(done.stdout)
    return result


def watched(rate: float, seconds: float) -> dict[str, float]:
    watcher = subprocess.Popen(
        [sys.executable, "-m", "selfguard", "watch", "--json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert watcher.stderr is not None
    if "watching" not in watcher.stderr.readline():
        raise SystemExit("selfguard watch could not start")
    before, t0 = cpu_seconds(watcher.pid), time.monotonic()
    result = load(rate, seconds)
    result["watcher_cpu_pct"] = 100 * (cpu_seconds(watcher.pid) - before) / (time.monotonic() - t0)
    watcher.terminate()
    watcher.wait(timeout=30)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10_000, help="connections per second (default 10,000)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of load per run (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each without and with the watcher (default 3)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_watch: needs root (a network namespace, and the watcher itself)", file=sys.stderr)
        return 3
    runs: dict[str, list[dict[str, float]]] = {"not watching": [], "watching": []}
    for round_ in range(args.rounds):
        order = ["not watching", "watching"] if round_ % 2 == 0 else ["watching", "not watching"]
        for kind in order:
            runs[kind].append(watched(args.rate, args.seconds) if kind == "watching" else load(args.rate, args.seconds))
    target = f"a target of {args.rate:,.0f} connections/s"
    print(f"{args.rounds} rounds of {args.seconds:g} s at {target} (medians over rounds)")
    print(f"{'':14} {'conn/s':>8} {'connect median':>15} {'connect p99':>12} {'watcher CPU':>12}")
    for kind, results in runs.items():
        cpu = statistics.median(r["watcher_cpu_pct"] for r in results) if kind == "watching" else None
        print(
            f"{kind:14} {statistics.median(r['rate'] for r in results):8,.0f}"
            f" {statistics.median(r['median_us'] for r in results):12.1f} us"
            f" {statistics.median(r['p99_us'] for r in results):9.1f} us"
            + (f" {cpu:10.2f} %" if cpu is not None else f" {'-':>12}")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
