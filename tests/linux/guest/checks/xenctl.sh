#!/bin/sh
# A toolstack shutdown request through XenStore (control/shutdown, which Linux's
# drivers/xen/manage.c watches): the kernel runs its poweroff_cmd / reboot_cmd
# (/sbin/poweroff, /sbin/reboot), here the power-off or restart /init would do.
# The check announces itself on the console, then waits; it never finishes by itself.
mkdir -p /sbin
for cmd in poweroff reboot; do
    printf '#!/bin/sh\necho "xenopus-xenctl: %s requested" > /dev/console\nsync\nexec /bin/busybox %s -f\n' \
        "$cmd" "$cmd" > "/sbin/$cmd"
    chmod +x "/sbin/$cmd"
done
features=$(ls /sys/bus/xen/devices 2>/dev/null | tr '\n' ' ')
echo "xenopus-xenctl: waiting for control/shutdown ($features)" > /dev/console
sleep 600
echo "no shutdown request within 600 s"
exit 1
