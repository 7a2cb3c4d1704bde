/*
 * Verifies what the loader handed over: protocol, command line, memory map and ramdisk.
 * Optional expectations on the command line, all of which must hold for PASS:
 *   expect_proto=pvh|linux
 *   expect_initrd_size=N      bytes
 *   expect_initrd_sum=0x...   the 32-bit sum of the ramdisk's bytes, modulo 2^32
 *   expect_ram_mb=N           RAM entries of the map total N MiB, less at most 1 MiB
 *                             (firmware-style maps reserve the 640 KiB-1 MiB hole)
 * Built twice: out/bootinfo.elf (PVH) and out/bootinfo.bzImage (Linux boot protocol).
 */
#include "runtime.h"

GUEST("bootinfo");

struct span {
    const u8 *p;
    u64 n;
};

/* Summed in ring 3, which runs at native speed (ring 0 may be emulated). */
static u64 byte_sum(u64 arg)
{
    const struct span *s = (const struct span *)arg;
    u32 sum = 0;
    for (u64 i = 0; i < s->n; i++)
        sum += s->p[i];
    return sum;
}

static int failures;

static void expect(int ok, const char *fmt, u64 got, u64 want)
{
    if (ok)
        return;
    printf("FAIL ");
    printf(fmt, got, want);
    printf("\n");
    failures++;
}

void guest_main(void)
{
    printf("xenopus test guest: bootinfo\n");
    printf("protocol: %s\n", boot.proto);
    printf("command line: %s\n", boot.cmdline);
    printf("memory map (%u entries):\n", boot.nr_mem);
    print_memmap();
    u64 ram = ram_bytes();
    printf("ram: %lu KiB\n", ram >> 10);
    u32 sum = 0;
    if (boot.ramdisk_size) {
        struct span s = {(const u8 *)boot.ramdisk_addr, boot.ramdisk_size};
        sum = (u32)run_user(byte_sum, (u64)&s, 0);
        printf("ramdisk: addr 0x%lx size %lu sum 0x%08x\n", boot.ramdisk_addr, boot.ramdisk_size, sum);
    } else {
        printf("ramdisk: none\n");
    }

    const char *proto = cmdline_get("expect_proto");
    if (proto && strcmp(proto, boot.proto)) {
        printf("FAIL protocol %s, expected %s\n", boot.proto, proto);
        failures++;
    }
    if (cmdline_has("expect_initrd_size")) {
        u64 want = cmdline_u64("expect_initrd_size", 0);
        expect(boot.ramdisk_size == want, "ramdisk size %lu, expected %lu", boot.ramdisk_size, want);
    }
    if (cmdline_has("expect_initrd_sum")) {
        u64 want = cmdline_u64("expect_initrd_sum", 0);
        expect(sum == want, "ramdisk sum 0x%lx, expected 0x%lx", sum, want);
    }
    if (cmdline_has("expect_ram_mb")) {
        u64 want = cmdline_u64("expect_ram_mb", 0) << 20;
        expect(ram <= want && ram + (1 << 20) >= want, "RAM %lu bytes, expected %lu less at most 1 MiB",
               ram, want);
    }
    if (failures)
        result(0, "bootinfo", "%s: %d checks failed", boot.proto, failures);
    else
        result(1, "bootinfo", "%s ram=%luK initrd=%lu sum=0x%08x", boot.proto, ram >> 10,
               boot.ramdisk_size, sum);
}
