/*
 * Jumps to physical 0xD0000000: identity-mapped by the runtime, but in the MMIO hole with no
 * RAM behind it, so the CPU cannot fetch an instruction there and the hypervisor must stop
 * the domain as crashed. (Under QEMU the guest may just hang afterwards.)
 */
#include "runtime.h"

GUEST("crash");

void guest_main(void)
{
    printf("about to crash\n");
    ((void (*)(void))0xd0000000ul)();
    result(0, "crash", "returned from 0xd0000000");
}
