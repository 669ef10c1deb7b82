/*
 * A preload library that counts heap allocations of a process, to check
 * how meterd's heap allocations grow with the events it stores
 * (bench/alloc_count.sh).
 *
 *   LD_PRELOAD=libhm_alloc_count.so HM_ALLOC_COUNT_FILE=PATH program ...
 *
 * Counts calls of malloc, calloc, realloc, posix_memalign and aligned_alloc
 * from every thread, and writes "allocations N" to PATH when the process
 * exits normally. glibc's dlsym itself calls calloc before the real calloc
 * is known, so that first call is served from a small static buffer.
 */
#include <dlfcn.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static atomic_ulong allocations;
static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);

static _Alignas(16) unsigned char early[4096];
static size_t early_used;

static void resolve(void)
{
    if (real_malloc != NULL)
        return;
    real_calloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "calloc");
    real_malloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
    real_realloc = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
    real_posix_memalign = (int (*)(void **, size_t, size_t))dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "aligned_alloc");
}

void *malloc(size_t size)
{
    resolve();
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    return real_malloc(size);
}

void *calloc(size_t count, size_t size)
{
    if (real_calloc == NULL) {
        /* The calloc of dlsym while calloc itself is being resolved. */
        size_t bytes = (count * size + 15) / 16 * 16;
        if (early_used + bytes > sizeof early)
            return NULL;
        void *memory = early + early_used;
        early_used += bytes;
        memset(memory, 0, bytes);
        if (real_malloc == NULL && early_used == bytes)
            resolve();
        return memory;
    }
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    return real_calloc(count, size);
}

void *realloc(void *pointer, size_t size)
{
    resolve();
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    return real_realloc(pointer, size);
}

int posix_memalign(void **out, size_t alignment, size_t size)
{
    resolve();
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    return real_posix_memalign(out, alignment, size);
}

void *aligned_alloc(size_t alignment, size_t size)
{
    resolve();
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    return real_aligned_alloc(alignment, size);
}

void free(void *pointer)
{
    static void (*real_free)(void *);
    unsigned char *bytes = pointer;
    if (bytes >= early && bytes < early + sizeof early)
        return;
    if (real_free == NULL)
        real_free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
    real_free(pointer);
}

__attribute__((destructor)) static void report(void)
{
    const char *path = getenv("HM_ALLOC_COUNT_FILE");
    if (path == NULL)
        return;
    FILE *file = fopen(path, "w");
    if (file == NULL)
        return;
    fprintf(file, "allocations %lu\n", atomic_load(&allocations));
    fclose(file);
}
