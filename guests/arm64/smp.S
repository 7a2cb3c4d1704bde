// SMP through PSCI (DEN 0022 §5.1.4 CPU_ON): the boot CPU starts CPU 1 (MPIDR affinity 1,
// KVM's for vCPU 1) at `secondary` with context ID 0x55, which PSCI hands over in x0;
// CPU 1 sets a flag and turns itself off (CPU_OFF); the boot CPU waits for the flag and
// powers the system off. Linux Image format, like hello.S.
    .section .text
    .globl _start
_start:
    b       entry
    .long   0
    .quad   0                      // text_offset
    .quad   _end - _start          // image_size
    .quad   0xa
    .quad   0, 0, 0
    .ascii  "ARM\x64"
    .long   0
entry:
    ldr     x20, =0x09000000       // PL011
    adr     x1, up
    bl      puts
    ldr     x0, =0xC4000003        // PSCI_CPU_ON (SMC64/HVC64)
    mov     x1, #1                 // target: MPIDR affinity 1
    adr     x2, secondary          // entry point (physical: the MMU is off)
    mov     x3, #0x55              // context ID
    hvc     #0
    cbz     x0, 1f                 // PSCI_SUCCESS
    adr     x1, refused
    bl      puts
    b       off
1:  adr     x4, flag
2:  ldr     w5, [x4]
    cbz     w5, 2b
    adr     x1, good
    cmp     w5, #1
    b.eq    3f
    adr     x1, bad_context
3:  bl      puts
off:
    ldr     x0, =0x84000008        // PSCI_SYSTEM_OFF
    hvc     #0
4:  wfi
    b       4b

secondary:                         // PSCI: MMU off, x0 = the context ID
    adr     x4, flag
    mov     w5, #1
    cmp     x0, #0x55
    b.eq    5f
    mov     w5, #2
5:  str     w5, [x4]
    ldr     x0, =0x84000002        // PSCI_CPU_OFF
    hvc     #0
6:  wfi
    b       6b

puts:
    ldrb    w2, [x1], #1
    cbz     w2, 8f
7:  ldr     w3, [x20, #0x18]
    tbnz    w3, #5, 7b
    str     w2, [x20]
    b       puts
8:  ret

up:          .asciz "cpu0: starting cpu1 with PSCI CPU_ON\n"
good:        .asciz "cpu0: cpu1 ran with its context ID\n"
bad_context: .asciz "cpu0: cpu1 ran with the wrong context ID\n"
refused:     .asciz "cpu0: PSCI CPU_ON failed\n"
    .balign 8
flag:   .long 0
    .balign 8
    .ltorg
_end:
