/* An MPTCP client (as curl --mptcp, mptcpize, Go's MPTCP) dialling a closed local port
 * inside the namespace's narrowed ephemeral range until its first subflow connects to
 * itself (at most 20000 attempts). Prints {"self_connected": N, "refused": N, "other": N}
 * or exits 77 when the kernel has no MPTCP. */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#ifndef IPPROTO_MPTCP
#define IPPROTO_MPTCP 262
#endif

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 40000;
    int self = 0, refused = 0, other = 0;
    for (int i = 0; i < 20000 && self == 0; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP);
        if (fd < 0) return errno == EPROTONOSUPPORT || errno == EINVAL ? 77 : 2;
        struct sockaddr_in a;
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_port = htons((unsigned short)port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
            struct sockaddr_in l;
            socklen_t ll = sizeof l;
            if (getsockname(fd, (struct sockaddr *)&l, &ll) == 0 && l.sin_port == a.sin_port) self++;
            else other++;
        } else if (errno == ECONNREFUSED) {
            refused++;
        } else {
            other++;
        }
        close(fd);
        if (refused >= 200) break; /* guarded: the only port left is the one dialled */
    }
    printf("{\"self_connected\": %d, \"refused\": %d, \"other\": %d}\n", self, refused, other);
    return 0;
}
