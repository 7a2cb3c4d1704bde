/*
 * 16550A register behaviour, following the PC16550D datasheet (National Semiconductor,
 * "8.0 Registers"): SCR, the DLAB divisor latch, LCR, MCR loopback with the MSR mirror,
 * the FIFOs, LSR THRE/TEMT, and the THR-empty and received-data interrupts on IRQ 4.
 * With `echo` on the command line it then reads one line from the host by interrupt.
 *
 * While loopback is on, transmitted bytes (console output included) go to the receiver, so
 * loopback sections record their outcome and print only after loopback is off again.
 */
#include "runtime.h"

GUEST("serial");

#define COM1 0x3f8
#define RBR 0 /* read, DLAB=0 */
#define THR 0 /* write, DLAB=0 */
#define IER 1
#define DLL 0 /* DLAB=1 */
#define DLM 1 /* DLAB=1 */
#define IIR 2 /* read */
#define FCR 2 /* write */
#define LCR 3
#define MCR 4
#define LSR 5
#define MSR 6
#define SCR 7

#define LCR_DLAB 0x80
#define MCR_DTR 0x01
#define MCR_RTS 0x02
#define MCR_OUT1 0x04
#define MCR_OUT2 0x08 /* on a PC, gates the UART interrupt onto the ISA IRQ line */
#define MCR_LOOP 0x10
#define LSR_DR 0x01
#define LSR_THRE 0x20
#define LSR_TEMT 0x40
#define IER_RDA 0x01
#define IER_THRE 0x02
#define IIR_NO_INT 0x01
#define IIR_ID_MASK 0x0e
#define IIR_THRE 0x02
#define IIR_RDA 0x04
#define IIR_TIMEOUT 0x0c
#define IIR_FIFO 0xc0

static u8 rd(int reg) { return inb(COM1 + reg); }
static void wr(int reg, u8 v) { outb(COM1 + reg, v); }

static int failures;

static void check(int ok, const char *what)
{
    printf("%s %s\n", ok ? "ok" : "FAIL", what);
    failures += !ok;
}

/* Bounded poll for LSR bits; the loop count is generous because every read is an exit. */
static int lsr_wait(u8 bits)
{
    for (int i = 0; i < 10000; i++)
        if ((rd(LSR) & bits) == bits)
            return 1;
    return 0;
}

static void console_mode(void)
{
    wr(MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
    lsr_wait(LSR_THRE | LSR_TEMT);
}

/* ---- interrupt side ---- */
static volatile int thre_irqs, rda_irqs, line_done;
static volatile u8 rx_byte;
static char line[128];
static volatile unsigned line_len;
static volatile int echo_mode;

static void com1_irq(int irq)
{
    (void)irq;
    for (int n = 0; n < 32; n++) { /* IIR reports the highest-priority pending cause */
        u8 iir = rd(IIR);
        if (iir & IIR_NO_INT)
            return;
        switch (iir & IIR_ID_MASK) {
        case IIR_THRE: /* reading IIR cleared it */
            thre_irqs++;
            break;
        case IIR_RDA:
        case IIR_TIMEOUT:
            while (rd(LSR) & LSR_DR) {
                u8 c = rd(RBR);
                rda_irqs++;
                rx_byte = c;
                if (!echo_mode || line_done)
                    continue;
                if (c == '\r' || c == '\n')
                    line_done = 1;
                else if (line_len < sizeof(line) - 1)
                    line[line_len++] = (char)c;
            }
            break;
        default: /* line or modem status: reading the status register clears it */
            rd(LSR);
            rd(MSR);
        }
    }
}

static void test_scratch(void)
{
    wr(SCR, 0x5a);
    int ok = rd(SCR) == 0x5a;
    wr(SCR, 0xa5);
    ok &= rd(SCR) == 0xa5;
    check(ok, "scratch register");
}

static void test_divisor(void)
{
    u8 lcr = rd(LCR);
    wr(IER, 0x00);
    wr(LCR, lcr | LCR_DLAB);
    u8 dll = rd(DLL), dlm = rd(DLM);
    wr(DLL, 0x34);
    wr(DLM, 0x12);
    int ok = rd(DLL) == 0x34 && rd(DLM) == 0x12;
    wr(DLL, dll);
    wr(DLM, dlm);
    ok &= rd(DLL) == dll && rd(DLM) == dlm;
    wr(LCR, lcr);
    ok &= rd(IER) == 0x00; /* with DLAB clear, offset 1 is IER again */
    check(ok && dll == 0x01 && dlm == 0x00, "DLAB divisor latch (115200 = 1, write/read/restore)");
}

static void test_lcr(void)
{
    u8 lcr = rd(LCR);
    wr(LCR, 0x1b); /* 8 bits, 1 stop, even parity */
    int ok = rd(LCR) == 0x1b;
    wr(LCR, lcr);
    check(ok && rd(LCR) == 0x03, "LCR read back");
}

static void test_loopback(void)
{
    static const struct {
        u8 mcr, msr;
    } mirror[] = {
        /* datasheet: loopback connects DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD */
        {MCR_DTR, 0x20}, {MCR_RTS, 0x10}, {MCR_OUT1, 0x40}, {MCR_OUT2, 0x80},
        {MCR_DTR | MCR_RTS | MCR_OUT1 | MCR_OUT2, 0xf0}, {0, 0x00},
    };
    u8 got[ARRAY_SIZE(mirror)];
    lsr_wait(LSR_THRE | LSR_TEMT);
    wr(FCR, 0x00); /* FIFOs off: single-byte holding registers */
    for (unsigned i = 0; i < ARRAY_SIZE(mirror); i++) {
        wr(MCR, MCR_LOOP | mirror[i].mcr);
        got[i] = rd(MSR) & 0xf0;
    }
    while (rd(LSR) & LSR_DR)
        rd(RBR);
    wr(THR, 0x55);
    int dr = lsr_wait(LSR_DR);
    u8 back = rd(RBR);
    int empty = !(rd(LSR) & LSR_DR);
    console_mode();

    int ok = 1;
    for (unsigned i = 0; i < ARRAY_SIZE(mirror); i++)
        if (got[i] != mirror[i].msr) {
            printf("  MCR 0x%02x: MSR upper nibble 0x%02x, expected 0x%02x\n",
                   MCR_LOOP | mirror[i].mcr, got[i], mirror[i].msr);
            ok = 0;
        }
    check(ok, "MCR loopback: MSR mirrors DTR/RTS/OUT1/OUT2");
    check(dr && back == 0x55 && empty, "loopback byte returns in RBR, DR then clears");
}

static void test_fifo(void)
{
    lsr_wait(LSR_THRE | LSR_TEMT);
    wr(FCR, 0x07); /* enable, reset RX and TX, trigger level 1 */
    u8 iir = rd(IIR);
    wr(MCR, MCR_LOOP);
    for (int i = 0; i < 16; i++)
        wr(THR, (u8)(0xa0 + i));
    u8 got[16];
    int n = 0;
    for (; n < 16 && lsr_wait(LSR_DR); n++)
        got[n] = rd(RBR);
    int drained = !(rd(LSR) & LSR_DR);
    wr(THR, 0x11);
    wr(THR, 0x22);
    int dr_before = lsr_wait(LSR_DR);
    wr(FCR, 0x03); /* enable + RX reset */
    int dr_after = (rd(LSR) & LSR_DR) != 0;
    console_mode();

    check((iir & IIR_FIFO) == IIR_FIFO, "FCR enable: IIR bits 7:6 = 11");
    int order = n == 16;
    for (int i = 0; i < n; i++)
        order &= got[i] == 0xa0 + i;
    if (!order)
        printf("  received %d of 16 bytes\n", n);
    check(order && drained, "FIFO: 16 loopback bytes read back in order");
    check(dr_before && !dr_after, "FCR RX reset clears DR");
}

static void test_lsr(void)
{
    int ok = lsr_wait(LSR_THRE | LSR_TEMT);
    check(ok, "LSR THRE and TEMT when idle");
}

static void test_irqs(void)
{
    irq_handler(4, com1_irq);
    wr(MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
    lsr_wait(LSR_THRE | LSR_TEMT);
    thre_irqs = 0;
    wr(IER, IER_THRE); /* THR is empty, so enabling ETBEI raises the interrupt at once */
    int thre = wait_flag(&thre_irqs, 1000);
    wr(IER, 0);

    /* Received data in loopback. (Real PCs gate the IRQ with the OUT2 *pin*, which loopback
     * forces inactive; emulated UARTs, like QEMU's, still deliver it.) */
    rda_irqs = 0;
    rx_byte = 0;
    wr(MCR, MCR_LOOP | MCR_OUT2);
    wr(IER, IER_RDA);
    wr(THR, 0x42);
    int rda = wait_flag(&rda_irqs, 1000);
    u8 c = rx_byte;
    wr(IER, 0);
    console_mode();
    check(thre, "THR-empty interrupt on IRQ 4");
    check(rda && c == 0x42, "received-data interrupt on IRQ 4 (loopback)");
}

static void echo_line(void)
{
    line_len = 0;
    line_done = 0;
    echo_mode = 1;
    while (rd(LSR) & LSR_DR)
        rd(RBR);
    wr(IER, IER_RDA);
    printf("READY\n");
    int got = wait_flag(&line_done, 20000);
    wr(IER, 0);
    line[line_len] = '\0';
    if (got)
        printf("ECHO: %s\n", line);
    check(got, "echo: a line from the host by interrupt");
}

void guest_main(void)
{
    printf("xenopus test guest: serial\n");
    test_scratch();
    test_divisor();
    test_lcr();
    test_loopback();
    test_fifo();
    test_lsr();
    test_irqs();
    if (cmdline_has("echo"))
        echo_line();
    irq_handler(4, NULL);
    if (failures)
        result(0, "serial", "%d checks failed", failures);
    else
        result(1, "serial", "");
}
