/*
 * CMOS RTC (Motorola MC146818A datasheet): read the clock in BCD and in binary mode
 * (register B bit 2, DM), 24-hour mode (register B bit 1), waiting out updates with the
 * UIP flag (register A bit 7) and re-reading until two reads agree. Checks the two readings
 * agree, that register D shows VRT (bit 7, valid RAM and time), and restores register B.
 */
#include "runtime.h"

GUEST("rtc");

#define REG_SEC 0x00
#define REG_MIN 0x02
#define REG_HOUR 0x04
#define REG_DAY 0x07
#define REG_MONTH 0x08
#define REG_YEAR 0x09
#define REG_A 0x0a
#define REG_B 0x0b
#define REG_D 0x0d
#define REG_CENTURY 0x32 /* PC/AT convention (ACPI FADT CENTURY), not in the MC146818 */
#define A_UIP 0x80
#define B_SET 0x80
#define B_DM_BINARY 0x04
#define B_24H 0x02
#define D_VRT 0x80

static u8 cmos(u8 reg)
{
    outb(0x70, reg); /* bit 7 clear: NMI stays enabled */
    return inb(0x71);
}

static void cmos_write(u8 reg, u8 v)
{
    outb(0x70, reg);
    outb(0x71, v);
}

struct tm {
    unsigned year, mon, day, hour, min, sec;
};

static unsigned from_bcd(u8 v) { return (v >> 4) * 10 + (v & 15); }

static void read_raw(u8 r[6], u8 *century)
{
    static const u8 regs[6] = {REG_YEAR, REG_MONTH, REG_DAY, REG_HOUR, REG_MIN, REG_SEC};
    for (int i = 0; i < 1000 && (cmos(REG_A) & A_UIP); i++)
        ;
    for (int i = 0; i < 6; i++)
        r[i] = cmos(regs[i]);
    *century = cmos(REG_CENTURY);
}

/* Read until two consecutive snapshots match: an update between them cannot slip through. */
static struct tm read_clock(int binary)
{
    u8 a[6], b[6], ca, cb;
    read_raw(a, &ca);
    for (int tries = 0; tries < 10; tries++) {
        read_raw(b, &cb);
        if (!memcmp(a, b, 6) && ca == cb)
            break;
        memcpy(a, b, 6);
        ca = cb;
    }
    unsigned v[6], c;
    for (int i = 0; i < 6; i++)
        v[i] = binary ? a[i] : from_bcd(a[i]);
    c = binary ? ca : from_bcd(ca);
    if (c < 19 || c > 21) /* no century register: assume 20xx */
        c = 20;
    return (struct tm){c * 100 + v[0], v[1], v[2], v[3], v[4], v[5]};
}

/* Days since 1970-01-01 (civil-from-days inverse, proleptic Gregorian). */
static i64 seconds(const struct tm *t)
{
    i64 y = t->year - (t->mon <= 2);
    i64 era = y / 400;
    i64 yoe = y - era * 400;
    i64 mp = (t->mon + 9) % 12;
    i64 doy = (153 * mp + 2) / 5 + t->day - 1;
    i64 doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    i64 days = era * 146097 + doe - 719468;
    return days * 86400 + t->hour * 3600 + t->min * 60 + t->sec;
}

static int plausible(const struct tm *t)
{
    return t->mon >= 1 && t->mon <= 12 && t->day >= 1 && t->day <= 31 && t->hour < 24 &&
           t->min < 60 && t->sec < 60;
}

static void show(const char *mode, const struct tm *t)
{
    printf("rtc %s: %04u-%02u-%02u %02u:%02u:%02u\n", mode, t->year, t->mon, t->day, t->hour,
           t->min, t->sec);
}

void guest_main(void)
{
    printf("xenopus test guest: rtc\n");
    u8 b = cmos(REG_B);
    cmos_write(REG_B, (b & ~(B_SET | B_DM_BINARY)) | B_24H);
    struct tm bcd = read_clock(0);
    cmos_write(REG_B, (b & ~B_SET) | B_DM_BINARY | B_24H);
    struct tm bin = read_clock(1);
    u8 d = cmos(REG_D);
    cmos_write(REG_B, b);
    u8 restored = cmos(REG_B);

    show("bcd", &bcd);
    show("bin", &bin);
    i64 diff = seconds(&bin) - seconds(&bcd);
    int ok = 1;
    if (!plausible(&bcd) || !plausible(&bin)) {
        printf("FAIL implausible date/time\n");
        ok = 0;
    }
    if (diff < 0 || diff > 1) {
        printf("FAIL bcd and binary readings differ by %ld s\n", diff);
        ok = 0;
    }
    if (!(d & D_VRT)) {
        printf("FAIL register D 0x%02x: VRT clear\n", d);
        ok = 0;
    }
    if (restored != b) {
        printf("FAIL register B 0x%02x after restore, was 0x%02x\n", restored, b);
        ok = 0;
    }
    result(ok, "rtc", "%04u-%02u-%02u %02u:%02u:%02u", bin.year, bin.mon, bin.day, bin.hour,
           bin.min, bin.sec);
}
