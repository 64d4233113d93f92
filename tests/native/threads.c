/*
 * THREADS threads each make ATTEMPTS forced self-connects at once, through the native
 * guard, and the process then reports the outcomes, the guard's counters and its open
 * fds before and after, as one JSON object.
 *
 *   threads MODE THREADS ATTEMPTS FIRST_PORT
 *
 * Thread t forces its sockets onto port FIRST_PORT + 2t (IP_LOCAL_PORT_RANGE, Linux >=
 * 6.3) and dials 127.0.0.1 on that port, where nothing listens: every attempt connects
 * the socket to itself. MODE: blocking (connect) or so_error (non-blocking connect, poll,
 * getsockopt(SO_ERROR)). Sockets are closed with RST, so no TIME_WAIT is left behind.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define IP_LOCAL_PORT_RANGE 51

static int attempts, first_port, so_error_mode;

struct outcome {
    int index; /* the thread's */
    int refused, connected_to_self, connected_elsewhere, other;
};

static int open_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    while (readdir(d)) n++;
    closedir(d);
    return n - 3; /* ".", ".." and the directory's own fd */
}

static void *dial(void *arg) {
    struct outcome *o = arg;
    int port = first_port + 2 * o->index;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    for (int i = 0; i < attempts; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | (so_error_mode ? SOCK_NONBLOCK : 0), 0);
        unsigned range = (unsigned)port | (unsigned)port << 16;
        setsockopt(fd, IPPROTO_IP, IP_LOCAL_PORT_RANGE, &range, sizeof range);
        int rc = connect(fd, (struct sockaddr *)&to, sizeof to), err = rc ? errno : 0;
        if (so_error_mode && rc < 0 && err == EINPROGRESS) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            poll(&p, 1, 5000);
            socklen_t len = sizeof err;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
            rc = err ? -1 : 0;
        }
        if (rc == 0) {
            struct sockaddr_in local, peer;
            socklen_t ll = sizeof local, pl = sizeof peer;
            getsockname(fd, (struct sockaddr *)&local, &ll);
            getpeername(fd, (struct sockaddr *)&peer, &pl);
            if (local.sin_port == peer.sin_port && local.sin_addr.s_addr == peer.sin_addr.s_addr)
                o->connected_to_self++;
            else
                o->connected_elsewhere++;
        } else if (err == ECONNREFUSED) {
            o->refused++;
        } else {
            o->other++;
        }
        struct linger l = {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        close(fd);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: threads MODE THREADS ATTEMPTS FIRST_PORT\n");
        return 2;
    }
    so_error_mode = strcmp(argv[1], "so_error") == 0;
    int n = atoi(argv[2]);
    attempts = atoi(argv[3]);
    first_port = atoi(argv[4]);
    int fds_before = open_fds();
    pthread_t *threads = calloc(n, sizeof *threads);
    struct outcome *outcomes = calloc(n, sizeof *outcomes);
    for (int t = 0; t < n; t++) {
        outcomes[t].index = t;
        pthread_create(&threads[t], NULL, dial, &outcomes[t]);
    }
    struct outcome total = {0};
    for (int t = 0; t < n; t++) {
        pthread_join(threads[t], NULL);
        total.refused += outcomes[t].refused;
        total.connected_to_self += outcomes[t].connected_to_self;
        total.connected_elsewhere += outcomes[t].connected_elsewhere;
        total.other += outcomes[t].other;
    }
    int fds_after = open_fds();
    /* The ports must be free for a server at once: no TIME_WAIT, no socket left. */
    int bindable = 0;
    for (int t = 0; t < n; t++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(first_port + 2 * t)};
        inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
        bindable += bind(s, (struct sockaddr *)&a, sizeof a) == 0;
        close(s);
    }
    printf("{\"refused\": %d, \"connected_to_self\": %d, \"connected_elsewhere\": %d, \"other\": %d, "
           "\"fds_before\": %d, \"fds_after\": %d, \"bindable\": %d",
           total.refused, total.connected_to_self, total.connected_elsewhere, total.other, fds_before, fds_after,
           bindable);
    int (*stats)(uint64_t *, int) = (int (*)(uint64_t *, int))dlsym(RTLD_DEFAULT, "selfguard_native_stats");
    const char *(*names)(void) = (const char *(*)(void))dlsym(RTLD_DEFAULT, "selfguard_native_counter_names");
    if (stats && names) {
        uint64_t values[16] = {0};
        int count = stats(values, 16);
        char list[256];
        snprintf(list, sizeof list, "%s", names());
        char *save = NULL, *name = strtok_r(list, " ", &save);
        printf(", \"native\": {");
        for (int i = 0; i < count && name; i++, name = strtok_r(NULL, " ", &save))
            printf("%s\"%s\": %llu", i ? ", " : "", name, (unsigned long long)values[i]);
        printf("}");
    }
    printf("}\n");
    free(threads);
    free(outcomes);
    return 0;
}
