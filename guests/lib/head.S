/*
 * Entry points, static page tables, GDT/TSS and interrupt stubs of the test-guest runtime.
 *
 * Three ways in, all ending in runtime_main() in 64-bit mode:
 *   pvh_start32   Xen PVH direct boot (xen docs/misc/pvh.pandoc): 32-bit protected mode,
 *                 paging off, %ebx = physical address of struct hvm_start_info.
 *   _start        Linux 32-bit boot protocol (Documentation/arch/x86/boot.rst, "32-bit BOOT
 *                 PROTOCOL"): code32_start = 0x100000, %esi = struct boot_params.
 *   startup_64    Linux 64-bit boot protocol ("64-bit BOOT PROTOCOL"): offset 0x200 of the
 *                 protected-mode kernel, long mode with an identity map, %rsi = boot_params.
 * Ring 0 is slow on the build machines (emulated), so nothing here loops: the page tables
 * are assembled data, not built at run time.
 */

#define BOOT_PVH   1
#define BOOT_LINUX 2

#define SEL_KCODE  0x08
#define SEL_KDATA  0x10
#define SEL_UDATA  0x1b     /* 0x18 | RPL 3 */
#define SEL_UCODE  0x23     /* 0x20 | RPL 3 */

#define MSR_EFER   0xc0000080
#define EFER_LME   (1 << 8)
#define CR0_PE     (1 << 0)
#define CR0_PG     (1 << 31)
#define CR4_PAE    (1 << 5)

#define SMP_TRAMPOLINE 0x6000   /* platform.h */
#define KSTACK_SIZE 16384       /* platform.h: struct cpu at the base of each ring-0 stack */
#define CPU_SAVED_RSP 0
#define CPU_TSS 8
#define CPU_USTACK 16
#define CPU_GDT 32

/* 32-bit protected mode, paging off, %edx = the top-level page table: SDM Vol. 3A 10.8.5
 * "Initializing IA-32e Mode": PAE, CR3, EFER.LME, then CR0.PG (the caller's far jump
 * follows). Clobbers %eax, %ecx, %edx. Used by the BSP's entry and the AP trampoline. */
.macro  PAGING_ON
        movl    %cr4, %eax
        orl     $CR4_PAE, %eax
        movl    %eax, %cr4
        movl    %edx, %cr3
        movl    $MSR_EFER, %ecx
        rdmsr
        orl     $EFER_LME, %eax
        wrmsr
        movl    %cr0, %eax
        orl     $(CR0_PG | CR0_PE), %eax
        movl    %eax, %cr0
.endm

        .section .head, "ax"
        .code32
/* 0x100000: the Linux 32-bit entry (code32_start). */
        .globl _start
_start:
        cli
        movl    $BOOT_LINUX, %eax
        movl    %esi, %ebx
        jmp     common32

/* boot.rst "Details of the kernel_info": found through kernel_info_offset (protocol 2.15). */
        .org    0x100
        .globl  kernel_info
kernel_info:
        .ascii  "LToP"          /* header */
        .long   16              /* size */
        .long   16              /* size_total */
        .long   0               /* setup_type_max */

/* 0x100200: the Linux 64-bit entry (boot.rst: "at offset 0x200 of the protected-mode kernel"). */
        .org    0x200
        .code64
        .globl  startup_64
startup_64:
        cli
        movl    $BOOT_LINUX, boot_proto(%rip)
        movl    %esi, boot_ptr(%rip)
        leaq    boot_stack_top(%rip), %rsp      /* the protocol gives no stack */
        /* Our tables also identity-map this code, so switching CR3 here is safe. */
        leaq    pml4(%rip), %rax
        movq    %rax, %cr3
        lgdt    gdt_ptr(%rip)
        pushq   $SEL_KCODE
        leaq    long_entry(%rip), %rax
        pushq   %rax
        lretq

        .code32
/* PVH entry; its address is published in the XEN_ELFNOTE_PHYS32_ENTRY note below. */
        .globl  pvh_start32
pvh_start32:
        cli
        movl    $BOOT_PVH, %eax
        /* fall through: %ebx already holds the hvm_start_info address */

/* 32-bit protected mode, paging off: %eax = protocol, %ebx = boot structure. SDM Vol. 3A
 * 10.8.5 "Initializing IA-32e Mode": PAE, CR3, EFER.LME, then CR0.PG, then a far jump. */
common32:
        movl    %eax, boot_proto
        movl    %ebx, boot_ptr
        lgdt    gdt_ptr
        movw    $SEL_KDATA, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movl    $pml4, %edx
        PAGING_ON
        ljmp    $SEL_KCODE, $long_entry

        .code64
long_entry:
        movw    $SEL_KDATA, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        xorl    %eax, %eax
        movw    %ax, %fs
        movw    %ax, %gs
        leaq    boot_stack_top(%rip), %rsp
        /* Only PAE: clears whatever a 64-bit loader left (SMEP/SMAP would stop the kernel
         * touching the user-accessible identity map). */
        movl    $CR4_PAE, %eax
        movq    %rax, %cr4
        /* A bzImage loader does not zero .bss (stacks live outside it: nothing to clear). */
        leaq    __bss_start(%rip), %rdi
        leaq    __bss_end(%rip), %rcx
        subq    %rdi, %rcx
        shrq    $3, %rcx
        xorl    %eax, %eax
        cld
        rep stosq
        call    runtime_main
1:      cli
        hlt
        jmp     1b

/* ---- ring 3 ---------------------------------------------------------------------------- */

/* u64 run_user(u64 (*fn)(u64), u64 arg, unsigned flags): iretq to ring 3 (SDM Vol. 3A 6.14.3
 * "IRET in IA-32e Mode"). The way back is a #UD at user_exit, which trap_entry recognises:
 * an exception works everywhere, whereas `int n` is refused (#UD) by the build machines'
 * instruction emulation. */
        .text
        .globl  run_user
run_user:
        pushq   %rbx
        pushq   %rbp
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        pushfq
        /* struct cpu sits at the base of this CPU's 16 KiB-aligned ring-0 stack. */
        movq    %rsp, %r8
        andq    $~(KSTACK_SIZE - 1), %r8
        movq    %rsp, CPU_SAVED_RSP(%r8)
        /* Interrupts and exceptions from ring 3 land below this frame (TSS.RSP0). */
        movq    CPU_TSS(%r8), %rcx
        movq    %rsp, 4(%rcx)
        movq    %rdi, %rax
        pushq   $SEL_UDATA
        pushq   CPU_USTACK(%r8)
        pushfq
        popq    %rcx
        andq    $~0x3000, %rcx          /* IOPL 0 ... */
        testl   $1, %edx                /* ... unless USER_IOPL */
        jz      1f
        orq     $0x3000, %rcx
1:      pushq   %rcx
        pushq   $SEL_UCODE
        leaq    user_trampoline(%rip), %rcx
        pushq   %rcx
        movq    %rsi, %rdi
        iretq

user_trampoline:
        call    *%rax
        movq    %rax, %rdi
        .globl  user_exit
user_exit:
        ud2

/* user_return(result), called by trap_entry on the ring-0 stack: drop everything above the
 * frame run_user saved and return `result` to run_user's caller. */
        .globl  user_return
user_return:
        movq    %rdi, %rax
        movq    %rsp, %r8
        andq    $~(KSTACK_SIZE - 1), %r8
        movq    CPU_SAVED_RSP(%r8), %rsp
        popfq
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbp
        popq    %rbx
        ret

/* ---- application processors --------------------------------------------------------- */

/* The real-mode trampoline (copied to SMP_TRAMPOLINE by smp.c, entered by a SIPI at CS:IP =
 * vector*0x100:0): real -> protected -> long mode (SDM Vol. 3A 9.9.1 and 10.8.5) on the
 * runtime's page tables, then ap_entry on the stack the BSP left in tr_stack. */
#define TR(x) (SMP_TRAMPOLINE + ((x) - ap_tramp_start))
        .section .rodata
        .globl  ap_tramp_start, ap_tramp_end, ap_tramp_cr3, ap_tramp_stack
        .code16
ap_tramp_start:
        cli
        movw    %cs, %ax
        movw    %ax, %ds
        lgdtl   tr_gdtr - ap_tramp_start
        movl    %cr0, %eax
        orl     $CR0_PE, %eax
        movl    %eax, %cr0
        ljmpl   $0x08, $TR(tr_pm32)
        .code32
tr_pm32:
        movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movl    TR(ap_tramp_cr3), %edx
        PAGING_ON
        ljmp    $0x18, $TR(tr_lm64)
        .code64
tr_lm64:
        movq    TR(ap_tramp_stack), %rsp
        movabsq $ap_entry, %rax
        jmp     *%rax
        .balign 8
tr_gdt:
        .quad   0
        .quad   0x00cf9a000000ffff      /* 0x08 32-bit code */
        .quad   0x00cf92000000ffff      /* 0x10 data */
        .quad   0x00af9a000000ffff      /* 0x18 64-bit code */
tr_gdtr:
        .word   tr_gdtr - tr_gdt - 1
        .long   TR(tr_gdt)
        .balign 8
ap_tramp_cr3:   .quad 0
ap_tramp_stack: .quad 0
ap_tramp_end:

        .text
/* On the AP's own stack (struct cpu at its base): the runtime's GDT layout, then C. */
ap_entry:
        leaq    -8(%rsp), %rdi          /* rsp is the stack's top: the struct is below */
        andq    $~(KSTACK_SIZE - 1), %rdi
        leaq    CPU_GDT(%rdi), %rax
        subq    $16, %rsp
        movw    $(7 * 8 - 1), (%rsp)
        movq    %rax, 2(%rsp)
        lgdt    (%rsp)
        addq    $16, %rsp
        movw    $SEL_KDATA, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        xorl    %eax, %eax
        movw    %ax, %fs
        movw    %ax, %gs
        pushq   $SEL_KCODE
        leaq    1f(%rip), %rax
        pushq   %rax
        lretq
1:      movl    $CR4_PAE, %eax
        movq    %rax, %cr4
        call    ap_main
2:      cli
        hlt
        jmp     2b

/* ---- interrupt stubs ------------------------------------------------------------------- */

/* SDM Vol. 3A 6.15: these exceptions push an error code: 8, 10-14, 17, 21, 29, 30. */
.macro  STUB vec
stub_\vec:
        .if (\vec == 8) || (\vec >= 10 && \vec <= 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
        .else
        pushq   $0
        .endif
        pushq   $\vec
        jmp     isr_common
.endm

        .altmacro
        .set    v, 0
        .rept   64
        STUB    %v
        .set    v, v + 1
        .endr

isr_common:
        pushq   %rax
        pushq   %rbx
        pushq   %rcx
        pushq   %rdx
        pushq   %rsi
        pushq   %rdi
        pushq   %rbp
        pushq   %r8
        pushq   %r9
        pushq   %r10
        pushq   %r11
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        cld
        movq    %rsp, %rdi
        call    trap_entry
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %r11
        popq    %r10
        popq    %r9
        popq    %r8
        popq    %rbp
        popq    %rdi
        popq    %rsi
        popq    %rdx
        popq    %rcx
        popq    %rbx
        popq    %rax
        addq    $16, %rsp
        iretq

/* Spurious-interrupt vector (LAPIC SVR): no EOI, just return (SDM Vol. 3A 11.9). */
        .globl  isr_spurious
isr_spurious:
        iretq

        .section .rodata
        .balign 8
        .globl  isr_stubs
isr_stubs:
.macro  STUBADDR vec
        .quad   stub_\vec
.endm
        .set    v, 0
        .rept   64
        STUBADDR %v
        .set    v, v + 1
        .endr
        .noaltmacro

/* ---- data ------------------------------------------------------------------------------ */

        .data
        .globl  boot_proto, boot_ptr
        .balign 8
boot_proto:     .long 0
boot_ptr:       .long 0

/* Descriptors per SDM Vol. 3A 3.4.5; 64-bit code has L=1 (5.2.1). Order fits SYSRET too. */
        .balign 16
        .globl  gdt
gdt:
        .quad   0                       /* 0x00 null */
        .quad   0x00af9a000000ffff      /* 0x08 ring-0 64-bit code */
        .quad   0x00cf92000000ffff      /* 0x10 ring-0 data (flat, also valid in 32-bit) */
        .quad   0x00cff2000000ffff      /* 0x18 ring-3 data */
        .quad   0x00affa000000ffff      /* 0x20 ring-3 64-bit code */
        .quad   0, 0                    /* 0x28 64-bit TSS, filled by runtime_main */
gdt_end:
gdt_ptr:
        .word   gdt_end - gdt - 1
        .quad   gdt

/* 64-bit TSS (SDM Vol. 3A 8.7): rsp0 at offset 4; I/O map base beyond the limit = no bitmap. */
        .balign 16
        .globl  tss, pml4, pdpt
tss:
        .fill   102, 1, 0
        .word   104

/* Identity map of the first 4 GiB with 2 MiB pages (SDM Vol. 3A 4.5), P|RW|US everywhere so
 * ring 3 can run the guest's own code and data. Built by the assembler, never at run time. */
        .balign 4096
pml4:
        .quad   pdpt + 0x7
        .fill   511, 8, 0
pdpt:
        .quad   pd + 0x0007
        .quad   pd + 0x1007
        .quad   pd + 0x2007
        .quad   pd + 0x3007
        .fill   508, 8, 0
pd:
        .set    addr, 0
        .rept   2048
        .quad   addr + 0x87             /* P | RW | US | PS */
        .set    addr, addr + 0x200000
        .endr

/* Stacks are not in .bss, so the bzImage path need not clear them. */
        .section .stack, "aw", @nobits
        .balign KSTACK_SIZE
        .globl  boot_stack
boot_stack:                             /* the BSP's struct cpu lives at its base */
        .space  KSTACK_SIZE
boot_stack_top:
        .space  65536
        .globl  user_stack_top
user_stack_top:

/* XEN_ELFNOTE_PHYS32_ENTRY (xen/include/public/elfnote.h: type 18, "physical 32-bit entry
 * point"): name "Xen\0", a 4-byte payload. The segment must be 4-aligned: QEMU pads the name
 * to the PT_NOTE alignment. */
        .section .note.Xen, "a", @note
        .balign 4
        .long   4                       /* namesz */
        .long   4                       /* descsz */
        .long   18                      /* XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz  "Xen"
        .long   pvh_start32
