"""Side-by-side cost of the native guard: a C loop of connects timed without and with the library preloaded.

Run: python benchmarks/bench_native.py [--rounds N] [--scale X] [--no-namespace]

A small C program (below) times N iterations of one case with clock_gettime and prints
nanoseconds per iteration. Each round runs every case without and then with
LD_PRELOAD=libselfguard_preload.so (the order alternates between rounds, so cold caches
favour neither), as separate processes. The table shows, per case, the median time per
iteration of each, the median over rounds of the with/without ratio of the same round,
and the spread of that ratio (lowest-highest). As root, it runs in a network namespace of
its own (unshare -n), away from other programs' sockets, with the closed port reserved so
no round meets a real self-connect. A benchmark, not a test: it prints numbers and fails
only if it cannot run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from selfguard import _native
from selfguard._kernel import read_ephemeral_range

LOOP_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in to(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    return a;
}
static void close_rst(int fd) {
    struct linger l = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(fd);
}
/* One iteration of CASE; port: the listener's or the closed one's. */
static void once(const char *c, int srv, struct sockaddr_in *a) {
    if (!strcmp(c, "cycle") || !strcmp(c, "so_error_cycle")) {
        int nb = !strcmp(c, "so_error_cycle");
        int fd = socket(AF_INET, SOCK_STREAM | (nb ? SOCK_NONBLOCK : 0), 0);
        if (connect(fd, (struct sockaddr *)a, sizeof *a) != 0) {
            if (!nb || errno != EINPROGRESS) { perror("connect"); exit(1); }
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            poll(&p, 1, 5000);
            int err; socklen_t len = sizeof err;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err) { fprintf(stderr, "SO_ERROR %d\n", err); exit(1); }
        }
        int c2 = accept(srv, NULL, NULL);
        close_rst(fd);
        close(c2);
    } else if (!strcmp(c, "refused")) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)a, sizeof *a) == 0 || errno != ECONNREFUSED) { perror("refused"); exit(1); }
        close(fd);
    } else if (!strcmp(c, "udp")) {
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        connect(fd, (struct sockaddr *)a, sizeof *a);
        close(fd);
    }
}
int main(int argc, char **argv) {
    const char *c = argv[1];
    int port = atoi(argv[2]), n = atoi(argv[3]), srv = -1;
    struct sockaddr_in a = to(port);
    if (strstr(c, "cycle")) {
        srv = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(srv, (struct sockaddr *)&a, sizeof a) || listen(srv, 128)) { perror("listen"); return 1; }
    }
    for (int i = 0; i < n / 10 + 1; i++) once(c, srv, &a);  /* warm up */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < n; i++) once(c, srv, &a);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.1f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n);
    return 0;
}
"""


def cases(low: int, high: int) -> list[tuple[str, str, int, int]]:
    """(label, case, port, iterations): ports chosen inside and outside the range."""
    middle = low + (high - low) // 2
    inside = middle + (middle - low) % 2  # connect()'s parity: nothing else here binds it
    closed = inside + 11  # bind()'s parity: connect() never picks it on an idle host
    outside = max(1024, low - 1000)
    return [
        (f"connect+accept+close, port inside range ({inside})", "cycle", inside, 20000),
        (f"connect+accept+close, port outside range ({outside})", "cycle", outside, 20000),
        (f"non-blocking connect+poll+SO_ERROR+accept, inside ({inside + 2})", "so_error_cycle", inside + 2, 20000),
        (f"refused connect, port inside range ({closed})", "refused", closed, 40000),
        (f"refused connect, port outside range ({outside + 1})", "refused", outside + 1, 40000),
        (f"UDP socket+connect+close, inside range ({closed})", "udp", closed, 60000),
    ]


def run(program: Path, case: str, port: int, iterations: int, preload: bool) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LD_PRELOAD", "SELFGUARD"))}
    if preload:
        env["LD_PRELOAD"] = _native.library_path()
    done = subprocess.run(
        [str(program), case, str(port), str(iterations)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise SystemExit(f"bench_native: {case} failed: {done.stderr.strip()}")
    return float(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply iteration counts")
    parser.add_argument("--no-namespace", action="store_true", help="run on this host's loopback, even as root")
    parser.add_argument("--inside-namespace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    try:
        _native.library_path()
    except _native.Unavailable as exc:
        raise SystemExit(f"bench_native: {exc}") from None
    compiler = shutil.which(os.environ.get("CC", "") or "cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("bench_native: needs a C compiler (cc or gcc) for its loop")
    can_isolate = os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip")
    if can_isolate and not args.no_namespace and not args.inside_namespace:
        argv = [sys.executable, *sys.argv, "--inside-namespace"]
        raise SystemExit(subprocess.run(["unshare", "-n", *argv], check=False).returncode)
    low, high = read_ephemeral_range()
    chosen = cases(low, high)
    if args.inside_namespace:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        with open("/proc/sys/net/ipv4/ip_local_reserved_ports", "w") as f:
            f.write(",".join(str(port) for _, _, port, _ in chosen if low <= port <= high))

    with tempfile.TemporaryDirectory() as tmp:
        source, program = Path(tmp) / "loop.c", Path(tmp) / "loop"
        source.write_text(LOOP_C)
        subprocess.run([compiler, "-O2", "-o", str(program), str(source)], check=True)
        times: dict[str, dict[bool, list[float]]] = {label: {False: [], True: []} for label, *_ in chosen}
        for round_number in range(args.rounds):
            order = (False, True) if round_number % 2 == 0 else (True, False)
            for label, case, port, iterations in chosen:
                count = max(1, int(iterations * args.scale))
                for preload in order:
                    times[label][preload].append(run(program, case, port, count, preload))

    where = "in a network namespace of its own" if args.inside_namespace else "on this host's loopback"
    print(
        f"native guard {_native.library_path()}\nephemeral range {low}-{high}, {where}, {args.rounds} rounds; "
        "times are medians per iteration; ratio: median (lowest-highest) over rounds of with/without\n"
    )
    print(f"{'case':<64} {'without':>10} {'with':>10} {'ratio':>24}")
    for label, by in times.items():
        ratios = [w / wo for w, wo in zip(by[True], by[False])]
        without, with_ = statistics.median(by[False]) / 1000, statistics.median(by[True]) / 1000
        spread = f"{statistics.median(ratios):.3f}x ({min(ratios):.3f}-{max(ratios):.3f})"
        print(f"{label:<64} {without:>8.2f}us {with_:>8.2f}us {spread:>24}")


if __name__ == "__main__":
    main()
