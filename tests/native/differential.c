/*
 * C-level outcomes of the calls the native guard interposes, one line per case: run it
 * with and without the library preloaded, and the two outputs must be identical.
 *
 *   differential
 *
 * Run it in a fresh network namespace whose ports LISTEN_IN, CLOSED_IN, BIND_OTHER and
 * CLOSED_IN+2 are reserved (net.ipv4.ip_local_reserved_ports): they lie inside the
 * ephemeral range, so the guard examines every connect to them, but the kernel never
 * picks them as a source port, so no case self-connects by chance. (Forced self-connects
 * are the one place the outcomes differ on purpose; the other tests cover them.)
 *
 * Every call starts with errno set to a sentinel, and every line prints errno after the
 * call, successful ones included: a wrapper that touched errno on a path it does not
 * handle shows up too.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MSG_FASTOPEN
#define MSG_FASTOPEN 0x20000000
#endif
#define IP_LOCAL_PORT_RANGE 51
#define SENTINEL 7777

#define LISTEN_IN 40100
#define CLOSED_IN 40111
#define BIND_OTHER 40201
#define LISTEN_OUT 20100
#define CLOSED_OUT 20111

static int cases;
static int listeners[8], n_listeners;

static void out(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%04d ", ++cases);
    vprintf(fmt, ap);
    putchar('\n');
    va_end(ap);
}

/* "rc/errno" of the call just made; errno is printed even on success. */
#define CALL(expr) (errno = SENTINEL, call_rc = (long)(expr), call_errno = errno)
static long call_rc;
static int call_errno;
static char result_buf[64];
static const char *result(void) {
    snprintf(result_buf, sizeof result_buf, "%ld/%d", call_rc, call_errno);
    return result_buf;
}

static socklen_t addr_of(struct sockaddr_storage *ss, int family, const char *host, int port) {
    memset(ss, 0, sizeof *ss);
    if (family == AF_INET6) {
        struct sockaddr_in6 *a = (void *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        inet_pton(AF_INET6, host, &a->sin6_addr);
        return sizeof *a;
    }
    struct sockaddr_in *a = (void *)ss;
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    inet_pton(AF_INET, host, &a->sin_addr);
    return sizeof *a;
}

static void close_rst(int fd) {
    struct linger l = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(fd);
}

static int listener(int family, const char *host, int port) {
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    if (family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    struct sockaddr_storage ss;
    socklen_t len = addr_of(&ss, family, host, port);
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 128) != 0) {
        perror("listener");
        exit(3);
    }
    listeners[n_listeners++] = fd;
    return fd;
}

/* Accept and reset whatever the last case left in the listeners' queues. */
static void drain(void) {
    for (int i = 0; i < n_listeners; i++) {
        int c;
        while ((c = accept(listeners[i], NULL, NULL)) >= 0) close_rst(c);
    }
}

static int peer_state(int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    errno = 0;
    return getpeername(fd, (struct sockaddr *)&ss, &len) == 0 ? 0 : errno;
}

/* ------------------------------------------------------------- the matrix */

struct dest {
    const char *name;
    int sock_family; /* the socket's */
    int addr_family; /* the address's */
    const char *host;
    int v6only;
};
static const struct dest DESTS[] = {
    {"v4->127.0.0.1", AF_INET, AF_INET, "127.0.0.1", 0},
    {"v4->0.0.0.0", AF_INET, AF_INET, "0.0.0.0", 0},
    {"v6->::1", AF_INET6, AF_INET6, "::1", 0},
    {"v6->::ffff:127.0.0.1", AF_INET6, AF_INET6, "::ffff:127.0.0.1", 0},
    {"v6only->::ffff:127.0.0.1", AF_INET6, AF_INET6, "::ffff:127.0.0.1", 1},
    {"v6 sock->AF_INET addr", AF_INET6, AF_INET, "127.0.0.1", 0},
    {"v4 sock->AF_INET6 addr", AF_INET, AF_INET6, "::1", 0},
    {"v4->192.0.2.1 (no route)", AF_INET, AF_INET, "192.0.2.1", 0},
};
static const int PORTS[] = {LISTEN_IN, CLOSED_IN, LISTEN_OUT, CLOSED_OUT, 0};
static const char *const PORT_NAMES[] = {"listening in range", "closed in range", "listening out of range",
                                         "closed out of range", "port 0"};

enum { S_PLAIN, S_BIND0, S_BIND_OTHER, S_BIND_DEST, S_REUSE_BIND_DEST, S_DUP_BOUND, S_DUP2_BOUND, S_DUP3_BOUND,
       S_PORT_TAKEN, S_SNDTIMEO, N_SETUPS };
static const char *const SETUP_NAMES[] = {
    "unbound", "bound to port 0", "bound to another port", "bound to the dialled port",
    "SO_REUSEADDR, bound to the dialled port", "bound, dup()'d", "bound, dup2()'d", "bound, dup3()'d",
    "only a taken source port allowed (EADDRNOTAVAIL)", "SO_SNDTIMEO 2 s",
};
enum { M_BLOCKING, M_NONBLOCK_SO_ERROR, M_NONBLOCK_AGAIN, N_MODES };
static const char *const MODE_NAMES[] = {"blocking", "non-blocking + SO_ERROR", "non-blocking + connect again"};

static int bind_any(int fd, int family, int port, char *note, size_t size) {
    struct sockaddr_storage ss;
    socklen_t len = addr_of(&ss, family, family == AF_INET6 ? "::" : "0.0.0.0", port);
    CALL(bind(fd, (struct sockaddr *)&ss, len));
    snprintf(note, size, "bind=%s", result());
    return (int)call_rc;
}

static int moved(int fd, int how) {
    int copy = -1;
    if (how == S_DUP_BOUND) copy = dup(fd);
    if (how == S_DUP2_BOUND) copy = dup2(fd, 900);
    if (how == S_DUP3_BOUND) copy = dup3(fd, 901, O_CLOEXEC);
    close(fd);
    return copy;
}

static void connect_case(const struct dest *d, int port_index, int setup, int mode) {
    int port = PORTS[port_index];
    int fd = socket(d->sock_family, SOCK_STREAM | (mode == M_BLOCKING ? 0 : SOCK_NONBLOCK), 0);
    char note[128] = "";
    if (d->v6only) {
        int one = 1;
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    }
    switch (setup) {
    case S_BIND0:
        bind_any(fd, d->sock_family, 0, note, sizeof note);
        break;
    case S_BIND_OTHER:
        bind_any(fd, d->sock_family, BIND_OTHER, note, sizeof note);
        break;
    case S_REUSE_BIND_DEST: {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    } /* fall through */
    case S_BIND_DEST:
        bind_any(fd, d->sock_family, port, note, sizeof note);
        break;
    case S_DUP_BOUND:
    case S_DUP2_BOUND:
    case S_DUP3_BOUND:
        bind_any(fd, d->sock_family, port, note, sizeof note);
        fd = moved(fd, setup);
        break;
    case S_PORT_TAKEN: {
        unsigned range = LISTEN_IN | (unsigned)LISTEN_IN << 16;
        CALL(setsockopt(fd, IPPROTO_IP, IP_LOCAL_PORT_RANGE, &range, sizeof range));
        snprintf(note, sizeof note, "range=%s", result());
        break;
    }
    case S_SNDTIMEO: {
        struct timeval tv = {2, 0};
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        break;
    }
    }
    struct sockaddr_storage ss;
    socklen_t len = addr_of(&ss, d->addr_family, d->host, port);
    CALL(connect(fd, (struct sockaddr *)&ss, len));
    char first[64];
    snprintf(first, sizeof first, "%s", result());
    char then[160] = "";
    if (mode != M_BLOCKING && call_rc < 0 && call_errno == EINPROGRESS) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int ready = poll(&p, 1, 3000);
        if (mode == M_NONBLOCK_SO_ERROR) {
            int err = -1;
            socklen_t el = sizeof err;
            CALL(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el));
            snprintf(then, sizeof then, " poll=%d/%#x so_error=%s:%d", ready, p.revents, result(), err);
        } else {
            CALL(connect(fd, (struct sockaddr *)&ss, len));
            char again[64];
            snprintf(again, sizeof again, "%s", result());
            CALL(connect(fd, (struct sockaddr *)&ss, len));
            snprintf(then, sizeof then, " poll=%d/%#x again=%s third=%s", ready, p.revents, again, result());
        }
    }
    out("connect %s port=%s setup=%s mode=%s: %s connect=%s%s peer=%d", d->name, PORT_NAMES[port_index],
        SETUP_NAMES[setup], MODE_NAMES[mode], note, first, then, peer_state(fd));
    close_rst(fd);
    drain();
}

/* ------------------------------------------------------------ other cases */

static void bad_connects(void) {
    struct sockaddr_storage ss;
    socklen_t len = addr_of(&ss, AF_INET, "127.0.0.1", CLOSED_IN);
    int devnull = open("/dev/null", O_RDONLY);
    int pipes[2];
    if (pipe(pipes) != 0) exit(3);
    int ep = epoll_create1(0);
    int closed = socket(AF_INET, SOCK_STREAM, 0);
    close(closed);
    int fds[] = {-1, 12345, devnull, pipes[0], ep, closed};
    const char *names[] = {"-1", "never opened", "/dev/null", "a pipe", "an epoll fd", "a closed socket"};
    for (int i = 0; i < 6; i++) {
        CALL(connect(fds[i], (struct sockaddr *)&ss, len));
        out("connect on %s: %s", names[i], result());
        int v = -1;
        socklen_t vl = sizeof v;
        CALL(getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &v, &vl));
        out("SO_ERROR on %s: %s", names[i], result());
        CALL(sendto(fds[i], "x", 1, MSG_FASTOPEN | MSG_NOSIGNAL, (struct sockaddr *)&ss, len));
        out("sendto(MSG_FASTOPEN) on %s: %s", names[i], result());
        CALL(bind(fds[i], (struct sockaddr *)&ss, len));
        out("bind on %s: %s", names[i], result());
    }
    close(devnull), close(pipes[0]), close(pipes[1]), close(ep);

    /* Addresses and lengths the kernel rejects: the wrapper must not read them. */
    static const struct {
        const char *name;
        int null_addr, bad_pointer, family;
        socklen_t len;
    } BAD[] = {
        {"NULL address", 1, 0, AF_INET, 16},
        {"address pointer 0x1", 0, 1, AF_INET, 16},
        {"length 0", 0, 0, AF_INET, 0},
        {"length 1", 0, 0, AF_INET, 1},
        {"AF_INET length 15", 0, 0, AF_INET, 15},
        {"AF_INET length 200", 0, 0, AF_INET, 200},
        {"AF_INET length -1", 0, 0, AF_INET, (socklen_t)-1},
        {"AF_INET6 length 23", 0, 0, AF_INET6, 23},
        {"AF_INET6 length 24", 0, 0, AF_INET6, 24},
        {"family 99", 0, 0, 99, 16},
        {"AF_UNSPEC", 0, 0, AF_UNSPEC, 16},
        {"AF_UNSPEC length 2", 0, 0, AF_UNSPEC, 2},
        {"AF_UNIX on an INET socket", 0, 0, AF_UNIX, 16},
    };
    for (unsigned i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
        for (int family = AF_INET; family <= AF_INET6; family += AF_INET6 - AF_INET) {
            for (int nb = 0; nb < 2; nb++) {
                int fd = socket(family, SOCK_STREAM | (nb ? SOCK_NONBLOCK : 0), 0);
                struct sockaddr_storage a;
                memset(&a, 0, sizeof a);
                if (BAD[i].family == AF_INET6)
                    addr_of(&a, AF_INET6, "::1", CLOSED_IN);
                else if (BAD[i].family == AF_INET)
                    addr_of(&a, AF_INET, "127.0.0.1", CLOSED_IN);
                else
                    a.ss_family = (sa_family_t)BAD[i].family;
                const struct sockaddr *p = BAD[i].null_addr ? NULL
                                           : BAD[i].bad_pointer ? (const struct sockaddr *)1
                                                                : (const struct sockaddr *)&a;
                char big[256];
                if (BAD[i].len > sizeof a && BAD[i].len <= sizeof big && p == (const void *)&a) {
                    memset(big, 0, sizeof big);
                    memcpy(big, &a, sizeof a);
                    p = (const struct sockaddr *)big;
                }
                CALL(connect(fd, p, BAD[i].len));
                out("connect %s socket=%s%s: %s peer=%d", BAD[i].name, family == AF_INET ? "v4" : "v6",
                    nb ? " non-blocking" : "", result(), peer_state(fd));
                CALL(sendto(fd, "x", 1, MSG_FASTOPEN | MSG_NOSIGNAL | (nb ? MSG_DONTWAIT : 0), p, BAD[i].len));
                out("sendto(MSG_FASTOPEN) %s socket=%s%s: %s", BAD[i].name, family == AF_INET ? "v4" : "v6",
                    nb ? " non-blocking" : "", result());
                CALL(bind(fd, p, BAD[i].len));
                out("bind %s socket=%s%s: %s", BAD[i].name, family == AF_INET ? "v4" : "v6", nb ? " non-blocking" : "",
                    result());
                close_rst(fd);
                drain();
            }
        }
    }
}

static void state_cases(void) {
    struct sockaddr_storage ss, closed;
    socklen_t len = addr_of(&ss, AF_INET, "127.0.0.1", LISTEN_IN);
    addr_of(&closed, AF_INET, "127.0.0.1", CLOSED_IN);
    /* Connected, then connect again (EISCONN); then AF_UNSPEC (a reset); then once more. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    CALL(connect(fd, (struct sockaddr *)&ss, len));
    out("connect to a listener: %s", result());
    CALL(connect(fd, (struct sockaddr *)&ss, len));
    out("connect again when connected: %s", result());
    CALL(connect(fd, (struct sockaddr *)&closed, len));
    out("connect elsewhere when connected: %s", result());
    struct sockaddr unspec = {.sa_family = AF_UNSPEC};
    CALL(connect(fd, &unspec, sizeof unspec));
    out("AF_UNSPEC when connected: %s peer=%d", result(), peer_state(fd));
    int v = -1;
    socklen_t vl = sizeof v;
    CALL(getsockopt(fd, SOL_SOCKET, SO_ERROR, &v, &vl));
    out("SO_ERROR after AF_UNSPEC: %s:%d", result(), v);
    CALL(connect(fd, (struct sockaddr *)&ss, len));
    out("connect after AF_UNSPEC: %s peer=%d", result(), peer_state(fd));
    close_rst(fd);
    drain();

    /* A listening socket connects? A shut-down one? */
    fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_storage mine;
    socklen_t ml = addr_of(&mine, AF_INET, "127.0.0.1", BIND_OTHER);
    bind(fd, (struct sockaddr *)&mine, ml);
    listen(fd, 1);
    CALL(connect(fd, (struct sockaddr *)&ss, len));
    out("connect on a listening socket: %s", result());
    CALL(connect(fd, (struct sockaddr *)&mine, ml));
    out("connect a listening socket to itself: %s", result());
    close_rst(fd);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    shutdown(fd, SHUT_RDWR);
    CALL(connect(fd, (struct sockaddr *)&closed, len));
    out("connect after shutdown: %s", result());
    close_rst(fd);
    drain();
}

static void udp_and_unix(void) {
    for (int family = AF_INET; family <= AF_INET6; family += AF_INET6 - AF_INET) {
        const char *hosts[] = {family == AF_INET ? "127.0.0.1" : "::1", family == AF_INET ? "0.0.0.0" : "::"};
        for (int h = 0; h < 2; h++) {
            for (int p = 0; p < 5; p++) {
                for (int bound = 0; bound < 3; bound++) {
                    int fd = socket(family, SOCK_DGRAM, 0);
                    char note[64] = "";
                    if (bound == 1) bind_any(fd, family, BIND_OTHER, note, sizeof note);
                    if (bound == 2) bind_any(fd, family, PORTS[p], note, sizeof note);
                    struct sockaddr_storage ss;
                    socklen_t len = addr_of(&ss, family, hosts[h], PORTS[p]);
                    CALL(connect(fd, (struct sockaddr *)&ss, len));
                    char first[64];
                    snprintf(first, sizeof first, "%s", result());
                    int v = -1;
                    socklen_t vl = sizeof v;
                    CALL(getsockopt(fd, SOL_SOCKET, SO_ERROR, &v, &vl));
                    char soerr[96];
                    snprintf(soerr, sizeof soerr, "%s:%d", result(), v);
                    CALL(sendto(fd, "x", 1, MSG_FASTOPEN | MSG_NOSIGNAL, (struct sockaddr *)&ss, len));
                    out("udp %s %s port=%s bound=%d: %s connect=%s so_error=%s sendto(MSG_FASTOPEN)=%s peer=%d",
                        family == AF_INET ? "v4" : "v6", hosts[h], PORT_NAMES[p], bound, note, first, soerr,
                        result(), peer_state(fd));
                    close(fd);
                }
            }
        }
    }
    /* AF_UNIX: a listener, a missing path, the abstract namespace, datagrams. */
    char path[108];
    snprintf(path, sizeof path, "/tmp/selfguard-differential-%d", (int)getpid());
    unlink(path);
    int srv = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    strcpy(un.sun_path, path);
    bind(srv, (struct sockaddr *)&un, sizeof un);
    listen(srv, 16);
    for (int type = SOCK_STREAM; type <= SOCK_DGRAM; type++) {
        for (int which = 0; which < 3; which++) {
            int fd = socket(AF_UNIX, type, 0);
            struct sockaddr_un to = {.sun_family = AF_UNIX};
            socklen_t len = sizeof to;
            if (which == 0) strcpy(to.sun_path, path);
            if (which == 1) strcpy(to.sun_path, "/nonexistent/selfguard");
            if (which == 2) {
                memcpy(to.sun_path, "\0selfguard-none", 15);
                len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 15);
            }
            CALL(connect(fd, (struct sockaddr *)&to, len));
            char first[64];
            snprintf(first, sizeof first, "%s", result());
            int v = -1;
            socklen_t vl = sizeof v;
            CALL(getsockopt(fd, SOL_SOCKET, SO_ERROR, &v, &vl));
            out("unix type=%d target=%d: connect=%s so_error=%s:%d", type, which, first, result(), v);
            close(fd);
        }
    }
    int c;
    while ((c = accept4(srv, NULL, NULL, SOCK_NONBLOCK)) >= 0) close(c);
    close(srv);
    unlink(path);
    int pair[2];
    CALL(socketpair(AF_UNIX, SOCK_STREAM, 0, pair));
    out("socketpair unix: %s", result());
    if (call_rc == 0) close(pair[0]), close(pair[1]);
    CALL(socketpair(AF_INET, SOCK_STREAM, 0, pair));
    out("socketpair inet: %s", result());
}

static void getsockopt_cases(void) {
    struct sockaddr_storage ss;
    socklen_t len = addr_of(&ss, AF_INET, "127.0.0.1", LISTEN_IN);
    struct sockaddr_storage refused;
    addr_of(&refused, AF_INET, "127.0.0.1", CLOSED_IN);
    for (int state = 0; state < 4; state++) {
        static const socklen_t LENS[] = {0, 1, 2, 3, 4, 8};
        for (unsigned l = 0; l < sizeof LENS / sizeof LENS[0]; l++) {
            for (int target = 0; target < 3; target++) {
                int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
                if (state >= 1) connect(fd, (struct sockaddr *)(state == 1 ? &ss : &refused), len);
                if (state >= 1) {
                    struct pollfd p = {.fd = fd, .events = POLLOUT};
                    poll(&p, 1, 3000);
                }
                if (state == 3) {
                    int v;
                    socklen_t vl = sizeof v;
                    getsockopt(fd, SOL_SOCKET, SO_ERROR, &v, &vl); /* read once: cleared */
                }
                unsigned char value[8];
                memset(value, 0xAA, sizeof value);
                socklen_t vl = LENS[l];
                if (target == 0) CALL(getsockopt(fd, SOL_SOCKET, SO_ERROR, value, &vl));
                if (target == 1) CALL(getsockopt(fd, SOL_SOCKET, SO_ERROR, NULL, &vl));
                if (target == 2) CALL(getsockopt(fd, SOL_SOCKET, SO_ERROR, value, NULL));
                out("SO_ERROR state=%d buflen=%u target=%d: %s len=%u value=%02x%02x%02x%02x%02x%02x%02x%02x", state,
                    LENS[l], target, result(), vl, value[0], value[1], value[2], value[3], value[4], value[5],
                    value[6], value[7]);
                close_rst(fd);
                drain();
            }
        }
    }
    /* Other options pass through. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    static const struct {
        int level, name;
    } OPTS[] = {{SOL_SOCKET, SO_TYPE}, {SOL_SOCKET, SO_DOMAIN}, {SOL_SOCKET, SO_REUSEADDR},
                {IPPROTO_TCP, TCP_NODELAY}, {IPPROTO_TCP, SO_ERROR}, {SOL_SOCKET, 9999}, {9999, SO_ERROR}};
    for (unsigned i = 0; i < sizeof OPTS / sizeof OPTS[0]; i++) {
        int v = -1;
        socklen_t vl = sizeof v;
        CALL(getsockopt(fd, OPTS[i].level, OPTS[i].name, &v, &vl));
        out("getsockopt level=%d name=%d: %s value=%d", OPTS[i].level, OPTS[i].name, result(), v);
    }
    close(fd);
}

static void send_cases(void) {
    int ports[] = {LISTEN_IN, CLOSED_IN, LISTEN_OUT, CLOSED_OUT};
    for (int family = AF_INET; family <= AF_INET6; family += AF_INET6 - AF_INET) {
        for (int p = 0; p < 4; p++) {
            for (int nb = 0; nb < 2; nb++) {
                for (int api = 0; api < 4; api++) {
                    int fd = socket(family, SOCK_STREAM | (nb ? SOCK_NONBLOCK : 0), 0);
                    struct sockaddr_storage ss;
                    socklen_t len = addr_of(&ss, family, family == AF_INET ? "127.0.0.1" : "::1", ports[p]);
                    int flags = MSG_NOSIGNAL | (api % 2 == 0 ? MSG_FASTOPEN : 0);
                    if (api < 2) {
                        CALL(sendto(fd, "hello", 5, flags, (struct sockaddr *)&ss, len));
                    } else {
                        struct iovec iov = {.iov_base = "hello", .iov_len = 5};
                        struct msghdr m = {.msg_name = &ss, .msg_namelen = len, .msg_iov = &iov, .msg_iovlen = 1};
                        CALL(sendmsg(fd, &m, flags));
                    }
                    char first[64];
                    snprintf(first, sizeof first, "%s", result());
                    char then[96] = "";
                    if (nb && call_rc < 0 && call_errno == EINPROGRESS) {
                        struct pollfd pf = {.fd = fd, .events = POLLOUT};
                        int ready = poll(&pf, 1, 3000);
                        int v = -1;
                        socklen_t vl = sizeof v;
                        CALL(getsockopt(fd, SOL_SOCKET, SO_ERROR, &v, &vl));
                        snprintf(then, sizeof then, " poll=%d/%#x so_error=%s:%d", ready, pf.revents, result(), v);
                    }
                    out("%s%s %s port=%s%s: %s%s peer=%d", api < 2 ? "sendto" : "sendmsg",
                        api % 2 == 0 ? "(MSG_FASTOPEN)" : "", family == AF_INET ? "v4" : "v6",
                        ports[p] == LISTEN_IN    ? "listening in range"
                        : ports[p] == CLOSED_IN  ? "closed in range"
                        : ports[p] == LISTEN_OUT ? "listening out of range"
                                                 : "closed out of range",
                        nb ? " non-blocking" : "", first, then, peer_state(fd));
                    close_rst(fd);
                    drain();
                }
            }
        }
    }
    /* MSG_FASTOPEN without an address, and on a connected socket. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    CALL(sendto(fd, "x", 1, MSG_FASTOPEN | MSG_NOSIGNAL, NULL, 0));
    out("sendto(MSG_FASTOPEN) without address: %s", result());
    struct sockaddr_storage ss;
    socklen_t len = addr_of(&ss, AF_INET, "127.0.0.1", LISTEN_IN);
    connect(fd, (struct sockaddr *)&ss, len);
    CALL(sendto(fd, "x", 1, MSG_FASTOPEN | MSG_NOSIGNAL, (struct sockaddr *)&ss, len));
    out("sendto(MSG_FASTOPEN) when connected: %s", result());
    struct msghdr m = {0};
    CALL(sendmsg(fd, &m, MSG_FASTOPEN | MSG_NOSIGNAL));
    out("sendmsg(MSG_FASTOPEN) nothing, when connected: %s", result());
    CALL(sendmsg(fd, NULL, MSG_FASTOPEN | MSG_NOSIGNAL));
    out("sendmsg(MSG_FASTOPEN) NULL msghdr: %s", result());
    close_rst(fd);
    drain();
}

static void fd_cases(void) {
    CALL(close(-1));
    out("close(-1): %s", result());
    CALL(close(54321));
    out("close(never opened): %s", result());
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    close(fd);
    CALL(close(fd));
    out("close twice: %s", result());
    CALL(dup(-1));
    out("dup(-1): %s", result());
    fd = socket(AF_INET, SOCK_STREAM, 0);
    CALL(dup2(fd, fd));
    out("dup2(fd, fd) returns fd: %d errno=%d", call_rc == fd, call_errno);
    CALL(dup3(fd, fd, 0));
    out("dup3(fd, fd, 0): %s", result());
    CALL(dup3(fd, 902, 12345));
    out("dup3 bad flags: %s", result());
    CALL(dup2(fd, -1));
    out("dup2 to -1: %s", result());
    CALL(dup2(-1, 903));
    out("dup2 from -1: %s", result());
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    CALL(dup2(fd, (int)rl.rlim_cur));
    out("dup2 to the fd limit: %s", result());
    close(fd);
    CALL(socket(AF_INET, 99, 0));
    out("socket bad type: %s", result());
    CALL(socket(12345, SOCK_STREAM, 0));
    out("socket bad domain: %s", result());
    CALL(socket(AF_INET, SOCK_STREAM, IPPROTO_UDP));
    out("socket TCP with UDP protocol: %s", result());
    fd = socket(AF_INET, SOCK_STREAM, 0);
    CALL(accept(fd, NULL, NULL));
    out("accept on a socket not listening: %s", result());
    CALL(accept4(fd, NULL, NULL, 12345));
    out("accept4 bad flags: %s", result());
    CALL(accept(-1, NULL, NULL));
    out("accept(-1): %s", result());
    close(fd);

    /* The highest fd this process may have: a bound socket dup2()'d there self-connects on purpose. */
    if (rl.rlim_cur < rl.rlim_max && rl.rlim_max <= (1 << 20)) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    fd = socket(AF_INET, SOCK_STREAM, 0);
    char note[64];
    bind_any(fd, AF_INET, CLOSED_IN, note, sizeof note);
    int high = dup2(fd, (int)rl.rlim_cur - 1);
    close(fd);
    struct sockaddr_storage ss;
    socklen_t len = addr_of(&ss, AF_INET, "127.0.0.1", CLOSED_IN);
    CALL(connect(high, (struct sockaddr *)&ss, len));
    out("bound socket at the highest fd connects to its own port: %s %s peer=%d", note, result(), peer_state(high));
    close_rst(high);
}

/* Sockets this process got without socket(): received over a unix socket (SCM_RIGHTS),
 * copied with fcntl(F_DUPFD). Bound to the dialled port, they self-connect on purpose. */
static int passed(int fd) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) exit(3);
    char byte = 'x', cbuf[CMSG_SPACE(sizeof(int))];
    memset(cbuf, 0, sizeof cbuf);
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    if (sendmsg(pair[0], &m, 0) != 1) exit(3);
    close(fd);
    memset(cbuf, 0, sizeof cbuf);
    if (recvmsg(pair[1], &m, 0) != 1) exit(3);
    int got;
    memcpy(&got, CMSG_DATA(CMSG_FIRSTHDR(&m)), sizeof got);
    close(pair[0]);
    close(pair[1]);
    return got;
}

static void fd_passing_cases(void) {
    static const char *const HOW[] = {"received with SCM_RIGHTS", "copied with fcntl(F_DUPFD)"};
    static const char *const BOUND[] = {"unbound", "bound to port 0", "bound to the dialled port"};
    for (int how = 0; how < 2; how++) {
        for (int bound = 0; bound < 3; bound++) {
            for (int p = 0; p < 4; p++) {
                for (int api = 0; api < 2; api++) {
                    int fd = socket(AF_INET, SOCK_STREAM, 0);
                    char note[64] = "";
                    if (bound) bind_any(fd, AF_INET, bound == 1 ? 0 : PORTS[p], note, sizeof note);
                    int got;
                    if (how == 0) {
                        got = passed(fd);
                    } else {
                        got = fcntl(fd, F_DUPFD, 950);
                        close(fd);
                    }
                    struct sockaddr_storage ss;
                    socklen_t len = addr_of(&ss, AF_INET, "127.0.0.1", PORTS[p]);
                    if (api == 0)
                        CALL(connect(got, (struct sockaddr *)&ss, len));
                    else
                        CALL(sendto(got, "hi", 2, MSG_FASTOPEN | MSG_NOSIGNAL, (struct sockaddr *)&ss, len));
                    out("%s %s, %s, port=%s: %s %s peer=%d", api ? "sendto(MSG_FASTOPEN)" : "connect", HOW[how],
                        BOUND[bound], PORT_NAMES[p], note, result(), peer_state(got));
                    close_rst(got);
                    drain();
                }
            }
        }
    }
}

/* A socket bound on purpose to the port it dials self-connects, and must stay so, whichever
 * fd is used for what: bound through a copy, SO_ERROR read through a copy, bound with
 * sa_family AF_UNSPEC (Linux takes it as AF_INET, INADDR_ANY), inherited across exec. */
static int so_error_line(int fd, const char *what) {
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int ready = poll(&p, 1, 3000);
    int v = -1;
    socklen_t vl = sizeof v;
    CALL(getsockopt(fd, SOL_SOCKET, SO_ERROR, &v, &vl));
    out("%s: poll=%d so_error=%s:%d peer=%d", what, ready, result(), v, peer_state(fd));
    return 0;
}

static int bind_port(int fd, int family, int port) {
    struct sockaddr_storage ss;
    socklen_t len = addr_of(&ss, family, family == AF_INET6 ? "::1" : "127.0.0.1", port);
    return bind(fd, (struct sockaddr *)&ss, len);
}

static void purpose_cases(const char *self) {
    struct sockaddr_storage to;
    socklen_t tl = addr_of(&to, AF_INET, "127.0.0.1", CLOSED_IN);
    static const char *const COPY[] = {"dup()", "dup2()", "dup3()", "fcntl(F_DUPFD)", "fcntl(F_DUPFD_CLOEXEC)"};
    for (int how = 0; how < 5; how++) {
        for (int nb = 0; nb < 2; nb++) {
            for (int variant = 0; variant < 3; variant++) {
                int fd = socket(AF_INET, SOCK_STREAM | (nb ? SOCK_NONBLOCK : 0), 0);
                int copy = how == 0   ? dup(fd)
                           : how == 1 ? dup2(fd, 970)
                           : how == 2 ? dup3(fd, 971, O_CLOEXEC)
                           : how == 3 ? fcntl(fd, F_DUPFD, 972)
                                      : fcntl(fd, F_DUPFD_CLOEXEC, 973);
                /* Bound through one, dialled through the other, SO_ERROR read through the first;
                 * or bound and dialled through the original, SO_ERROR read through the copy. */
                static const char *const VARIANTS[] = {"bound through the original", "bound through the copy",
                                                       "read through the copy"};
                int bound = variant == 1 ? copy : fd, dialled = variant == 0 ? copy : fd;
                int reader = variant == 2 ? copy : bound;
                CALL(bind_port(bound, AF_INET, CLOSED_IN));
                char note[96];
                snprintf(note, sizeof note, "bind=%s", result());
                CALL(connect(dialled, (struct sockaddr *)&to, tl));
                char what[300];
                snprintf(what, sizeof what, "on purpose, copied with %s, %s%s: %s connect=%s", COPY[how],
                         VARIANTS[variant], nb ? ", non-blocking" : "", note, result());
                if (nb && call_rc < 0 && call_errno == EINPROGRESS)
                    so_error_line(reader, what);
                else
                    out("%s peer=%d", what, peer_state(reader));
                close(copy);
                close_rst(fd);
            }
        }
    }
    /* sa_family AF_UNSPEC with INADDR_ANY: Linux binds an AF_INET socket to it. */
    for (int nb = 0; nb < 2; nb++) {
        int fd = socket(AF_INET, SOCK_STREAM | (nb ? SOCK_NONBLOCK : 0), 0);
        struct sockaddr_in any = {.sin_family = AF_UNSPEC, .sin_port = htons(CLOSED_IN)};
        any.sin_addr.s_addr = htonl(INADDR_ANY);
        CALL(bind(fd, (struct sockaddr *)&any, sizeof any));
        char note[96];
        snprintf(note, sizeof note, "bind=%s", result());
        CALL(connect(fd, (struct sockaddr *)&to, tl));
        char what[300];
        snprintf(what, sizeof what, "on purpose, bound with AF_UNSPEC%s: %s connect=%s", nb ? ", non-blocking" : "", note,
                 result());
        if (nb && call_rc < 0 && call_errno == EINPROGRESS)
            so_error_line(fd, what);
        else
            out("%s peer=%d", what, peer_state(fd));
        close_rst(fd);
    }
    /* Across exec: bound (and maybe dialled) here, connected or read by the new program. */
    for (int dial_here = 0; dial_here < 2; dial_here++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        CALL(bind_port(fd, AF_INET, CLOSED_IN));
        char note[96];
        snprintf(note, sizeof note, "bind=%s", result());
        if (dial_here) connect(fd, (struct sockaddr *)&to, tl);
        fflush(stdout);
        pid_t child = fork();
        if (child == 0) {
            char fd_text[16], case_text[16];
            snprintf(fd_text, sizeof fd_text, "%d", fd);
            snprintf(case_text, sizeof case_text, "%d", cases);
            execl(self, self, dial_here ? "--read-after-exec" : "--dial-after-exec", fd_text, case_text, note, (char *)NULL);
            _exit(3);
        }
        int status;
        waitpid(child, &status, 0);
        cases++;
        close_rst(fd);
    }
    /* SCTP's one-to-one sockets are SOCK_STREAM too (EPROTONOSUPPORT where SCTP is missing). */
    CALL(socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP));
    out("socket SCTP one-to-one: %s", call_rc >= 0 ? "made" : result());
    if (call_rc >= 0) {
        int fd = (int)call_rc;
        CALL(bind_port(fd, AF_INET, CLOSED_IN));
        out("SCTP bind: %s", result());
        close(fd);
    }
    drain();
}

/* The new program's half of the exec cases: `differential --read-after-exec FD CASE NOTE`. */
static int after_exec(int argc, char **argv) {
    if (argc != 5) return 2;
    int fd = atoi(argv[2]);
    cases = atoi(argv[3]);
    char what[300];
    if (strcmp(argv[1], "--dial-after-exec") == 0) {
        struct sockaddr_storage to;
        socklen_t tl = addr_of(&to, AF_INET, "127.0.0.1", CLOSED_IN);
        CALL(connect(fd, (struct sockaddr *)&to, tl));
        snprintf(what, sizeof what, "on purpose, bound before exec, dialled after: %s connect=%s", argv[4], result());
    } else {
        snprintf(what, sizeof what, "on purpose, bound and dialled before exec, read after: %s", argv[4]);
    }
    return so_error_line(fd, what);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1) return after_exec(argc, argv);
    listener(AF_INET, "0.0.0.0", LISTEN_IN);
    listener(AF_INET6, "::", LISTEN_IN);
    listener(AF_INET, "0.0.0.0", LISTEN_OUT);
    listener(AF_INET6, "::", LISTEN_OUT);
    for (unsigned d = 0; d < sizeof DESTS / sizeof DESTS[0]; d++)
        for (unsigned p = 0; p < sizeof PORTS / sizeof PORTS[0]; p++)
            for (int s = 0; s < N_SETUPS; s++)
                for (int m = 0; m < N_MODES; m++) connect_case(&DESTS[d], (int)p, s, m);
    bad_connects();
    state_cases();
    udp_and_unix();
    getsockopt_cases();
    send_cases();
    fd_cases();
    fd_passing_cases();
    purpose_cases("/proc/self/exe");
    fprintf(stderr, "%d cases\n", cases);
    return 0;
}
