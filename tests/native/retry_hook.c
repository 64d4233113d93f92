/*
 * A preload for the tests, loaded after the native guard: a hook between two attempts of
 * one connect(), as the Python guard's tests use a listener. Every connect goes to the
 * kernel as it came; when the kernel answers EADDRNOTAVAIL, the socket's per-socket port
 * range (IP_LOCAL_PORT_RANGE) is cleared before the answer is returned, so the guard's
 * retry may pick another source port. Both answers are the kernel's.
 *
 * And a slow one: a reset (connect() with AF_UNSPEC) that comes through here takes 5 ms
 * more, as behind a wrapper that logs or takes a lock -- long enough for a timeout the
 * guard would lower to be seen lowered (the kernel keeps SO_SNDTIMEO in jiffies).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);
    connect_fn next = (connect_fn)dlsym(RTLD_NEXT, "connect");
    if (addr != NULL && len >= sizeof(sa_family_t) && addr->sa_family == AF_UNSPEC) usleep(5000);
    int rc = next(fd, addr, len);
    if (rc != 0 && errno == EADDRNOTAVAIL) {
        unsigned none = 0;
        setsockopt(fd, IPPROTO_IP, 51, &none, sizeof none);
        errno = EADDRNOTAVAIL;
    }
    return rc;
}
