/*
 * tcpcp.h - TCP connection passing: the TCPCP2 and TCPCP C API of Distributed Servers for Linux
 *
 * Source compatible with TCPCP2 (NTT, 2006) and with the original TCPCP of Werner Almesberger
 * (2002), implemented on top of the kernel's TCP_REPAIR (no kernel patch). Link with
 * `pkg-config --cflags --libs tcpcp` (add --static for libtcpcp.a). Design, buffer layout and
 * every deviation from the historical implementations: docs/tcpcp.md.
 *
 * All functions need CAP_NET_ADMIN (TCP_REPAIR) and, for the standalone stop mechanism, the
 * nft(8) program (see STOPPING TRAFFIC below). They are thread-safe (one process-wide lock).
 *
 * STOPPING TRAFFIC
 *   A stopped socket is in TCP_REPAIR mode with its send window zeroed (it sends nothing) and
 *   the peer's packets of its connection are dropped before they reach it, so that neither a
 *   half-captured socket nor a closed one answers them (a closed one would answer with a
 *   reset). When the environment variable TCPCP_DATAPATH names a data-path instance of
 *   handoffd (pinned maps under /sys/fs/bpf/dsl/<instance>), its eBPF freeze map is used.
 *   Otherwise an nftables set in the caller's network namespace: table "inet tcpcp", sets
 *   frozen6/frozen4, each element expiring after 120 s (TCPCP_NFT overrides the path of nft).
 *
 * RESULT LISTS
 *   Functions taking a `struct result_list **reslst` store there a list allocated with
 *   malloc(3), which the caller frees with free(3), or NULL. `reslst` may be NULL (no list).
 *   fd_all is the number of descriptors processed, fd_ng the number that failed, fdrs[] one
 *   entry per descriptor in ascending order (tcpcp_set_si: in the buffer's order): `result`
 *   is 0 or the errno of its failure (tcpcp_set_si: the new descriptor, or minus the errno).
 *   TCPCP_EXEC_ONE: on failure the function returns TCPCP_RET_NG with errno set and *reslst
 *   NULL. TCPCP_EXEC_ALL: the list is stored even when some descriptors failed; the function
 *   then returns TCPCP_RET_NG with errno set to the first failure's.
 *
 * COMMON ERRORS
 *   EINVAL   flag is neither TCPCP_EXEC_ONE nor TCPCP_EXEC_ALL; a NULL buffer argument; a
 *            malformed or unrestorable TCP-SI buffer (nothing is created then).
 *   EBADF, ENOTSOCK, EPROTONOSUPPORT
 *            fd is not open, not a socket, not a TCP/IP socket.
 *   EPERM    no CAP_NET_ADMIN.
 *   EIO      the stop mechanism failed (nft missing or refusing, data-path maps not opened).
 *   ENOMEM   out of memory.
 */

#ifndef TCPCP_H
#define TCPCP_H

#include <stdint.h>
#include <netinet/in.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TCPCP_RET_OK	0
#define TCPCP_RET_NG	-1

#define TCPCP_EXEC_ONE	0	/* the descriptor given */
#define TCPCP_EXEC_ALL	1	/* every applicable TCP socket of the process */

/* ----- Result lists ----------------------------------------------------- */

struct fdr {
	int fd;			/* the descriptor (tcpcp_set_si: the donor's) */
	int result;		/* 0 or an errno (tcpcp_set_si: new fd or -errno) */
};

struct result_list {
	unsigned int fd_all;	/* descriptors processed */
	unsigned int fd_ng;	/* descriptors that failed */
	struct fdr fdrs[];	/* fd_all entries */
};

/* ----- TCP Socket Informations (TCP-SIs) ---------------------------------
 *
 * The buffer tcpcp_get_si() returns and tcpcp_set_si() takes. Every multi-byte field is in
 * network byte order; every length counts 4-byte words. A total header, then per socket a
 * struct tcpcp_si_hdr, the repair extension struct tcpcp_sie_repair, and queue buffers
 * (struct tcpcp_si_skb, data padded to 4 bytes). Sequence numbers exclude FINs (the state
 * implies them). Fields marked "ignored" are written as shown and not read.
 */

#define TCPCP_SI_MAJOR	0	/* TCPCP2's structure revision */
#define TCPCP_SI_MINOR	1	/* 1: with struct tcpcp_sie_repair (required) */

struct tcpcp_si_skb {
	uint8_t type;		/* TCPCP_SIE_BUF_SND or TCPCP_SIE_BUF_RCV */
	uint8_t __pad1;
	uint16_t length;	/* data bytes (not words; 1..65535) */
	uint8_t flags;		/* TCP header flags: ACK; ignored */
	uint8_t sacked;		/* 0; ignored */
	uint8_t __pad2[2];
	uint16_t tso_segs;	/* 0; ignored */
	uint16_t tso_size;	/* 0; ignored */
	uint32_t seq;		/* sequence number of the first byte */
	uint8_t data[];		/* padded to a multiple of 4 bytes */
};

enum {
	TCPCP_SIE_BUF_SND = 1,	/* send queue from the first unacknowledged byte */
	TCPCP_SIE_BUF_RCV = 2,	/* receive queue not yet read by the application */
};

struct tcpcp_sie_id4 {
	uint32_t ip_src;	/* local address */
	uint32_t ip_dst;	/* peer address */
};

struct tcpcp_sie_id6 {
	struct in6_addr ip_src;	/* local address */
	struct in6_addr ip_dst;	/* peer address */
	uint32_t scope_id;	/* 0 (scoped addresses are refused) */
};

struct tcpcp_sie_id {
	uint8_t ip_version;	/* 4 or 6 */
	uint8_t __pad[3];
	union {
		struct tcpcp_sie_id4 v4;
		struct tcpcp_sie_id6 v6;
	} ip;
	uint16_t tcp_sport;	/* local port */
	uint16_t tcp_dport;	/* peer port */
};

struct tcpcp_sie_fixgen {
	uint8_t tcp_flags;	/* TCPI_OPT_TIMESTAMPS 1, _SACK 2, _WSCALE 4 (ECN 8 refused) */
	uint8_t snd_wscale;	/* the peer's window shift (0 without TCPI_OPT_WSCALE) */
	uint8_t rcv_wscale;	/* our window shift */
	uint8_t __pad;
	uint16_t snd_mss;	/* the MSS clamp; ignored */
	uint16_t rcv_mss;	/* the MSS clamp (TCP_REPAIR_OPTIONS TCPOPT_MAXSEG) */
};

struct tcpcp_sie_vargen {
	uint8_t state;		/* TCP_ESTABLISHED 1, FIN_WAIT1 4, FIN_WAIT2 5, CLOSE_WAIT 8,
				   LAST_ACK 9, CLOSING 11 */
	uint8_t __pad[3];
	uint32_t snd_nxt;	/* after the last data byte sent */
	uint32_t rcv_nxt;	/* after the last data byte received */
	uint32_t snd_wnd;	/* window received from the peer (bytes) */
	uint32_t rcv_wnd;	/* window advertised to the peer (bytes) */
	uint32_t ts_recent;	/* 0: TCP_REPAIR cannot read it; ignored */
	uint32_t ts_gen;	/* our timestamp clock (TCP_TIMESTAMP) */
};

struct tcpcp_sie_sk_sockopt {
	uint8_t flags;		/* TCPCP_SIE_SOCK_* */
	uint8_t userlocks;	/* 0; ignored */
	uint8_t __pad[2];
	uint32_t priority;	/* SO_PRIORITY */
	uint32_t sndbuf;	/* SO_SNDBUF */
	uint32_t rcvbuf;	/* SO_RCVBUF */
	uint32_t l_linger;	/* SO_LINGER seconds */
};

enum {
	TCPCP_SIE_SOCK_REUSEADDR = 1,
	TCPCP_SIE_SOCK_KEEPOPEN = 2,	/* SO_KEEPALIVE */
	TCPCP_SIE_SOCK_LINGER = 4,	/* SO_LINGER on */
};

struct tcpcp_sie_ipv4_sockopt {
	uint8_t flags;		/* TCPCP_SIE_IP_DEFAULT_TTL */
	uint8_t uc_ttl;		/* IP_TTL */
	uint8_t pmtudisc;	/* 0; ignored */
	uint8_t tos;		/* IP_TOS */
	uint8_t opt_len;	/* 0 (IP options are refused) */
	uint8_t __pad[3];
	uint8_t opt_data[40];
};

enum {
	TCPCP_SIE_IP_DEFAULT_TTL = 1,
};

struct tcpcp_sie_ipv6_sockopt {
	uint8_t flags;		/* TCPCP_SIE_IPV6_DEFAULT_HOPLIMIT */
	uint8_t hop_limit;	/* IPV6_UNICAST_HOPS */
	uint8_t pmtudisc;	/* 0; ignored */
	uint8_t __pad;
};

enum {
	TCPCP_SIE_IPV6_DEFAULT_HOPLIMIT = 1,
};

struct tcpcp_sie_tcp_sockopt {
	uint8_t nonagle;	/* 1: TCP_NODELAY, 2: TCP_CORK */
	uint8_t keepcnt;	/* TCP_KEEPCNT */
	uint8_t __pad[2];
	uint16_t keepidle;	/* TCP_KEEPIDLE */
	uint16_t keepintvl;	/* TCP_KEEPINTVL */
};

struct tcpcp_sie_sockopt {
	struct tcpcp_sie_sk_sockopt sk;
	union {
		struct tcpcp_sie_ipv4_sockopt v4;
		struct tcpcp_sie_ipv6_sockopt v6;
	} ip;
	struct tcpcp_sie_tcp_sockopt tcp;
};

/* Per socket: 164 bytes, followed by struct tcpcp_sie_repair and the buffers. */
struct tcpcp_si_hdr {
	uint32_t si_length;	/* words of this socket's TCP-SI, buffers included */
	uint32_t fd;		/* the donor's descriptor */
	struct tcpcp_sie_id id;
	struct tcpcp_sie_fixgen fixgen;
	struct tcpcp_sie_vargen vargen;
	struct tcpcp_sie_sockopt sockopt;
};

/* What TCP_REPAIR needs beyond TCPCP2's fields (32 bytes, right after struct tcpcp_si_hdr). */
struct tcpcp_sie_repair {
	uint8_t type;		/* TCPCP_SIE_REPAIR */
	uint8_t version;	/* TCPCP_SIE_REPAIR_VERSION */
	uint16_t length;	/* words of this element: 8 */
	uint32_t snd_wl1;	/* TCP_REPAIR_WINDOW */
	uint32_t max_window;	/* TCP_REPAIR_WINDOW */
	uint32_t rcv_wup;	/* TCP_REPAIR_WINDOW */
	uint32_t ts_clock_ms;	/* CLOCK_REALTIME ms mod 2^32 when ts_gen was read */
	uint32_t user_timeout;	/* TCP_USER_TIMEOUT */
	uint32_t mark;		/* SO_MARK */
	uint8_t tclass;		/* IPV6_TCLASS (IPv6; IPv4 uses ip.v4.tos) */
	uint8_t flags;		/* 0 */
	uint8_t __pad[2];
};

#define TCPCP_SIE_REPAIR		0xd5
#define TCPCP_SIE_REPAIR_VERSION	1

struct tcpcp_total_si_hdr {
	uint32_t total_si_length;	/* words of the whole buffer */
	uint8_t major;			/* TCPCP_SI_MAJOR */
	uint8_t minor;			/* TCPCP_SI_MINOR */
	uint16_t si_cnt;		/* sockets that follow (at least 1) */
};

/* ----- TCPCP2 ------------------------------------------------------------ */

/*
 * tcpcp_stop - stop TCP sockets
 *
 * SYNOPSIS
 *   int tcpcp_stop(int fd, int flag, struct result_list **reslst);
 *
 * DESCRIPTION
 *   Stops the connection of fd (TCPCP_EXEC_ONE), or of every connected TCP socket of the
 *   process in a state that can move (TCPCP_EXEC_ALL: ESTABLISHED, FIN_WAIT1/2, CLOSE_WAIT,
 *   LAST_ACK, CLOSING; listening and unconnected sockets and sockets already stopped are
 *   skipped, fd is not used): the peer's packets are dropped from now on (STOPPING TRAFFIC),
 *   then the socket enters TCP_REPAIR mode, stops sending, and its state is captured. The
 *   application must not use a stopped socket except through this API (or close(2), which
 *   is silent). tcpcp_start() undoes a stop.
 *
 * RETURN VALUE
 *   TCPCP_RET_OK, or TCPCP_RET_NG with errno set (RESULT LISTS).
 *
 * ERRORS
 *   EALREADY   fd is already stopped.
 *   ENOTCONN   fd is not connected.
 *   EOPNOTSUPP the connection is in a state that cannot move (SYN_SENT, TIME_WAIT, ...).
 *   and COMMON ERRORS.
 */
int tcpcp_stop(int fd, int flag, struct result_list **reslst);

/*
 * tcpcp_get_si - get TCP Socket Informations (TCP-SIs)
 *
 * SYNOPSIS
 *   int tcpcp_get_si(int fd, int flag, void **bufptr, unsigned int *size,
 *                    struct result_list **reslst);
 *
 * DESCRIPTION
 *   Stores in *bufptr a malloc(3)'ed TCP-SI buffer of *size bytes holding the stopped socket
 *   fd (TCPCP_EXEC_ONE) or every stopped socket of the process (TCPCP_EXEC_ALL, fd not
 *   used): addresses, sequence numbers, windows, options, and the bytes of both queues.
 *   The sockets stay stopped. The caller frees the buffer with free(3).
 *
 * RETURN VALUE
 *   TCPCP_RET_OK, or TCPCP_RET_NG with errno set, *bufptr NULL and *size 0.
 *
 * ERRORS
 *   EBADFD     fd is not stopped (call tcpcp_stop() first).
 *   ENOENT     TCPCP_EXEC_ALL: no socket is stopped.
 *   EOVERFLOW  the buffer would exceed 4 GiB or 65535 sockets.
 *   and COMMON ERRORS.
 */
int tcpcp_get_si(int fd, int flag, void **bufptr, unsigned int *size,
		 struct result_list **reslst);

/*
 * tcpcp_close - close stopped TCP sockets
 *
 * SYNOPSIS
 *   int tcpcp_close(int fd, struct result_list **reslst);
 *
 * DESCRIPTION
 *   Closes every stopped socket of the process (fd is not used; TCPCP2 closed all of them
 *   too). A stopped socket closes in TCP_REPAIR mode: nothing reaches the peer, and its
 *   packets stay dropped (nftables: until the element expires; data path: until its owner
 *   thaws the flow), so that the host does not answer them with resets while the connection
 *   moves. Restored sockets not yet started are closed the same way and their flows let
 *   through again. A single stopped socket can also be closed with close(2).
 *
 * RETURN VALUE
 *   TCPCP_RET_OK, or TCPCP_RET_NG with errno set (RESULT LISTS, as TCPCP_EXEC_ALL).
 *
 * ERRORS
 *   COMMON ERRORS.
 */
int tcpcp_close(int fd, struct result_list **reslst);

/*
 * tcpcp_set_si - set TCP Socket Informations (TCP-SIs)
 *
 * SYNOPSIS
 *   int tcpcp_set_si(int fd, int flag, void *bufptr, unsigned int size,
 *                    struct result_list **reslst);
 *
 * DESCRIPTION
 *   Recreates the sockets of the TCP-SI buffer bufptr (size bytes, exactly the length its
 *   header declares) in a stopped state: the peer's packets are dropped (STOPPING TRAFFIC),
 *   the socket is rebuilt in TCP_REPAIR mode bound to its local address, which must be
 *   configured on this host, and sends nothing until tcpcp_start(). fd must be a TCP socket
 *   of the caller. TCPCP_EXEC_ONE: the buffer holds one socket, and fd becomes it (dup2(2)
 *   onto fd, as TCPCP2 set the state into fd); fdrs[0] = { donor's fd, fd }. TCPCP_EXEC_ALL:
 *   every socket of the buffer gets a new close-on-exec descriptor, listed as { donor's fd,
 *   new fd } (or { donor's fd, -errno }); fd is left alone. The whole buffer is checked
 *   before anything is created: a malformed buffer creates nothing.
 *
 * RETURN VALUE
 *   TCPCP_RET_OK, or TCPCP_RET_NG with errno set (RESULT LISTS).
 *
 * ERRORS
 *   EINVAL        malformed or unrestorable buffer; TCPCP_EXEC_ONE with several sockets.
 *   EADDRNOTAVAIL the local address is not configured here.
 *   and COMMON ERRORS.
 */
int tcpcp_set_si(int fd, int flag, void *bufptr, unsigned int size,
		 struct result_list **reslst);

/*
 * tcpcp_start - start TCP sockets
 *
 * SYNOPSIS
 *   int tcpcp_start(int fd, int flag, struct result_list **reslst);
 *
 * DESCRIPTION
 *   Starts the stopped socket fd (TCPCP_EXEC_ONE), or every stopped socket of the process
 *   (TCPCP_EXEC_ALL, fd not used). A socket recreated by tcpcp_set_si() or tcpcp_create() is
 *   activated: its peer's packets are let through, it leaves TCP_REPAIR mode and sends what
 *   it holds for the peer; it is then an ordinary connected socket. A socket stopped by
 *   tcpcp_stop() resumes where it was (the handoff was abandoned).
 *
 * RETURN VALUE
 *   TCPCP_RET_OK, or TCPCP_RET_NG with errno set (RESULT LISTS).
 *
 * ERRORS
 *   EALREADY  fd is a connected socket that is not stopped.
 *   ENOTCONN  fd is neither stopped nor connected.
 *   and COMMON ERRORS.
 */
int tcpcp_start(int fd, int flag, struct result_list **reslst);

/* ----- Original TCPCP ---------------------------------------------------- */

/*
 * tcpcp_get - stop a socket and get its Internal Connection Information (ICI)
 *
 * SYNOPSIS
 *   void *tcpcp_get(int fd);
 *
 * DESCRIPTION
 *   tcpcp_stop() and tcpcp_get_si() of fd in one call: returns a malloc(3)'ed ICI, which is a
 *   TCP-SI buffer of one socket (the original ICI layout is not used). Afterwards close(2)
 *   lets go of fd silently, tcpcp_activate() resumes it.
 *
 * RETURN VALUE
 *   The ICI, or NULL with errno set (as tcpcp_stop(); the socket is unchanged then).
 */
void *tcpcp_get(int fd);

/*
 * tcpcp_size - size of an ICI
 *
 * SYNOPSIS
 *   int tcpcp_size(const void *ici);
 *
 * DESCRIPTION
 *   The number of bytes of ici, read from its first word.
 *
 * RETURN VALUE
 *   The size, or -1 with errno EINVAL (NULL) or EOVERFLOW (above INT_MAX).
 */
int tcpcp_size(const void *ici);

/*
 * tcpcp_create - recreate a connection from an ICI
 *
 * SYNOPSIS
 *   int tcpcp_create(const void *ici);
 *
 * DESCRIPTION
 *   Recreates the connection of ici (at least tcpcp_size(ici) readable bytes) in a stopped
 *   state, as tcpcp_set_si() with TCPCP_EXEC_ALL does for one socket, and returns its new
 *   close-on-exec descriptor. tcpcp_activate() starts it.
 *
 * RETURN VALUE
 *   The descriptor, or -1 with errno set (as tcpcp_set_si(); nothing is created then).
 */
int tcpcp_create(const void *ici);

/*
 * tcpcp_activate - start a recreated connection
 *
 * SYNOPSIS
 *   int tcpcp_activate(int fd);
 *
 * DESCRIPTION
 *   tcpcp_start() of fd with TCPCP_EXEC_ONE. A socket that is already active (EALREADY)
 *   counts as success, and errno is left unchanged then.
 *
 * RETURN VALUE
 *   0, or -1 with errno set (as tcpcp_start()).
 */
int tcpcp_activate(int fd);

#ifdef __cplusplus
}
#endif

#endif /* TCPCP_H */
