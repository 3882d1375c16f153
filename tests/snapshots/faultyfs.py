"""
A FUSE file system with one file whose reads (or, if writable, writes)
fail with EIO over a chosen byte range, to inject real I/O errors into
QEMU's reads and writes of a migration file (the kernel here has no
device-mapper error target), and whose I/O can be slowed down.
"""

import errno
import os
import stat
import subprocess
import threading
import time

from fusepy import FUSE, FuseOSError, Operations, fuse_get_context  # python3-fusepy


class FaultyFile(Operations):
    """
    /NAME mirrors BACKING; reads overlapping self.error fail with EIO, or
    with self.short, return only the bytes before the range (a short read).
    If WRITABLE, writes go to BACKING, and those overlapping self.error
    fail with EIO.

    To widen a race deterministically: self.error_threads, if set, limits
    the errors to reads by threads of those names (e.g. QEMU's
    "mig/dst/fault"); reads overlapping self.block by any other thread
    wait until unblock() (self.blocked counts the reads waiting now).
    """

    def __init__(self, backing, name, writable=False):
        self.name = "/" + name
        self.writable = writable
        self.fd = os.open(backing, os.O_RDWR if writable else os.O_RDONLY)
        self.error = None           # (start, end) byte range, or None
        self.short = False          # True: end reads there short, not EIO
        self.delay = 0.0            # seconds every read or write takes
        self.failed_reads = 0
        self.failed_writes = 0
        self.error_threads = None   # names of the threads that see errors
        self.block = None           # (start, end): reads there wait
        self.blocked = 0
        self._lock = threading.Lock()
        self._released = threading.Event()

    def unblock(self):
        """Let every blocked read go on; nothing blocks any more."""
        self.block = None
        self._released.set()

    @staticmethod
    def _caller():
        """Name of the thread that issued the current request."""
        tid = fuse_get_context()[2]
        try:
            with open(f"/proc/{tid}/comm", encoding="utf-8") as f:
                return f.read().strip()
        except OSError:
            return ""

    def getattr(self, path, fh=None):
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        if path != self.name:
            raise FuseOSError(errno.ENOENT)
        st = os.fstat(self.fd)
        mode = 0o644 if self.writable else 0o444
        return {"st_mode": stat.S_IFREG | mode, "st_nlink": 1,
                "st_size": st.st_size, "st_mtime": st.st_mtime,
                "st_ctime": st.st_ctime, "st_atime": st.st_atime}

    def readdir(self, path, fh):
        return [".", "..", self.name[1:]]

    def open(self, path, flags):
        if path != self.name:
            raise FuseOSError(errno.ENOENT)
        if flags & (os.O_WRONLY | os.O_RDWR) and not self.writable:
            raise FuseOSError(errno.EROFS)
        return 0

    def write(self, path, data, offset, fh):
        if self.delay:
            time.sleep(self.delay)
        err = self.error
        if err and offset < err[1] and offset + len(data) > err[0]:
            self.failed_writes += 1
            raise FuseOSError(errno.EIO)
        return os.pwrite(self.fd, data, offset)

    def truncate(self, path, length, fh=None):
        if not self.writable:
            raise FuseOSError(errno.EROFS)
        os.ftruncate(self.fd, length)

    def read(self, path, size, offset, fh):
        if self.delay:
            time.sleep(self.delay)
        err = self.error
        if err and self.error_threads and self._caller() not in self.error_threads:
            err = None
        if err and not (offset < err[1] and offset + size > err[0]):
            err = None
        blk = self.block
        if blk and offset < blk[1] and offset + size > blk[0] and not err:
            with self._lock:
                self.blocked += 1
            self._released.wait()
            with self._lock:
                self.blocked -= 1
        if err:
            self.failed_reads += 1
            if self.short and offset < err[0]:
                return os.pread(self.fd, err[0] - offset, offset)
            if self.short:
                return b""
            raise FuseOSError(errno.EIO)
        return os.pread(self.fd, size, offset)


class FaultyMount:
    """Context manager: mount FaultyFile(BACKING, NAME, WRITABLE) on MOUNTPOINT."""

    def __init__(self, backing, mountpoint, name="file", writable=False):
        self.ops = FaultyFile(backing, name, writable)
        self.mountpoint = mountpoint
        self.path = os.path.join(mountpoint, name)
        self.thread = None

    def __enter__(self):
        self.thread = threading.Thread(
            target=FUSE, args=(self.ops, self.mountpoint),
            kwargs={"foreground": True, "direct_io": True, "ro": not self.ops.writable},
            daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not os.path.exists(self.path):
            if time.monotonic() > deadline:
                raise RuntimeError(f"FUSE mount on {self.mountpoint} did not appear")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        subprocess.run(["umount", "-l", self.mountpoint], check=False)
        self.thread.join(timeout=10)
