#!/bin/sh
# virtio-console and virtio-rng: /dev/hvc0 from virtio_console, /dev/hwrng served by
# virtio_rng, and 64 bytes read from it.
set -e
hvc=$(ls /dev/hvc* 2>/dev/null | tr '\n' ' ')
rng=$(cat /sys/class/misc/hw_random/rng_current)
bytes=$(head -c 64 /dev/hwrng | wc -c)
echo "hvc=$hvc rng=$rng read=$bytes"
[ -c /dev/hvc0 ] && [ "${rng#virtio_rng}" != "$rng" ] && [ "$bytes" -eq 64 ]
