/*
 * A reconnect loop in C, as a client library would write it: ATTEMPTS fresh sockets dial
 * HOST:PORT, each sends a line and reads the reply. Prints one JSON object of outcomes.
 *
 *   client MODE HOST PORT ATTEMPTS
 *
 * MODE: blocking       connect() on a blocking socket
 *       so_error       non-blocking connect(), poll() for writable, getsockopt(SO_ERROR)
 *       connect_again  non-blocking connect(), poll() for writable, connect() again
 *       fastopen       sendto(MSG_FASTOPEN) on a blocking socket (TCP Fast Open)
 *
 * "own_bytes" counts attempts that read back exactly the line they sent: the socket was
 * connected to itself. Sockets are closed with a plain close(), as clients do: a
 * self-connected one then holds the port in TIME_WAIT.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef MSG_FASTOPEN
#define MSG_FASTOPEN 0x20000000
#endif

static int wait_for(int fd, short events, int ms) {
    struct pollfd p = {.fd = fd, .events = events};
    return poll(&p, 1, ms);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: client MODE HOST PORT ATTEMPTS\n");
        return 2;
    }
    const char *mode = argv[1];
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    int family;
    if (strchr(argv[2], ':')) {
        struct sockaddr_in6 *a = (void *)&ss;
        a->sin6_family = family = AF_INET6;
        a->sin6_port = htons(atoi(argv[3]));
        inet_pton(AF_INET6, argv[2], &a->sin6_addr);
        len = sizeof *a;
    } else {
        struct sockaddr_in *a = (void *)&ss;
        a->sin_family = family = AF_INET;
        a->sin_port = htons(atoi(argv[3]));
        inet_pton(AF_INET, argv[2], &a->sin_addr);
        len = sizeof *a;
    }
    int attempts = atoi(argv[4]);
    int own_bytes = 0, other_reply = 0, no_reply = 0, refused = 0, other_error = 0, last_errno = 0;
    for (int i = 0; i < attempts; i++) {
        int nonblocking = strcmp(mode, "so_error") == 0 || strcmp(mode, "connect_again") == 0;
        int fd = socket(family, SOCK_STREAM | (nonblocking ? SOCK_NONBLOCK : 0), 0);
        if (fd < 0) {
            perror("socket");
            return 1;
        }
        char line[32];
        int n = snprintf(line, sizeof line, "hello %d\n", i);
        int rc, err = 0, sent = 0;
        if (strcmp(mode, "fastopen") == 0) {
            rc = (int)sendto(fd, line, n, MSG_FASTOPEN | MSG_NOSIGNAL, (struct sockaddr *)&ss, len);
            err = rc < 0 ? errno : 0;
            sent = rc == n;
            rc = rc < 0 ? -1 : 0;
        } else {
            rc = connect(fd, (struct sockaddr *)&ss, len);
            err = rc < 0 ? errno : 0;
            if (nonblocking && rc < 0 && err == EINPROGRESS) {
                wait_for(fd, POLLOUT, 5000);
                if (strcmp(mode, "so_error") == 0) {
                    socklen_t el = sizeof err;
                    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
                    rc = err ? -1 : 0;
                } else {
                    rc = connect(fd, (struct sockaddr *)&ss, len);
                    err = rc < 0 ? errno : 0;
                    if (rc < 0 && err == EISCONN) rc = 0, err = 0;
                }
            }
        }
        if (rc < 0) {
            if (err == ECONNREFUSED)
                refused++;
            else
                other_error++, last_errno = err;
            close(fd);
            continue;
        }
        if (!sent && send(fd, line, n, MSG_NOSIGNAL) != n) {
            other_error++, last_errno = errno;
            close(fd);
            continue;
        }
        char reply[64];
        ssize_t got = -1;
        if (wait_for(fd, POLLIN, 2000) > 0) got = recv(fd, reply, sizeof reply, 0);
        if (got == n && memcmp(reply, line, n) == 0)
            own_bytes++;
        else if (got > 0)
            other_reply++;
        else
            no_reply++;
        close(fd);
    }
    printf("{\"own_bytes\": %d, \"other_reply\": %d, \"no_reply\": %d, \"refused\": %d, \"other_error\": %d, "
           "\"last_errno\": %d}\n",
           own_bytes, other_reply, no_reply, refused, other_error, last_errno);
    return 0;
}
