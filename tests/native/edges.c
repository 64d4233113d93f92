/*
 * Cases of the native guard that need a forced self-connect (IP_LOCAL_PORT_RANGE, Linux
 * >= 6.3) or a namespace of their own. One mode per run, one JSON object on stdout:
 *
 *   edges vfork PORT          a vfork() child dup2()s a unix socket onto the parent's TCP fd 0,
 *                             which then dials PORT 20 times: how many connected to themselves
 *   edges sndtimeo PORT       300 self-connecting dials with SO_SNDTIMEO set, while a thread
 *                             reads SO_SNDTIMEO of the socket: how often it saw another value
 *   edges addrnotavail P Q    (in a namespace of its own, root) the only source port Q is in
 *                             TIME_WAIT towards the listener P: connect() fails with
 *                             EADDRNOTAVAIL; the errno a successful retry leaves
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#define IP_LOCAL_PORT_RANGE 51
#define SENTINEL 7777

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static void force_port(int fd, int port) {
    unsigned range = (unsigned)port | (unsigned)port << 16;
    if (setsockopt(fd, IPPROTO_IP, IP_LOCAL_PORT_RANGE, &range, sizeof range) != 0) {
        perror("IP_LOCAL_PORT_RANGE");
        exit(3);
    }
}

static int self_connected(int fd) {
    struct sockaddr_in a, b;
    socklen_t al = sizeof a, bl = sizeof b;
    return getsockname(fd, (struct sockaddr *)&a, &al) == 0 && getpeername(fd, (struct sockaddr *)&b, &bl) == 0 &&
           a.sin_port == b.sin_port && a.sin_addr.s_addr == b.sin_addr.s_addr;
}

static void close_rst(int fd) {
    struct linger l = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(fd);
}

static int vfork_case(int port) {
    int met = 0, refused = 0;
    for (int i = 0; i < 20; i++) {
        close(0);
        int tcp = socket(AF_INET, SOCK_STREAM, 0);
        if (tcp != 0) return 3;
        force_port(tcp, port);
        int pair[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) return 3;
        pid_t child = vfork();
        if (child == 0) {
            dup2(pair[0], 0); /* the child's fd table, the parent's memory */
            _exit(0);
        }
        waitpid(child, NULL, 0);
        close(pair[0]);
        close(pair[1]);
        struct sockaddr_in to = loopback(port);
        if (connect(0, (struct sockaddr *)&to, sizeof to) == 0)
            met += self_connected(0);
        else
            refused += errno == ECONNREFUSED;
        close_rst(0);
    }
    printf("{\"self_connected\": %d, \"refused\": %d}\n", met, refused);
    return 0;
}

static _Atomic int watched = -1, done;
static struct timeval users = {7, 250000};
static struct timeval as_kept; /* the user's value as the kernel rounded it */

static void *watch(void *unused) {
    (void)unused;
    long changed = 0;
    while (!atomic_load(&done)) {
        int fd = atomic_load(&watched);
        struct timeval tv;
        socklen_t len = sizeof tv;
        if (fd >= 0 && getsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, &len) == 0) {
            if (tv.tv_sec != as_kept.tv_sec || tv.tv_usec != as_kept.tv_usec) changed++;
        }
    }
    return (void *)changed;
}

static int sndtimeo_case(int port) {
    pthread_t thread;
    pthread_create(&thread, NULL, watch, NULL);
    int refused = 0;
    for (int i = 0; i < 300; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        force_port(fd, port);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &users, sizeof users);
        socklen_t kept = sizeof as_kept;
        if (i == 0) getsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &as_kept, &kept);
        atomic_store(&watched, fd);
        struct sockaddr_in to = loopback(port);
        refused += connect(fd, (struct sockaddr *)&to, sizeof to) != 0 && errno == ECONNREFUSED;
        atomic_store(&watched, -1);
        close_rst(fd);
    }
    atomic_store(&done, 1);
    void *changed;
    pthread_join(thread, &changed);
    printf("{\"changed_seen\": %ld, \"refused\": %d}\n", (long)changed, refused);
    return 0;
}

static int addrnotavail_case(int listen_port, int only_port) {
    FILE *f = fopen("/proc/sys/net/ipv4/tcp_tw_reuse", "w"); /* this namespace's: no reuse of the TIME_WAIT */
    if (f == NULL || fputs("0", f) < 0 || fclose(f) != 0) return 3;
    int server = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in at = loopback(listen_port);
    if (bind(server, (struct sockaddr *)&at, sizeof at) != 0 || listen(server, 16) != 0) return 3;
    /* A connection from only_port, closed by the client first: TIME_WAIT on its side. */
    int first = socket(AF_INET, SOCK_STREAM, 0);
    force_port(first, only_port);
    if (connect(first, (struct sockaddr *)&at, sizeof at) != 0) return 3;
    int accepted = accept(server, NULL, NULL);
    close(first);
    usleep(100000);
    close(accepted);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    force_port(fd, only_port);
    errno = SENTINEL;
    int rc = connect(fd, (struct sockaddr *)&at, sizeof at);
    int err = errno;
    printf("{\"rc\": %d, \"errno\": %d}\n", rc, err);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 3 && strcmp(argv[1], "vfork") == 0) return vfork_case(atoi(argv[2]));
    if (argc == 3 && strcmp(argv[1], "sndtimeo") == 0) return sndtimeo_case(atoi(argv[2]));
    if (argc == 4 && strcmp(argv[1], "addrnotavail") == 0) return addrnotavail_case(atoi(argv[2]), atoi(argv[3]));
    fprintf(stderr, "usage: edges vfork PORT | sndtimeo PORT | addrnotavail LISTEN_PORT ONLY_PORT\n");
    return 2;
}
