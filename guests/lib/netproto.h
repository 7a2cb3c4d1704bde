/* The protocol half of the vnet and xennet guests: Ethernet II frames carrying ARP (RFC 826)
 * and UDP (RFC 768) in IPv4 (RFC 791, header checksum RFC 1071). Frames are built into the
 * caller's buffer (at least NET_MIN_FRAME bytes; short frames are zero-padded to it) and the
 * builders return the frame length; the device guest only moves the bytes. */
#ifndef NETPROTO_H
#define NETPROTO_H
#include "runtime.h"

#define ETH_ARP 0x0806
#define ETH_IP 0x0800
#define NET_MIN_FRAME 60 /* Ethernet minimum without the FCS */

struct netproto {
    u8 mac[6], peer_mac[6];
    u32 ip, peer_ip;
    u16 port, peer_port;
};

/* What net_input() found. NET_ARP_REQUEST: a request for our IP, the reply is in `reply`
 * (reply_len bytes) to be sent; NET_ARP_REPLY: peer_mac learned; NET_UDP: a datagram to our
 * port, its payload copied NUL-terminated into payload[cap] from from_ip:from_port. */
enum { NET_NONE, NET_ARP_REQUEST, NET_ARP_REPLY, NET_UDP };
struct net_in {
    char *payload; /* in: where a UDP payload goes, cap bytes */
    unsigned cap;
    unsigned reply_len; /* out */
    u32 from_ip;
    u16 from_port;
};

int net_parse_mac(const char *s, u8 *out); /* "xx:xx:xx:xx:xx:xx" -> 1, else 0 */
void net_print_mac(const u8 *mac);
/* The guests' lines: "<name>: A.B.C.D is at xx:..:xx", "<name>: sent N bytes to A.B.C.D:P",
 * "<name> reply from A.B.C.D:P: <payload>". */
void net_print_peer(const char *name, const struct netproto *np);
void net_print_sent(const char *name, const struct netproto *np, unsigned n);
void net_print_reply(const char *name, const struct net_in *in);
u16 net_ip_checksum(const u8 *p, unsigned n);

/* src_ip= [10.0.2.15] dst_ip= [10.0.2.2] src_port= [4444] dst_port= [5555] dst_mac=; returns
 * 1 when dst_mac was given, 0 when it must be resolved by ARP, -1 when it is malformed. */
int net_cmdline(struct netproto *np);

/* op 1: who-has tpa (broadcast); op 2: reply to tha/tpa. */
unsigned net_arp(const struct netproto *np, u8 *f, int op, const u8 *tha, u32 tpa);
/* One UDP datagram from ip:port to peer_ip:peer_port (peer_mac). */
unsigned net_udp(const struct netproto *np, u8 *f, const void *payload, unsigned plen);
/* Classifies a received frame: ARP requests for our IP are always answered (a reply built
 * into `reply`); an ARP reply from peer_ip counts only when want is NET_ARP_REPLY, a UDP
 * datagram to our port only when want is NET_UDP; anything else is NET_NONE. */
int net_input(struct netproto *np, const u8 *f, unsigned len, int want, u8 *reply, struct net_in *in);
#endif
