/*
 * Postcopy from a mapped-ram file: lazy load of guest RAM
 *
 * Copyright (c) 2026 QEMU Instant Snapshots contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A mapped-ram file keeps every RAM page at a fixed offset, with a bitmap
 * of the pages it holds (docs/devel/migration/mapped-ram.rst).  With the
 * postcopy-ram capability on the destination, the loader reads only that
 * index and the device state, starts the guest, and lets the postcopy
 * machinery (userfaultfd registration, fault thread, receivedmap, page
 * placement, blocktime) fill RAM: the fault thread asks us for a page
 * instead of asking a source over the return path, and we read it from
 * the file by offset.  Prefetch threads place the remaining pages in large
 * sequential chunks meanwhile.  See docs/devel/migration/postcopy-file.rst.
 */

#include "qemu/osdep.h"
#include "qemu/bitops.h"
#include "qemu/error-report.h"
#include "qemu/main-loop.h"
#include "qemu/memalign.h"
#include "qemu/rcu.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "qapi/qapi-visit-migration.h"
#include "migration/misc.h"
#include "monitor/monitor.h"
#include "io/channel-file.h"
#include "system/ramblock.h"
#include "system/runstate.h"
#include "exec/target_page.h"
#include "migration.h"
#include "migration-stats.h"
#include "options.h"
#include "postcopy-ram.h"
#include "postcopy-file.h"
#include "qemu-file.h"
#include "ram.h"
#include "trace.h"

/* Prefetch reads this much of the file at a time (at least a host page). */
#define PREFETCH_CHUNK (1 * MiB)
/*
 * and places at most this much with one ioctl: a vCPU that faults on a
 * page of the run waits for all of it.
 */
#define PREFETCH_RUN (32 * KiB)

typedef struct PostcopyFileBlock {
    RAMBlock *rb;
    /* One bit per host page: some thread is placing, or has placed, it. */
    unsigned long *claimed;
    uint64_t host_pages;
} PostcopyFileBlock;

struct PostcopyFile {
    QIOChannel *ioc;            /* read with qatomic_read(), see recover */
    GPtrArray *old_iocs;        /* replaced by migrate-recover */
    GPtrArray *old_paths;
    char *path;                 /* of the file, for error messages */
    uint64_t size;
    PostcopyFileBlock *blocks;
    int nblocks;
    uint8_t *fault_buf;         /* the fault thread's page buffer */
    QemuThread *prefetch;
    int nthreads;
    uint64_t host_pages_total;
    /* Updated atomically. */
    uint64_t host_pages_done;
    uint64_t pages_faulted;
    uint64_t pages_prefetched;
    uint64_t bytes_read;
    bool failed;
    bool fault_thread_paused;   /* waits in postcopy_pause_fault_thread() */
    /*
     * Taken by migrate-recover and migrate_cancel, which may run at once,
     * one in-band and one out-of-band.
     */
    QemuMutex recover_lock;
    QemuEvent all_done;         /* set when host_pages_done hits the total */
};

/* What the last load did, for query-migrate once it is over */
static PostcopyFileInfo last_info;
static bool have_last_info;

bool postcopy_file_enabled(void)
{
    return migrate_postcopy_ram() && migrate_mapped_ram();
}

bool postcopy_file_active(MigrationIncomingState *mis)
{
    return mis->postcopy_file != NULL;
}

static PostcopyFileBlock *pf_block(PostcopyFile *pf, RAMBlock *rb)
{
    for (int i = 0; i < pf->nblocks; i++) {
        if (pf->blocks[i].rb == rb) {
            return &pf->blocks[i];
        }
    }
    return NULL;
}

static void pf_get_info(PostcopyFile *pf, PostcopyFileInfo *pi)
{
    pi->pages_total = pf->host_pages_total;
    pi->pages_resident = qatomic_read(&pf->host_pages_done);
    pi->pages_faulted = qatomic_read(&pf->pages_faulted);
    pi->pages_prefetched = qatomic_read(&pf->pages_prefetched);
    pi->bytes_read = qatomic_read(&pf->bytes_read);
}

/* Claim host page @hp of @b; false if another thread already has it. */
static bool pf_claim(PostcopyFileBlock *b, long hp)
{
    unsigned long mask = BIT_MASK(hp);

    return !(qatomic_fetch_or(b->claimed + BIT_WORD(hp), mask) & mask);
}

static void pf_pages_done(PostcopyFile *pf, uint64_t n)
{
    if (qatomic_add_fetch(&pf->host_pages_done, n) == pf->host_pages_total) {
        qemu_event_set(&pf->all_done);
    }
}

/* Give up the claims of @n pages from @hp, which could not be placed */
static void pf_unclaim(PostcopyFileBlock *b, long hp, long n)
{
    for (long p = hp; p < hp + n; p++) {
        qatomic_and(b->claimed + BIT_WORD(p), ~BIT_MASK(p));
    }
}

static void pf_fail(MigrationIncomingState *mis, Error *err)
{
    PostcopyFile *pf = mis->postcopy_file;

    /*
     * The guest must never run on a page that was not loaded: keep the
     * userfaultfd registered, so that vCPUs touching missing pages wait,
     * and report the error.  migrate-recover resumes the load.
     */
    if (!qatomic_xchg(&pf->failed, true)) {
        migrate_set_error(migrate_get_current(), err);
        error_report_err(err);
        migrate_set_state(&mis->state, MIGRATION_STATUS_POSTCOPY_ACTIVE,
                          MIGRATION_STATUS_POSTCOPY_PAUSED);
        /* Wake the fill thread if it waits for the last pages */
        qemu_event_set(&pf->all_done);
    } else {
        error_free(err);
    }
}

/* Does the file hold any target page of host page @hp of @rb? */
static bool pf_page_has_data(RAMBlock *rb, long hp)
{
    long n = qemu_ram_pagesize(rb) >> TARGET_PAGE_BITS;

    return find_next_bit(rb->file_bmap, (hp + 1) * n, hp * n) < (hp + 1) * n;
}

/*
 * Place the @n host pages from @hp of @b, which the caller has claimed,
 * with one ioctl: copied from @buf, or zero pages when @buf is NULL.
 * One UFFDIO_COPY per run rather than per page is what makes the fill
 * fast.
 */
static int pf_place_run(MigrationIncomingState *mis, PostcopyFile *pf,
                        PostcopyFileBlock *b, long hp, long n, uint8_t *buf)
{
    RAMBlock *rb = b->rb;
    size_t psize = qemu_ram_pagesize(rb);
    long tpp = psize >> TARGET_PAGE_BITS;
    int ret;

    if (buf && tpp > 1) {
        /* A huge page the file holds in part: the rest is zero */
        for (long t = 0; t < n * tpp; t++) {
            if (!test_bit(hp * tpp + t, rb->file_bmap)) {
                memset(buf + t * TARGET_PAGE_SIZE, 0, TARGET_PAGE_SIZE);
            }
        }
    }
    ret = postcopy_place_pages(mis, rb->host + hp * psize, buf, n * psize,
                               rb);
    if (ret) {
        Error *err = NULL;

        error_setg_errno(&err, -ret, "postcopy from file: cannot place "
                         "0x%zx bytes at 0x%zx of RAM block %s", n * psize,
                         hp * psize, rb->idstr);
        pf_unclaim(b, hp, n);
        pf_fail(mis, err);
        return ret;
    }
    pf_pages_done(pf, n);
    return 0;
}

/*
 * Read @len bytes at @start of the pages of @b into @buf.  On failure the
 * load pauses with an error that names the file and the offset.
 */
static bool pf_read(MigrationIncomingState *mis, PostcopyFile *pf,
                    PostcopyFileBlock *b, ram_addr_t start, size_t len,
                    uint8_t *buf)
{
    Error *err = NULL;
    uint64_t off = b->rb->pages_offset + start;
    ssize_t ret = qio_channel_pread(qatomic_read(&pf->ioc), (char *)buf, len,
                                    off, &err);

    if (ret == len) {
        qatomic_add(&pf->bytes_read, len);
        return true;
    }
    if (!err) {
        error_setg(&err, "short read (%zd of %zu bytes)", ret, len);
    }
    error_prepend(&err, "postcopy from file: cannot read 0x%zx bytes at "
                  "0x" RAM_ADDR_FMT " of RAM block %s at offset 0x%" PRIx64
                  " of %s: ", len, start, b->rb->idstr, off,
                  qatomic_read(&pf->path));
    pf_fail(mis, err);
    return false;
}

int postcopy_file_request_page(MigrationIncomingState *mis, RAMBlock *rb,
                               ram_addr_t start, uint64_t haddr, uint32_t tid)
{
    PostcopyFile *pf = mis->postcopy_file;
    PostcopyFileBlock *b = pf_block(pf, rb);
    long hp;
    int ret;

    if (!b) {
        error_report("postcopy from file: fault in unknown RAM block %s",
                     rb->idstr);
        return -EINVAL;
    }
    WITH_QEMU_LOCK_GUARD(&mis->page_request_mutex) {
        if (ramblock_recv_bitmap_test_byte_offset(rb, start)) {
            return 0;
        }
        mark_postcopy_blocktime_begin(haddr, tid, rb);
    }
    hp = start / qemu_ram_pagesize(rb);
    if (!pf_claim(b, hp)) {
        /* A prefetch thread is placing it; that wakes the faulting thread */
        return 0;
    }
    trace_postcopy_file_fault(rb->idstr, start);
    if (!pf_page_has_data(rb, hp)) {
        ret = pf_place_run(mis, pf, b, hp, 1, NULL);
    } else if (pf_read(mis, pf, b, start, qemu_ram_pagesize(rb),
                       pf->fault_buf)) {
        ret = pf_place_run(mis, pf, b, hp, 1, pf->fault_buf);
    } else if (postcopy_state_get() != POSTCOPY_INCOMING_RUNNING) {
        /*
         * A device read guest RAM while its state was loaded, and the main
         * thread waits in this fault, so nobody could migrate-recover.
         * Let the device load go on with a zero page: the load has failed
         * and postcopy_file_start() will not start the guest.
         */
        ret = pf_place_run(mis, pf, b, hp, 1, NULL);
    } else {
        pf_unclaim(b, hp, 1);
        ret = -EIO;
    }
    if (!ret) {
        qatomic_inc(&pf->pages_faulted);
    } else {
        /* The fault thread now waits for migrate-recover, then retries */
        qatomic_set(&pf->fault_thread_paused, true);
    }
    return ret;
}

/*
 * Prefetch thread @idx of @pf->nthreads: walk every block in chunks,
 * taking every nthreads-th chunk, and place the pages nobody has claimed.
 */
typedef struct PrefetchArg {
    MigrationIncomingState *mis;
    int idx;
} PrefetchArg;

static void *postcopy_file_prefetch_thread(void *opaque)
{
    PrefetchArg *arg = opaque;
    MigrationIncomingState *mis = arg->mis;
    PostcopyFile *pf = mis->postcopy_file;
    size_t bufsize = MAX(PREFETCH_CHUNK, mis->largest_page_size);
    uint8_t *buf = qemu_memalign(qemu_real_host_page_size(), bufsize);

    rcu_register_thread();
    for (int i = 0; i < pf->nblocks && !qatomic_read(&pf->failed); i++) {
        PostcopyFileBlock *b = &pf->blocks[i];
        RAMBlock *rb = b->rb;
        size_t psize = qemu_ram_pagesize(rb);
        size_t chunk = QEMU_ALIGN_DOWN(bufsize, psize);
        long max_run = MAX(PREFETCH_RUN / psize, 1);
        uint64_t nchunks = DIV_ROUND_UP(rb->used_length, chunk);

        for (uint64_t c = arg->idx; c < nchunks; c += pf->nthreads) {
            ram_addr_t off = c * chunk;
            size_t len = MIN(chunk, rb->used_length - off);
            long hp = off / psize, hp_end = hp + len / psize;
            long tp = off >> TARGET_PAGE_BITS;
            long tp_end = tp + (len >> TARGET_PAGE_BITS);
            bool have_data;

            if (qatomic_read(&pf->failed)) {
                break;
            }
            if (find_next_zero_bit(b->claimed, hp_end, hp) >= hp_end) {
                continue;       /* all faulted in already */
            }
            have_data = find_next_bit(rb->file_bmap, tp_end, tp) < tp_end;
            if (have_data && !pf_read(mis, pf, b, off, len, buf)) {
                break;
            }
            trace_postcopy_file_prefetch(rb->idstr, off, len);
            /* Place runs of unclaimed pages, data and zero runs apart */
            for (long p = hp, q; p < hp_end; p = q) {
                bool data;

                if (!pf_claim(b, p)) {
                    q = p + 1;
                    continue;
                }
                data = have_data && pf_page_has_data(rb, p);
                for (q = p + 1; q < MIN(hp_end, p + max_run); q++) {
                    if ((have_data && pf_page_has_data(rb, q)) != data ||
                        !pf_claim(b, q)) {
                        break;
                    }
                }
                if (pf_place_run(mis, pf, b, p, q - p,
                                 data ? buf + (p * psize - off) : NULL)) {
                    goto out;
                }
                qatomic_add(&pf->pages_prefetched, q - p);
            }
        }
    }
out:
    rcu_unregister_thread();
    qemu_vfree(buf);
    g_free(arg);
    return NULL;
}

static void postcopy_file_done_bh(void *opaque)
{
    migration_incoming_state_destroy();
}

/* Runs the prefetch threads and completes the migration when all is in. */
static void *postcopy_file_fill_thread(void *opaque)
{
    MigrationIncomingState *mis = opaque;
    PostcopyFile *pf = mis->postcopy_file;

    qemu_event_set(&mis->thread_sync_event);
    trace_postcopy_file_fill_start(pf->host_pages_total,
                                   qatomic_read(&pf->host_pages_done));
    for (int i = 0; i < pf->nthreads; i++) {
        PrefetchArg *arg = g_new(PrefetchArg, 1);
        g_autofree char *name = g_strdup_printf("mig/dst/pf%d", i);

        arg->mis = mis;
        arg->idx = i;
        qemu_thread_create(&pf->prefetch[i], name,
                           postcopy_file_prefetch_thread, arg,
                           QEMU_THREAD_JOINABLE);
    }
    for (int i = 0; i < pf->nthreads; i++) {
        qemu_thread_join(&pf->prefetch[i]);
    }
    if (qatomic_read(&pf->failed)) {
        /* Paused with the missing pages protected, see pf_fail() */
        return NULL;
    }
    /* Pages the fault thread claimed may still be in flight */
    qemu_event_wait(&pf->all_done);
    if (qatomic_read(&pf->failed)) {
        return NULL;
    }
    trace_postcopy_file_fill_done(qatomic_read(&pf->pages_faulted),
                                  qatomic_read(&pf->pages_prefetched),
                                  qatomic_read(&pf->bytes_read));
    migrate_set_state(&mis->state, MIGRATION_STATUS_POSTCOPY_ACTIVE,
                      MIGRATION_STATUS_COMPLETED);
    postcopy_state_set(POSTCOPY_INCOMING_END);
    migration_bh_schedule(postcopy_file_done_bh, mis);
    return NULL;
}

/* The size of the file behind @ioc, which must be a file: channel */
static bool pf_file_size(QIOChannel *ioc, uint64_t *size, Error **errp)
{
    struct stat st;

    if (!object_dynamic_cast(OBJECT(ioc), TYPE_QIO_CHANNEL_FILE) ||
        fstat(QIO_CHANNEL_FILE(ioc)->fd, &st) < 0) {
        error_setg(errp, "postcopy from file needs a file: migration");
        return false;
    }
    *size = st.st_size;
    return true;
}

bool postcopy_file_check_block(QEMUFile *f, RAMBlock *block,
                               ram_addr_t length, uint64_t page_size,
                               uint64_t bitmap_offset, Error **errp)
{
    size_t bitmap_size = BITS_TO_LONGS(length >> TARGET_PAGE_BITS) *
                         sizeof(unsigned long);
    uint64_t size;

    if (length != block->used_length || page_size != TARGET_PAGE_SIZE) {
        error_setg(errp, "RAM block %s: the file holds 0x" RAM_ADDR_FMT
                   " bytes in %" PRIu64 " byte pages, this machine has 0x"
                   RAM_ADDR_FMT " bytes in %u byte pages", block->idstr,
                   length, page_size, block->used_length, TARGET_PAGE_SIZE);
        return false;
    }
    if (bitmap_offset + bitmap_size > block->pages_offset) {
        error_setg(errp, "RAM block %s: corrupt mapped-ram header: bitmap "
                   "at 0x%" PRIx64 " overlaps pages at 0x%" PRIx64,
                   block->idstr, bitmap_offset, block->pages_offset);
        return false;
    }
    if (!pf_file_size(qemu_file_get_ioc(f), &size, errp)) {
        return false;
    }
    if (block->pages_offset + length > size) {
        error_setg(errp, "RAM block %s: the file is truncated or corrupt: "
                   "its pages end at 0x%" PRIx64 ", the file at 0x%" PRIx64,
                   block->idstr, block->pages_offset + length, size);
        return false;
    }
    return true;
}

int postcopy_file_prepare(MigrationIncomingState *mis, QEMUFile *f,
                          Error **errp)
{
    QIOChannel *ioc = qemu_file_get_ioc(f);
    g_autofree char *fdpath = NULL;
    PostcopyFile *pf;
    uint64_t size;
    RAMBlock *rb;
    int n = 0;

    have_last_info = false;
    if (!pf_file_size(ioc, &size, errp)) {
        return -1;
    }
    pf = g_new0(PostcopyFile, 1);
    pf->size = size;
    fdpath = g_strdup_printf("/proc/self/fd/%d", QIO_CHANNEL_FILE(ioc)->fd);
    pf->path = g_file_read_link(fdpath, NULL);
    if (!pf->path) {
        pf->path = g_strdup("the migration file");
    }

    RAMBLOCK_FOREACH_NOT_IGNORED(rb) {
        n++;
    }
    pf->blocks = g_new0(PostcopyFileBlock, n);
    RAMBLOCK_FOREACH_NOT_IGNORED(rb) {
        PostcopyFileBlock *b = &pf->blocks[pf->nblocks++];
        size_t psize = qemu_ram_pagesize(rb);

        if (!rb->file_bmap) {
            error_setg(errp, "postcopy from file: the file has no pages for "
                       "RAM block %s", rb->idstr);
            goto fail;
        }

        b->rb = rb;
        b->host_pages = rb->used_length / psize;
        b->claimed = bitmap_new(b->host_pages);
        pf->host_pages_total += b->host_pages;
        /*
         * Never populate memory a RamDiscardManager discarded.  Asking
         * per page costs milliseconds per GiB, so ask only blocks that
         * have a manager: this runs before the guest starts.
         */
        if (rb->mr && memory_region_has_ram_discard_manager(rb->mr)) {
            for (uint64_t p = 0; p < b->host_pages; p++) {
                if (ramblock_page_is_discarded(rb, p * psize)) {
                    set_bit(p, b->claimed);
                    pf->host_pages_done++;
                }
            }
        }
    }
    pf->ioc = QIO_CHANNEL(object_ref(OBJECT(ioc)));
    pf->old_iocs = g_ptr_array_new_with_free_func(object_unref);
    pf->old_paths = g_ptr_array_new_with_free_func(g_free);
    pf->fault_buf = qemu_memalign(qemu_real_host_page_size(),
                                  mis->largest_page_size);
    pf->nthreads = migrate_postcopy_file_threads();
    pf->prefetch = g_new0(QemuThread, pf->nthreads);
    qemu_event_init(&pf->all_done, pf->host_pages_done == pf->host_pages_total);
    qemu_mutex_init(&pf->recover_lock);
    mis->postcopy_file = pf;

    /* What ADVISE and LISTEN do for a network postcopy */
    postcopy_state_set(POSTCOPY_INCOMING_ADVISE);
    if (ram_postcopy_incoming_init(mis, errp)) {
        goto fail_setup;
    }
    if (postcopy_ram_prepare_discard(mis)) {
        error_setg(errp, "postcopy from file: cannot prepare RAM");
        goto fail_setup;
    }
    if (postcopy_ram_incoming_setup(mis)) {
        error_setg(errp, "postcopy from file: cannot register RAM with "
                   "userfaultfd");
        goto fail_setup;
    }
    trace_postcopy_file_prepare(pf->nblocks, pf->host_pages_total);
    return 0;

fail_setup:
    /* migration_incoming_state_destroy() cleans up from here */
    return -1;

fail:
    for (int i = 0; i < pf->nblocks; i++) {
        g_free(pf->blocks[i].claimed);
    }
    g_free(pf->blocks);
    g_free(pf->path);
    g_free(pf);
    return -1;
}

static void postcopy_file_run_bh(void *opaque)
{
    MigrationIncomingState *mis = opaque;

    migration_incoming_start_vm(mis);
    mis->have_listen_thread = true;
    postcopy_thread_create(mis, &mis->listen_thread, "mig/dst/fill",
                           postcopy_file_fill_thread, QEMU_THREAD_JOINABLE);
}

bool postcopy_file_start(MigrationIncomingState *mis, Error **errp)
{
    if (qatomic_read(&mis->postcopy_file->failed)) {
        /* The read error itself is the migration's error already */
        error_setg(errp, "postcopy from file: a device read guest RAM that "
                   "could not be loaded");
        return false;
    }
    postcopy_state_set(POSTCOPY_INCOMING_RUNNING);
    migrate_set_state(&mis->state, MIGRATION_STATUS_ACTIVE,
                      MIGRATION_STATUS_POSTCOPY_ACTIVE);
    migration_bh_schedule(postcopy_file_run_bh, mis);
    return true;
}

/* Say what is lost as QEMU exits with a load paused or given up */
static void pf_report_exit(MigrationIncomingState *mis)
{
    MigrationState *s = migrate_get_current();
    PostcopyFile *pf = mis->postcopy_file;

    WITH_QEMU_LOCK_GUARD(&s->error_mutex) {
        error_report("postcopy from file: exiting with %" PRIu64 " of %"
                     PRIu64 " host pages not loaded%s%s",
                     pf->host_pages_total - qatomic_read(&pf->host_pages_done),
                     pf->host_pages_total, s->error ? ": " : "",
                     s->error ? error_get_pretty(s->error) : "");
    }
}

static void postcopy_file_give_up_bh(void *opaque)
{
    qemu_system_shutdown_request_with_code(SHUTDOWN_CAUSE_HOST_ERROR,
                                           EXIT_FAILURE);
}

/*
 * Runs in the monitor's I/O thread after an out-of-band migrate_cancel
 * was answered.  The main loop may be blocked for good (see
 * postcopy_file_cancel()), so exit from here, and with _exit(): exit()
 * would run the exit notifiers, which take the BQL.
 */
static void postcopy_file_give_up_oob_bh(void *opaque)
{
    pf_report_exit(migration_incoming_get_current());
    _exit(EXIT_FAILURE);
}

bool postcopy_file_cancel(MigrationIncomingState *mis, Error **errp)
{
    PostcopyFile *pf = mis->postcopy_file;

    QEMU_LOCK_GUARD(&pf->recover_lock);
    if (mis->state != MIGRATION_STATUS_POSTCOPY_PAUSED) {
        error_setg(errp, "postcopy from file: the load can be cancelled "
                   "only while it is paused; now it is %s",
                   MigrationStatus_str(mis->state));
        return false;
    }
    migrate_set_state(&mis->state, MIGRATION_STATUS_POSTCOPY_PAUSED,
                      MIGRATION_STATUS_FAILED);
    trace_postcopy_file_cancel(qatomic_read(&pf->host_pages_done),
                               pf->host_pages_total, !bql_locked());
    if (!mis->exit_on_error) {
        return true;
    }
    /*
     * Unlike a failed eager load, nothing is torn down: unregistering
     * userfaultfd would let vCPUs that wait for a page run on an empty
     * one.  Exit as a network postcopy does when it cannot go on.  Ask
     * for it from the monitor's context, so that the reply to this
     * command goes out first.
     *
     * In-band, the main loop runs, and postcopy_file_shutdown() exits
     * once qemu_cleanup() has flushed the monitors.  Out-of-band, it may
     * not: under TCG a vCPU can wait for a missing page while it holds
     * the BQL, and so can a monitor command that reads guest RAM.  Then
     * nothing that needs the main loop ever runs again, so exit from the
     * monitor's I/O thread, where this command runs.
     */
    if (bql_locked()) {
        aio_bh_schedule_oneshot(iohandler_get_aio_context(),
                                postcopy_file_give_up_bh, NULL);
    } else {
        aio_bh_schedule_oneshot(qemu_get_current_aio_context(),
                                postcopy_file_give_up_oob_bh, NULL);
    }
    return true;
}

void postcopy_file_shutdown(void)
{
    MigrationIncomingState *mis = migration_incoming_get_current();

    if (!mis->postcopy_file ||
        (mis->state != MIGRATION_STATUS_POSTCOPY_PAUSED &&
         mis->state != MIGRATION_STATUS_FAILED)) {
        return;
    }
    /*
     * vCPUs that wait for a page that will not come cannot be stopped,
     * so vm_shutdown() would wait for them forever.  Exit as if killed:
     * disk images are left as after a crash, which they survive, and the
     * migration file is only ever read.
     */
    pf_report_exit(mis);
    /* Send what the monitors owe, such as the reply to quit */
    monitor_cleanup();
    exit(mis->state == MIGRATION_STATUS_FAILED ? EXIT_FAILURE : EXIT_SUCCESS);
}

void postcopy_file_cleanup(MigrationIncomingState *mis)
{
    PostcopyFile *pf = mis->postcopy_file;

    if (!pf) {
        return;
    }
    pf_get_info(pf, &last_info);
    have_last_info = true;
    for (int i = 0; i < pf->nblocks; i++) {
        g_free(pf->blocks[i].claimed);
    }
    g_free(pf->blocks);
    g_free(pf->prefetch);
    qemu_vfree(pf->fault_buf);
    object_unref(OBJECT(pf->ioc));
    g_ptr_array_free(pf->old_iocs, true);
    g_ptr_array_free(pf->old_paths, true);
    g_free(pf->path);
    qemu_event_destroy(&pf->all_done);
    qemu_mutex_destroy(&pf->recover_lock);
    g_free(pf);
    mis->postcopy_file = NULL;
}

bool postcopy_file_recover(MigrationIncomingState *mis, const char *uri,
                           Error **errp)
{
    PostcopyFile *pf = mis->postcopy_file;
    g_autoptr(MigrationChannel) channel = NULL;
    QIOChannelFile *fioc;
    const char *path;
    struct stat st;

    QEMU_LOCK_GUARD(&pf->recover_lock);
    if (mis->state != MIGRATION_STATUS_POSTCOPY_PAUSED) {
        /* given up by migrate_cancel meanwhile */
        error_setg(errp, "postcopy from file: the load is %s, not paused",
                   MigrationStatus_str(mis->state));
        return false;
    }
    if (!migrate_uri_parse(uri, &channel, errp)) {
        return false;
    }
    if (channel->addr->transport != MIGRATION_ADDRESS_TYPE_FILE) {
        error_setg(errp, "postcopy from file resumes from a file: URI");
        return false;
    }
    path = channel->addr->u.file.filename;
    fioc = qio_channel_file_new_path(path, O_RDONLY, 0, errp);
    if (!fioc) {
        return false;
    }
    if (fstat(fioc->fd, &st) < 0 || st.st_size != pf->size) {
        error_setg(errp, "%s is not the file the load started from", path);
        object_unref(OBJECT(fioc));
        return false;
    }

    /*
     * The prefetch threads are gone, but the fault thread may be reading
     * from the old file right now: keep it open until the end.
     */
    qemu_thread_join(&mis->listen_thread);
    g_ptr_array_add(pf->old_iocs, pf->ioc);
    qatomic_set(&pf->ioc, QIO_CHANNEL(fioc));
    /* Likewise, the fault thread may be formatting an error with it */
    g_ptr_array_add(pf->old_paths, pf->path);
    qatomic_set(&pf->path, g_strdup(path));
    qatomic_set(&pf->failed, false);
    qemu_event_reset(&pf->all_done);
    /*
     * Order the reset before reading the count: a page placed meanwhile
     * either sees the reset and sets the event, or is counted here.
     */
    smp_mb();
    if (qatomic_read(&pf->host_pages_done) == pf->host_pages_total) {
        qemu_event_set(&pf->all_done);
    }
    migrate_set_state(&mis->state, MIGRATION_STATUS_POSTCOPY_PAUSED,
                      MIGRATION_STATUS_POSTCOPY_ACTIVE);
    if (qatomic_xchg(&pf->fault_thread_paused, false)) {
        qemu_sem_post(&mis->postcopy_pause_sem_fault);
    }
    postcopy_thread_create(mis, &mis->listen_thread, "mig/dst/fill",
                           postcopy_file_fill_thread, QEMU_THREAD_JOINABLE);
    return true;
}

void postcopy_file_fill_info(MigrationInfo *info)
{
    MigrationIncomingState *mis = migration_incoming_get_current();

    if (mis->postcopy_file) {
        info->postcopy_file = g_new0(PostcopyFileInfo, 1);
        pf_get_info(mis->postcopy_file, info->postcopy_file);
    } else if (have_last_info) {
        info->postcopy_file = g_memdup2(&last_info, sizeof(last_info));
    }
}
