/* Boot information from either protocol, and the C entry point every path reaches. */
#include "runtime.h"

extern u32 boot_proto, boot_ptr; /* head.S */
void console_init(void);
void traps_init(void);

struct boot_info boot;

/* xen/include/public/arch-x86/hvm/start_info.h */
#define HVM_START_MAGIC 0x336ec578
struct hvm_start_info {
    u32 magic, version, flags, nr_modules;
    u64 modlist_paddr, cmdline_paddr, rsdp_paddr;
    u64 memmap_paddr; /* version >= 1 */
    u32 memmap_entries, reserved;
};
struct hvm_modlist_entry {
    u64 paddr, size, cmdline_paddr, reserved;
};
struct hvm_memmap_table_entry {
    u64 addr, size;
    u32 type, reserved;
};

static void add_range(u64 addr, u64 size, u32 type)
{
    if (size && boot.nr_mem < MAX_MEM_RANGES) /* qboot appends an empty entry */
        boot.mem[boot.nr_mem++] = (struct mem_range){addr, size, type};
}

static void from_pvh(const struct hvm_start_info *si)
{
    boot.proto = "pvh";
    if (si->magic != HVM_START_MAGIC)
        printf("warning: hvm_start_info magic 0x%x, expected 0x%x\n", si->magic, HVM_START_MAGIC);
    if (si->cmdline_paddr)
        boot.cmdline = (const char *)si->cmdline_paddr;
    if (si->version >= 1 && si->memmap_paddr) {
        const struct hvm_memmap_table_entry *e = (const void *)si->memmap_paddr;
        for (u32 i = 0; i < si->memmap_entries; i++)
            add_range(e[i].addr, e[i].size, e[i].type);
    }
    boot.nr_modules = si->nr_modules;
    if (si->nr_modules && si->modlist_paddr) {
        const struct hvm_modlist_entry *m = (const void *)si->modlist_paddr;
        boot.ramdisk_addr = m[0].paddr;
        boot.ramdisk_size = m[0].size;
    }
}

/* struct boot_params offsets: Documentation/arch/x86/zero-page.rst and boot.rst. */
#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE 0x0c4
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_E820_ENTRIES 0x1e8
#define BP_RAMDISK_IMAGE 0x218
#define BP_RAMDISK_SIZE 0x21c
#define BP_CMD_LINE_PTR 0x228
#define BP_E820_TABLE 0x2d0
#define E820_MAX_ENTRIES_ZEROPAGE 128

static u32 rd32(const u8 *bp, unsigned off) { return *(const u32 *)(bp + off); }

static void from_linux(const u8 *bp)
{
    boot.proto = "linux";
    u64 cmd = rd32(bp, BP_CMD_LINE_PTR) | (u64)rd32(bp, BP_EXT_CMD_LINE_PTR) << 32;
    if (cmd)
        boot.cmdline = (const char *)cmd;
    unsigned n = bp[BP_E820_ENTRIES];
    if (n > E820_MAX_ENTRIES_ZEROPAGE)
        n = E820_MAX_ENTRIES_ZEROPAGE;
    for (unsigned i = 0; i < n; i++) {
        const u8 *e = bp + BP_E820_TABLE + 20 * i; /* packed {u64 addr, u64 size, u32 type} */
        add_range(*(const u64 *)e, *(const u64 *)(e + 8), *(const u32 *)(e + 16));
    }
    boot.ramdisk_addr = rd32(bp, BP_RAMDISK_IMAGE) | (u64)rd32(bp, BP_EXT_RAMDISK_IMAGE) << 32;
    boot.ramdisk_size = rd32(bp, BP_RAMDISK_SIZE) | (u64)rd32(bp, BP_EXT_RAMDISK_SIZE) << 32;
    boot.nr_modules = boot.ramdisk_size != 0;
}

const char *mem_type_name(u32 type)
{
    static const char *const names[] = {"type 0", "RAM", "reserved", "ACPI", "NVS",
                                        "unusable", "disabled", "PMEM"};
    return type < ARRAY_SIZE(names) ? names[type] : "other";
}

void print_memmap(void)
{
    for (unsigned i = 0; i < boot.nr_mem; i++) {
        const struct mem_range *r = &boot.mem[i];
        printf("  [0x%lx-0x%lx) %s\n", r->addr, r->addr + r->size, mem_type_name(r->type));
    }
}

u64 ram_bytes(void)
{
    u64 total = 0;
    for (unsigned i = 0; i < boot.nr_mem; i++)
        if (boot.mem[i].type == MEM_RAM)
            total += boot.mem[i].size;
    return total;
}

void runtime_main(void)
{
    console_init();
    traps_init();
    boot.cmdline = "";
    boot.raw = boot_ptr;
    if (boot_proto == 1)
        from_pvh((const struct hvm_start_info *)(u64)boot_ptr);
    else
        from_linux((const u8 *)(u64)boot_ptr);
    guest_main();
    shutdown();
}
