#!/bin/sh
# One of several guests: announce its disk and NIC on the console, then finish only when
# the host types `go` on the console.
devices="vda=$([ -b /dev/vda ] && echo yes || echo no) eth0=$([ -d /sys/class/net/eth0 ] && echo yes || echo no)"
echo "xenopus-wait: ready $devices" > /dev/console
read -r line
echo "got=$line $devices"
[ "$line" = go ] && [ "$devices" = "vda=yes eth0=yes" ]
