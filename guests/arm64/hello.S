// A tiny arm64 test guest in the Linux Image format (Documentation/arch/arm64/booting.rst
// §4), so xenopus boots it through the same loader as Linux: it checks that x0 points at a
// flattened device tree (its magic, big-endian 0xd00dfeed), prints through the PL011 at
// QEMU virt's 0x09000000 (ARM DDI 0183: UARTDR at 0, UARTFR at 0x18, TXFF bit 5) and
// powers off with PSCI SYSTEM_OFF (DEN 0022: function ID 0x84000008, HVC conduit).
    .section .text
    .globl _start
_start:
    b       entry                  // code0
    .long   0                      // code1
    .quad   0                      // text_offset
    .quad   _end - _start          // image_size
    .quad   0xa                    // flags: little-endian, 4K pages, base anywhere
    .quad   0, 0, 0                // res2-res4
    .ascii  "ARM\x64"              // magic
    .long   0                      // res5
entry:
    mov     x19, x0                // the DTB, booting.rst: x0
    ldr     x20, =0x09000000       // PL011
    adr     x1, hello
    bl      puts
    ldr     w2, [x19]              // the FDT header's magic, big-endian in memory
    ldr     w3, =0xedfe0dd0
    adr     x1, dtb_bad
    cmp     w2, w3
    b.ne    1f
    adr     x1, dtb_ok
1:  bl      puts
    ldr     x0, =0x84000008        // PSCI_SYSTEM_OFF
    hvc     #0
    adr     x1, still_here
    bl      puts
2:  wfi
    b       2b

puts:                              // x1: a NUL-terminated string; clobbers w2, w3
    ldrb    w2, [x1], #1
    cbz     w2, 4f
3:  ldr     w3, [x20, #0x18]       // UARTFR
    tbnz    w3, #5, 3b             // TXFF: wait for room
    str     w2, [x20]              // UARTDR
    b       puts
4:  ret

hello:      .asciz "Hello from an arm64 xenopus guest\n"
dtb_ok:     .asciz "x0 points at a device tree\n"
dtb_bad:    .asciz "x0 does not point at a device tree\n"
still_here: .asciz "PSCI SYSTEM_OFF returned\n"
    .balign 8
    .ltorg
_end:
