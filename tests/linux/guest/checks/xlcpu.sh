#!/bin/sh
# `xl vcpu-set` against Linux's own Xen vCPU hotplug (tests/linux/test_xl_linux.py): the
# guest boots with 2 of 3 vCPUs (maxvcpus = 3); drivers/xen/cpu_hotplug.c watches
# cpu/N/availability, offlines vCPU N and makes it not present when it turns "offline"
# (disable_hotplug_cpu), and makes it present again when it turns "online"
# (enable_hotplug_cpu). Onlining a present CPU is userspace's part (a udev rule on a
# distribution): here the script writes its sysfs online file, as that rule does.
#   1. report the online/present/possible masks;
#   2. wait for the host's `xl vcpu-set DOM 1`: vCPU 1 offline and gone (nproc 1);
#   3. wait for the host's `xl vcpu-set DOM 2`: vCPU 1 present again; online it (nproc 2).
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
say "ready online=$(cpus online) present=$(cpus present) possible=$(cpus possible)"
wait_for '[ "$(count online)" = 1 ] && [ "$(cpus present)" = 0 ]' || exit 1
say "down nproc=$(count online) online=$(cpus online) present=$(cpus present)"
wait_for '[ -e /sys/devices/system/cpu/cpu1/online ]' || exit 1
echo 1 > /sys/devices/system/cpu/cpu1/online || { say "cannot online cpu1"; exit 1; }
wait_for '[ "$(count online)" = 2 ]' || exit 1
say "up nproc=$(count online) online=$(cpus online) present=$(cpus present)"
echo "nproc 2 -> 1 -> 2"
