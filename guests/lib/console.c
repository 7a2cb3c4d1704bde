/* Console output (COM1 16550 + debug port 0xE9), printf, result lines and shutdown. */
#include "platform.h"

#define COM1 0x3f8
#define DEBUGCON 0xe9
#define LSR_THRE 0x20

/* PC16550D datasheet: 115200 8N1 = divisor 1 with DLAB set in LCR, then LCR = 0x03. */
void console_init(void)
{
    outb(COM1 + 1, 0x00); /* IER: no interrupts */
    outb(COM1 + 3, 0x80); /* LCR: DLAB */
    outb(COM1 + 0, 0x01); /* DLL: 115200 baud */
    outb(COM1 + 1, 0x00); /* DLM */
    outb(COM1 + 3, 0x03); /* LCR: 8 data bits, no parity, 1 stop bit */
    outb(COM1 + 2, 0x07); /* FCR: FIFOs on and cleared */
    outb(COM1 + 4, 0x03); /* MCR: DTR | RTS */
}

static void serial_byte(u8 c)
{
    /* Wait (bounded: a missing UART reads 0xFF, so this also ends) for THR empty. */
    for (int i = 0; i < 100000 && !(inb(COM1 + 5) & LSR_THRE); i++)
        ;
    outb(COM1, c);
}

void putchar(int c)
{
    if (c == '\n')
        serial_byte('\r');
    serial_byte((u8)c);
    outb(DEBUGCON, (u8)c);
}

int puts(const char *s)
{
    while (*s)
        putchar(*s++);
    putchar('\n');
    return 0;
}

/* ---- formatting ---- */

struct sink {
    char *buf; /* NULL: straight to the console */
    size_t size, len;
};

static void emit(struct sink *o, char c)
{
    if (!o->buf)
        putchar(c);
    else if (o->len + 1 < o->size)
        o->buf[o->len] = c;
    o->len++;
}

static void emit_num(struct sink *o, u64 v, unsigned base, int neg, int width, char pad, int left)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    int len = n + neg;
    if (neg && pad == '0')
        emit(o, '-');
    for (; !left && width > len; width--)
        emit(o, pad);
    if (neg && pad != '0')
        emit(o, '-');
    while (n)
        emit(o, tmp[--n]);
    for (; left && width > len; width--)
        emit(o, ' ');
}

static void format(struct sink *o, const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            emit(o, *fmt);
            continue;
        }
        fmt++;
        int left = 0, width = 0, lng = 0;
        char pad = ' ';
        if (*fmt == '-') {
            left = 1;
            fmt++;
        }
        if (*fmt == '0') {
            pad = '0';
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l' || *fmt == 'z') {
            lng = 1;
            fmt++;
        }
        switch (*fmt) {
        case 'd':
        case 'i': {
            i64 v = lng ? va_arg(ap, i64) : va_arg(ap, int);
            emit_num(o, v < 0 ? -(u64)v : (u64)v, 10, v < 0, width, pad, left);
            break;
        }
        case 'u':
            emit_num(o, lng ? va_arg(ap, u64) : va_arg(ap, unsigned), 10, 0, width, pad, left);
            break;
        case 'x':
        case 'X':
            emit_num(o, lng ? va_arg(ap, u64) : va_arg(ap, unsigned), 16, 0, width, pad, left);
            break;
        case 'p':
            emit(o, '0');
            emit(o, 'x');
            emit_num(o, (u64)va_arg(ap, void *), 16, 0, width, pad, left);
            break;
        case 'c':
            emit(o, (char)va_arg(ap, int));
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            int len = (int)strlen(s);
            for (; !left && width > len; width--)
                emit(o, ' ');
            while (*s)
                emit(o, *s++);
            for (; left && width > len; width--)
                emit(o, ' ');
            break;
        }
        case '%':
            emit(o, '%');
            break;
        case '\0':
            return;
        default:
            emit(o, '%');
            emit(o, *fmt);
        }
    }
}

int vprintf(const char *fmt, va_list ap)
{
    struct sink o = {0};
    format(&o, fmt, ap);
    return (int)o.len;
}

int printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vprintf(fmt, ap);
    va_end(ap);
    return n;
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct sink o = {buf, size, 0};
    format(&o, fmt, ap);
    if (size)
        buf[o.len < size ? o.len : size - 1] = '\0';
    return (int)o.len;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

void result(int pass, const char *name, const char *fmt, ...)
{
    printf("RESULT: %s %s", pass ? "PASS" : "FAIL", name);
    if (fmt && *fmt) {
        va_list ap;
        va_start(ap, fmt);
        putchar(' ');
        vprintf(fmt, ap);
        va_end(ap);
    }
    putchar('\n');
}

void shutdown(void)
{
    /* Let the last byte leave the UART: LSR TEMT (bit 6), bounded. */
    for (int i = 0; i < 100000 && !(inb(COM1 + 5) & 0x40); i++)
        ;
    /* A real power-off where the platform has ACPI (S5 through the FADT), else a reset. */
    acpi_poweroff();
    /* 8042 command 0xFE pulses the CPU reset line (IBM PC/AT technical reference). */
    outb(0x64, 0xfe);
    /* No i8042 (QEMU microvm): a triple fault, which -no-reboot turns into an exit. ud2 rather
     * than int3: the build machines' ring-0 emulation cannot execute `int n`. */
    static const struct __attribute__((packed)) {
        u16 limit;
        u64 base;
    } no_idt = {0, 0};
    __asm__ volatile("cli; lidt %0; ud2" : : "m"(no_idt));
    for (;;)
        __asm__ volatile("hlt");
}
