#!/bin/sh
# Userspace is up: report the CPUs, the clock source and that time advances.
cpus=$(nproc)
clock=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)
t0=$(cut -d' ' -f1 /proc/uptime)
sleep 1
t1=$(cut -d' ' -f1 /proc/uptime)
echo "nproc=$cpus clocksource=$clock uptime $t0 -> $t1"
[ "$t0" != "$t1" ]
