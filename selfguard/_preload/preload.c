/*
 * selfguard's native guard: an LD_PRELOAD library that keeps TCP clients written in C
 * (libpq, libcurl, libuv/Node, the JVM, ...) from connecting to themselves.
 *
 * `selfguard run --native -- CMD` puts it first in LD_PRELOAD. It interposes the libc
 * calls a connect goes through and applies the Python guard's policy (selfguard/_policy.py)
 * with the same SELFGUARD* settings:
 *
 *   connect()                 a blocking connect that connected the socket to itself is
 *                             reset in place (connect() with AF_UNSPEC: RST, the port is
 *                             free at once, the fd and its options are kept) and connected
 *                             again, at most `retries` more times, then fails with
 *                             ECONNREFUSED. A spurious EADDRNOTAVAIL on a kernel-picked
 *                             port is retried within the same budget. A non-blocking
 *                             connect completed by a second connect() that returns 0 is
 *                             checked with no retry (nobody waits to connect again).
 *   getsockopt(SO_ERROR)      a non-blocking connect completed out of sight: reset, and
 *                             SO_ERROR reads ECONNREFUSED.
 *   sendto/sendmsg            with MSG_FASTOPEN: a TCP Fast Open connect, like connect().
 *   bind                      remembers the sockets bound to an explicit port, by inode:
 *                             never touched (the port was the user's choice, even for a
 *                             deliberate self-connect), through whichever fd they are used.
 *   close, socket, accept,    remember, per fd number, what kind of socket it is: a hint
 *   dup*, fcntl(F_DUPFD)      that saves system calls, never trusted where a self-connect
 *                             is at stake (the kernel is asked then).
 *
 * Only connects to a port inside net.ipv4.ip_local_port_range (cached, re-read at most
 * once a second, the cache only widens) are ever examined, and only TCP sockets over
 * AF_INET/AF_INET6 are ever reset. The kernel's own result is returned on every other
 * path, with errno as the kernel left it: the wrappers call the real function first
 * (except for a socket they did not see created, about to dial: see learn_before_dialling)
 * and never read the caller's arguments before the kernel has accepted them.
 *
 * Thread- and async-signal-safe: no locks, no allocation after start-up (per-fd state is
 * a static byte array, counters are relaxed atomics), and its own calls are raw system
 * calls (or the vDSO's clock), which no other preload can interpose. Fails open: when one
 * of its own calls fails, the original call's result stands and stats()["faults"] counts it.
 *
 * Needs nothing from Python. Python reads the counters, when the library is loaded in
 * its process, through selfguard_native_stats() (selfguard/_native.py).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifndef MSG_FASTOPEN
#define MSG_FASTOPEN 0x20000000
#endif
#ifndef SO_PROTOCOL
#define SO_PROTOCOL 38
#endif

#define EXPORT __attribute__((visibility("default")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

#define SELFGUARD_NATIVE_VERSION "2"

/* ---------------------------------------------------------------- counters */

/* The counters of selfguard.stats(), by name, in one list: the enum and the names the
 * report and selfguard_native_counter_names() give come from it, so they cannot part. */
#define COUNTER_LIST(X) X(checked) X(self_connects) X(retries) X(gave_up) X(relented) X(addrnotavail) X(faults)
#define COUNTER_ENUM(name) C_##name,
#define COUNTER_NAME(name) #name " "
enum { COUNTER_LIST(COUNTER_ENUM) N_COUNTERS };
static const char COUNTER_NAMES_SPACED[] = COUNTER_LIST(COUNTER_NAME);
_Static_assert(N_COUNTERS == 7 && C_checked == 0 && C_faults == 6,
               "the names of selfguard.stats() (selfguard/_events.py), in its order: update both together");
static _Atomic uint64_t counters[N_COUNTERS];

static inline void count(int which) { atomic_fetch_add_explicit(&counters[which], 1, memory_order_relaxed); }

/* --------------------------------------------------------------- settings */

enum { MODE_ENFORCE, MODE_RELENT, MODE_OBSERVE };
static const char *const MODE_NAMES[] = {"enforce", "relent", "observe"};
#define MAX_RETRIES 100

/* Written once by configure(), before init_state becomes READY (release); read after. */
static int opt_enabled = 1;
static int opt_mode = MODE_ENFORCE;
static int opt_retries = 2;
static int opt_retry_addrnotavail = 1;

enum { INIT_NONE, INIT_RUNNING, INIT_READY };
static _Atomic int init_state = INIT_NONE;

/* -------------------------------------------------- the library's own calls */

/* Raw system calls: another preload's wrapper (a libfaketime-style clock that takes a
 * lock, a logging getsockname) never runs inside this library. They set errno on
 * failure like libc's; every caller puts the caller's errno back. */
static inline int sys_getsockname(int fd, struct sockaddr_storage *ss, socklen_t *len) {
    *len = sizeof *ss;
    return (int)syscall(SYS_getsockname, fd, (struct sockaddr *)ss, len);
}
static inline int sys_getpeername(int fd, struct sockaddr_storage *ss, socklen_t *len) {
    *len = sizeof *ss;
    return (int)syscall(SYS_getpeername, fd, (struct sockaddr *)ss, len);
}
static inline int sys_getsockopt_int(int fd, int level, int name, int *value) {
    socklen_t len = sizeof *value;
    *value = 0;
    return (int)syscall(SYS_getsockopt, fd, level, name, value, &len);
}
static inline int sys_connect(int fd, const struct sockaddr *addr, socklen_t len) {
    return (int)syscall(SYS_connect, fd, addr, len);
}
static inline int sys_fcntl(int fd, int cmd) { return (int)syscall(SYS_fcntl, fd, cmd, 0); }
static inline void sys_write_all(int fd, const char *text, size_t n) {
    /* One write: lines of concurrent processes stay whole (stderr, an O_APPEND file). */
    long ignored = syscall(SYS_write, fd, text, n);
    (void)ignored;
}
static uint64_t socket_inode(int fd) {
    struct stat st;
#ifdef SYS_fstat
    if (syscall(SYS_fstat, fd, &st) != 0) return 0;
#else
    if (syscall(SYS_newfstatat, fd, "", &st, AT_EMPTY_PATH) != 0) return 0;
#endif
    return S_ISSOCK(st.st_mode) ? (uint64_t)st.st_ino : 0;
}

/* May a line go to fd 2? Not when it is a TCP or UDP socket: a daemon that closed its
 * stderr may have a connection there by now (a line written into it would be data for the
 * peer). A unix socket (systemd's journal), a pipe, a file or a terminal is fine. */
static int stderr_takes_lines(void) {
    struct stat st;
#ifdef SYS_fstat
    if (syscall(SYS_fstat, 2, &st) != 0) return 0;
#else
    if (syscall(SYS_newfstatat, 2, "", &st, AT_EMPTY_PATH) != 0) return 0;
#endif
    if (!S_ISSOCK(st.st_mode)) return 1;
    int domain;
    return sys_getsockopt_int(2, SOL_SOCKET, SO_DOMAIN, &domain) == 0 && domain != AF_INET && domain != AF_INET6;
}

/* The vDSO's clock_gettime, found at start-up (no system call, and no other library can
 * interpose it); the raw system call where there is none. */
typedef int (*clock_fn)(clockid_t, struct timespec *);
static clock_fn vdso_clock_gettime;

static void find_vdso_clock(void) {
    void *vdso = dlopen("linux-vdso.so.1", RTLD_LAZY | RTLD_LOCAL | RTLD_NOLOAD);
    if (vdso == NULL) return;
    static const char *const NAMES[] = {"__vdso_clock_gettime", "__kernel_clock_gettime"};
    for (unsigned i = 0; i < sizeof NAMES / sizeof NAMES[0] && vdso_clock_gettime == NULL; i++)
        *(void **)&vdso_clock_gettime = dlsym(vdso, NAMES[i]);
}

static int64_t clock_ns(clockid_t clock) {
    struct timespec ts;
    int failed = vdso_clock_gettime ? vdso_clock_gettime(clock, &ts) : (int)syscall(SYS_clock_gettime, clock, &ts);
    if (failed != 0) return 0;
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec; /* 292 years of nanoseconds fit */
}

static inline int64_t monotonic_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

/* -------------------------------------------------------- the real calls */

typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*getsockopt_fn)(int, int, int, void *, socklen_t *);
typedef ssize_t (*sendto_fn)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
typedef ssize_t (*sendmsg_fn)(int, const struct msghdr *, int);
typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*close_fn)(int);
typedef int (*socket_fn)(int, int, int);
typedef int (*socketpair_fn)(int, int, int, int *);
typedef int (*accept_fn)(int, struct sockaddr *, socklen_t *);
typedef int (*accept4_fn)(int, struct sockaddr *, socklen_t *, int);
typedef int (*dup_fn)(int);
typedef int (*dup2_fn)(int, int);
typedef int (*dup3_fn)(int, int, int);
typedef int (*fcntl_fn)(int, int, ...);
typedef fcntl_fn fcntl64_fn;

static void *_Atomic real_connect, *_Atomic real_getsockopt, *_Atomic real_sendto, *_Atomic real_sendmsg,
    *_Atomic real_bind, *_Atomic real_close, *_Atomic real_socket, *_Atomic real_socketpair, *_Atomic real_accept,
    *_Atomic real_accept4, *_Atomic real_dup, *_Atomic real_dup2, *_Atomic real_dup3, *_Atomic real_fcntl,
    *_Atomic real_fcntl64;

/* The next definition of *name* after this library (libc's). Resolved at start-up; a call
 * that comes before (from another library's constructor) resolves it here, once. */
static void *resolve(void *_Atomic *slot, const char *name) {
    void *fn = atomic_load_explicit(slot, memory_order_acquire);
    if (UNLIKELY(fn == NULL)) {
        int saved = errno;
        fn = dlsym(RTLD_NEXT, name);
        errno = saved;
        atomic_store_explicit(slot, fn, memory_order_release);
    }
    return fn;
}

#define REAL(name) ((name##_fn)resolve(&real_##name, #name))
/* dlsym() cannot fail for these in a dynamically linked program; if it ever did, the call
 * fails as a missing system call would, rather than crashing. */
#define REAL_OR_FAIL(name, fail)         \
    name##_fn next_##name = REAL(name);  \
    if (UNLIKELY(next_##name == NULL)) { \
        errno = ENOSYS;                  \
        return fail;                     \
    }

/* ------------------------------------------------------------- per-fd state */

/* One byte per fd number, below TRACKED_FDS: 1 MiB of zero-initialised memory, of which
 * only the pages of fd numbers in use are ever touched. Sockets on higher fds are passed
 * through unguarded.
 *
 * A hint, keyed to a number: a vfork() child's dup2()/close() write the parent's table,
 * and an fd closed out of sight (close_range(), a raw SYS_close) may be reused. So it
 * only decides what is cheap to skip; whether a socket that met itself is TCP, and
 * whether it was bound on purpose, is asked of the kernel. */
#define TRACKED_FDS (1 << 20)
enum {
    FD_KNOWN = 1,   /* created through socket()/accept()/... after this library loaded, or learnt */
    FD_TCP = 2,     /* ... as an AF_INET/AF_INET6 SOCK_STREAM socket of protocol TCP */
    FD_BOUND = 4,   /* bound to an explicit port through this fd (for selfguard_native_fd_flags) */
    FD_HANDED = 8,  /* a self-connected socket handed back (observe, relent, fault): reported once */
    FD_CHECKED = 16, /* its connection was examined (counted in "checked"): SO_ERROR reads skip it */
};
/* The states a connection has, not the socket: cleared when the fd starts a new connect. */
#define FD_PER_CONNECTION (FD_HANDED | FD_CHECKED)
static _Atomic uint8_t fd_states[TRACKED_FDS];

static inline int tracked(int fd) { return (unsigned)fd < TRACKED_FDS; }
static inline uint8_t fd_load(int fd) { return atomic_load_explicit(&fd_states[fd], memory_order_relaxed); }
static inline void fd_put(int fd, uint8_t value) {
    if (fd_load(fd) != value) atomic_store_explicit(&fd_states[fd], value, memory_order_relaxed);
}
static inline void fd_add(int fd, uint8_t flags) {
    if ((fd_load(fd) & flags) != flags) atomic_fetch_or_explicit(&fd_states[fd], flags, memory_order_relaxed);
}
static inline void fd_clear(int fd, uint8_t flags) {
    if (fd_load(fd) & flags) atomic_fetch_and_explicit(&fd_states[fd], (uint8_t)~flags, memory_order_relaxed);
}

/* ------------------------------------------------ sockets bound on purpose */

/* The inodes of the last BOUND_RING sockets bound to an explicit port (or found with a
 * port before they dialled). A socket's inode is the same through dup(), fcntl(F_DUPFD),
 * SCM_RIGHTS and exec, so a socket bound through one fd and dialled or read through
 * another is still known. Written at bind() (one fstat), read only when a socket met
 * itself or got EADDRNOTAVAIL: the rare path. Oldest entries are overwritten first. */
#define BOUND_RING 4096
static _Atomic uint64_t bound_inodes[BOUND_RING];
static _Atomic uint32_t bound_next;

static void remember_bound(int fd) {
    uint64_t inode = socket_inode(fd);
    if (inode == 0) return;
    uint32_t slot = atomic_fetch_add_explicit(&bound_next, 1, memory_order_relaxed) % BOUND_RING;
    atomic_store_explicit(&bound_inodes[slot], inode, memory_order_relaxed);
}

/* Was the socket behind *fd* bound to an explicit port (by this process, through any fd)? */
static int bound_on_purpose(int fd) {
    uint64_t inode = socket_inode(fd);
    if (inode == 0) return 0;
    for (unsigned i = 0; i < BOUND_RING; i++)
        if (atomic_load_explicit(&bound_inodes[i], memory_order_relaxed) == inode) return 1;
    return 0;
}

/* --------------------------------------------------------- small helpers */

/* The port an address the kernel accepted dials (or binds), or 0 for anything not INET.
 * AF_UNSPEC counts as AF_INET: Linux binds an AF_INET socket to it (INADDR_ANY). */
static unsigned address_port(const struct sockaddr *addr, socklen_t len) {
    if (addr == NULL || len < (socklen_t)sizeof(sa_family_t)) return 0;
    if ((addr->sa_family == AF_INET || addr->sa_family == AF_UNSPEC) && len >= (socklen_t)sizeof(struct sockaddr_in))
        return ntohs(((const struct sockaddr_in *)addr)->sin_port);
    if (addr->sa_family == AF_INET6 && len >= (socklen_t)offsetof(struct sockaddr_in6, sin6_scope_id))
        return ntohs(((const struct sockaddr_in6 *)addr)->sin6_port);
    return 0;
}

static unsigned local_port(const struct sockaddr_storage *ss) {
    if (ss->ss_family == AF_INET) return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    if (ss->ss_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return 0;
}

/* Host and port of both ends alike (IPv6 addresses also carry flowinfo and a scope). */
static int same_endpoint(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family) return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
    return 0;
}

/* ------------------------------------------------------- the ephemeral range */

#define RANGE_FILE "/proc/sys/net/ipv4/ip_local_port_range"
#define RANGE_REFRESH_NS 1000000000LL
static _Atomic uint32_t range_packed;  /* low | high << 16; 0 until first read */
static _Atomic int64_t range_read_at;  /* when it was last read, or last failed to be */

static int read_range(unsigned *low, unsigned *high) {
    long fd = syscall(SYS_openat, AT_FDCWD, RANGE_FILE, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    char buf[64];
    long n = syscall(SYS_read, fd, buf, sizeof buf - 1);
    syscall(SYS_close, fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    char *end;
    unsigned long a = strtoul(buf, &end, 10);
    if (end == buf) return -1;
    char *start = end;
    unsigned long b = strtoul(start, &end, 10);
    if (end == start || a == 0 || a > b || b > 65535) return -1;
    *low = (unsigned)a;
    *high = (unsigned)b;
    return 0;
}

/* Is *port* inside the ephemeral range? The cached range answers at once for ports inside
 * it; only a port outside pays for the clock, and the file is re-read when the cache is
 * more than a second old. The cache only widens: a thread that setns()'d into another
 * network namespace reads that namespace's range, and must not narrow this one's.
 *
 * A read that fails (EMFILE at the fd limit, under load) costs one fault and counts this
 * port as inside (fail open towards checking); it is not remembered: the cache stays as
 * it was, and the next read, a second later, restores the range. */
static int in_range(unsigned port) {
    uint32_t range = atomic_load_explicit(&range_packed, memory_order_acquire);
    if (range && port >= (range & 0xffff) && port <= (range >> 16)) return 1;
    int64_t now = monotonic_ns();
    int64_t last = atomic_load_explicit(&range_read_at, memory_order_relaxed);
    if (last && now - last <= RANGE_REFRESH_NS) return range == 0; /* fresh; none read yet: check */
    atomic_store_explicit(&range_read_at, now ? now : 1, memory_order_relaxed);
    unsigned low, high;
    if (read_range(&low, &high) != 0) {
        count(C_faults);
        return 1;
    }
    uint32_t merged;
    do {
        unsigned l = low, h = high;
        if (range) {
            if ((range & 0xffff) < l) l = range & 0xffff;
            if ((range >> 16) > h) h = range >> 16;
        }
        merged = l | (uint32_t)h << 16;
    } while (!atomic_compare_exchange_weak_explicit(&range_packed, &range, merged, memory_order_acq_rel,
                                                    memory_order_acquire));
    return port >= (merged & 0xffff) && port <= (merged >> 16);
}

/* -------------------------------------------------------------- detection */

/* MPTCP (curl --mptcp, mptcpize, Go's MPTCP) is a TCP connection underneath: its first
 * subflow self-connects like TCP, and connect(AF_UNSPEC) resets it in place the same way
 * (mptcp_disconnect). Not every libc defines the number. */
#ifndef IPPROTO_MPTCP
#define IPPROTO_MPTCP 262
#endif

/* Ask the kernel whether *fd* is a TCP (or MPTCP) socket over AF_INET/AF_INET6. SCTP's
 * one-to-one sockets are SOCK_STREAM too: the protocol tells them apart. */
static int kernel_says_tcp(int fd) {
    int type, domain, protocol;
    if (sys_getsockopt_int(fd, SOL_SOCKET, SO_TYPE, &type) != 0 || type != SOCK_STREAM) return 0;
    if (sys_getsockopt_int(fd, SOL_SOCKET, SO_DOMAIN, &domain) != 0 || (domain != AF_INET && domain != AF_INET6))
        return 0;
    return sys_getsockopt_int(fd, SOL_SOCKET, SO_PROTOCOL, &protocol) == 0 &&
           (protocol == IPPROTO_TCP || protocol == IPPROTO_MPTCP);
}

/* Learn (once per fd) what a socket this library did not see created is. */
static int learn_kind(int fd) {
    int tcp = kernel_says_tcp(fd);
    fd_add(fd, (uint8_t)(FD_KNOWN | (tcp ? FD_TCP : 0)));
    return tcp;
}

/* The remembered kind (learnt when unknown): a hint, see fd_states. */
static inline int hinted_tcp(int fd) {
    uint8_t st = fd_load(fd);
    return (st & FD_KNOWN) ? (st & FD_TCP) != 0 : learn_kind(fd);
}

/* A socket this library did not see created (inherited, received with SCM_RIGHTS), about
 * to dial: learn its kind, and whether it already has a port -- bound before it got here,
 * maybe on purpose. Such a socket is left alone, as one bound to an explicit port is (a
 * socket bound to port 0 elsewhere is then left alone too). Runs before the real call, so
 * it must not change errno; once per fd. */
static void learn_before_dialling(int fd) {
    int saved = errno;
    if (learn_kind(fd)) {
        struct sockaddr_storage local;
        socklen_t len;
        if (sys_getsockname(fd, &local, &len) == 0 && local_port(&local) != 0) {
            fd_add(fd, FD_BOUND);
            remember_bound(fd);
        }
    }
    errno = saved;
}

/* *local* is the local end of *fd*, already known to have the port it dialled (or a port
 * in range): is the peer that same host and port, on a TCP socket (asked of the kernel,
 * whatever the hint says) that was not bound on purpose? */
static int peer_is_self(int fd, const struct sockaddr_storage *local) {
    struct sockaddr_storage peer;
    socklen_t len;
    if (sys_getpeername(fd, &peer, &len) != 0) return 0; /* ENOTCONN: not connected */
    return same_endpoint(local, &peer) && kernel_says_tcp(fd) && !bound_on_purpose(fd);
}

/* After a connect to *port* succeeded: is the socket connected to itself? Counts the check
 * on a socket hinted TCP. A socket hinted otherwise costs the same getsockname(), and the
 * kernel is asked only if its port is the dialled one. */
static int connected_to_itself(int fd, unsigned port) {
    int hint = hinted_tcp(fd);
    struct sockaddr_storage local;
    socklen_t len;
    if (sys_getsockname(fd, &local, &len) != 0) {
        if (hint) count(C_faults);
        return 0;
    }
    if (local_port(&local) != port) {
        if (hint) count(C_checked);
        return 0;
    }
    int self = peer_is_self(fd, &local);
    if (hint || self) count(C_checked);
    return self;
}

static int is_nonblocking(int fd) {
    int flags = sys_fcntl(fd, F_GETFL);
    return flags != -1 && (flags & O_NONBLOCK);
}

/* ----------------------------------------------------------------- policy */

enum { ACT_RETRY, ACT_HAND_BACK, ACT_REFUSE };

/* Reset a connected TCP socket in place: connect() with AF_UNSPEC runs tcp_disconnect()
 * (RST: no TIME_WAIT keeps the port from a server that wants it; a kernel-picked port is
 * released; the fd and every option are kept). The reset leaves ECONNRESET pending in
 * SO_ERROR; reading it clears it, so a caller that reads SO_ERROR before connecting again
 * does not take it for the outcome of its next connect. */
static int disconnect(int fd) {
    struct sockaddr unspec;
    memset(&unspec, 0, sizeof unspec);
    unspec.sa_family = AF_UNSPEC;
    if (sys_connect(fd, &unspec, sizeof unspec) != 0) return -1;
    int pending;
    sys_getsockopt_int(fd, SOL_SOCKET, SO_ERROR, &pending);
    return 0;
}

/* Attempt number *attempt* connected *fd* to itself: what next? (_policy.on_self_connect) */
static int on_self_connect(int fd, int attempt, int can_retry) {
    if (fd_load(fd) & FD_HANDED) return ACT_HAND_BACK; /* reported once is enough */
    int last = !can_retry || attempt > opt_retries;
    count(C_self_connects);
    if (opt_mode == MODE_OBSERVE || (last && opt_mode == MODE_RELENT)) {
        if (opt_mode == MODE_RELENT) count(C_relented);
        fd_add(fd, FD_HANDED);
        return ACT_HAND_BACK;
    }
    if (disconnect(fd) != 0) {
        count(C_faults);
        fd_add(fd, FD_HANDED);
        return ACT_HAND_BACK;
    }
    if (last) {
        count(C_gave_up);
        return ACT_REFUSE;
    }
    return ACT_RETRY;
}

/* Attempt number *attempt* failed with EADDRNOTAVAIL on a kernel-picked port (a TIME_WAIT
 * towards that very address can make it spurious): retry? (_policy.on_addrnotavail) */
static int on_addrnotavail(int fd, int attempt, int can_retry) {
    if (!opt_retry_addrnotavail || bound_on_purpose(fd)) return ACT_HAND_BACK;
    count(C_addrnotavail);
    if (!can_retry || attempt > opt_retries) return ACT_HAND_BACK;
    return ACT_RETRY;
}

/* ------------------------------------------------------- deadline arithmetic */

/* A retry is a local, immediate connect. With less of the socket's SO_SNDTIMEO left than
 * this, no retry is made (as in the Python guard). */
#define MIN_RETRY_BUDGET_NS 1000000LL
#define NO_DEADLINE INT64_MAX

/* *now* plus a timeout the kernel accepted, in nanoseconds, saturating at NO_DEADLINE:
 * SO_SNDTIMEO takes tv_sec up to LONG_MAX / HZ (about 10^16 s), far past int64 nanoseconds. */
static int64_t deadline_after(int64_t now, const struct timeval *timeout) {
    int64_t sec = timeout->tv_sec, usec = timeout->tv_usec;
    if (sec < 0 || usec < 0 || now < 0) return NO_DEADLINE;
    int64_t ns;
    if (__builtin_mul_overflow(sec, (int64_t)1000000000, &ns) || __builtin_add_overflow(ns, usec * 1000, &ns) ||
        __builtin_add_overflow(now, ns, &ns))
        return NO_DEADLINE;
    return ns;
}

/* When a blocking connect on *fd*, begun at *start*, must be over: its SO_SNDTIMEO from
 * *start*, or NO_DEADLINE (none set, non-blocking, unreadable). */
static int64_t connect_deadline(int fd, int64_t start) {
    struct timeval timeout = {0, 0};
    socklen_t len = sizeof timeout;
    if (syscall(SYS_getsockopt, fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, &len) != 0) return NO_DEADLINE;
    if (timeout.tv_sec == 0 && timeout.tv_usec == 0) return NO_DEADLINE;
    return deadline_after(start, &timeout);
}

static int time_for_a_retry(int64_t deadline) {
    return deadline == NO_DEADLINE || deadline - monotonic_ns() >= MIN_RETRY_BUDGET_NS;
}

/* --------------------------------------------------------------- retrying */

/* The first attempt of connect(fd, addr, len) to *port* connected the socket to itself
 * (*self* set) or failed with EADDRNOTAVAIL: follow the policy, attempt after attempt.
 * Returns what connect() returns, with errno set: *caller_errno* (errno as the caller had
 * it) on success, the last attempt's error otherwise.
 *
 * The socket's SO_SNDTIMEO bounds the whole call, as the Python guard's deadline does: the
 * clock starts at the first finding, and a retry is begun only with at least 1 ms left.
 * The retry itself runs with the user's SO_SNDTIMEO untouched: lowering it to what is
 * left would leave the lowered value on the socket when the caller leaves connect() by
 * siglongjmp() or thread cancellation, or overwrite a value another thread sets meanwhile.
 * A retry dials this host, which answers at once (SYN-ACK or RST) unless something drops
 * the SYN: only then can it outlast the deadline, by at most the user's own timeout. */
static int settle_connect(connect_fn conn, int fd, const struct sockaddr *addr, socklen_t len, unsigned port, int self,
                          int caller_errno) {
    /* A non-blocking connect completed by connecting again: nobody waits for a retry. */
    int nonblocking = is_nonblocking(fd);
    int64_t deadline = nonblocking ? NO_DEADLINE : connect_deadline(fd, monotonic_ns());
    for (int attempt = 1;; attempt++) {
        int time_left = time_for_a_retry(deadline);
        if (self) {
            int action = on_self_connect(fd, attempt, time_left && !nonblocking);
            if (action == ACT_REFUSE) {
                errno = ECONNREFUSED;
                return -1;
            }
            if (action == ACT_HAND_BACK) {
                errno = caller_errno;
                return 0;
            }
        } else if (on_addrnotavail(fd, attempt, time_left) != ACT_RETRY) {
            errno = EADDRNOTAVAIL;
            return -1;
        }
        count(C_retries);
        errno = caller_errno;
        if (conn(fd, addr, len) == 0) {
            if (!connected_to_itself(fd, port)) {
                errno = caller_errno;
                return 0;
            }
            self = 1;
        } else if (errno == EADDRNOTAVAIL) {
            self = 0;
        } else {
            return -1; /* the kernel's answer (refused, EINPROGRESS, ...), errno as it set it */
        }
    }
}

/* A TCP Fast Open send on *fd* to *addr* returned *rc* >= 0 and the socket met itself:
 * follow the policy. *again* makes the send once more (the reset dropped the data the
 * socket sent itself). */
static ssize_t settle_fast_open(int fd, unsigned port, ssize_t rc, int caller_errno, ssize_t (*again)(const void *),
                                const void *call) {
    int can_retry = !is_nonblocking(fd);
    for (int attempt = 1;; attempt++) {
        int action = on_self_connect(fd, attempt, can_retry);
        if (action == ACT_REFUSE) {
            errno = ECONNREFUSED;
            return -1;
        }
        if (action == ACT_HAND_BACK) {
            errno = caller_errno;
            return rc;
        }
        count(C_retries);
        errno = caller_errno;
        rc = again(call);
        if (rc < 0) return rc; /* refused, as the kernel said it */
        if (!connected_to_itself(fd, port)) {
            errno = caller_errno;
            return rc;
        }
    }
}

/* ----------------------------------------------------------------- set-up */

/* A bad setting is said once per process, and only when it matters: at the first connect
 * the guard examines (a shell loop of programs that never connect says nothing). In a
 * Python process the Python guard may say it first: it claims the warning
 * (selfguard_native_claim_warning), and then only one of the two guards says it. */
enum { SETTING_ENABLED, SETTING_MODE, SETTING_RETRIES, SETTING_RETRY_ADDRNOTAVAIL, N_SETTINGS };
static const char *const SETTING_VARIABLES[N_SETTINGS] = {"SELFGUARD", "SELFGUARD_MODE", "SELFGUARD_RETRIES",
                                                           "SELFGUARD_RETRY_ADDRNOTAVAIL"};
enum { WARNING_NONE, WARNING_PENDING, WARNING_SAID, WARNING_CLAIMED };
static _Atomic int warning_state[N_SETTINGS];
static _Atomic int warnings_pending;
static char warning_lines[N_SETTINGS][512];
static size_t warning_lengths[N_SETTINGS];

static void prepare_warning(int setting, const char *raw, const char *problem, const char *fallback) {
    /* One line on stderr, as the Python guard's warning reads; the value shortened like repr(). */
    char *line = warning_lines[setting];
    const size_t size = sizeof warning_lines[setting];
    size_t n = 0;
#define PUT(s)                                                 \
    do {                                                       \
        for (const char *p_ = (s); *p_ && n < size - 2; p_++) \
            line[n++] = *p_;                                   \
    } while (0)
    PUT("selfguard (native guard): Invalid value '");
    size_t shown = 0;
    for (const unsigned char *p = (const unsigned char *)raw; *p && n < size - 8; p++) {
        if (++shown > 55) {
            PUT("...");
            break;
        }
        if (*p == '\\' || *p == '\'') {
            line[n++] = '\\';
            line[n++] = (char)*p;
        } else if (*p >= 0x20 && *p < 0x7f) {
            line[n++] = (char)*p;
        } else {
            static const char hex[] = "0123456789abcdef";
            line[n++] = '\\';
            line[n++] = 'x';
            line[n++] = hex[*p >> 4];
            line[n++] = hex[*p & 15];
        }
    }
    PUT("' for ");
    PUT(SETTING_VARIABLES[setting]);
    PUT(" environment variable: ");
    PUT(problem);
    PUT("; using ");
    PUT(fallback);
#undef PUT
    line[n++] = '\n';
    warning_lengths[setting] = n;
    atomic_store_explicit(&warning_state[setting], WARNING_PENDING, memory_order_relaxed);
    atomic_store_explicit(&warnings_pending, 1, memory_order_release);
}

/* Say the pending warnings, once: called where the guard examines a connect. */
static inline void say_pending_warnings(void) {
    if (LIKELY(!atomic_load_explicit(&warnings_pending, memory_order_relaxed))) return;
    if (!atomic_exchange_explicit(&warnings_pending, 0, memory_order_acquire)) return;
    int saved = errno;
    int can_say = stderr_takes_lines();
    for (int i = 0; i < N_SETTINGS; i++) {
        int expected = WARNING_PENDING;
        if (atomic_compare_exchange_strong(&warning_state[i], &expected, WARNING_SAID) && can_say)
            sys_write_all(2, warning_lines[i], warning_lengths[i]);
    }
    errno = saved;
}

/* Python's str.strip() of ASCII whitespace: \t\n\v\f\r, \x1c-\x1f and space. */
static int is_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f); }

/* Does value[0:n] equal *word*, ignoring ASCII case (as str.lower() does for these words)? */
static int is_word(const char *value, size_t n, const char *word) {
    if (strlen(word) != n) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = value[i];
        if (c >= 'A' && c <= 'Z') c = (char)(c + 32);
        if (c != word[i]) return 0;
    }
    return 1;
}

static const char *const TRUE_WORDS[] = {"1", "true", "on", "yes"};
static const char *const FALSE_WORDS[] = {"0", "false", "off", "no"};
#define BOOL_PROBLEM "expected one of 1/true/on/yes/0/false/off/no"
#define RETRIES_PROBLEM "expected a whole number from 0 to 100"
#define MODE_PROBLEM "expected one of enforce, relent, observe"

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* Parse one setting as selfguard/_config.py does. Returns 1 and sets *out for a valid
 * value, 0 for an invalid one, -1 for unset or blank (the default, silently). */
EXPORT int selfguard_native_parse(const char *variable, const char *raw, int *out) {
    if (raw == NULL) return -1;
    while (*raw && is_space(*raw)) raw++;
    size_t n = strlen(raw);
    while (n && is_space(raw[n - 1])) n--;
    if (n == 0) return -1;
    if (strcmp(variable, "SELFGUARD") == 0 || strcmp(variable, "SELFGUARD_RETRY_ADDRNOTAVAIL") == 0) {
        for (int i = 0; i < 4; i++) {
            if (is_word(raw, n, TRUE_WORDS[i])) return *out = 1, 1;
            if (is_word(raw, n, FALSE_WORDS[i])) return *out = 0, 1;
        }
        return 0;
    }
    if (strcmp(variable, "SELFGUARD_MODE") == 0) {
        for (int i = 0; i < 3; i++)
            if (is_word(raw, n, MODE_NAMES[i])) return *out = i, 1;
        return 0;
    }
    if (strcmp(variable, "SELFGUARD_RETRIES") == 0) {
        /* int(): an optional sign, then ASCII digits with single underscores between them. */
        size_t i = 0;
        int negative = 0;
        if (raw[0] == '+' || raw[0] == '-') negative = raw[i++] == '-';
        if (i == n || !is_digit(raw[i])) return 0;
        long value = 0;
        for (; i < n; i++) {
            if (raw[i] == '_' && i + 1 < n && is_digit(raw[i + 1]) && is_digit(raw[i - 1])) continue;
            if (!is_digit(raw[i])) return 0;
            if (value <= MAX_RETRIES) value = value * 10 + (raw[i] - '0');
        }
        if ((negative && value != 0) || value > MAX_RETRIES) return 0;
        return *out = (int)value, 1;
    }
    return 0;
}

/* A bad value leaves *option at its default, or sets it to bad_value when that is >= 0
 * (SELFGUARD_MODE: observe, as in selfguard/_config.py's _ON_BAD_VALUE). */
static void configure_one(int setting, int *option, const char *problem, const char *fallback, int bad_value) {
    const char *raw = getenv(SETTING_VARIABLES[setting]);
    int value;
    int parsed = selfguard_native_parse(SETTING_VARIABLES[setting], raw, &value);
    if (parsed == 1)
        *option = value;
    else if (parsed == 0) {
        if (bad_value >= 0) *option = bad_value;
        prepare_warning(setting, raw, problem, fallback);
    }
}

static void after_fork_in_child(void) {
    /* Counters are per process (as in Python): summing the workers' counters counts each
     * event once. The per-fd state stays: the child has the same fds. */
    for (int i = 0; i < N_COUNTERS; i++) atomic_store_explicit(&counters[i], 0, memory_order_relaxed);
}

/* ------------------------------------------------------------------ report */

/* SELFGUARD_NATIVE_REPORT=FILE: at exit, a process whose counters are not all zero appends
 * one JSON line with them to FILE (the only way to see them in a program that is not
 * Python). Copied at start-up, made absolute against the directory the program started
 * in: the program may change its environment, and a daemon chdir()s. */
static char report_path[4096];
static const char *report_problem; /* why the path cannot be used, found at start-up */

static void configure_report(void) {
    const char *path = getenv("SELFGUARD_NATIVE_REPORT");
    if (path == NULL || !*path) return;
    size_t n = strlen(path), at = 0;
    if (path[0] != '/') {
        long got = syscall(SYS_getcwd, report_path, sizeof report_path);
        if (got <= 0 || report_path[0] != '/') {
            report_problem = "the working directory it is relative to has no name";
            snprintf(report_path, sizeof report_path, "%s", path);
            return;
        }
        at = strlen(report_path);
        if (at > 1) report_path[at++] = '/';
    }
    if (at + n >= sizeof report_path) {
        report_problem = "the path is too long";
        report_path[0] = 0;
        snprintf(report_path, sizeof report_path, "%.200s...", path);
        return;
    }
    memcpy(report_path + at, path, n + 1);
}

/* *text* as a JSON string's content, cut to fit *size*. */
static void json_escape(char *out, size_t size, const char *text) {
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)text; *p && n + 7 < size; p++) {
        if (*p == '"' || *p == '\\') {
            out[n++] = '\\';
            out[n++] = (char)*p;
        } else if (*p < 0x20 || *p == 0x7f) {
            n += (size_t)snprintf(out + n, size - n, "\\u%04x", *p);
        } else {
            out[n++] = (char)*p;
        }
    }
    out[n] = 0;
}

/* The command's name (/proc/self/comm: what ps shows), read with raw system calls. */
static void command_name(char *out, size_t size) {
    char comm[64] = "";
    long fd = syscall(SYS_openat, AT_FDCWD, "/proc/self/comm", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        long n = syscall(SYS_read, fd, comm, sizeof comm - 1);
        syscall(SYS_close, fd);
        if (n > 0) {
            comm[n] = 0;
            comm[strcspn(comm, "\n")] = 0;
        }
    }
    json_escape(out, size, comm);
}

/* The report line: pid, command, time (UTC) and every counter, by name. */
static int report_line(char *line, size_t size, const uint64_t *values) {
    char command[160];
    command_name(command, sizeof command);
    time_t now = (time_t)(clock_ns(CLOCK_REALTIME) / 1000000000);
    struct tm utc;
    char when[80] = "";
    if (gmtime_r(&now, &utc) != NULL)
        snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02dZ", utc.tm_year + 1900, utc.tm_mon + 1, utc.tm_mday,
                 utc.tm_hour, utc.tm_min, utc.tm_sec);
    int n = snprintf(line, size, "{\"pid\": %ld, \"command\": \"%s\", \"time\": \"%s\"", (long)getpid(), command, when);
    const char *name = COUNTER_NAMES_SPACED;
    for (int i = 0; i < N_COUNTERS && n > 0 && (size_t)n < size; i++) {
        int length = (int)strcspn(name, " ");
        n += snprintf(line + n, size - (size_t)n, ", \"%.*s\": %llu", length, name, (unsigned long long)values[i]);
        name += length + 1;
    }
    if (n <= 0 || (size_t)n + 3 >= size) return -1;
    line[n++] = '}';
    line[n++] = '\n';
    line[n] = 0;
    return n;
}

/* Append *line* to the report file; NULL when done, else why not. The file may sit in a
 * shared directory such as /tmp: no symlink is followed, and only a regular file with one
 * link owned by this user (or root) is written, so nobody can point the report elsewhere. */
static const char *append_report(const char *line, size_t n) {
    if (report_problem) return report_problem;
    long fd = syscall(SYS_openat, AT_FDCWD, report_path,
                      O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK, 0644);
    if (fd < 0) return errno == ELOOP ? "it is a symbolic link" : strerror(errno);
    const char *problem = NULL;
    struct stat st;
    uid_t me = (uid_t)syscall(SYS_geteuid);
    if (syscall(SYS_fstat, fd, &st) != 0)
        problem = strerror(errno);
    else if (!S_ISREG(st.st_mode))
        problem = "it is not a regular file";
    else if (st.st_nlink != 1)
        problem = "it has more than one link";
    else if (st.st_uid != me && st.st_uid != 0)
        problem = "another user owns it";
    else if (syscall(SYS_write, fd, line, n) != (long)n) /* one append: concurrent lines stay whole */
        problem = "the write failed";
    syscall(SYS_close, fd);
    return problem;
}

__attribute__((destructor)) static void selfguard_native_unload(void) {
    if (!report_path[0] || atomic_load_explicit(&init_state, memory_order_acquire) != INIT_READY) return;
    uint64_t values[N_COUNTERS];
    uint64_t any = 0;
    for (int i = 0; i < N_COUNTERS; i++) any |= values[i] = atomic_load_explicit(&counters[i], memory_order_relaxed);
    if (!any) return;
    int saved = errno;
    char line[1024];
    int n = report_line(line, sizeof line, values);
    const char *problem = n > 0 ? append_report(line, (size_t)n) : "the line does not fit";
    if (problem != NULL && n > 0) {
        /* The counters are not lost in silence: they go to stderr, with the reason. */
        char warning[1600];
        int w = snprintf(warning, sizeof warning, "selfguard (native guard): cannot append to SELFGUARD_NATIVE_REPORT %s (%s); the counters: %s",
                         report_path, problem, line);
        if (w > 0 && stderr_takes_lines()) sys_write_all(2, warning, (size_t)w < sizeof warning ? (size_t)w : sizeof warning - 1);
    }
    errno = saved;
}

static void configure(void) {
    configure_one(SETTING_ENABLED, &opt_enabled, BOOL_PROBLEM, "the default on", -1);
    configure_one(SETTING_MODE, &opt_mode, MODE_PROBLEM,
                  "observe, not the default enforce: a mistyped mode gets the one that changes no outcome",
                  MODE_OBSERVE);
    configure_one(SETTING_RETRIES, &opt_retries, RETRIES_PROBLEM, "the default 2", -1);
    configure_one(SETTING_RETRY_ADDRNOTAVAIL, &opt_retry_addrnotavail, BOOL_PROBLEM, "the default true", -1);
#define RESOLVE(name) resolve(&real_##name, #name)
    RESOLVE(connect), RESOLVE(getsockopt), RESOLVE(sendto), RESOLVE(sendmsg), RESOLVE(bind), RESOLVE(close);
    RESOLVE(socket), RESOLVE(socketpair), RESOLVE(accept), RESOLVE(accept4), RESOLVE(dup), RESOLVE(dup2);
    RESOLVE(dup3), RESOLVE(fcntl), RESOLVE(fcntl64);
#undef RESOLVE
    find_vdso_clock();
    if (REAL(connect) == NULL || REAL(getsockopt) == NULL) opt_enabled = 0; /* fail open */
    if (opt_enabled) configure_report();
    pthread_atfork(NULL, NULL, after_fork_in_child);
}

static int init_slow(void) {
    int expected = INIT_NONE;
    if (atomic_compare_exchange_strong(&init_state, &expected, INIT_RUNNING)) {
        int saved = errno;
        configure();
        errno = saved;
        atomic_store_explicit(&init_state, INIT_READY, memory_order_release);
        return opt_enabled;
    }
    /* Another thread is configuring right now: this one call passes through unguarded. */
    return expected == INIT_READY ? opt_enabled : 0;
}

/* Is the guard on? (Configured at load time; SELFGUARD=0 turns it off.) */
static inline int guard_on(void) {
    if (LIKELY(atomic_load_explicit(&init_state, memory_order_acquire) == INIT_READY)) return opt_enabled;
    return init_slow();
}

__attribute__((constructor)) static void selfguard_native_load(void) { guard_on(); }

/* ---------------------------------------------------------- interposed calls */

EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    REAL_OR_FAIL(connect, -1)
    int caller_errno = errno;
    if (UNLIKELY(tracked(fd) && !(fd_load(fd) & FD_KNOWN)) && guard_on()) learn_before_dialling(fd);
    int rc = next_connect(fd, addr, len);
    /* Refused, EINPROGRESS, every other error: the kernel's answer, untouched. A connect the
     * kernel began (0, EINPROGRESS) is a new connection of this fd (after a failed one, or an
     * AF_UNSPEC disconnect): examined, and reported, afresh. EALREADY/EISCONN are not. */
    if (rc != 0 && errno != EADDRNOTAVAIL) {
        if (errno == EINPROGRESS && tracked(fd)) fd_clear(fd, FD_PER_CONNECTION);
        return rc;
    }
    if (!tracked(fd)) return rc;
    if (rc == 0) fd_clear(fd, FD_PER_CONNECTION);
    if (!guard_on()) return rc;
    int kernel_errno = errno;
    /* The kernel accepted *addr*, so it is readable (and len covers the family). */
    unsigned port = address_port(addr, len);
    if (port == 0 || !in_range(port)) {
        errno = kernel_errno;
        return rc;
    }
    say_pending_warnings();
    if (rc == 0 ? !connected_to_itself(fd, port) : !hinted_tcp(fd)) {
        if (rc == 0) fd_add(fd, FD_CHECKED);
        errno = kernel_errno;
        return rc;
    }
    rc = settle_connect(next_connect, fd, addr, len, port, rc == 0, caller_errno);
    if (rc == 0) fd_add(fd, FD_CHECKED); /* connected (maybe handed back): examined once */
    return rc;
}

EXPORT int getsockopt(int fd, int level, int name, void *value, socklen_t *len) {
    REAL_OR_FAIL(getsockopt, -1)
    int rc = next_getsockopt(fd, level, name, value, len);
    if (rc != 0 || level != SOL_SOCKET || name != SO_ERROR) return rc;
    if (!guard_on() || !tracked(fd)) return rc;
    uint8_t state = fd_load(fd);
    /* Neither created nor dialled where this library could see it: its connect began
     * before (in another process, before exec), where the guard could not tell whether its
     * port was chosen on purpose. Left alone, as a socket that has a port before it dials. */
    if (!(state & FD_KNOWN)) return rc;
    /* This connection was examined already (by connect(), or an earlier read): one connect
     * is checked, and counted, once however often its outcome is read. */
    if (state & FD_CHECKED) return rc;
    /* The kernel wrote *len (at most sizeof(int)) bytes of the pending error: any error is
     * the truth already. */
    socklen_t n = *len;
    if (n > (socklen_t)sizeof(int)) n = sizeof(int);
    for (socklen_t i = 0; i < n; i++)
        if (((const unsigned char *)value)[i]) return rc;
    int saved = errno;
    struct sockaddr_storage peer, local;
    socklen_t pl, ll;
    /* Only connects to a port inside the range are examined (a self-connect's peer port is
     * its own, kernel-picked, port). ENOTCONN: not connected (yet, or any more). */
    unsigned port = sys_getpeername(fd, &peer, &pl) == 0 ? local_port(&peer) : 0;
    if (port == 0 || !in_range(port)) {
        errno = saved;
        return rc;
    }
    say_pending_warnings();
    int hint = (state & FD_TCP) != 0;
    if (sys_getsockname(fd, &local, &ll) != 0) {
        if (hint) count(C_faults);
        errno = saved;
        return rc;
    }
    int self = same_endpoint(&local, &peer) && kernel_says_tcp(fd) && !bound_on_purpose(fd);
    if (hint || self) count(C_checked);
    fd_add(fd, FD_CHECKED);
    if (self && on_self_connect(fd, 1, 0) == ACT_REFUSE) {
        int refused = ECONNREFUSED;
        memcpy(value, &refused, n);
    }
    errno = saved;
    return rc;
}

/* A TCP Fast Open send returned *rc* >= 0: check it (as connect()), follow the policy. */
static ssize_t check_fast_open(int fd, const struct sockaddr *addr, socklen_t alen, ssize_t rc, int caller_errno,
                               ssize_t (*again)(const void *), const void *call) {
    fd_clear(fd, FD_PER_CONNECTION); /* a new connection of this fd, as at connect() */
    unsigned port = address_port(addr, alen);
    if (port == 0 || !in_range(port)) return rc;
    say_pending_warnings();
    if (!connected_to_itself(fd, port)) {
        fd_add(fd, FD_CHECKED);
        errno = caller_errno;
        return rc;
    }
    return settle_fast_open(fd, port, rc, caller_errno, again, call);
}

struct sendto_call {
    sendto_fn fn;
    int fd;
    const void *buf;
    size_t n;
    int flags;
    const struct sockaddr *addr;
    socklen_t alen;
};
static ssize_t sendto_again(const void *p) {
    const struct sendto_call *c = p;
    return c->fn(c->fd, c->buf, c->n, c->flags, c->addr, c->alen);
}

EXPORT ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *addr, socklen_t alen) {
    REAL_OR_FAIL(sendto, -1)
    if (UNLIKELY((flags & MSG_FASTOPEN) && tracked(fd) && !(fd_load(fd) & FD_KNOWN)) && guard_on())
        learn_before_dialling(fd);
    ssize_t rc = next_sendto(fd, buf, n, flags, addr, alen);
    if (UNLIKELY(rc < 0 && (flags & MSG_FASTOPEN)) && errno == EINPROGRESS && tracked(fd))
        fd_clear(fd, FD_PER_CONNECTION); /* a new connection, completed out of sight */
    if (rc < 0 || !(flags & MSG_FASTOPEN) || addr == NULL) return rc;
    if (!guard_on() || !tracked(fd)) return rc;
    struct sendto_call call = {next_sendto, fd, buf, n, flags, addr, alen};
    return check_fast_open(fd, addr, alen, rc, errno, sendto_again, &call);
}

struct sendmsg_call {
    sendmsg_fn fn;
    int fd;
    const struct msghdr *msg;
    int flags;
};
static ssize_t sendmsg_again(const void *p) {
    const struct sendmsg_call *c = p;
    return c->fn(c->fd, c->msg, c->flags);
}

EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    REAL_OR_FAIL(sendmsg, -1)
    if (UNLIKELY((flags & MSG_FASTOPEN) && tracked(fd) && !(fd_load(fd) & FD_KNOWN)) && guard_on())
        learn_before_dialling(fd);
    ssize_t rc = next_sendmsg(fd, msg, flags);
    /* rc >= 0: the kernel read *msg, so it is readable. */
    if (UNLIKELY(rc < 0 && (flags & MSG_FASTOPEN)) && errno == EINPROGRESS && tracked(fd))
        fd_clear(fd, FD_PER_CONNECTION); /* a new connection, completed out of sight */
    if (rc < 0 || !(flags & MSG_FASTOPEN) || msg->msg_name == NULL) return rc;
    if (!guard_on() || !tracked(fd)) return rc;
    struct sendmsg_call call = {next_sendmsg, fd, msg, flags};
    return check_fast_open(fd, msg->msg_name, msg->msg_namelen, rc, errno, sendmsg_again, &call);
}

EXPORT int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    REAL_OR_FAIL(bind, -1)
    int rc = next_bind(fd, addr, len);
    /* Bound (the kernel accepted *addr*) to an explicit port: the user's choice. The socket
     * is remembered by inode, for every fd it will be used through. */
    if (rc == 0 && tracked(fd) && address_port(addr, len) != 0) {
        uint8_t state = fd_load(fd);
        fd_add(fd, FD_BOUND);
        if (!(state & FD_KNOWN) || (state & FD_TCP)) {
            int saved = errno;
            remember_bound(fd);
            errno = saved;
        }
    }
    return rc;
}

EXPORT int close(int fd) {
    REAL_OR_FAIL(close, -1)
    /* Forgotten first: once closed, the number can be handed out again at once. */
    if (tracked(fd)) fd_put(fd, 0);
    return next_close(fd);
}

static inline uint8_t kind_of(int domain, int type, int protocol) {
    int tcp = (type & 0xf) == SOCK_STREAM && (domain == AF_INET || domain == AF_INET6) &&
              (protocol == 0 || protocol == IPPROTO_TCP || protocol == IPPROTO_MPTCP);
    return (uint8_t)(FD_KNOWN | (tcp ? FD_TCP : 0));
}

EXPORT int socket(int domain, int type, int protocol) {
    REAL_OR_FAIL(socket, -1)
    int fd = next_socket(domain, type, protocol);
    if (fd >= 0 && tracked(fd)) fd_put(fd, kind_of(domain, type, protocol));
    return fd;
}

EXPORT int socketpair(int domain, int type, int protocol, int sv[2]) {
    REAL_OR_FAIL(socketpair, -1)
    int rc = next_socketpair(domain, type, protocol, sv);
    if (rc == 0)
        for (int i = 0; i < 2; i++)
            if (tracked(sv[i])) fd_put(sv[i], FD_KNOWN);
    return rc;
}

/* An accepted socket is connected already; it never dials. */
EXPORT int accept(int fd, struct sockaddr *addr, socklen_t *len) {
    REAL_OR_FAIL(accept, -1)
    int new_fd = next_accept(fd, addr, len);
    if (new_fd >= 0 && tracked(new_fd)) fd_put(new_fd, FD_KNOWN);
    return new_fd;
}

EXPORT int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    REAL_OR_FAIL(accept4, -1)
    int new_fd = next_accept4(fd, addr, len, flags);
    if (new_fd >= 0 && tracked(new_fd)) fd_put(new_fd, FD_KNOWN);
    return new_fd;
}

/* A copy of an fd is the same socket: it inherits what is known of it. */
static inline void copy_state(int from, int to) {
    if (tracked(to)) fd_put(to, tracked(from) ? fd_load(from) : 0);
}

EXPORT int dup(int fd) {
    REAL_OR_FAIL(dup, -1)
    int new_fd = next_dup(fd);
    if (new_fd >= 0) copy_state(fd, new_fd);
    return new_fd;
}

EXPORT int dup2(int fd, int new_fd) {
    REAL_OR_FAIL(dup2, -1)
    int rc = next_dup2(fd, new_fd);
    if (rc >= 0 && rc != fd) copy_state(fd, rc);
    return rc;
}

EXPORT int dup3(int fd, int new_fd, int flags) {
    REAL_OR_FAIL(dup3, -1)
    int rc = next_dup3(fd, new_fd, flags);
    if (rc >= 0) copy_state(fd, rc);
    return rc;
}

/* fcntl(F_DUPFD) and F_DUPFD_CLOEXEC copy an fd as dup() does (CPython's socket.dup()
 * uses it). Every command's third argument is passed on as it came (an int or a pointer:
 * glibc reads it as a pointer too). fcntl64 is the name programs built with 64-bit file
 * offsets call. */
#define FCNTL_WRAPPER(name)                                                       \
    EXPORT int name(int fd, int cmd, ...) {                                       \
        va_list ap;                                                               \
        va_start(ap, cmd);                                                        \
        void *arg = va_arg(ap, void *);                                           \
        va_end(ap);                                                               \
        REAL_OR_FAIL(name, -1)                                                    \
        int rc = next_##name(fd, cmd, arg);                                       \
        if (rc >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)) copy_state(fd, rc); \
        return rc;                                                                \
    }
FCNTL_WRAPPER(fcntl)
FCNTL_WRAPPER(fcntl64)
#undef FCNTL_WRAPPER

/* ------------------------------------------------------------ exported API */

/* Copy up to *n* counters (in the order of selfguard_native_counter_names()) into *out*;
 * returns how many there are. */
EXPORT int selfguard_native_stats(uint64_t *out, int n) {
    for (int i = 0; i < n && i < N_COUNTERS; i++) out[i] = atomic_load_explicit(&counters[i], memory_order_relaxed);
    return N_COUNTERS;
}

/* The counters' names, separated by spaces. */
EXPORT const char *selfguard_native_counter_names(void) { return COUNTER_NAMES_SPACED; }

EXPORT void selfguard_native_reset_stats(void) { after_fork_in_child(); }

/* The settings in force: enabled, mode (0 enforce, 1 relent, 2 observe), retries,
 * retry_addrnotavail, configured (1 once read). Copies up to *n*; returns how many. */
EXPORT int selfguard_native_settings(int *out, int n) {
    int ready = atomic_load_explicit(&init_state, memory_order_acquire) == INIT_READY;
    int values[] = {opt_enabled && ready, opt_mode, opt_retries, opt_retry_addrnotavail, ready};
    int count_ = (int)(sizeof values / sizeof values[0]);
    for (int i = 0; i < n && i < count_; i++) out[i] = values[i];
    return count_;
}

/* The Python guard is about to warn about a bad value of *variable*: returns 1 when this
 * library said it already (the Python guard then stays silent), else 0 -- and this library
 * will not say it. One warning per mistake in a process with both guards. */
EXPORT int selfguard_native_claim_warning(const char *variable) {
    for (int i = 0; i < N_SETTINGS; i++) {
        if (variable == NULL || strcmp(variable, SETTING_VARIABLES[i]) != 0) continue;
        int expected = WARNING_PENDING;
        if (atomic_compare_exchange_strong(&warning_state[i], &expected, WARNING_CLAIMED)) return 0;
        return expected == WARNING_SAID;
    }
    return 0;
}

/* What the guard knows of *fd*: -1 when it does not watch it (guard off, or an fd number
 * above what it tracks), else a mask of 1 known, 2 TCP, 4 bound to an explicit port,
 * 8 a self-connected socket it handed back (observe, relent, a failed reset). The Python
 * guard asks it so that, in a process with both guards, each self-connect is decided and
 * counted once. */
EXPORT int selfguard_native_fd_flags(int fd) {
    if (!guard_on() || !tracked(fd)) return -1;
    return fd_load(fd);
}

EXPORT const char *selfguard_native_version(void) { return SELFGUARD_NATIVE_VERSION; }
