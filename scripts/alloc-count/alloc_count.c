// A malloc counter for measuring allocations per delivery: preloaded into a server process,
// it counts malloc, calloc, realloc and posix_memalign calls, and prints the totals to stderr
// on SIGUSR2. Built and used by scripts/bench-allocations; not part of Parley.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_ulong count;
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern int __posix_memalign(void **, size_t, size_t);

void *malloc(size_t size) { atomic_fetch_add_explicit(&count, 1, memory_order_relaxed); return __libc_malloc(size); }
void *calloc(size_t n, size_t size) { atomic_fetch_add_explicit(&count, 1, memory_order_relaxed); return __libc_calloc(n, size); }
void *realloc(void *p, size_t size) { atomic_fetch_add_explicit(&count, 1, memory_order_relaxed); return __libc_realloc(p, size); }
int posix_memalign(void **p, size_t alignment, size_t size) {
    atomic_fetch_add_explicit(&count, 1, memory_order_relaxed);
    static int (*next)(void **, size_t, size_t);
    if (!next) next = dlsym(RTLD_NEXT, "posix_memalign");
    return next(p, alignment, size);
}

static void report(int signal) {
    (void)signal;
    char line[64];
    int length = snprintf(line, sizeof line, "allocations %lu\n", atomic_load(&count));
    write(2, line, (size_t)length);
}

__attribute__((constructor)) static void install(void) { signal(SIGUSR2, report); }
