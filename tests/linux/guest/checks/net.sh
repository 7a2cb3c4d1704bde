#!/bin/sh
# virtio-net (or xen-netfront): eth0 gets xenopus.ip, pings xenopus.peer three times, then
# receives one TCP stream on port 5555 and reports its size and checksum.
set -e
arg() { sed -n "s/.*xenopus\.$1=\([0-9./]*\).*/\1/p" /proc/cmdline; }
ip addr add "$(arg ip)" dev eth0
ip link set eth0 up
# Three echoes, each its own `ping -c 1` with 10 s for its reply. One `ping -c 3` would
# not do: after sending its last echo busybox waits only max(1 s, about 2 x the longest
# round trip so far) (ping.c, sendping_tail), so a reply that comes late is counted as
# lost; round trips here are 0.2-0.3 s on a quiet nested host and more under load. The
# kernel's own count of echo replies (/proc/net/snmp Icmp InEchoReps) is shown beside it.
answered=0
for _ in 1 2 3; do
    if ping -c 1 -W 10 "$(arg peer)" > /tmp/ping; then
        answered=$((answered + 1))
    fi
    grep -E 'seq=|transmitted' /tmp/ping || true
done
replies=$(awk '/^Icmp:/ { if (!n++) { for (i = 1; i <= NF; i++) if ($i == "InEchoReps") c = i }
                          else print $c }' /proc/net/snmp)
echo "ping: $answered of 3 echoes answered (kernel InEchoReps=$replies)"
echo "xenopus-net: listening on port 5555" > /dev/console
nc -l -p 5555 > /tmp/received
size=$(wc -c < /tmp/received)
sum=$(sha256sum /tmp/received | cut -d' ' -f1)
echo "eth0 $(cat /sys/class/net/eth0/address) received=$size sha256=$sum"
