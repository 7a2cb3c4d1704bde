/* diskio: the guest side of benchmarks/linux_io.py, run inside the Linux guest by
 * tests/linux/guest/checks/io.sh (built static with the host's gcc and added to the
 * guest's initramfs by the benchmark).
 *
 *   diskio disk DEV MIB SECONDS   on the block device DEV (its contents are overwritten):
 *       seq-write   MIB MiB in 1 MiB write()s from offset 0, then fsync() (the time ends
 *                   when the device has acknowledged the flush);
 *       seq-read    the same MIB MiB back in 1 MiB reads with O_DIRECT (the page cache
 *                   still holds what was just written; without O_DIRECT, BLKFLSBUF drops
 *                   it first), compared with what was written;
 *       rand-read   4 KiB O_DIRECT reads at pseudo-random 4 KiB-aligned offsets within
 *                   those MIB MiB, one at a time (queue depth 1), for SECONDS seconds.
 *   diskio sink                   stdin to its end (a TCP stream from `nc -l`): counted
 *                                 from its first byte to the end of the stream.
 * Each measurement is one line, `xenopus-io: NAME AMOUNT UNIT SECONDS s [note]`, which the
 * host parses; a failure prints `diskio: ...` on stderr and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1u << 20)
#define BLOCK 4096u

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "diskio: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* The byte pattern of chunk i: different in every chunk, so a read of the wrong place
 * shows. */
static void fill(unsigned char *buf, uint64_t i)
{
    uint64_t x = 0x9E3779B97F4A7C15ull * (i + 1);
    for (size_t k = 0; k < CHUNK; k += 8) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        memcpy(buf + k, &x, 8);
    }
}

static void full_write(int fd, const unsigned char *buf, size_t n)
{
    while (n > 0) {
        ssize_t done = write(fd, buf, n);
        if (done < 0) {
            if (errno == EINTR) continue;
            die("write");
        }
        buf += done;
        n -= (size_t)done;
    }
}

static size_t full_read(int fd, unsigned char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t done = read(fd, buf + got, n - got);
        if (done < 0) {
            if (errno == EINTR) continue;
            die("read");
        }
        if (done == 0) break;
        got += (size_t)done;
    }
    return got;
}

static int disk(const char *dev, unsigned mib, double seconds)
{
    unsigned char *buf, *want;
    if (posix_memalign((void **)&buf, BLOCK, CHUNK) || posix_memalign((void **)&want, BLOCK, CHUNK)) {
        fprintf(stderr, "diskio: out of memory\n");
        return 1;
    }
    int fd = open(dev, O_WRONLY);
    if (fd < 0) die(dev);
    double t0 = now();
    for (unsigned i = 0; i < mib; i++) {
        fill(buf, i);
        full_write(fd, buf, CHUNK);
    }
    if (fsync(fd) < 0) die("fsync");
    double t1 = now();
    close(fd);
    printf("xenopus-io: seq-write %llu B %.6f s\n", (unsigned long long)mib * CHUNK, t1 - t0);
    fflush(stdout);

    const char *mode = "O_DIRECT";
    fd = open(dev, O_RDONLY | O_DIRECT);
    if (fd < 0) {
        mode = "buffered";
        fd = open(dev, O_RDONLY);
        if (fd < 0) die(dev);
        if (ioctl(fd, BLKFLSBUF, 0) < 0) die("BLKFLSBUF");
    }
    t0 = now();
    for (unsigned i = 0; i < mib; i++) {
        if (full_read(fd, buf, CHUNK) != CHUNK) {
            fprintf(stderr, "diskio: %s ended before %u MiB\n", dev, mib);
            return 1;
        }
        fill(want, i);
        if (memcmp(buf, want, CHUNK) != 0) {
            fprintf(stderr, "diskio: MiB %u read back differs from what was written\n", i);
            return 1;
        }
    }
    t1 = now();
    printf("xenopus-io: seq-read %llu B %.6f s %s\n", (unsigned long long)mib * CHUNK, t1 - t0, mode);
    fflush(stdout);

    /* 4 KiB random reads, checked against the pattern (the block's place in its chunk). */
    uint64_t blocks = (uint64_t)mib * (CHUNK / BLOCK), x = 0x2545F4914F6CDD1Dull, ops = 0;
    t0 = now();
    do {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        uint64_t b = x % blocks;
        if (pread(fd, buf, BLOCK, (off_t)(b * BLOCK)) != (ssize_t)BLOCK) die("pread");
        fill(want, b / (CHUNK / BLOCK));
        if (memcmp(buf, want + (b % (CHUNK / BLOCK)) * BLOCK, BLOCK) != 0) {
            fprintf(stderr, "diskio: random block %llu differs from what was written\n",
                    (unsigned long long)b);
            return 1;
        }
        ops++;
        t1 = now();
    } while (t1 - t0 < seconds);
    close(fd);
    printf("xenopus-io: rand-read %llu ops %.6f s %s\n", (unsigned long long)ops, t1 - t0, mode);
    return 0;
}

static int sink(void)
{
    static unsigned char buf[1 << 16];
    unsigned long long total = 0;
    double first = 0, last = 0;
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("read stdin");
        }
        if (n == 0) break;
        last = now();
        if (total == 0) first = last;
        total += (unsigned long long)n;
    }
    printf("xenopus-io: tcp-recv %llu B %.6f s\n", total, last - first);
    return total ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "disk") == 0) {
        unsigned mib = (unsigned)strtoul(argv[3], NULL, 0);
        double seconds = strtod(argv[4], NULL);
        if (mib == 0 || seconds <= 0) {
            fprintf(stderr, "diskio: MIB and SECONDS must be positive\n");
            return 2;
        }
        return disk(argv[2], mib, seconds);
    }
    if (argc == 2 && strcmp(argv[1], "sink") == 0)
        return sink();
    fprintf(stderr, "usage: diskio disk DEV MIB SECONDS | diskio sink\n");
    return 2;
}
