/*
 * How much the first user-space access to a page costs when the page was
 * placed with UFFDIO_COPY, against a page written from user space.  On a
 * host with shadow paging (a PVM guest, say) the former takes a
 * hypervisor exit per page, which a lazily loaded TCG guest pays as it
 * first touches each page.  Not part of make check:
 *   gcc -O2 -o first_touch first_touch.c && ./first_touch
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096L
#define NPAGES 65536L
#define RUN (1L << 20)

static double now(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* Seconds to read one byte of every page */
static double touch(volatile char *mem)
{
    double t = now();
    uint64_t sum = 0;

    for (long i = 0; i < NPAGES; i++) {
        sum += mem[i * PAGE + 64];
    }
    t = now() - t;
    if (sum == 42) {
        puts("");               /* keep the loads */
    }
    return t;
}

static char *anon(size_t len)
{
    char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    if (mem == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    /* As on a postcopy destination: small pages only */
    madvise(mem, len, MADV_NOHUGEPAGE);
    return mem;
}

int main(void)
{
    size_t len = NPAGES * PAGE;
    char *src = aligned_alloc(PAGE, RUN);
    struct uffdio_api api = { .api = UFFD_API };
    char *written, *placed;
    double tw, tp;
    int uffd;

    memset(src, 1, RUN);

    written = anon(len);
    tw = now();
    for (long i = 0; i < NPAGES; i += RUN / PAGE) {
        memcpy(written + i * PAGE, src, RUN);
    }
    tw = now() - tw;

    uffd = syscall(SYS_userfaultfd, O_CLOEXEC);
    if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api)) {
        perror("userfaultfd");
        return 1;
    }
    placed = anon(len);
    struct uffdio_register reg = {
        .range = { (uintptr_t)placed, len },
        .mode = UFFDIO_REGISTER_MODE_MISSING,
    };
    if (ioctl(uffd, UFFDIO_REGISTER, &reg)) {
        perror("UFFDIO_REGISTER");
        return 1;
    }
    tp = now();
    for (long i = 0; i < NPAGES; i += RUN / PAGE) {
        struct uffdio_copy copy = {
            .dst = (uintptr_t)(placed + i * PAGE),
            .src = (uintptr_t)src,
            .len = RUN,
        };
        if (ioctl(uffd, UFFDIO_COPY, &copy)) {
            perror("UFFDIO_COPY");
            return 1;
        }
    }
    tp = now() - tp;

    printf("fill %ld MiB: memcpy %.0f ms (%.2f GB/s), "
           "UFFDIO_COPY of 1 MiB runs %.0f ms (%.2f GB/s)\n",
           len >> 20, tw * 1e3, len / tw / 1e9, tp * 1e3, len / tp / 1e9);
    printf("first read of each page:  memcpy-written %.3f us, "
           "UFFDIO_COPY-placed %.3f us\n",
           touch(written) / NPAGES * 1e6, touch(placed) / NPAGES * 1e6);
    printf("second read of each page: memcpy-written %.3f us, "
           "UFFDIO_COPY-placed %.3f us\n",
           touch(written) / NPAGES * 1e6, touch(placed) / NPAGES * 1e6);
    return 0;
}
