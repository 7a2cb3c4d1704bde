/*
 * The real-mode setup area of our bzImage (Documentation/arch/x86/boot.rst): the boot
 * sector with the setup header at 0x1F1, and a small real-mode entry that does what the
 * kernel's own setup does before the 32-bit kernel: fetch the E820 map from the BIOS if the
 * loader gave none, load a GDT with flat __BOOT_CS (0x10) / __BOOT_DS (0x18), enter
 * protected mode and jump to code32_start with %esi = boot_params ("32-bit BOOT PROTOCOL").
 * Assembled at origin 0; tools/mkbzimage.py fills setup_sects, syssize and init_size.
 *
 * Real-mode entry state (boot.rst "Running the kernel"): CS = seg + 0x20, IP = 0 (i.e. the
 * jump at 0x200), DS = ES = SS = seg, where seg:0 is the start of this area = boot_params.
 */
        .code16
        .section .text
        .globl  _setup
_setup:
        .org    0x1f1
setup_sects:    .byte   0               /* patched */
root_flags:     .word   0
syssize:        .long   0               /* patched: protected-mode size / 16 */
ram_size:       .word   0
vid_mode:       .word   0xffff          /* "normal" */
root_dev:       .word   0
boot_flag:      .word   0xaa55
/* 0x200: a 2-byte jump whose target (0x202 + its offset byte) also ends the header. */
jump:           .byte   0xeb, header_end - header
header:         .ascii  "HdrS"
version:        .word   0x020f          /* 2.15 */
realmode_swtch: .long   0
start_sys_seg:  .word   0x1000
kernel_version: .word   0
type_of_loader: .byte   0
loadflags:      .byte   0x01            /* LOADED_HIGH */
setup_move_size: .word  0
code32_start:   .long   0x100000
ramdisk_image:  .long   0
ramdisk_size:   .long   0
bootsect_kludge: .long  0
heap_end_ptr:   .word   0
ext_loader_ver: .byte   0
ext_loader_type: .byte  0
cmd_line_ptr:   .long   0
initrd_addr_max: .long  0x7fffffff
kernel_alignment: .long 0x100000
relocatable_kernel: .byte 0
min_alignment:  .byte   20              /* log2(1 MiB) */
xloadflags:     .word   0x0001          /* XLF_KERNEL_64: the 64-bit entry at +0x200 */
cmdline_size:   .long   4095
hardware_subarch: .long 0
hardware_subarch_data: .quad 0
payload_offset: .long   0
payload_length: .long   0
setup_data:     .quad   0
pref_address:   .quad   0x100000
init_size:      .long   0               /* patched */
handover_offset: .long  0
kernel_info_offset: .long 0x100         /* head.S: kernel_info */
header_end:
        /* boot_params pads here (0x26c-0x28f); the E820 table it fills starts at 0x2d0, so
         * the real code lives past the zero page. */
        jmp     real_start

        .org    0x1000
real_start:
        cli
        cld
        movw    %cs, %ax
        subw    $0x20, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    $stack_top, %sp

        /* BIOS INT 15h AX=E820h (ACPI spec "System Address Map Interfaces"), straight into
         * boot_params.e820_table, only when the loader left e820_entries at 0. */
        cmpb    $0, 0x1e8
        jne     2f
        xorl    %ebx, %ebx
        movw    $0x2d0, %di
1:      movl    $0xe820, %eax
        movl    $0x534d4150, %edx       /* "SMAP" */
        movl    $20, %ecx
        int     $0x15
        jc      2f
        cmpl    $0x534d4150, %eax
        jne     2f
        incb    0x1e8
        addw    $20, %di
        cmpb    $128, 0x1e8             /* E820_MAX_ENTRIES_ZEROPAGE */
        jae     2f
        testl   %ebx, %ebx
        jnz     1b
2:
        /* %esi = linear address of boot_params; the GDT base is linear too. */
        xorl    %esi, %esi
        movw    %ds, %si
        shll    $4, %esi
        leal    gdt(%esi), %eax
        movl    %eax, gdt_ptr + 2
        lgdtl   gdt_ptr
        /* Far return frame for after CR0.PE: SS keeps its real-mode base until reloaded. */
        pushl   $0x10
        pushl   code32_start
        movl    %cr0, %eax
        orl     $1, %eax
        movl    %eax, %cr0
        movw    $0x18, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %fs
        movw    %ax, %gs
        xorl    %ebx, %ebx
        xorl    %ebp, %ebp
        xorl    %edi, %edi
        lretl

        .balign 8
gdt:
        .quad   0, 0
        .quad   0x00cf9a000000ffff      /* 0x10 __BOOT_CS: flat 32-bit code */
        .quad   0x00cf92000000ffff      /* 0x18 __BOOT_DS: flat data */
gdt_ptr:
        .word   31
        .long   0                       /* linear base, set above */

        .balign 16
        .space  1024
stack_top:
        .balign 512
