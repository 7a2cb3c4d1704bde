/* Freestanding string helpers and command-line lookup. */
#include "runtime.h"

void *memset(void *d, int c, size_t n)
{
    u8 *p = d;
    while (n--)
        *p++ = (u8)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    u8 *p = d;
    const u8 *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const u8 *p = a, *q = b;
    for (; n; n--, p++, q++)
        if (*p != *q)
            return *p - *q;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (u8)*a - (u8)*b;
        if (!*a)
            return 0;
    }
    return 0;
}

int strcmp(const char *a, const char *b) { return strncmp(a, b, (size_t)-1); }

u64 strtou64(const char *s, const char **end)
{
    u64 v = 0;
    unsigned base = 10;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
    }
    for (;; s++) {
        unsigned d;
        if (*s >= '0' && *s <= '9')
            d = *s - '0';
        else if (base == 16 && *s >= 'a' && *s <= 'f')
            d = *s - 'a' + 10;
        else if (base == 16 && *s >= 'A' && *s <= 'F')
            d = *s - 'A' + 10;
        else
            break;
        v = v * base + d;
    }
    if (end)
        *end = s;
    return v;
}

/* The command line is space-separated words: "key=value" or a bare "key". */
const char *cmdline_get(const char *key)
{
    static char value[256];
    size_t klen = strlen(key);
    const char *p = boot.cmdline;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *w = p;
        while (*p && *p != ' ')
            p++;
        if ((size_t)(p - w) >= klen && !strncmp(w, key, klen) &&
            (w + klen == p || w[klen] == '=')) {
            const char *v = w + klen + (w + klen < p);
            size_t n = (size_t)(p - v);
            if (n >= sizeof(value))
                n = sizeof(value) - 1;
            memcpy(value, v, n);
            value[n] = '\0';
            return value;
        }
    }
    return NULL;
}

int cmdline_has(const char *key) { return cmdline_get(key) != NULL; }

u64 cmdline_u64(const char *key, u64 dflt)
{
    const char *v = cmdline_get(key);
    return v && *v ? strtou64(v, NULL) : dflt;
}
