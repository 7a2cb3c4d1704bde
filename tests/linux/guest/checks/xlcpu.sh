#!/bin/sh
# `xl vcpu-set` against Linux's own Xen vCPU hotplug (tests/linux/test_xl_linux.py): the
# guest boots with 1 of 2 vCPUs (maxvcpus = 2); drivers/xen/cpu_hotplug.c watches
# cpu/N/availability and makes vCPU 1 present when it turns "online" (enable_hotplug_cpu)
# and offlines it when it turns "offline" (disable_hotplug_cpu). Onlining a present CPU is
# userspace's part (a udev rule on a distribution): here the script writes its sysfs
# online file, as that rule does.
#   1. report the online/present/possible masks, wait for cpu1 to become present;
#   2. online it, report nproc; 3. wait for it to go offline, report nproc;
#   4. power off.
say() { echo "xenopus-xlcpu: $*" > /dev/console; echo "$*"; }
cpus() { cat "/sys/devices/system/cpu/$1"; }
count() {  # CPUs in a sysfs mask such as 0-1 or 0,2-3
    n=0
    for part in $(cpus "$1" | tr ',' ' '); do
        lo=${part%-*}; hi=${part#*-}
        n=$((n + hi - lo + 1))
    done
    echo "$n"
}
wait_for() {  # a shell condition, up to 600 s (the nested host is slow)
    i=0
    while ! eval "$1"; do
        i=$((i + 1))
        if [ "$i" -gt 600 ]; then say "timed out waiting for: $1"; return 1; fi
        sleep 1
    done
}
say "ready online=$(cpus online) present=$(cpus present) possible=$(cpus possible) nproc=$(count online)"
wait_for '[ -e /sys/devices/system/cpu/cpu1/online ]' || exit 1
say "cpu1 present=$(cpus present)"
echo 1 > /sys/devices/system/cpu/cpu1/online || { say "cannot online cpu1"; exit 1; }
wait_for '[ "$(count online)" = 2 ]' || exit 1
say "up nproc=$(count online) online=$(cpus online)"
wait_for '[ "$(count online)" = 1 ]' || exit 1
say "down nproc=$(count online) online=$(cpus online) present=$(cpus present)"
echo "nproc 1 -> 2 -> 1"
