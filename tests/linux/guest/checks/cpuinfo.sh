#!/bin/sh
# Userspace is up: report the CPU flags Linux found (cpu 0's line of /proc/cpuinfo), and
# any "unchecked MSR access" (an MSR the CPU policy refused that Linux read without a fixup).
dmesg | grep -i "unchecked MSR access" | head -n 3
echo "$(grep -m 1 '^flags' /proc/cpuinfo | sed 's/^flags[[:space:]]*: *//') "
