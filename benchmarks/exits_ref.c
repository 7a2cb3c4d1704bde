/*
 * The C reference for benchmarks/exits.py: a minimal KVM VMM that runs a guest already
 * laid out by xenopus's loader and times its port-I/O exits.
 *
 *   exits_ref IMAGE
 *
 * IMAGE (written by exits.py): one 4 KiB page of header (struct image_header, below:
 * little-endian u64s), then the guest's RAM from guest-physical 0, mapped MAP_PRIVATE as
 * the only memory slot. The guest's port-0x80 writes are counted; the run ends at the
 * i8042 reset (0xFE written to port 0x64, the "pulse reset line" command). Prints the
 * guest's COM1 output, then
 *   post=<port-0x80 writes> io=<all port-I/O exits> ns=<first KVM_RUN to the reset>
 *
 * Ioctls and structures: Documentation/virt/kvm/api.rst and <linux/kvm.h>.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HEADER_SIZE 4096
#define HEADER_MAGIC 0x5449584553504e58ULL /* "XNPSEXIT" */
#define TSS_ADDR 0xfffbd000UL              /* 3 pages below the BIOS area, as QEMU uses */
#define PORT_POST 0x80
#define PORT_COM1 0x3f8
#define UART_LCR 3
#define LCR_DLAB 0x80 /* 16550: with DLAB set, offsets 0/1 are the divisor latch */
#define UART_LSR 5
#define LSR_THRE_TEMT 0x60 /* 16550 LSR: transmitter holding register and shifter empty */
#define PORT_DEBUGCON 0xe9
#define PORT_I8042_CMD 0x64
#define I8042_RESET 0xfe

struct segment { /* as the Python side's CpuState Segment */
	uint64_t selector, base, limit, type, present, dpl, db, s, l, g;
};

struct image_header {
	uint64_t magic, ram_size;
	struct kvm_regs regs; /* rax..r15, rip, rflags: struct kvm_regs' own order */
	uint64_t cr0, cr3, cr4, efer;
	uint64_t gdt_base, gdt_limit, idt_base, idt_limit;
	struct segment code, data, tss;
};

_Static_assert(sizeof(struct kvm_regs) == 18 * 8, "struct kvm_regs is 18 u64s");
_Static_assert(sizeof(struct image_header) <= HEADER_SIZE, "header fits its page");

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static int xioctl(int fd, unsigned long req, void *arg, const char *name)
{
	int r = ioctl(fd, req, arg);
	if (r < 0)
		die(name);
	return r;
}

static struct kvm_segment kvm_seg(const struct segment *s)
{
	struct kvm_segment k = {
		.base = s->base, .limit = (uint32_t)s->limit, .selector = (uint16_t)s->selector,
		.type = (uint8_t)s->type, .present = (uint8_t)s->present, .dpl = (uint8_t)s->dpl,
		.db = (uint8_t)s->db, .s = (uint8_t)s->s, .l = (uint8_t)s->l, .g = (uint8_t)s->g,
		.unusable = !s->present,
	};
	return k;
}

static void set_cpuid(int kvm, int vcpu)
{
	/* KVM_GET_SUPPORTED_CPUID fails with E2BIG until nent is large enough. */
	for (uint32_t n = 64;; n *= 2) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(struct kvm_cpuid_entry2));
		if (!c)
			die("calloc");
		c->nent = n;
		if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, c) == 0) {
			xioctl(vcpu, KVM_SET_CPUID2, c, "KVM_SET_CPUID2");
			free(c);
			return;
		}
		if (errno != E2BIG)
			die("KVM_GET_SUPPORTED_CPUID");
		free(c);
	}
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s IMAGE\n", argv[0]);
		return 2;
	}
	int img = open(argv[1], O_RDONLY | O_CLOEXEC);
	if (img < 0)
		die(argv[1]);
	struct image_header h;
	if (pread(img, &h, sizeof(h), 0) != (ssize_t)sizeof(h) || h.magic != HEADER_MAGIC) {
		fprintf(stderr, "%s: not an exits image\n", argv[1]);
		return 2;
	}
	/* Private: the guest's writes stay in this process, the file is unchanged. */
	void *ram = mmap(NULL, h.ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, img, HEADER_SIZE);
	if (ram == MAP_FAILED)
		die("mmap guest RAM");

	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("/dev/kvm");
	if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
		fprintf(stderr, "KVM API version is not %d\n", KVM_API_VERSION);
		return 1;
	}
	int vm = xioctl(kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM");
	xioctl(vm, KVM_SET_TSS_ADDR, (void *)TSS_ADDR, "KVM_SET_TSS_ADDR");
	xioctl(vm, KVM_CREATE_IRQCHIP, NULL, "KVM_CREATE_IRQCHIP");
	struct kvm_pit_config pit = {.flags = 0};
	xioctl(vm, KVM_CREATE_PIT2, &pit, "KVM_CREATE_PIT2");
	struct kvm_userspace_memory_region slot = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = h.ram_size,
		.userspace_addr = (uint64_t)(uintptr_t)ram,
	};
	xioctl(vm, KVM_SET_USER_MEMORY_REGION, &slot, "KVM_SET_USER_MEMORY_REGION");

	int vcpu = xioctl(vm, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU");
	int run_size = xioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, NULL, "KVM_GET_VCPU_MMAP_SIZE");
	struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("mmap kvm_run");
	set_cpuid(kvm, vcpu);

	/* The boot state xenopus's loader chose (Vcpu.apply does the same). */
	struct kvm_sregs sregs;
	xioctl(vcpu, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
	sregs.cs = kvm_seg(&h.code);
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = kvm_seg(&h.data);
	sregs.tr = kvm_seg(&h.tss);
	memset(&sregs.ldt, 0, sizeof(sregs.ldt));
	sregs.ldt.type = 2;
	sregs.ldt.unusable = 1;
	sregs.gdt.base = h.gdt_base;
	sregs.gdt.limit = (uint16_t)h.gdt_limit;
	sregs.idt.base = h.idt_base;
	sregs.idt.limit = (uint16_t)h.idt_limit;
	sregs.cr0 = h.cr0;
	sregs.cr3 = h.cr3;
	sregs.cr4 = h.cr4;
	sregs.efer = h.efer;
	memset(sregs.interrupt_bitmap, 0, sizeof(sregs.interrupt_bitmap));
	xioctl(vcpu, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS");
	xioctl(vcpu, KVM_SET_REGS, &h.regs, "KVM_SET_REGS");

	uint64_t post = 0, io = 0;
	static char console[65536];
	size_t console_len = 0;
	uint8_t lcr = 0;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		if (ioctl(vcpu, KVM_RUN, NULL) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("KVM_RUN");
		}
		if (run->exit_reason == KVM_EXIT_IO) {
			uint8_t *data = (uint8_t *)run + run->io.data_offset;
			uint16_t port = run->io.port;
			io++;
			for (uint32_t i = 0; i < run->io.count; i++, data += run->io.size) {
				if (run->io.direction == KVM_EXIT_IO_IN) {
					memset(data, 0xff, run->io.size);
					if (port == PORT_COM1 + UART_LSR)
						data[0] = LSR_THRE_TEMT;
					continue;
				}
				if (port == PORT_POST)
					post++;
				else if (port == PORT_I8042_CMD && data[0] == I8042_RESET)
					goto reset;
				else if (port == PORT_COM1 + UART_LCR)
					lcr = data[0];
				else if (port == PORT_COM1 && !(lcr & LCR_DLAB) &&
					 console_len < sizeof(console))
					console[console_len++] = (char)data[0];
				/* debugcon and everything else: written and forgotten. */
			}
			continue;
		}
		if (run->exit_reason == KVM_EXIT_MMIO) {
			if (!run->mmio.is_write)
				memset(run->mmio.data, 0xff, sizeof(run->mmio.data));
			continue;
		}
		if (run->exit_reason == KVM_EXIT_INTR)
			continue;
		struct kvm_regs regs;
		ioctl(vcpu, KVM_GET_REGS, &regs);
		fprintf(stderr, "unexpected exit %u at rip %#llx (internal error suberror %u)\n",
			run->exit_reason, (unsigned long long)regs.rip,
			run->exit_reason == KVM_EXIT_INTERNAL_ERROR ? run->internal.suberror : 0);
		return 1;
	}
reset:
	clock_gettime(CLOCK_MONOTONIC, &t1);
	long long ns = (t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
	fwrite(console, 1, console_len, stdout);
	printf("\npost=%llu io=%llu ns=%lld\n", (unsigned long long)post, (unsigned long long)io, ns);
	return 0;
}
