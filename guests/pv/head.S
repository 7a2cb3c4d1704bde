/* A 64-bit Xen PV kernel's entry and ELF notes (xen/include/public/elfnote.h; Xen builds
 * the domain as it builds dom0, xen/arch/x86/pv/dom0_build.c): it starts in long mode at
 * XEN_ELFNOTE_ENTRY, in ring 3 (the 64-bit PV kernel ring), on Xen's page tables mapping
 * the image, with %rsi the virtual address of start_info and upcalls masked. */
#define XEN_ELFNOTE_ENTRY 1
#define XEN_ELFNOTE_HYPERCALL_PAGE 2
#define XEN_ELFNOTE_VIRT_BASE 3
#define XEN_ELFNOTE_PADDR_OFFSET 4
#define XEN_ELFNOTE_XEN_VERSION 5
#define XEN_ELFNOTE_GUEST_OS 6
#define XEN_ELFNOTE_LOADER 8
#define XEN_ELFNOTE_PAE_MODE 9
#define XEN_ELFNOTE_FEATURES 10

#define NOTE(type, body)                  \
    .pushsection .note.Xen, "a", @note;   \
    .balign 4;                            \
    .long 2f - 1f; .long 4f - 3f; .long type; \
1:  .asciz "Xen"; 2: .balign 4;           \
3:  body; 4: .balign 4;                   \
    .popsection

NOTE(XEN_ELFNOTE_GUEST_OS, .asciz "xenopus-pv")
NOTE(XEN_ELFNOTE_XEN_VERSION, .asciz "xen-3.0")   /* libelf refuses anything else */
NOTE(XEN_ELFNOTE_LOADER, .asciz "generic")        /* not "linux": the generic loader */
NOTE(XEN_ELFNOTE_VIRT_BASE, .quad 0x400000)
NOTE(XEN_ELFNOTE_PADDR_OFFSET, .quad 0x400000)
NOTE(XEN_ELFNOTE_ENTRY, .quad _start)
NOTE(XEN_ELFNOTE_HYPERCALL_PAGE, .quad pv_hypercall_page)
NOTE(XEN_ELFNOTE_FEATURES, .asciz "writable_page_tables") /* supported, not required */
NOTE(XEN_ELFNOTE_PAE_MODE, .asciz "yes")

    .section .text.entry, "ax"
    .globl _start
_start:
    cld
    lea stack_top(%rip), %rsp   /* Xen's boot stack is one page: use our own */
    mov %rsi, %rdi              /* start_info */
    call pv_main
    ud2

    .section .bss.page_aligned, "aw", @nobits
    .balign 4096
    .globl pv_hypercall_page
pv_hypercall_page:                 /* 128 stubs of 32 bytes, written by Xen at build time */
    .skip 4096
    .balign 16
stack:
    .skip 16384
stack_top:
