#!/bin/sh
# A guest that must not notice a save/restore or a live migration: for each `round N`
# typed on the console, write 256 KiB of fresh random data at N * 256 KiB of the raw disk
# /dev/vda (fsync), drop the page cache, and report the SHA-256 of the disk up to the end
# of that round as read back through the driver, with the uptime (which only grows: the
# same boot); `end` finishes with the number of rounds.
[ -b /dev/vda ] || { echo "no /dev/vda"; exit 1; }
echo "xenopus-persist: ready" > /dev/console
rounds=0
while read -r word n; do
    [ "$word" = end ] && break
    [ "$word" = round ] || continue
    dd if=/dev/urandom of=/tmp/round bs=65536 count=4 2>/dev/null
    dd if=/tmp/round of=/dev/vda bs=65536 seek=$((n * 4)) conv=fsync 2>/dev/null || exit 1
    echo 3 > /proc/sys/vm/drop_caches
    sum=$(dd if=/dev/vda bs=65536 count=$((n * 4 + 4)) 2>/dev/null | sha256sum | cut -d' ' -f1)
    echo "xenopus-persist: round $n uptime=$(cut -d' ' -f1 /proc/uptime) disk=$sum" > /dev/console
    rounds=$((rounds + 1))
done
echo "rounds=$rounds"
