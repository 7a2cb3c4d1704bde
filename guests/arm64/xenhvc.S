// What KVM/arm64 does with Xen's hypercall instruction, `hvc #0xEA1` (Xen's
// public/arch-arm.h: call number in x16, arguments in x0-x4). tests/arm64 forwards SMCCC
// function IDs 0x100-0x1FF to userspace with KVM_ARM_VM_SMCCC_FILTER, which answers 0x600D.
//  1. x16 = 0x12, x0 = 0x100: in the forwarded range.
//  2. x16 = 0x12, x0 = 0xffff800080001234 (a kernel pointer as a first argument): KVM
//     reads the function ID as w0 = 0x80001234, in the SMCCC architecture range it keeps.
// Each result is printed as "N: x0=<hex>". Linux Image format, like hello.S.
    .section .text
    .globl _start
_start:
    b       entry
    .long   0
    .quad   0
    .quad   _end - _start
    .quad   0xa
    .quad   0, 0, 0
    .ascii  "ARM\x64"
    .long   0
entry:
    ldr     x20, =0x09000000
    mov     x16, #0x12
    mov     x0, #0x100
    hvc     #0xea1
    mov     x21, x0
    mov     x22, #'1'
    bl      report
    mov     x16, #0x12
    ldr     x0, =0xffff800080001234
    hvc     #0xea1
    mov     x21, x0
    mov     x22, #'2'
    bl      report
    ldr     x0, =0x84000008        // PSCI_SYSTEM_OFF
    hvc     #0
1:  wfi
    b       1b

report:                            // prints "<x22>: x0=<x21 in hex>\n"
    mov     x23, x30
    mov     w2, w22
    bl      putc
    adr     x1, sep
    bl      puts
    mov     x24, #60               // shift for the top nibble
2:  lsr     x2, x21, x24
    and     x2, x2, #0xf
    cmp     x2, #10
    add     x3, x2, #'0'
    add     x2, x2, #('a' - 10)
    csel    x2, x3, x2, lo
    bl      putc
    subs    x24, x24, #4
    b.ge    2b
    mov     w2, #'\n'
    bl      putc
    mov     x30, x23
    ret

putc:                              // w2; clobbers w3
3:  ldr     w3, [x20, #0x18]
    tbnz    w3, #5, 3b
    str     w2, [x20]
    ret

puts:                              // x1; clobbers w2, w3, x25
    mov     x25, x30
4:  ldrb    w2, [x1], #1
    cbz     w2, 5f
    bl      putc
    b       4b
5:  mov     x30, x25
    ret

sep:    .asciz ": x0="
    .balign 8
    .ltorg
_end:
