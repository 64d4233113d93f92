"""What `selfguard watch` costs a host: its CPU, and the latency it adds per connect, at ~10,000 connections/s.

Run (root): python benchmarks/bench_watch.py [--rate N] [--seconds S] [--rounds R]

In a network namespace of its own (unshare -n), a small C program (below) accepts and
closes in one process, and in another opens and closes TCP connections to it on loopback,
paced to --rate per second, timing each connect(). A second load dials a closed port
instead, as a reconnect loop does while its server is down (each of its sockets reaches
the watcher once: see docs/operations.md). Each round runs a load once without and once
with `selfguard watch` running (the order alternates between rounds), and reads the
watcher's CPU time (utime + stime of its process) over the load. The watcher sees every
namespace, so it also sees this one. A benchmark, not a test: it prints numbers and fails
only if it cannot run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

LOAD_C = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* argv: rate seconds refused(0/1). Accepts on 127.0.0.1:5000 unless refused; dials it paced. */
int main(int argc, char **argv) {
    double rate = atof(argv[1]), seconds = atof(argv[2]);
    int refused = atoi(argv[3]);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(5000)};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    pid_t server = -1;
    if (!refused) {
        int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(s, (struct sockaddr *)&to, sizeof to) || listen(s, 4096)) return 1;
        server = fork();
        if (server == 0) for (;;) { int c = accept(s, NULL, NULL); if (c >= 0) close(c); }
        close(s);
    }
    size_t cap = (size_t)(rate * seconds) + 16, n = 0;
    double *lat = malloc(cap * sizeof *lat), start = now(), next = start;
    while (now() - start < seconds && n < cap) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        double t0 = now();
        connect(fd, (struct sockaddr *)&to, sizeof to);
        lat[n++] = now() - t0;
        close(fd);
        next += 1.0 / rate;
        double pause = next - now();
        if (pause > 0) { struct timespec p = {0, (long)(pause * 1e9)}; nanosleep(&p, NULL); }
    }
    double elapsed = now() - start;
    if (server > 0) kill(server, SIGKILL);
    qsort(lat, n, sizeof *lat, cmp);
    printf("{\"rate\": %.1f, \"median_us\": %.2f, \"p99_us\": %.2f}\n",
           n / elapsed, lat[n / 2] * 1e6, lat[n * 99 / 100] * 1e6);
    return 0;
}
"""

NAMESPACE = r"""
import subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stdout.write(done.stdout)
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(binary: str, rate: float, seconds: float, refused: bool) -> dict[str, float]:
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", NAMESPACE, binary, str(rate), str(seconds), str(int(refused))],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit(f"the load could not run: {done.stderr}")
    result: dict[str, float] = json.loads(done.stdout)
    return result


def watched(binary: str, rate: float, seconds: float, refused: bool) -> dict[str, float]:
    watcher = subprocess.Popen(
        [sys.executable, "-m", "selfguard", "watch", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert watcher.stderr is not None and watcher.stdout is not None
    if "watching" not in watcher.stderr.readline():
        raise SystemExit("selfguard watch could not start")
    # Read its output while it runs: a pipe left full would block the watcher's writes,
    # and the benchmark would measure a stalled watcher.
    lines: list[str] = []
    out, err = watcher.stdout, watcher.stderr
    readers = [
        threading.Thread(target=lambda: lines.extend(out), daemon=True),
        threading.Thread(target=err.read, daemon=True),
    ]
    for reader in readers:
        reader.start()
    before, t0 = cpu_seconds(watcher.pid), time.monotonic()
    result = load(binary, rate, seconds, refused)
    used, elapsed = cpu_seconds(watcher.pid) - before, time.monotonic() - t0
    watcher.terminate()
    watcher.wait(timeout=30)
    for reader in readers:
        reader.join(timeout=30)
    events = json.loads(lines[-1])["events"]
    result["watcher_cpu_pct"] = 100 * used / elapsed
    result["events_per_s"] = events / elapsed
    result["us_per_event"] = 1e6 * used / events if events else 0.0
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
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        print("bench_watch: needs a C compiler for the load (cc or gcc)", file=sys.stderr)
        return 3
    with tempfile.TemporaryDirectory() as tmp:
        source, binary = Path(tmp, "load.c"), str(Path(tmp, "load"))
        source.write_text(LOAD_C)
        subprocess.run([compiler, "-O2", "-o", binary, str(source)], check=True)
        target = f"a target of {args.rate:,.0f} connections/s"
        print(f"{args.rounds} rounds of {args.seconds:g} s at {target}, each without and with the watcher")
        print(f"(medians over rounds; {os.cpu_count()} CPUs, shared)")
        for refused, title in ((False, "connect + accept + close"), (True, "refused connects (a reconnect loop)")):
            runs: dict[str, list[dict[str, float]]] = {"not watching": [], "watching": []}
            for round_ in range(args.rounds):
                order = ["not watching", "watching"] if round_ % 2 == 0 else ["watching", "not watching"]
                for kind in order:
                    run = watched if kind == "watching" else load
                    runs[kind].append(run(binary, args.rate, args.seconds, refused))
            print(f"\n{title}")
            print(f"{'':14} {'conn/s':>8} {'connect median':>15} {'connect p99':>12} {'watcher CPU':>16}  events")
            for kind, results in runs.items():
                cpu = statistics.median(r["watcher_cpu_pct"] for r in results) if kind == "watching" else None
                print(
                    f"{kind:14} {statistics.median(r['rate'] for r in results):8,.0f}"
                    f" {statistics.median(r['median_us'] for r in results):12.1f} us"
                    f" {statistics.median(r['p99_us'] for r in results):9.1f} us"
                    + (f" {cpu:8.2f} % of a CPU" if cpu is not None else f" {'-':>16}")
                    + (
                        f"  {statistics.median(r['events_per_s'] for r in results):,.0f}/s read, "
                        f"{statistics.median(r['us_per_event'] for r in results):.0f} us of CPU each"
                        if kind == "watching"
                        else ""
                    )
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
