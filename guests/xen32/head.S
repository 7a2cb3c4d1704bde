/*
 * The 32-bit Xen test guest's entry: Xen PVH direct boot (xen docs/misc/pvh.pandoc) enters
 * in 32-bit protected mode, paging off, flat segments, %ebx = hvm_start_info. We stay in
 * protected mode: our own flat GDT, a stack, .bss cleared, then main32(start_info). Paging
 * (none, PSE or PAE) is the C side's choice. Interrupt stubs for the 32 exceptions and the
 * Xen upcall vector push a uniform frame for trap32().
 */
        .section .head, "ax"
        .code32
        .globl  pvh_start32
pvh_start32:
        cli
        cld
        movl    %ebx, %esi
        lgdt    gdt_desc
        ljmp    $0x08, $1f
1:      movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    %ax, %fs
        movw    %ax, %gs
        movl    $stack_top, %esp
        movl    $__bss_start, %edi
        movl    $__bss_end, %ecx
        subl    %edi, %ecx
        xorl    %eax, %eax
        rep stosb
        pushl   %esi
        call    main32
2:      cli
        hlt
        jmp     2b

        .section .rodata
        .align  8
gdt:    .quad   0
        .quad   0x00cf9a000000ffff      /* 0x08: code, base 0, 4 GiB, 32-bit */
        .quad   0x00cf92000000ffff      /* 0x10: data */
gdt_desc:
        .word   gdt_desc - gdt - 1
        .long   gdt

/* Exception stubs (an error code is pushed by the CPU for 8, 10-14, 17, 21) and the upcall. */
        .text
.macro  STUB n
        .globl  isr\n
isr\n:
        .if (\n == 8) || (\n >= 10 && \n <= 14) || (\n == 17) || (\n == 21)
        .else
        pushl   $0
        .endif
        pushl   $\n
        jmp     isr_common
.endm
        .irp    n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,62
        STUB    \n
        .endr

isr_common:
        pusha
        pushl   %esp                    /* struct frame32 * */
        call    trap32
        addl    $4, %esp
        popa
        addl    $8, %esp                /* vector, error code */
        /* Return without IRET: the build machines' ring-0 emulator refuses a 32-bit
         * protected-mode IRET (KVM's emulator implements it for real mode only). Same
         * privilege, same CS: turn [eip, cs, eflags] into [eflags, eip], then popfl; ret.
         * Interrupts are off here (interrupt gates), so the word below %esp is ours. */
        movl    %eax, -4(%esp)
        movl    (%esp), %eax            /* eip */
        xchgl   %eax, 8(%esp)           /* eip where eflags was; eax = eflags */
        movl    %eax, 4(%esp)           /* eflags where cs was */
        movl    -4(%esp), %eax
        addl    $4, %esp
        popfl
        ret

        .section .rodata
        .globl  isr_table
        .align  4
isr_table:
        .irp    n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .long   isr\n
        .endr
        .globl  isr_upcall
isr_upcall:
        .long   isr62

        .section .stack, "aw", @nobits
        .align  16
        .space  16384
stack_top:

/* XEN_ELFNOTE_PHYS32_ENTRY (xen/include/public/elfnote.h: type 18): name "Xen\0", the
 * 4-byte physical entry address. */
        .section .note.Xen, "a", @note
        .align  4
        .long   4
        .long   4
        .long   18
        .asciz  "Xen"
        .long   pvh_start32

        .section .note.GNU-stack, "", @progbits
