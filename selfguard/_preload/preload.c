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
 *   bind, close, socket,      remember, per fd, which sockets are TCP and which were bound
 *   accept, dup, dup2, dup3   to an explicit port (never touched: the port was the user's
 *                             choice, even for a deliberate self-connect).
 *
 * Only TCP sockets over AF_INET/AF_INET6, not bound to an explicit port, dialling a port
 * inside net.ipv4.ip_local_port_range (cached, re-read at most once a second, the cache
 * only widens) are ever examined. The kernel's own result is returned on every other
 * path, with errno as the kernel left it: the wrappers call the real function first and
 * never read the caller's arguments before the kernel has accepted them.
 *
 * Thread- and async-signal-safe: no locks, no allocation after start-up (per-fd state is
 * a static byte array, counters are relaxed atomics). Fails open: when one of its own
 * calls fails, the original call's result stands and stats()["faults"] counts it.
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
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifndef MSG_FASTOPEN
#define MSG_FASTOPEN 0x20000000
#endif

#define EXPORT __attribute__((visibility("default")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

#define SELFGUARD_NATIVE_VERSION "1"

/* ---------------------------------------------------------------- counters */

enum { C_CHECKED, C_SELF_CONNECTS, C_RETRIES, C_GAVE_UP, C_RELENTED, C_ADDRNOTAVAIL, C_FAULTS, N_COUNTERS };
/* The names of selfguard.stats(), in the order of the array. */
static const char COUNTER_NAMES[] = "checked self_connects retries gave_up relented addrnotavail faults";
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

static void *_Atomic real_connect, *_Atomic real_getsockopt, *_Atomic real_sendto, *_Atomic real_sendmsg,
    *_Atomic real_bind, *_Atomic real_close, *_Atomic real_socket, *_Atomic real_socketpair, *_Atomic real_accept,
    *_Atomic real_accept4, *_Atomic real_dup, *_Atomic real_dup2, *_Atomic real_dup3;

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
 * through unguarded (their bind history is unknown). */
#define TRACKED_FDS (1 << 20)
enum {
    FD_KNOWN = 1,   /* created through socket()/accept()/... after this library loaded */
    FD_TCP = 2,     /* ... as an AF_INET/AF_INET6 SOCK_STREAM socket */
    FD_BOUND = 4,   /* bound to an explicit, non-zero port: never touched */
    FD_HANDED = 8,  /* a self-connected socket handed back (observe, relent, fault): reported once */
};
static _Atomic uint8_t fd_states[TRACKED_FDS];

static inline int tracked(int fd) { return (unsigned)fd < TRACKED_FDS; }
static inline uint8_t fd_load(int fd) { return atomic_load_explicit(&fd_states[fd], memory_order_relaxed); }
static inline void fd_put(int fd, uint8_t value) {
    if (fd_load(fd) != value) atomic_store_explicit(&fd_states[fd], value, memory_order_relaxed);
}
static inline void fd_add(int fd, uint8_t flags) {
    if ((fd_load(fd) & flags) != flags) atomic_fetch_or_explicit(&fd_states[fd], flags, memory_order_relaxed);
}

/* --------------------------------------------------------- small helpers */

static int64_t monotonic_ns(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) return 0;
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The port an address the kernel accepted dials (or binds), or 0 for anything not INET. */
static unsigned address_port(const struct sockaddr *addr, socklen_t len) {
    if (addr == NULL || len < (socklen_t)sizeof(sa_family_t)) return 0;
    if (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in))
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
static _Atomic int64_t range_read_at;

/* Raw system calls: no wrapper (ours or another preload's) sees them. */
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
 * network namespace reads that namespace's range, and must not narrow this one's. A range
 * that cannot be read counts as 1-65535 (every port checked: fail open towards checking). */
static int in_range(unsigned port) {
    uint32_t range = atomic_load_explicit(&range_packed, memory_order_acquire);
    if (range && port >= (range & 0xffff) && port <= (range >> 16)) return 1;
    int64_t now = monotonic_ns();
    if (range && now - atomic_load_explicit(&range_read_at, memory_order_relaxed) <= RANGE_REFRESH_NS) return 0;
    unsigned low, high;
    if (read_range(&low, &high) != 0) {
        low = 1;
        high = 65535;
        count(C_FAULTS);
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
    atomic_store_explicit(&range_read_at, now, memory_order_relaxed);
    return port >= (merged & 0xffff) && port <= (merged >> 16);
}

/* -------------------------------------------------------------- detection */

/* Find out (once per fd) whether a socket this library did not see created is TCP. */
static int learn_kind(int fd) {
    int type = 0, domain = 0;
    socklen_t tl = sizeof type, dl = sizeof domain;
    getsockopt_fn get = REAL(getsockopt);
    if (get == NULL || get(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || get(fd, SOL_SOCKET, SO_DOMAIN, &domain, &dl) != 0)
        return 0;
    int tcp = type == SOCK_STREAM && (domain == AF_INET || domain == AF_INET6);
    fd_add(fd, FD_KNOWN | (tcp ? FD_TCP : 0));
    return tcp;
}

/* May this fd be examined at all? Known non-TCP sockets answer without a system call. */
static inline int candidate(int fd) {
    if (!tracked(fd)) return 0;
    uint8_t st = fd_load(fd);
    if (st & FD_KNOWN) return (st & (FD_TCP | FD_BOUND)) == FD_TCP;
    return 1; /* not seen created (inherited, received) and not dialled here: learnt when it matters */
}

/* A socket this library did not see created (inherited, received with SCM_RIGHTS, copied
 * with fcntl(F_DUPFD)), about to dial: learn its kind, and whether it already has a port --
 * bound before it got here, maybe on purpose. Such a socket is left alone, as one bound to
 * an explicit port is (a socket bound to port 0 elsewhere is then left alone too). Runs
 * before the real call, so it must not change errno; once per fd. */
static void learn_before_dialling(int fd) {
    int saved = errno;
    if (learn_kind(fd)) {
        struct sockaddr_storage local;
        socklen_t len = sizeof local;
        if (getsockname(fd, (struct sockaddr *)&local, &len) == 0 && local_port(&local) != 0) fd_add(fd, FD_BOUND);
    }
    errno = saved;
}

static inline int is_tcp(int fd) {
    uint8_t st = fd_load(fd);
    return (st & FD_KNOWN) ? (st & FD_TCP) != 0 : learn_kind(fd);
}

/* The local end of a connected socket already known to have the dialled port (or a port in
 * range): is the peer that same host and port, on a TCP socket not explicitly bound? */
static int peer_is_self(int fd, const struct sockaddr_storage *local) {
    struct sockaddr_storage peer;
    socklen_t len = sizeof peer;
    if (getpeername(fd, (struct sockaddr *)&peer, &len) != 0) return 0; /* ENOTCONN: not connected */
    if (!same_endpoint(local, &peer)) return 0;
    if (fd_load(fd) & FD_BOUND) return 0;
    /* Rare path: confirm the type even when remembered (an fd number reused behind our back). */
    int type = 0;
    socklen_t tl = sizeof type;
    getsockopt_fn get = REAL(getsockopt);
    return get != NULL && get(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_STREAM;
}

/* After a connect to *port* succeeded: is the socket connected to itself? Counts the check. */
static int connected_to_itself(int fd, unsigned port) {
    struct sockaddr_storage local;
    socklen_t len = sizeof local;
    if (getsockname(fd, (struct sockaddr *)&local, &len) != 0) {
        count(C_FAULTS);
        return 0;
    }
    count(C_CHECKED);
    return local_port(&local) == port && peer_is_self(fd, &local);
}

static int is_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
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
    connect_fn conn = REAL(connect);
    getsockopt_fn get = REAL(getsockopt);
    if (conn == NULL || get == NULL || conn(fd, &unspec, sizeof unspec) != 0) return -1;
    int pending;
    socklen_t len = sizeof pending;
    get(fd, SOL_SOCKET, SO_ERROR, &pending, &len);
    return 0;
}

/* Attempt number *attempt* connected *fd* to itself: what next? (_policy.on_self_connect) */
static int on_self_connect(int fd, int attempt, int can_retry) {
    if (fd_load(fd) & FD_HANDED) return ACT_HAND_BACK; /* reported once is enough */
    int last = !can_retry || attempt > opt_retries;
    count(C_SELF_CONNECTS);
    if (opt_mode == MODE_OBSERVE || (last && opt_mode == MODE_RELENT)) {
        if (opt_mode == MODE_RELENT) count(C_RELENTED);
        fd_add(fd, FD_HANDED);
        return ACT_HAND_BACK;
    }
    if (disconnect(fd) != 0) {
        count(C_FAULTS);
        fd_add(fd, FD_HANDED);
        return ACT_HAND_BACK;
    }
    if (last) {
        count(C_GAVE_UP);
        return ACT_REFUSE;
    }
    return ACT_RETRY;
}

/* Attempt number *attempt* failed with EADDRNOTAVAIL on a kernel-picked port (a TIME_WAIT
 * towards that very address can make it spurious): retry? (_policy.on_addrnotavail) */
static int on_addrnotavail(int fd, int attempt, int can_retry) {
    if (!opt_retry_addrnotavail || (fd_load(fd) & FD_BOUND)) return ACT_HAND_BACK;
    count(C_ADDRNOTAVAIL);
    if (!can_retry || attempt > opt_retries) return ACT_HAND_BACK;
    return ACT_RETRY;
}

/* A retry is a local, immediate connect. With less of the socket's SO_SNDTIMEO left than
 * this, no retry is made (as in the Python guard). */
#define MIN_RETRY_BUDGET_NS 1000000LL

static void set_sndtimeo_ns(int fd, int64_t ns) {
    struct timeval tv = {.tv_sec = ns / 1000000000, .tv_usec = (ns % 1000000000) / 1000};
    if (tv.tv_sec == 0 && tv.tv_usec == 0) tv.tv_usec = 1;
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* The first attempt of connect(fd, addr, len) to *port* connected the socket to itself
 * (*self* set) or failed with EADDRNOTAVAIL: follow the policy, attempt after attempt.
 * *saved* is errno as the first attempt left it. Returns what connect() returns, errno set.
 *
 * The socket's SO_SNDTIMEO bounds the whole call, as the Python guard's deadline does: the
 * clock starts at the first finding; a retry is made only with at least 1 ms left, and
 * runs with SO_SNDTIMEO set to what is left (the user's value is put back after). */
static int settle_connect(int fd, const struct sockaddr *addr, socklen_t len, unsigned port, int self, int saved) {
    connect_fn conn = REAL(connect);
    int nonblocking = is_nonblocking(fd);
    struct timeval timeout = {0, 0};
    socklen_t tl = sizeof timeout;
    int64_t deadline = 0;
    int changed_timeout = 0;
    if (!nonblocking && REAL(getsockopt)(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, &tl) == 0 &&
        (timeout.tv_sec || timeout.tv_usec))
        deadline = monotonic_ns() + (int64_t)timeout.tv_sec * 1000000000 + (int64_t)timeout.tv_usec * 1000;
    int attempt = 1, rc, err;
    for (;;) {
        int64_t remaining = deadline ? deadline - monotonic_ns() : 0;
        int can_retry = !deadline || remaining >= MIN_RETRY_BUDGET_NS;
        if (self) {
            /* A non-blocking connect completed by connecting again: nobody waits to retry. */
            int action = on_self_connect(fd, attempt, can_retry && !nonblocking);
            if (action == ACT_REFUSE) {
                rc = -1, err = ECONNREFUSED;
                break;
            }
            if (action == ACT_HAND_BACK) {
                rc = 0, err = saved;
                break;
            }
        } else if (on_addrnotavail(fd, attempt, can_retry) != ACT_RETRY) {
            rc = -1, err = EADDRNOTAVAIL;
            break;
        }
        count(C_RETRIES);
        attempt++;
        if (deadline) {
            set_sndtimeo_ns(fd, remaining);
            changed_timeout = 1;
        }
        if (conn(fd, addr, len) == 0) {
            if (!connected_to_itself(fd, port)) {
                rc = 0, err = saved;
                break;
            }
            self = 1;
        } else if (errno == EADDRNOTAVAIL) {
            self = 0;
        } else {
            rc = -1, err = errno;
            break;
        }
    }
    if (changed_timeout) setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    errno = err;
    return rc;
}

/* ----------------------------------------------------------------- set-up */

static void warn_invalid(const char *variable, const char *raw, const char *problem, const char *fallback) {
    /* One line on stderr, as the Python guard's warning reads; the value shortened like repr(). */
    char line[512];
    size_t n = 0;
#define PUT(s)                                                          \
    do {                                                                \
        for (const char *p_ = (s); *p_ && n < sizeof line - 2; p_++) \
            line[n++] = *p_;                                            \
    } while (0)
    PUT("selfguard (native guard): Invalid value '");
    size_t shown = 0;
    for (const unsigned char *p = (const unsigned char *)raw; *p && n < sizeof line - 8; p++) {
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
    PUT(variable);
    PUT(" environment variable: ");
    PUT(problem);
    PUT("; using ");
    PUT(fallback);
#undef PUT
    line[n++] = '\n';
    ssize_t ignored = write(2, line, n);
    (void)ignored;
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
static void configure_one(const char *variable, int *option, const char *problem, const char *fallback,
                          int bad_value) {
    const char *raw = getenv(variable);
    int value;
    int parsed = selfguard_native_parse(variable, raw, &value);
    if (parsed == 1)
        *option = value;
    else if (parsed == 0) {
        if (bad_value >= 0) *option = bad_value;
        warn_invalid(variable, raw, problem, fallback);
    }
}

static void after_fork_in_child(void) {
    /* Counters are per process (as in Python): summing the workers' counters counts each
     * event once. The per-fd state stays: the child has the same fds. */
    for (int i = 0; i < N_COUNTERS; i++) atomic_store_explicit(&counters[i], 0, memory_order_relaxed);
}

/* SELFGUARD_NATIVE_REPORT=FILE: at exit, a process whose counters are not all zero appends
 * one JSON line with them to FILE (the only way to see them in a program that is not
 * Python). Copied at start-up: the program may change its environment later. */
static char report_path[4096];

static void configure_report(void) {
    const char *path = getenv("SELFGUARD_NATIVE_REPORT");
    if (path != NULL && *path && strlen(path) < sizeof report_path) strcpy(report_path, path);
}

__attribute__((destructor)) static void selfguard_native_unload(void) {
    if (!report_path[0] || atomic_load_explicit(&init_state, memory_order_acquire) != INIT_READY) return;
    uint64_t values[N_COUNTERS];
    uint64_t any = 0;
    for (int i = 0; i < N_COUNTERS; i++) any |= values[i] = atomic_load_explicit(&counters[i], memory_order_relaxed);
    if (!any) return;
    char line[512];
    int n = snprintf(line, sizeof line,
                     "{\"pid\": %ld, \"checked\": %llu, \"self_connects\": %llu, \"retries\": %llu, "
                     "\"gave_up\": %llu, \"relented\": %llu, \"addrnotavail\": %llu, \"faults\": %llu}\n",
                     (long)getpid(), (unsigned long long)values[C_CHECKED],
                     (unsigned long long)values[C_SELF_CONNECTS], (unsigned long long)values[C_RETRIES],
                     (unsigned long long)values[C_GAVE_UP], (unsigned long long)values[C_RELENTED],
                     (unsigned long long)values[C_ADDRNOTAVAIL], (unsigned long long)values[C_FAULTS]);
    if (n <= 0 || n >= (int)sizeof line) return;
    int saved = errno;
    long fd = syscall(SYS_openat, AT_FDCWD, report_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
        syscall(SYS_write, fd, line, (size_t)n); /* one append: lines of concurrent processes stay whole */
        syscall(SYS_close, fd);
    }
    errno = saved;
}

static void configure(void) {
    configure_one("SELFGUARD", &opt_enabled, BOOL_PROBLEM, "the default on", -1);
    configure_one("SELFGUARD_MODE", &opt_mode, MODE_PROBLEM,
                  "observe, not the default enforce: a mistyped mode gets the one that changes no outcome",
                  MODE_OBSERVE);
    configure_one("SELFGUARD_RETRIES", &opt_retries, RETRIES_PROBLEM, "the default 2", -1);
    configure_one("SELFGUARD_RETRY_ADDRNOTAVAIL", &opt_retry_addrnotavail, BOOL_PROBLEM, "the default true", -1);
#define RESOLVE(name) resolve(&real_##name, #name)
    RESOLVE(connect), RESOLVE(getsockopt), RESOLVE(sendto), RESOLVE(sendmsg), RESOLVE(bind), RESOLVE(close);
    RESOLVE(socket), RESOLVE(socketpair), RESOLVE(accept), RESOLVE(accept4), RESOLVE(dup), RESOLVE(dup2);
    RESOLVE(dup3);
#undef RESOLVE
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
    if (UNLIKELY(tracked(fd) && !(fd_load(fd) & FD_KNOWN)) && guard_on()) learn_before_dialling(fd);
    int rc = next_connect(fd, addr, len);
    /* Refused, EINPROGRESS, every other error: the kernel's answer, untouched. */
    if (rc != 0 && errno != EADDRNOTAVAIL) return rc;
    if (!guard_on() || !candidate(fd)) return rc;
    int saved = errno;
    /* The kernel accepted *addr*, so it is readable (and len covers the family). */
    unsigned port = address_port(addr, len);
    if (port == 0 || !in_range(port) || !is_tcp(fd)) {
        errno = saved;
        return rc;
    }
    int self = rc == 0;
    if (self && !connected_to_itself(fd, port)) {
        errno = saved;
        return rc;
    }
    return settle_connect(fd, addr, len, port, self, saved);
}

EXPORT int getsockopt(int fd, int level, int name, void *value, socklen_t *len) {
    REAL_OR_FAIL(getsockopt, -1)
    int rc = next_getsockopt(fd, level, name, value, len);
    if (rc != 0 || level != SOL_SOCKET || name != SO_ERROR) return rc;
    if (!guard_on() || !candidate(fd)) return rc;
    /* The kernel wrote *len (at most sizeof(int)) bytes of the pending error: any error is
     * the truth already. */
    socklen_t n = *len;
    if (n > (socklen_t)sizeof(int)) n = sizeof(int);
    for (socklen_t i = 0; i < n; i++)
        if (((const unsigned char *)value)[i]) return rc;
    int saved = errno;
    struct sockaddr_storage local;
    socklen_t ll = sizeof local;
    if (getsockname(fd, (struct sockaddr *)&local, &ll) != 0) {
        count(C_FAULTS);
        errno = saved;
        return rc;
    }
    unsigned port = local_port(&local);
    /* Out of range: a port someone bound on purpose, never a kernel-picked one. */
    if (port == 0 || !in_range(port) || !is_tcp(fd)) {
        errno = saved;
        return rc;
    }
    struct sockaddr_storage peer;
    socklen_t pl = sizeof peer;
    if (getpeername(fd, (struct sockaddr *)&peer, &pl) != 0) {
        errno = saved; /* ENOTCONN: not connected (yet, or any more) */
        return rc;
    }
    count(C_CHECKED);
    if (peer_is_self(fd, &local) && on_self_connect(fd, 1, 0) == ACT_REFUSE) {
        int refused = ECONNREFUSED;
        memcpy(value, &refused, n);
    }
    errno = saved;
    return rc;
}

/* A TCP Fast Open send on *fd* to *addr* returned *rc* >= 0: check it, follow the policy.
 * *again* makes the send once more (the reset dropped the data the socket sent itself). */
static ssize_t settle_fast_open(int fd, const struct sockaddr *addr, socklen_t alen, ssize_t rc, int saved,
                                ssize_t (*again)(const void *), const void *call) {
    unsigned port = address_port(addr, alen);
    if (port == 0 || !in_range(port) || !is_tcp(fd) || !connected_to_itself(fd, port)) {
        errno = saved;
        return rc;
    }
    int can_retry = !is_nonblocking(fd);
    for (int attempt = 1;; attempt++) {
        int action = on_self_connect(fd, attempt, can_retry);
        if (action == ACT_REFUSE) {
            errno = ECONNREFUSED;
            return -1;
        }
        if (action == ACT_HAND_BACK) {
            errno = saved;
            return rc;
        }
        count(C_RETRIES);
        rc = again(call);
        if (rc < 0) return rc; /* refused, as the kernel said it */
        saved = errno;
        if (!connected_to_itself(fd, port)) return rc;
    }
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
    if (rc < 0 || !(flags & MSG_FASTOPEN) || addr == NULL) return rc;
    if (!guard_on() || !candidate(fd)) return rc;
    struct sendto_call call = {next_sendto, fd, buf, n, flags, addr, alen};
    return settle_fast_open(fd, addr, alen, rc, errno, sendto_again, &call);
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
    if (rc < 0 || !(flags & MSG_FASTOPEN) || msg->msg_name == NULL) return rc;
    if (!guard_on() || !candidate(fd)) return rc;
    struct sendmsg_call call = {next_sendmsg, fd, msg, flags};
    return settle_fast_open(fd, msg->msg_name, msg->msg_namelen, rc, errno, sendmsg_again, &call);
}

EXPORT int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    REAL_OR_FAIL(bind, -1)
    int rc = next_bind(fd, addr, len);
    /* Bound (the kernel accepted *addr*) to an explicit port: the user's choice. */
    if (rc == 0 && tracked(fd) && address_port(addr, len) != 0) fd_add(fd, FD_BOUND);
    return rc;
}

EXPORT int close(int fd) {
    REAL_OR_FAIL(close, -1)
    /* Forgotten first: once closed, the number can be handed out again at once. */
    if (tracked(fd)) fd_put(fd, 0);
    return next_close(fd);
}

static inline uint8_t kind_of(int domain, int type) {
    int tcp = (type & 0xf) == SOCK_STREAM && (domain == AF_INET || domain == AF_INET6);
    return FD_KNOWN | (tcp ? FD_TCP : 0);
}

EXPORT int socket(int domain, int type, int protocol) {
    REAL_OR_FAIL(socket, -1)
    int fd = next_socket(domain, type, protocol);
    if (fd >= 0 && tracked(fd)) fd_put(fd, kind_of(domain, type));
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

/* ------------------------------------------------------------ exported API */

/* Copy up to *n* counters (in the order of selfguard_native_counter_names()) into *out*;
 * returns how many there are. */
EXPORT int selfguard_native_stats(uint64_t *out, int n) {
    for (int i = 0; i < n && i < N_COUNTERS; i++) out[i] = atomic_load_explicit(&counters[i], memory_order_relaxed);
    return N_COUNTERS;
}

/* The counters' names, separated by spaces. */
EXPORT const char *selfguard_native_counter_names(void) { return COUNTER_NAMES; }

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
