/* Included before preload.c by setup.py (-include): keeps the library loadable on glibc 2.17.
 *
 * Linked against glibc 2.34 or later, dlsym (and dlopen, which finds the vDSO's clock)
 * binds to dlsym@GLIBC_2.34 (libdl moved into
 * libc then), and the library would not load on any older glibc. Every other symbol it
 * uses is older than glibc 2.17 (its clock is the vDSO's, or a raw system call). Binding dlsym to
 * its first version -- which glibc 2.34+ still provides in libc.so.6, and older glibc in
 * libdl.so.2, which setup.py links explicitly -- makes the wheel's manylinux_2_17 tag true:
 * auditwheel checks it (.ci/run). Not glibc (musl): nothing to do.
 */
#include <features.h>

#if defined(__GLIBC__)
#if defined(__x86_64__)
__asm__(".symver dlsym,dlsym@GLIBC_2.2.5");
__asm__(".symver dlopen,dlopen@GLIBC_2.2.5");
#elif defined(__aarch64__)
__asm__(".symver dlsym,dlsym@GLIBC_2.17");
__asm__(".symver dlopen,dlopen@GLIBC_2.17");
#endif
#endif
