# QEMU Instant Snapshots: assemble, build and test the patched QEMU.
# See README.md.  Every target runs ./configure first if it has not run.

-include config.mk
CACHE_DIR ?= /var/cache/qemu-instant-snapshots
BUILD_DIR ?= build
export QIS_CACHE := $(CACHE_DIR)

TREE  := $(BUILD_DIR)/qemu
STOCK := $(BUILD_DIR)/stock
GUEST := $(BUILD_DIR)/guest
GUEST_SRC := $(wildcard tests/snapshots/guest/*)

.PHONY: all build stock guest check check-series check-asan demo bench bench-threads export-patches clean distclean help
all: build

help:
	@echo "make            assemble and build the patched QEMU in $(TREE)"
	@echo "make check      build, then run our tests and the upstream gate"
	@echo "make check-series   build every step of patches/series in turn (slow)"
	@echo "make check-asan     postcopy-from-file tests on an ASAN+UBSan build (slow)"
	@echo "make demo       build, boot the guest, snapshot, revert, print timings"
	@echo "make bench      build stock and ours, compare them (slow)"
	@echo "make bench-threads   lazy loads with 1, 2 and 4 prefetch threads (slow)"
	@echo "make export-patches   turn commits in $(TREE) back into patches/"

config.mk:
	./configure

# assemble.sh is incremental: each step is skipped when its inputs did not
# change, so it runs every time and ninja decides what to rebuild.
build: config.mk
	build-aux/assemble.sh ours $(TREE)

$(GUEST)/initramfs.cpio.gz: config.mk build-aux/build-guest.sh $(GUEST_SRC)
	build-aux/build-guest.sh $(GUEST)

guest: $(GUEST)/initramfs.cpio.gz

# The stock tree is built too: tests load the same file with stock QEMU.
stock: config.mk
	build-aux/assemble.sh stock $(STOCK)

check: build stock guest
	build-aux/check.sh $(BUILD_DIR) $(PYTEST_ARGS)

# Every patch must build at its point in the series (git bisect, posting).
check-series: build
	build-aux/check-series.sh $(BUILD_DIR)

# The postcopy-from-file tests on an --enable-asan --enable-ubsan build of
# the series in $(BUILD_DIR)/asan; any sanitizer report fails.
check-asan: build guest
	build-aux/check-asan.sh $(BUILD_DIR) $(PYTEST_ARGS)

demo: build guest
	QIS_BUILD_DIR=$(abspath $(BUILD_DIR)) /usr/bin/python3 tests/snapshots/demo.py

bench: build stock guest
	QIS_BUILD_DIR=$(abspath $(BUILD_DIR)) /usr/bin/python3 tests/snapshots/bench.py \
	    --out $(BUILD_DIR)/bench $(BENCH_ARGS)

bench-threads: build guest
	QIS_BUILD_DIR=$(abspath $(BUILD_DIR)) /usr/bin/python3 tests/snapshots/bench_prefetch_threads.py \
	    --out $(BUILD_DIR)/bench-threads $(BENCH_ARGS)

export-patches: config.mk
	build-aux/export-patches.sh $(TREE)

clean:
	rm -rf $(BUILD_DIR)/check $(BUILD_DIR)/series $(BUILD_DIR)/series.log $(BUILD_DIR)/asan $(BUILD_DIR)/asan-check $(BUILD_DIR)/bench $(BUILD_DIR)/bench-threads $(BUILD_DIR)/guest

distclean:
	rm -rf $(BUILD_DIR) config.mk
