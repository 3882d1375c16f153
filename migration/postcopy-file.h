/*
 * Postcopy from a mapped-ram file: lazy load of guest RAM
 *
 * Copyright (c) 2026 QEMU Instant Snapshots contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_MIGRATION_POSTCOPY_FILE_H
#define QEMU_MIGRATION_POSTCOPY_FILE_H

#include "migration.h"

typedef struct PostcopyFile PostcopyFile;

/*
 * True on the destination when RAM is to be loaded lazily from a
 * mapped-ram file (postcopy-ram + mapped-ram capabilities).
 */
bool postcopy_file_enabled(void);

/* True between postcopy_file_prepare() and the end of the load. */
bool postcopy_file_active(MigrationIncomingState *mis);

/*
 * Check, before the guest starts, what would otherwise only fail while
 * RAM is filled: the block's size and page size match this machine, its
 * bitmap lies before its pages, and its pages lie within the file.
 */
bool postcopy_file_check_block(QEMUFile *f, RAMBlock *block,
                               ram_addr_t length, uint64_t page_size,
                               uint64_t bitmap_offset, Error **errp);

/*
 * Called once the RAM index (mapped-ram headers and bitmaps) has been
 * read: start faulting RAM in from @f instead of reading it now.
 */
int postcopy_file_prepare(MigrationIncomingState *mis, QEMUFile *f,
                          Error **errp);

/*
 * Serve a missing page from the file (fault thread).  Returns 0 when the
 * page is resident or being placed, negative errno on failure.
 */
int postcopy_file_request_page(MigrationIncomingState *mis, RAMBlock *rb,
                               ram_addr_t start, uint64_t haddr, uint32_t tid);

/*
 * Device state is loaded: start the guest and fill the rest of RAM.
 * Returns false with @errp set, and the guest not started, if a page a
 * device read while its state was loaded could not be read from the file.
 */
bool postcopy_file_start(MigrationIncomingState *mis, Error **errp);

/*
 * migrate-recover while the load is paused by a read error: reopen the
 * file named by @uri and go on.  Returns false with @errp set if it is
 * not usable; the load stays paused.
 */
bool postcopy_file_recover(MigrationIncomingState *mis, const char *uri,
                           Error **errp);

/*
 * migrate_cancel on the destination while the load is paused: give up.
 * The load fails, and QEMU exits unless migrate-incoming was told not to
 * (exit-on-error=false); then the guest stays where it waits for pages.
 * Returns false with @errp set if the load is not paused.  Safe without
 * the BQL, for migrate_cancel out-of-band.
 */
bool postcopy_file_cancel(MigrationIncomingState *mis, Error **errp);

/*
 * QEMU is quitting: if the load is paused or was given up, exit at once,
 * because vCPUs that wait for missing pages cannot be stopped.
 */
void postcopy_file_shutdown(void);

/* Free everything; called from postcopy_incoming_cleanup(). */
void postcopy_file_cleanup(MigrationIncomingState *mis);

/* Progress for query-migrate. */
void postcopy_file_fill_info(MigrationInfo *info);

#endif
