#!/bin/sh
# virtio-net (or xen-netfront): eth0 gets xenopus.ip, pings xenopus.peer three times, then
# receives one TCP stream on port 5555 and reports its size and checksum.
set -e
arg() { sed -n "s/.*xenopus\.$1=\([0-9./]*\).*/\1/p" /proc/cmdline; }
ip addr add "$(arg ip)" dev eth0
ip link set eth0 up
ping -c 3 -W 10 "$(arg peer)" | grep 'packets transmitted'
echo "xenopus-net: listening on port 5555" > /dev/console
nc -l -p 5555 > /tmp/received
size=$(wc -c < /tmp/received)
sum=$(sha256sum /tmp/received | cut -d' ' -f1)
echo "eth0 $(cat /sys/class/net/eth0/address) received=$size sha256=$sum"
