#!/bin/sh
# `xl mem-set` and `xl shutdown -w` against Linux's own Xen drivers (tests/linux/test_xl_linux.py):
#   1. announce MemTotal and the balloon's target (drivers/xen/xen-balloon.c's sysfs:
#      target_kb is what it follows, info/current_kb what it holds), then wait for the
#      host's `xl mem-set` to move the target (memory/target in XenStore);
#   2. wait until the balloon holds its new target, and report MemTotal again: the balloon
#      takes each page it gives back out of the managed pages MemTotal counts;
#   3. wait for control/shutdown (`xl shutdown -w`), as xenctl.sh.
# Its lines go to /dev/console as they happen: the host acts on them.
mkdir -p /sbin
printf '#!/bin/sh\necho "xenopus-xlres: poweroff requested" > /dev/console\nsync\nexec /bin/busybox poweroff -f\n' \
    > /sbin/poweroff
chmod +x /sbin/poweroff
say() { echo "xenopus-xlres: $*" > /dev/console; echo "$*"; }
memtotal() { sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo; }
balloon=/sys/devices/system/xen_memory/xen_memory0
if [ ! -r "$balloon/target_kb" ]; then
    say "no xen-balloon in sysfs ($balloon)"
    exit 1
fi
before=$(memtotal)
target0=$(cat "$balloon/target_kb")
say "ready memtotal=$before target_kb=$target0 current_kb=$(cat "$balloon/info/current_kb")"
# The host's mem-set: up to 10 minutes (the nested host can be slow to get to it).
i=0
while [ "$(cat "$balloon/target_kb")" = "$target0" ]; do
    i=$((i + 1))
    if [ "$i" -gt 600 ]; then say "the target stayed at $target0 kB"; exit 1; fi
    sleep 1
done
target=$(cat "$balloon/target_kb")
# The balloon gives back 2 MiB per hypercall: minutes on a slow host.
i=0
while [ "$(cat "$balloon/info/current_kb")" != "$target" ]; do
    i=$((i + 1))
    if [ "$i" -gt 600 ]; then
        say "the balloon stopped at $(cat "$balloon/info/current_kb") kB, target $target kB"
        break
    fi
    sleep 1
done
after=$(memtotal)
say "memtotal $before -> $after kB (dropped $((before - after)) kB) target_kb $target0 -> $target current_kb=$(cat "$balloon/info/current_kb")"
say "waiting for control/shutdown"
sleep 900
echo "no shutdown request within 900 s"
exit 1
