// An arm64 test guest of the GIC and the architected timer, in the Linux Image format
// (Documentation/arch/arm64/booting.rst §4): it sets up the vGICv3 at QEMU virt's addresses
// (GIC architecture spec IHI 0069: the distributor at 0x08000000, vCPU 0's redistributor at
// 0x080A0000 with its SGI/PPI frame 64 KiB above), enables the EL1 virtual timer's PPI
// (INTID 27, as the device tree's timer node names it), and then, forever, waits in WFI
// for the timer interrupt every 1/10 s, whose handler prints "tick" through the PL011,
// acknowledges it through the CPU interface (ICC_IAR1_EL1/ICC_EOIR1_EL1) and rearms the
// timer. It never powers off: the host stops it (a test of pausing uses it too).
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

    .equ    GICD, 0x08000000
    .equ    GICR, 0x080A0000       // vCPU 0's RD_base
    .equ    GICR_SGI, GICR + 0x10000
    .equ    TIMER_INTID, 27        // the EL1 virtual timer's PPI

entry:
    ldr     x20, =0x09000000       // PL011
    adr     x1, hello
    bl      puts
    adr     x0, vectors
    msr     vbar_el1, x0
    // Distributor (IHI 0069 §12.9.4 GICD_CTLR): affinity routing, group 1 on.
    ldr     x0, =GICD
    mov     w1, #0x12              // ARE (bit 4) | EnableGrp1 (bit 1)
    str     w1, [x0]
    // Redistributor: wake it (§12.11.39 GICR_WAKER: clear ProcessorSleep, wait for
    // ChildrenAsleep to clear), then the PPI in group 1, enabled, highest priority.
    ldr     x0, =GICR
    ldr     w1, [x0, #0x14]
    bic     w1, w1, #2
    str     w1, [x0, #0x14]
1:  ldr     w1, [x0, #0x14]
    tbnz    w1, #2, 1b
    ldr     x0, =GICR_SGI
    mov     w1, #(1 << TIMER_INTID)
    str     w1, [x0, #0x80]        // GICR_IGROUPR0
    strb    wzr, [x0, #(0x400 + TIMER_INTID)]  // GICR_IPRIORITYR: 0
    str     w1, [x0, #0x100]       // GICR_ISENABLER0
    // CPU interface: system-register access, every priority, group 1 enabled.
    mov     x0, #1
    msr     icc_sre_el1, x0
    isb
    mov     x0, #0xff
    msr     icc_pmr_el1, x0
    mov     x0, #1
    msr     icc_igrpen1_el1, x0
    isb
    bl      arm_timer
    msr     daifclr, #2            // unmask IRQs
2:  wfi
    b       2b

arm_timer:                         // the virtual timer fires in CNTFRQ / 10 ticks
    mrs     x0, cntfrq_el0
    mov     x1, #10
    udiv    x0, x0, x1
    msr     cntv_tval_el0, x0
    mov     x0, #1                 // ENABLE, not masked
    msr     cntv_ctl_el0, x0
    isb
    ret

irq:
    mrs     x21, icc_iar1_el1
    cmp     x21, #TIMER_INTID
    b.ne    3f
    adr     x1, tick
    bl      puts
    bl      arm_timer
3:  msr     icc_eoir1_el1, x21
    isb
    eret

puts:                              // x1: a NUL-terminated string; clobbers w2, w3
    ldrb    w2, [x1], #1
    cbz     w2, 5f
4:  ldr     w3, [x20, #0x18]       // UARTFR
    tbnz    w3, #5, 4b             // TXFF: wait for room
    str     w2, [x20]              // UARTDR
    b       puts
5:  ret

unexpected:
    adr     x1, oops
    bl      puts
6:  wfi
    b       6b

hello:      .asciz "timer guest: GICv3 and the virtual timer\n"
tick:       .asciz "tick\n"
oops:       .asciz "unexpected exception\n"
    .balign 8
    .ltorg

// The EL1 vector table (Arm ARM D1.10.2): 16 entries of 0x80; an IRQ taken from EL1 with
// SP_EL1 (the "current EL with SPx" group) is at 0x280. Every other one is unexpected.
    .balign 2048
vectors:
    .rept   5
    b       unexpected
    .balign 0x80
    .endr
    b       irq                    // 0x280
    .balign 0x80
    .rept   10
    b       unexpected
    .balign 0x80
    .endr
_end:
