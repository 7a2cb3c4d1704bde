/* Ethernet/ARP/IPv4/UDP for the vnet and xennet guests (see netproto.h). */
#include "netproto.h"

static u16 net_get16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }
static u32 net_get32(const u8 *p) { return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3]; }
static void net_put16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static void net_put32(u8 *p, u32 v) { net_put16(p, (u16)(v >> 16)); net_put16(p + 2, (u16)v); }

static u32 parse_ip(const char *key, const char *dflt)
{
    const char *s = cmdline_get(key);
    if (!s || !*s)
        s = dflt;
    u32 ip = 0;
    for (int i = 0; i < 4; i++) {
        ip = ip << 8 | (u8)strtou64(s, &s);
        if (*s == '.')
            s++;
    }
    return ip;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

int net_parse_mac(const char *s, u8 *out)
{
    for (int i = 0; i < 6; i++, s += 3) {
        int hi = hexval(s[0]), lo = hi < 0 ? -1 : hexval(s[1]);
        if (lo < 0 || (i < 5 && s[2] != ':'))
            return 0;
        out[i] = (u8)(hi << 4 | lo);
    }
    return 1;
}

static void print_ip(u32 ip) { printf("%u.%u.%u.%u", ip >> 24, ip >> 16 & 255, ip >> 8 & 255, ip & 255); }

void net_print_mac(const u8 *m) { printf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]); }

void net_print_peer(const char *name, const struct netproto *np)
{
    printf("%s: ", name);
    print_ip(np->peer_ip);
    printf(" is at ");
    net_print_mac(np->peer_mac);
    printf("\n");
}

void net_print_sent(const char *name, const struct netproto *np, unsigned n)
{
    printf("%s: sent %u bytes to ", name, n);
    print_ip(np->peer_ip);
    printf(":%u\n", np->peer_port);
}

void net_print_reply(const char *name, const struct net_in *in)
{
    printf("%s reply from ", name);
    print_ip(in->from_ip);
    printf(":%u: %s\n", in->from_port, in->payload);
}

u16 net_ip_checksum(const u8 *p, unsigned n) /* RFC 791 header checksum, computed as RFC 1071 */
{
    u32 s = 0;
    for (unsigned i = 0; i < n; i += 2)
        s += net_get16(p + i);
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (u16)~s;
}

int net_cmdline(struct netproto *np)
{
    np->ip = parse_ip("src_ip", "10.0.2.15");
    np->peer_ip = parse_ip("dst_ip", "10.0.2.2");
    np->port = (u16)cmdline_u64("src_port", 4444);
    np->peer_port = (u16)cmdline_u64("dst_port", 5555);
    const char *dm = cmdline_get("dst_mac");
    if (!dm || !*dm)
        return 0;
    return net_parse_mac(dm, np->peer_mac) ? 1 : -1;
}

static unsigned eth(const struct netproto *np, u8 *f, const u8 *to, u16 type)
{
    memcpy(f, to, 6);
    memcpy(f + 6, np->mac, 6);
    net_put16(f + 12, type);
    return 14;
}

static unsigned pad(u8 *f, unsigned len)
{
    if (len >= NET_MIN_FRAME)
        return len;
    memset(f + len, 0, NET_MIN_FRAME - len);
    return NET_MIN_FRAME;
}

unsigned net_arp(const struct netproto *np, u8 *f, int op, const u8 *tha, u32 tpa) /* RFC 826 */
{
    static const u8 bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, none[6];
    unsigned n = eth(np, f, op == 1 ? bcast : tha, ETH_ARP);
    u8 *a = f + n;
    net_put16(a, 1);          /* htype Ethernet */
    net_put16(a + 2, ETH_IP); /* ptype */
    a[4] = 6;
    a[5] = 4;
    net_put16(a + 6, (u16)op); /* 1 request, 2 reply */
    memcpy(a + 8, np->mac, 6);
    net_put32(a + 14, np->ip);
    memcpy(a + 18, op == 1 ? none : tha, 6);
    net_put32(a + 24, tpa);
    return pad(f, n + 28);
}

unsigned net_udp(const struct netproto *np, u8 *f, const void *payload, unsigned plen)
{
    unsigned n = eth(np, f, np->peer_mac, ETH_IP);
    u8 *ip = f + n, *udp = ip + 20;
    memset(ip, 0, 28);
    ip[0] = 0x45; /* RFC 791: version 4, IHL 5 */
    net_put16(ip + 2, (u16)(28 + plen));
    ip[8] = 64; /* TTL */
    ip[9] = 17; /* UDP */
    net_put32(ip + 12, np->ip);
    net_put32(ip + 16, np->peer_ip);
    net_put16(ip + 10, net_ip_checksum(ip, 20));
    net_put16(udp, np->port); /* RFC 768; checksum 0: none */
    net_put16(udp + 2, np->peer_port);
    net_put16(udp + 4, (u16)(8 + plen));
    memcpy(udp + 8, payload, plen);
    return pad(f, n + 28 + plen);
}

int net_input(struct netproto *np, const u8 *f, unsigned len, int want, u8 *reply, struct net_in *in)
{
    if (len < 42)
        return NET_NONE;
    if (net_get16(f + 12) == ETH_ARP) {
        const u8 *a = f + 14;
        u16 op = net_get16(a + 6);
        if (op == 1 && net_get32(a + 24) == np->ip) {
            in->reply_len = net_arp(np, reply, 2, a + 8, net_get32(a + 14));
            return NET_ARP_REQUEST;
        }
        if (op == 2 && want == NET_ARP_REPLY && net_get32(a + 14) == np->peer_ip) {
            memcpy(np->peer_mac, a + 8, 6);
            return NET_ARP_REPLY;
        }
    } else if (net_get16(f + 12) == ETH_IP && want == NET_UDP) {
        const u8 *ip = f + 14, *udp = ip + (ip[0] & 15) * 4u;
        if (ip[9] == 17 && net_get32(ip + 16) == np->ip && net_get16(udp + 2) == np->port) {
            unsigned plen = net_get16(udp + 4) - 8u;
            if (plen >= in->cap)
                plen = in->cap - 1;
            memcpy(in->payload, udp + 8, plen);
            in->payload[plen] = 0;
            in->from_ip = net_get32(ip + 12);
            in->from_port = net_get16(udp);
            return NET_UDP;
        }
    }
    return NET_NONE;
}
