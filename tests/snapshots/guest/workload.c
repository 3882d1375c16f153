/*
 * Guest workload for the QEMU Instant Snapshots tests.
 *
 * Fills MB MiB of memory with a deterministic per-page pattern, then keeps
 * making passes over all pages in a scrambled order: each page is verified
 * against the pattern of its current generation, then rewritten with the
 * next generation.  Any mismatch is reported on the console with the page
 * index, so a snapshot that restores a wrong page is caught by the guest
 * itself.  The generation table lives in guest RAM too, so it is saved and
 * restored with the pages it describes.
 *
 * Usage: workload MB SEED RATE [REPORT_MS]
 *   RATE: page rewrites per second, 0 = max
 *   REPORT_MS: how often to print WL PROGRESS (default 1000)
 *
 * Console lines (parsed by the test harness):
 *   WL FILL pct=P
 *   WL READY pages=N
 *   WL PROGRESS pass=K rewrites=R errors=E rate=X
 *   WL PASS k=K errors=E
 *   WL CORRUPT page=I gen=G word=W expected=0x.. got=0x..
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define WORDS (PAGE / sizeof(uint64_t))
#define MAX_REPORTS 32

static uint64_t seed;

static uint64_t mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static uint64_t page_base(uint64_t page, uint32_t gen)
{
    return mix(seed ^ (page * 0x9e3779b97f4a7c15ULL) ^ ((uint64_t)gen << 40));
}

static void fill_page(uint64_t *p, uint64_t page, uint32_t gen)
{
    uint64_t b = page_base(page, gen);

    for (size_t i = 0; i < WORDS; i++) {
        p[i] = b + i * 0xd1b54a32d192ed03ULL;
    }
}

static unsigned long reports;

static int check_page(const uint64_t *p, uint64_t page, uint32_t gen)
{
    uint64_t b = page_base(page, gen);

    for (size_t i = 0; i < WORDS; i++) {
        uint64_t want = b + i * 0xd1b54a32d192ed03ULL;
        if (p[i] != want) {
            if (reports++ < MAX_REPORTS) {
                printf("WL CORRUPT page=%llu gen=%u word=%zu expected=0x%016llx "
                       "got=0x%016llx\n", (unsigned long long)page, gen, i,
                       (unsigned long long)want, (unsigned long long)p[i]);
                fflush(stdout);
            }
            return 1;
        }
    }
    return 0;
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t gcd(uint64_t a, uint64_t b)
{
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

int main(int argc, char **argv)
{
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: workload MB SEED RATE [REPORT_MS]\n");
        return 2;
    }
    uint64_t mb = strtoull(argv[1], NULL, 0);
    seed = strtoull(argv[2], NULL, 0);
    double rate = strtod(argv[3], NULL);
    double report = argc == 5 ? strtod(argv[4], NULL) / 1000 : 1.0;
    uint64_t npages = mb * 1024 * 1024 / PAGE;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (npages == 0) {
        fprintf(stderr, "workload: MB must be > 0\n");
        return 2;
    }
    uint8_t *mem = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint32_t *gen = calloc(npages, sizeof(*gen));
    if (mem == MAP_FAILED || !gen) {
        printf("WL ERROR cannot allocate %llu MiB\n", (unsigned long long)mb);
        return 1;
    }

    int last_pct = -1;
    for (uint64_t i = 0; i < npages; i++) {
        fill_page((uint64_t *)(mem + i * PAGE), i, 0);
        int pct = (int)(i * 10 / npages) * 10;
        if (pct != last_pct) {
            printf("WL FILL pct=%d\n", pct);
            last_pct = pct;
        }
    }
    printf("WL READY pages=%llu\n", (unsigned long long)npages);

    /* A stride coprime with npages visits every page once per pass. */
    uint64_t stride = (npages / 2 + 7919) % npages;
    while (stride == 0 || gcd(stride, npages) != 1) {
        stride = (stride + 1) % npages;
    }

    unsigned long errors = 0, rewrites = 0, last_rewrites = 0;
    double t_report = now(), t_start = t_report;
    for (unsigned long pass = 1;; pass++) {
        unsigned long pass_errors = 0;
        uint64_t idx = mix(seed + pass) % npages;
        for (uint64_t n = 0; n < npages; n++) {
            uint64_t *p = (uint64_t *)(mem + idx * PAGE);
            pass_errors += check_page(p, idx, gen[idx]);
            gen[idx]++;
            fill_page(p, idx, gen[idx]);
            rewrites++;
            idx = (idx + stride) % npages;
            if ((rewrites & 255) == 0) {
                double t = now();
                if (rate > 0) {
                    double due = t_start + rewrites / rate;
                    if (due > t) {
                        usleep((useconds_t)((due - t) * 1e6));
                        t = now();
                    }
                }
                if (t - t_report >= report) {
                    printf("WL PROGRESS pass=%lu rewrites=%lu errors=%lu "
                           "rate=%.0f\n", pass, rewrites,
                           errors + pass_errors,
                           (rewrites - last_rewrites) / (t - t_report));
                    last_rewrites = rewrites;
                    t_report = t;
                }
            }
        }
        errors += pass_errors;
        printf("WL PASS k=%lu errors=%lu\n", pass, pass_errors);
    }
}
