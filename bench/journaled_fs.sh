#!/usr/bin/env bash
# A journaled ext4 for the harness's state (BENCH_DIR), loop-mounted from an image file (root only).
#
#   bench/journaled_fs.sh mount     # prints the mount point (default /mnt/popflow-jbench)
#   bench/journaled_fs.sh umount
#
# Why: this VM's root file system is ext4 *without* a journal. There ext4 will not reuse an inode
# freed in the last 60-360 s, and every create walks past each recently freed one
# (recently_deleted()); the harness frees ~20,000 inodes before every fetcher's run, so each
# file-creating fetcher pays 200-700 us per file that a journaled ext4 (26-34 us) does not
# (docs/performance.md, "committing one batch behind"). Runs on both file systems are quoted.
set -euo pipefail
IMAGE=${JOURNALED_IMAGE:-/var/tmp/popflow-jbench.img}
POINT=${JOURNALED_MOUNT:-/mnt/popflow-jbench}
SIZE=${JOURNALED_SIZE:-8G}

case "${1:-}" in
    mount)
        if ! mountpoint -q "$POINT"; then
            mkdir -p "$POINT" "$(dirname "$IMAGE")"
            rm -f "$IMAGE"
            truncate -s "$SIZE" "$IMAGE"
            mkfs.ext4 -q -F "$IMAGE"          # the default features: has_journal included
            mount -o loop "$IMAGE" "$POINT"
            chmod 1777 "$POINT"
        fi
        echo "$POINT"
        ;;
    umount)
        if mountpoint -q "$POINT"; then umount "$POINT"; fi
        rm -f "$IMAGE"
        ;;
    *)
        echo "usage: $0 mount|umount" >&2
        exit 2
        ;;
esac
