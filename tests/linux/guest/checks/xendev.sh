#!/bin/sh
# Linux's own Xen PV drivers against xenopus's backends, with the root filesystem on
# xen-blkfront's /dev/xvda (xenopus.root=/dev/xvda):
#   - hvc0 (hvc_xen on the PV console ring) is an active console: the only one of a PVH
#     kernel booted with console=hvc0; a PV domU kernel lists tty0 too ("tty0 hvc0");
#   - xenbus shows the vbd and the vif frontends Connected;
#   - the host checks XenStore while they are, then types `go` on hvc0 (console input
#     through the PV console backend);
#   - blk.sh's write with fsync on the root filesystem, and net.sh's ping and TCP stream
#     on xen-netfront's eth0.
set -e
state() { cat "/sys/bus/xen/devices/$1/state" 2>/dev/null || echo missing; }
console=$(cat /sys/class/tty/console/active)
vbd=$(state vbd-51712)
vif=$(state vif-0)
echo "console=$console vbd-51712=$vbd vif-0=$vif"
# From here on the console shows KERN_INFO too: a hung task's stack (khungtaskd prints
# it at that level), where the boot itself kept to warnings (loglevel=5).
echo 7 > /proc/sys/kernel/printk
# Every 60 s, what flows: the Xen event channels' interrupt counts (xenbus, blkif, eth0
# ...: /proc/interrupts' xen-dyn lines) and eth0's received bytes, so a stalled run shows
# which channel stopped and a slow one its rate. It ends with the guest.
(
    while sleep 60; do
        irqs=$(awk '/xen-(dyn|percpu)/ { print $NF ":" $2 }' /proc/interrupts | tr '\n' ' ')
        echo "xenopus-xendev: uptime $(cut -d' ' -f1 /proc/uptime) s, eth0 rx" \
             "$(cat /sys/class/net/eth0/statistics/rx_bytes) bytes, irqs $irqs" > /dev/console
    done
) </dev/null >/dev/null 2>&1 &  # not the check's output: /init reads that to its end
echo "xenopus-xendev: ready console=$console vbd=$vbd vif=$vif" > /dev/console
read -r line
echo "typed=$line"
case " $console " in *" hvc0 "*) hvc=yes ;; *) hvc=no ;; esac
[ "$line" = go ] && [ "$hvc" = yes ] && [ "$vbd" = Connected ] && [ "$vif" = Connected ]
# Each step announced on the console as it starts: where a slow or stuck run is.
echo "xenopus-xendev: disk check (write with fsync on $(sed -n 's/.*xenopus\.root=\([a-z/]*\).*/\1/p' /proc/cmdline))" > /dev/console
disk=$(/checks/blk)
echo "xenopus-xendev: network check (ping, then the TCP stream)" > /dev/console
net=$(/checks/net)
echo "$disk" | tail -n 1
echo "$net"
echo "typed=$line console=$console $(echo "$disk" | tail -n 1) $(echo "$net" | tail -n 1)"
