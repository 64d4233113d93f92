/* One socket connected N times to 127.0.0.1:PORT, its source port forced to PORT
 * (IP_LOCAL_PORT_RANGE, Linux >= 6.3) so that each connect meets itself, with an
 * AF_UNSPEC disconnect after each one that connected. Prints {"connected": n, "refused": n}. */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#ifndef IP_LOCAL_PORT_RANGE
#define IP_LOCAL_PORT_RANGE 51
#endif

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    unsigned port = (unsigned)atoi(argv[1]);
    int times = atoi(argv[2]), connected = 0, refused = 0;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    unsigned range = port | port << 16;
    if (fd < 0 || setsockopt(fd, IPPROTO_IP, IP_LOCAL_PORT_RANGE, &range, sizeof range) != 0) return 2;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct sockaddr unspec;
    memset(&unspec, 0, sizeof unspec);
    unspec.sa_family = AF_UNSPEC;
    for (int i = 0; i < times; i++) {
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
            connected++;
            if (connect(fd, &unspec, sizeof unspec) != 0) return 3;
        } else if (errno == ECONNREFUSED) {
            refused++;
        } else {
            return 4;
        }
    }
    close(fd);
    printf("{\"connected\": %d, \"refused\": %d}\n", connected, refused);
    return 0;
}
