"""
The assembly scripts fail with messages that name the cause: a source file
whose checksum does not match, and a patch that does not apply.
"""

import os
import shutil
import subprocess

import snaptest

CACHE = os.environ.get("QIS_CACHE", "/var/cache/qemu-instant-snapshots")
SOURCES = ["qemu_10.2.2+ds.orig.tar.xz", "qemu_10.2.2+ds-1.debian.tar.xz",
           "qemu_10.2.2+ds-1.dsc"]


def make_cache(tmp):
    cache = os.path.join(tmp, "cache")
    os.mkdir(cache)
    for f in SOURCES:
        shutil.copy(os.path.join(CACHE, f), cache)
    return cache


def test_checksum_mismatch_is_named(workdir):
    cache = make_cache(workdir)
    with open(os.path.join(cache, "qemu_10.2.2+ds-1.dsc"), "a", encoding="utf-8") as f:
        f.write("tampered\n")
    proc = subprocess.run([os.path.join(snaptest.TOP, "build-aux", "fetch-source.sh")],
                          env=dict(os.environ, QIS_CACHE=cache),
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "checksum mismatch for qemu_10.2.2+ds-1.dsc" in proc.stderr, proc.stderr
    # the bad file is moved aside so that the next run fetches it again
    assert os.path.exists(os.path.join(cache, "qemu_10.2.2+ds-1.dsc.bad"))
    assert not os.path.exists(os.path.join(cache, "qemu_10.2.2+ds-1.dsc"))


def test_patch_that_does_not_apply_is_named(workdir):
    """A copy of the build scripts with a patch series whose patch is stale."""
    top = os.path.join(workdir, "repo")
    os.makedirs(os.path.join(top, "patches"))
    shutil.copytree(os.path.join(snaptest.TOP, "build-aux"), os.path.join(top, "build-aux"))
    shutil.copy(os.path.join(snaptest.TOP, "VERSION"), top)
    patch = """From: Test <test@example.invalid>
Subject: [PATCH] stale patch

---
diff --git a/migration/savevm.c b/migration/savevm.c
--- a/migration/savevm.c
+++ b/migration/savevm.c
@@ -1,3 +1,3 @@
-this line is not in savevm.c
+nor is this one
 and neither is this
 or this
"""
    with open(os.path.join(top, "patches", "0001-stale.patch"), "w", encoding="utf-8") as f:
        f.write(patch)
    with open(os.path.join(top, "patches", "series"), "w", encoding="utf-8") as f:
        f.write("0001-stale.patch\n")
    proc = subprocess.run([os.path.join(top, "build-aux", "assemble.sh"), "ours",
                           os.path.join(workdir, "tree")],
                          env=dict(os.environ, QIS_CACHE=CACHE),
                          capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode != 0
    assert "patch 0001-stale.patch does not apply" in proc.stderr, proc.stderr
    assert "migration/savevm.c" in proc.stderr, proc.stderr


def test_qemu_file_outside_the_series_is_refused(workdir):
    """
    A QEMU source file beside the series (the old overlay model) would be a
    fork that no patch carries: make names it and refuses, before it
    touches the tree.
    """
    top = os.path.join(workdir, "repo")
    shutil.copytree(os.path.join(snaptest.TOP, "build-aux"), os.path.join(top, "build-aux"))
    shutil.copytree(os.path.join(snaptest.TOP, "patches"), os.path.join(top, "patches"))
    shutil.copy(os.path.join(snaptest.TOP, "VERSION"), top)
    os.makedirs(os.path.join(top, "migration"))
    with open(os.path.join(top, "migration", "stray.c"), "w", encoding="utf-8") as f:
        f.write("/* not in any patch */\n")
    tree = os.path.join(workdir, "tree")
    proc = subprocess.run([os.path.join(top, "build-aux", "assemble.sh"), "ours", tree],
                          env=dict(os.environ, QIS_CACHE=CACHE),
                          capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode != 0
    assert "new QEMU files enter the tree through a patch" in proc.stderr, proc.stderr
    assert "migration/stray.c" in proc.stderr, proc.stderr
    # refused before any patch was applied to the tree
    assert not os.path.exists(os.path.join(tree, "migration", "postcopy-file.c"))
