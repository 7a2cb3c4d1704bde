#!/bin/sh
# `xl vcpu-set` against Linux's ACPI CPU hotplug (tests/linux/test_xl_linux.py), a guest
# without Xen: 2 of 3 vCPUs at boot (maxvcpus = 3). The GED runs \_SB.CSCN, which sends
# a processor device Device Check (drivers/acpi/scan.c hot-adds it, acpi_processor.c
# maps its APIC ID from _MAT) or Eject Request (Linux offlines the CPU, then _EJ0).
# Onlining a hot-added CPU is userspace's part (a udev rule on a distribution): here
# the script writes its sysfs online file, as that rule does.
#   1. report the online/present/possible masks;
#   2. `xl vcpu-set DOM 3`: vCPU 2 (never run) appears; online it (nproc 3);
#   3. `xl vcpu-set DOM 1`: vCPUs 1 and 2 offlined and ejected: not present, and their
#      _STA (the ACPI device's status file, evaluated when read) says absent (nproc 1);
#   4. `xl vcpu-set DOM 2`: vCPU 1 (ejected) appears again; online it (nproc 2).
say() { echo "xenopus-cpuhp: $*" > /dev/console; echo "$*"; }
cpus() { cat "/sys/devices/system/cpu/$1"; }
count() {  # CPUs in a sysfs mask such as 0-1 or 0,2-3
    n=0
    for part in $(cpus "$1" | tr ',' ' '); do
        lo=${part%-*}; hi=${part#*-}
        n=$((n + hi - lo + 1))
    done
    echo "$n"
}
sta() {  # the _STA of the processor device whose _UID is $1 (ACPI0007, 0 if none)
    for dev in /sys/bus/acpi/devices/ACPI0007:*; do
        if [ "$(cat "$dev/uid" 2>/dev/null)" = "$1" ]; then cat "$dev/status"; return; fi
    done
    echo none
}
wait_for() {  # a shell condition, up to 600 s (the nested host is slow)
    i=0
    while ! eval "$1"; do
        i=$((i + 1))
        if [ "$i" -gt 600 ]; then say "timed out waiting for: $1"; return 1; fi
        sleep 1
    done
}
online() {  # wait for cpuN to be hot-added, then online it
    wait_for "[ -e /sys/devices/system/cpu/cpu$1/online ]" || exit 1
    echo 1 > "/sys/devices/system/cpu/cpu$1/online" || { say "cannot online cpu$1"; exit 1; }
}
say "ready online=$(cpus online) present=$(cpus present) possible=$(cpus possible) sta2=$(sta 2)"
online 2
wait_for '[ "$(count online)" = 3 ]' || exit 1
say "up nproc=$(count online) online=$(cpus online) present=$(cpus present) sta2=$(sta 2)"
wait_for '[ "$(count online)" = 1 ] && [ "$(cpus present)" = 0 ]' || exit 1
wait_for '[ "$(sta 1)" = 0 ] && [ "$(sta 2)" = 0 ]' || exit 1
say "down nproc=$(count online) online=$(cpus online) present=$(cpus present)"
online 1
wait_for '[ "$(count online)" = 2 ]' || exit 1
say "again nproc=$(count online) online=$(cpus online) present=$(cpus present)"
echo "nproc 2 -> 3 -> 1 -> 2"
