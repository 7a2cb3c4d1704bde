#!/bin/sh
# The root filesystem on a disk (xenopus.root=DEV: /dev/vda from virtio-blk, /dev/xvda
# from xen-blkfront), ext4 with the host's host.txt on it; write 4 MiB with fsync and
# report its checksum for the host to compare.
set -e
dev=$(sed -n 's/.*xenopus\.root=\([A-Za-z0-9_/]*\).*/\1/p' /proc/cmdline)
root=$(awk '$2 == "/" { dev = $1; fs = $3 } END { print dev, fs }' /proc/mounts)
echo "root: $root"
[ "$root" = "$dev ext4" ]
host=$(cat /host.txt)
dd if=/dev/urandom of=/guest.bin bs=4096 count=1024 conv=fsync 2>/dev/null
sum=$(sha256sum /guest.bin | cut -d' ' -f1)
echo "root=$dev host.txt=$host guest.bin.sha256=$sum"
