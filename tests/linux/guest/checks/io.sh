#!/bin/sh
# The I/O benchmark's guest side (benchmarks/linux_io.py): /bin/diskio (benchmarks/diskio.c,
# which the benchmark adds to the initramfs) on the whole disk xenopus.disk=DEV (virtio-blk's
# /dev/vda or xen-blkfront's /dev/xvda; overwritten): sequential write with fsync,
# sequential read and 4 KiB random reads of xenopus.mib MiB, the last for xenopus.secs s;
# then, with xenopus.ip, one TCP stream received on port 5555 with busybox nc and counted
# by `diskio sink`. Each measurement is a `xenopus-io:` line the host parses.
set -e
arg() { sed -n "s/.*xenopus\.$1=\([A-Za-z0-9_/.]*\).*/\1/p" /proc/cmdline; }
[ -x /bin/diskio ] || { echo "no /bin/diskio: run benchmarks/linux_io.py"; exit 1; }
dev=$(arg disk)
# The frontends' insmod waits for their devices (xenbus_register_frontend, virtio probe);
# the node in devtmpfs follows at once, but give it a bounded moment.
for _ in $(seq 50); do [ -b "$dev" ] && break; sleep 0.1; done
[ -b "$dev" ] || { echo "no block device '$dev'"; exit 1; }
# Around the disk measurements, for reading a figure (benchmarks/linux_io.py --consoles):
# the guest's CPU split (/proc/stat: user nice system idle iowait irq softirq steal) and
# its event and interrupt counts; after them the block queue's request size limit and
# xen-blkfront's parameters (indirect segments, persistent grants).
info() { echo "xenopus-io-info: $1 cpu $(head -1 /proc/stat | cut -c5-)"
         echo "xenopus-io-info: $1 irqs $(grep -E 'xen|virtio' /proc/interrupts | tr -s ' ' | tr '\n' '|')"; }
info before
/bin/diskio disk "$dev" "$(arg mib)" "$(arg secs)"
info after
echo "xenopus-io-info: max_sectors_kb $(cat /sys/block/*/queue/max_sectors_kb | tr '\n' ' ')blkfront $(grep -H . /sys/module/xen_blkfront/parameters/* 2>/dev/null | sed 's|.*/||' | tr '\n' ' ')"
if [ -n "$(arg ip)" ]; then
    ip addr add "$(arg ip)" dev eth0
    ip link set eth0 up
    echo "xenopus-io: listening on $(arg ip) port 5555"
    nc -l -p 5555 | /bin/diskio sink
fi
echo "io done on $dev"
