// The live heap by block size: preloaded into a server process, it keeps, for each 16-byte size
// class (malloc_usable_size), how many blocks are allocated and not yet freed, and appends the
// table to $LIVE_SIZES_OUT (default /tmp/live-sizes.txt) on SIGUSR2. Two snapshots, before and
// after opening N idle connections, give the heap blocks each connection keeps, by size.
// Built and used by scripts/bench-idle-heap; not part of Parley.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#define CLASSES 4097
static atomic_long live[CLASSES];
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);

static inline int size_class(void *p) {
    size_t c = malloc_usable_size(p) / 16;
    return c >= CLASSES - 1 ? CLASSES - 1 : (int)c;
}
static inline void add(void *p) { if (p) atomic_fetch_add_explicit(&live[size_class(p)], 1, memory_order_relaxed); }
static inline void sub(void *p) { if (p) atomic_fetch_sub_explicit(&live[size_class(p)], 1, memory_order_relaxed); }

void *malloc(size_t size) { void *p = __libc_malloc(size); add(p); return p; }
void *calloc(size_t n, size_t size) { void *p = __libc_calloc(n, size); add(p); return p; }
void *realloc(void *q, size_t size) {
    sub(q);
    void *p = __libc_realloc(q, size);
    add(p ? p : q);
    return p;
}
void free(void *p) { sub(p); __libc_free(p); }
int posix_memalign(void **p, size_t alignment, size_t size) {
    static int (*next)(void **, size_t, size_t);
    if (!next) next = dlsym(RTLD_NEXT, "posix_memalign");
    int result = next(p, alignment, size);
    if (result == 0) add(*p);
    return result;
}
void *memalign(size_t alignment, size_t size) {
    static void *(*next)(size_t, size_t);
    if (!next) next = dlsym(RTLD_NEXT, "memalign");
    void *p = next(alignment, size);
    add(p);
    return p;
}
void *aligned_alloc(size_t alignment, size_t size) {
    static void *(*next)(size_t, size_t);
    if (!next) next = dlsym(RTLD_NEXT, "aligned_alloc");
    void *p = next(alignment, size);
    add(p);
    return p;
}

static void report(int signal) {
    (void)signal;
    const char *path = getenv("LIVE_SIZES_OUT");
    FILE *out = fopen(path ? path : "/tmp/live-sizes.txt", "a");
    if (!out) return;
    fprintf(out, "snapshot\n");
    for (int i = 0; i < CLASSES; i++) {
        long count = atomic_load(&live[i]);
        if (count) fprintf(out, "%d %ld\n", i * 16, count);
    }
    fprintf(out, "end\n");
    fclose(out);
}

__attribute__((constructor)) static void install(void) { signal(SIGUSR2, report); }
