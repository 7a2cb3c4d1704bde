#!/bin/sh
# Xen-aware Linux: the kernel found Xen, takes its time from it and has xenbus.
type=$(cat /sys/hypervisor/type 2>/dev/null || echo none)
clock=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)
t0=$(cut -d' ' -f1 /proc/uptime)
sleep 1
t1=$(cut -d' ' -f1 /proc/uptime)
xenbus=$([ -d /sys/bus/xen ] && echo yes || echo no)
echo "hypervisor=$type clocksource=$clock xenbus=$xenbus uptime $t0 -> $t1"
[ "$type" = xen ] && [ "$clock" = xen ] && [ "$xenbus" = yes ] && [ "$t0" != "$t1" ]
