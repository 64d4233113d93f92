/* An unguarded reconnect loop in C, for `selfguard watch`'s tests: dials 127.0.0.1:PORT up to
 * DIALS times; counts the dials that connected to themselves. With HOLD_MS > 0 it stops at the
 * first self-connect, waits HOLD_MS, reads, and prints what the read gave (its own bytes, or the
 * errno of a socket ended from outside), then closes with a plain close(). It exits 1 s
 * after its last dial. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int port = atoi(argv[1]), dials = atoi(argv[2]), hold_ms = argc > 3 ? atoi(argv[3]) : 0;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    int met = 0;
    for (int i = 0; i < dials; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) return 1;
        if (connect(fd, (struct sockaddr *)&to, sizeof to) == 0) {
            struct sockaddr_in me;
            socklen_t len = sizeof me;
            getsockname(fd, (struct sockaddr *)&me, &len);
            if (me.sin_port == to.sin_port) {
                met++;
                if (hold_ms > 0) {
                    struct timespec pause = {hold_ms / 1000, (hold_ms % 1000) * 1000000L};
                    nanosleep(&pause, NULL);
                    char buf[16];
                    ssize_t n = send(fd, "ping", 4, MSG_NOSIGNAL);
                    if (n >= 0) n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
                    printf("{\"read_errno\": %d}\n", n >= 0 ? 0 : errno);
                    close(fd);
                    break;
                }
            }
        }
        close(fd);
    }
    printf("{\"pid\": %d, \"self_connects\": %d}\n", getpid(), met);
    fflush(stdout);
    /* Live on a little, as a service would: the watcher names a process's namespace from
     * /proc/PID, which it reads when it gets to the event, a little after the fact. */
    struct timespec linger = {1, 0};
    nanosleep(&linger, NULL);
    return 0;
}
