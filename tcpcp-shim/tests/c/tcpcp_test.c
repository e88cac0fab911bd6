/*
 * tcpcp_test.c - a C program written against tcpcp.h, driven by tests/c_api.rs.
 *
 *   tcpcp_test donor API N PORT FILE A B
 *       accepts N connections on PORT, sends each A bytes and reads B bytes of it, stops the
 *       connections and writes their state to FILE, closes them (silently), says "stopped S"
 *       (S: the first connection's TCP state when it was stopped).
 *   tcpcp_test acceptor API FILE C D
 *       recreates the connections of FILE stopped, says "restored N", waits for a line on
 *       stdin, starts them, reads the client's bytes B..C of each, sends bytes A..A+D, closes,
 *       says "done eofs=K" (K: connections whose end of stream was there right after C).
 *   tcpcp_test malformed FILE
 *       damages the first state buffer of FILE in many ways: tcpcp_set_si and tcpcp_create
 *       must fail with EINVAL and create no descriptor; the undamaged buffer must be accepted.
 *
 * API is "one" (TCPCP2, TCPCP_EXEC_ONE per socket), "all" (TCPCP2, TCPCP_EXEC_ALL) or "orig"
 * (TCPCP: tcpcp_get / tcpcp_size / tcpcp_create / tcpcp_activate); for the donor also "resume"
 * (stop, get the state, then start the sockets again in place: see resume()). Streams are
 * patterns seeded by the client's port, so that a mixed-up connection is seen. Exit status 0 =
 * all checks held.
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <tcpcp.h>

/* The layout the header promises (and src/si.rs writes). */
_Static_assert(sizeof(struct tcpcp_total_si_hdr) == 8, "total header");
_Static_assert(sizeof(struct tcpcp_si_hdr) == 164, "socket header");
_Static_assert(offsetof(struct tcpcp_si_hdr, fixgen) == 52, "fixgen");
_Static_assert(offsetof(struct tcpcp_si_hdr, vargen) == 60, "vargen");
_Static_assert(offsetof(struct tcpcp_si_hdr, sockopt) == 88, "sockopt");
_Static_assert(offsetof(struct tcpcp_si_hdr, sockopt.tcp) == 156, "tcp options");
_Static_assert(sizeof(struct tcpcp_sie_repair) == 32, "repair extension");
_Static_assert(sizeof(struct tcpcp_si_skb) == 16, "buffer header");
_Static_assert(sizeof(struct result_list) == 8, "result list");

#define MAX_CONNS 256

static void die(const char *what)
{
	fprintf(stderr, "tcpcp_test: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void fail(const char *what)
{
	fprintf(stderr, "tcpcp_test: %s\n", what);
	exit(1);
}

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static uint8_t to_client(unsigned seed, size_t i)
{
	return (uint8_t)(i * 7 + seed + (i >> 9));
}

static uint8_t to_server(unsigned seed, size_t i)
{
	return (uint8_t)(i * 13 + seed * 3 + (i >> 11));
}

static unsigned peer_port(int fd)
{
	struct sockaddr_in6 sa;
	socklen_t len = sizeof(sa);

	if (getpeername(fd, (struct sockaddr *)&sa, &len) < 0)
		die("getpeername");
	return ntohs(sa.sin6_port);
}

/* tcpi_state, the first byte of struct tcp_info. */
static int tcp_state(int fd)
{
	uint8_t info[8];
	socklen_t len = sizeof(info);

	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, info, &len) < 0)
		die("TCP_INFO");
	return info[0];
}

static void send_pattern(int fd, size_t from, size_t to)
{
	unsigned seed = peer_port(fd);
	uint8_t buf[16384];

	while (from < to) {
		size_t n = to - from < sizeof(buf) ? to - from : sizeof(buf);
		for (size_t i = 0; i < n; i++)
			buf[i] = to_client(seed, from + i);
		size_t off = 0;
		while (off < n) {
			ssize_t w = write(fd, buf + off, n - off);
			if (w < 0) {
				if (errno == EINTR)
					continue;
				die("write");
			}
			off += (size_t)w;
		}
		from += n;
	}
}

static void receive_pattern(int fd, size_t from, size_t to)
{
	unsigned seed = peer_port(fd);
	uint8_t buf[16384];
	/* A stream that stalls fails the test instead of hanging it. */
	struct timeval timeout = { .tv_sec = 20 };

	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout)))
		die("SO_RCVTIMEO");
	while (from < to) {
		size_t want = to - from < sizeof(buf) ? to - from : sizeof(buf);
		ssize_t r = read(fd, buf, want);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			die("read");
		if (r == 0)
			fail("early end of the client's stream");
		for (ssize_t i = 0; i < r; i++)
			if (buf[i] != to_server(seed, from + (size_t)i)) {
				fprintf(stderr, "tcpcp_test: client byte %zu wrong\n",
					from + (size_t)i);
				exit(1);
			}
		from += (size_t)r;
	}
}

static void check_list(struct result_list *res, unsigned all, const char *what)
{
	if (!res)
		fail(what);
	if (res->fd_all != all || res->fd_ng != 0) {
		fprintf(stderr, "tcpcp_test: %s: fd_all %u (want %u), fd_ng %u\n", what,
			res->fd_all, all, res->fd_ng);
		exit(1);
	}
}

/* ----- State file: A, B, number of buffers, then (size, bytes) each -------- */

static void write_state(const char *path, uint32_t a, uint32_t b, uint32_t n, void **bufs,
			uint32_t *sizes)
{
	FILE *f = fopen(path, "wb");

	if (!f)
		die(path);
	fwrite(&a, 4, 1, f);
	fwrite(&b, 4, 1, f);
	fwrite(&n, 4, 1, f);
	for (uint32_t i = 0; i < n; i++) {
		fwrite(&sizes[i], 4, 1, f);
		fwrite(bufs[i], 1, sizes[i], f);
	}
	if (fclose(f))
		die("fclose");
}

static uint32_t read_state(const char *path, uint32_t *a, uint32_t *b, void **bufs,
			   uint32_t *sizes)
{
	FILE *f = fopen(path, "rb");
	uint32_t n;

	if (!f)
		die(path);
	if (fread(a, 4, 1, f) != 1 || fread(b, 4, 1, f) != 1 || fread(&n, 4, 1, f) != 1 ||
	    n > MAX_CONNS)
		fail("state file header");
	for (uint32_t i = 0; i < n; i++) {
		if (fread(&sizes[i], 4, 1, f) != 1)
			fail("state file");
		bufs[i] = malloc(sizes[i] + 8);
		if (!bufs[i] || fread(bufs[i], 1, sizes[i], f) != sizes[i])
			fail("state file buffer");
	}
	fclose(f);
	return n;
}

/* ----- Donor ------------------------------------------------------------- */

/*
 * The handoff abandoned: stop and get the state, say "stopped", wait for a line on stdin,
 * then tcpcp_start the same sockets, which carry on here: read the client's bytes B..C (C is
 * the A+B-relative total given on stdin), send A..A+D (D on stdin too).
 */
static int resume(int *fds, int n, size_t a, size_t b)
{
	struct result_list *res;
	void *buf;
	unsigned size;
	size_t c, d;

	for (int k = 0; k < n; k++) {
		if (tcpcp_stop(fds[k], TCPCP_EXEC_ONE, &res) != TCPCP_RET_OK)
			die("tcpcp_stop");
		free(res);
		if (tcpcp_get_si(fds[k], TCPCP_EXEC_ONE, &buf, &size, &res) != TCPCP_RET_OK)
			die("tcpcp_get_si");
		free(res);
		free(buf);
	}
	printf("stopped\n");
	fflush(stdout);
	if (scanf("%zu %zu", &c, &d) != 2)
		fail("no sizes on stdin");
	if (tcpcp_start(fds[0], TCPCP_EXEC_ALL, &res) != TCPCP_RET_OK)
		die("tcpcp_start ALL");
	check_list(res, (unsigned)n, "tcpcp_start ALL result");
	free(res);
	for (int k = 0; k < n; k++) {
		receive_pattern(fds[k], b, c);
		send_pattern(fds[k], a, a + d);
		if (close(fds[k]))
			die("close");
	}
	return 0;
}

static int donor(const char *api, int n, int port, const char *path, size_t a, size_t b)
{
	struct sockaddr_in6 sa = { .sin6_family = AF_INET6, .sin6_port = htons(port) };
	int fds[MAX_CONNS], one = 1;
	void *bufs[MAX_CONNS];
	uint32_t sizes[MAX_CONNS], count = 0;
	struct result_list *res;

	int lfd = socket(AF_INET6, SOCK_STREAM, 0);
	if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(lfd, MAX_CONNS))
		die("listen");
	printf("listening\n");
	fflush(stdout);
	for (int k = 0; k < n; k++)
		if ((fds[k] = accept(lfd, NULL, NULL)) < 0)
			die("accept");
	for (int k = 0; k < n; k++) {
		send_pattern(fds[k], 0, a);
		receive_pattern(fds[k], 0, b);
	}

	/* The first connection's state as it is stopped (the half-close test wants CLOSE_WAIT). */
	int state = tcp_state(fds[0]);
	double t0 = now_us();
	if (!strcmp(api, "resume"))
		return resume(fds, n, a, b);
	if (!strcmp(api, "one")) {
		for (int k = 0; k < n; k++) {
			if (tcpcp_stop(fds[k], TCPCP_EXEC_ONE, &res) != TCPCP_RET_OK)
				die("tcpcp_stop");
			check_list(res, 1, "tcpcp_stop result");
			if (res->fdrs[0].fd != fds[k] || res->fdrs[0].result != 0)
				fail("tcpcp_stop fdrs[0]");
			free(res);
			/* A second stop is refused, without a list. */
			res = (void *)1;
			if (tcpcp_stop(fds[k], TCPCP_EXEC_ONE, &res) != TCPCP_RET_NG ||
			    errno != EALREADY || res != NULL)
				fail("second tcpcp_stop not refused with EALREADY");
			if (tcpcp_get_si(fds[k], TCPCP_EXEC_ONE, &bufs[count], &sizes[count],
					 &res) != TCPCP_RET_OK)
				die("tcpcp_get_si");
			check_list(res, 1, "tcpcp_get_si result");
			free(res);
			count++;
		}
	} else if (!strcmp(api, "all")) {
		/* fd is the listening socket: ALL skips it (it cannot move). */
		if (tcpcp_stop(lfd, TCPCP_EXEC_ALL, &res) != TCPCP_RET_OK)
			die("tcpcp_stop ALL");
		check_list(res, n, "tcpcp_stop ALL result");
		free(res);
		if (tcpcp_get_si(lfd, TCPCP_EXEC_ALL, &bufs[0], &sizes[0], &res) != TCPCP_RET_OK)
			die("tcpcp_get_si ALL");
		check_list(res, n, "tcpcp_get_si ALL result");
		free(res);
		count = 1;
	} else if (!strcmp(api, "orig")) {
		for (int k = 0; k < n; k++) {
			bufs[count] = tcpcp_get(fds[k]);
			if (!bufs[count])
				die("tcpcp_get");
			sizes[count] = (uint32_t)tcpcp_size(bufs[count]);
			count++;
		}
	} else {
		fail("unknown API");
	}
	double t1 = now_us();
	write_state(path, (uint32_t)a, (uint32_t)b, count, bufs, sizes);
	uint64_t total = 0;
	for (uint32_t i = 0; i < count; i++)
		total += sizes[i];
	fprintf(stderr, "timing %s: stop+get %d sockets %.0f us, %llu bytes of state\n", api, n,
		t1 - t0, (unsigned long long)total);

	if (!strcmp(api, "orig")) {
		for (int k = 0; k < n; k++)
			close(fds[k]);
	} else {
		if (tcpcp_close(lfd, &res) != TCPCP_RET_OK)
			die("tcpcp_close");
		check_list(res, n, "tcpcp_close result");
		free(res);
	}
	for (uint32_t i = 0; i < count; i++)
		free(bufs[i]);
	printf("stopped %d\n", state);
	fflush(stdout);
	return 0;
}

/* ----- Acceptor ---------------------------------------------------------- */

static int acceptor(const char *api, const char *path, size_t c, size_t d)
{
	void *bufs[MAX_CONNS];
	uint32_t sizes[MAX_CONNS], a, b;
	int fds[MAX_CONNS], n = 0;
	struct result_list *res;
	char line[16];

	uint32_t count = read_state(path, &a, &b, bufs, sizes);
	int helper = socket(AF_INET6, SOCK_STREAM, 0);
	if (helper < 0)
		die("socket");

	double t0 = now_us();
	if (!strcmp(api, "one")) {
		for (uint32_t i = 0; i < count; i++) {
			int s = socket(AF_INET6, SOCK_STREAM, 0);
			if (s < 0)
				die("socket");
			if (tcpcp_set_si(s, TCPCP_EXEC_ONE, bufs[i], sizes[i], &res) !=
			    TCPCP_RET_OK)
				die("tcpcp_set_si");
			check_list(res, 1, "tcpcp_set_si result");
			if (res->fdrs[0].result != s)
				fail("tcpcp_set_si ONE did not set the state into fd");
			free(res);
			fds[n++] = s;
		}
	} else if (!strcmp(api, "all")) {
		if (tcpcp_set_si(helper, TCPCP_EXEC_ALL, bufs[0], sizes[0], &res) !=
		    TCPCP_RET_OK)
			die("tcpcp_set_si ALL");
		if (!res || res->fd_ng != 0 || res->fd_all > MAX_CONNS)
			fail("tcpcp_set_si ALL result");
		for (unsigned i = 0; i < res->fd_all; i++) {
			if (res->fdrs[i].result < 0 || res->fdrs[i].result == helper)
				fail("tcpcp_set_si ALL descriptor");
			fds[n++] = res->fdrs[i].result;
		}
		free(res);
	} else if (!strcmp(api, "orig")) {
		for (uint32_t i = 0; i < count; i++) {
			if (tcpcp_size(bufs[i]) != (int)sizes[i])
				fail("tcpcp_size");
			if ((fds[n++] = tcpcp_create(bufs[i])) < 0)
				die("tcpcp_create");
		}
	} else {
		fail("unknown API");
	}
	double t1 = now_us();
	if (!strcmp(api, "all")) {
		/* Restored sockets are stopped already: ALL finds nothing more to stop. */
		if (tcpcp_stop(helper, TCPCP_EXEC_ALL, &res) != TCPCP_RET_OK)
			die("tcpcp_stop ALL at the acceptor");
		check_list(res, 0, "tcpcp_stop ALL at the acceptor");
		free(res);
	}
	printf("restored %d\n", n);
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		fail("no go");
	double t2 = now_us();

	if (!strcmp(api, "one")) {
		for (int k = 0; k < n; k++) {
			if (tcpcp_start(fds[k], TCPCP_EXEC_ONE, &res) != TCPCP_RET_OK)
				die("tcpcp_start");
			check_list(res, 1, "tcpcp_start result");
			free(res);
		}
	} else if (!strcmp(api, "all")) {
		if (tcpcp_start(helper, TCPCP_EXEC_ALL, &res) != TCPCP_RET_OK)
			die("tcpcp_start ALL");
		check_list(res, (unsigned)n, "tcpcp_start ALL result");
		free(res);
	} else {
		for (int k = 0; k < n; k++) {
			if (tcpcp_activate(fds[k]))
				die("tcpcp_activate");
			/* Already active: EALREADY counts as success, errno untouched. */
			errno = 12345;
			if (tcpcp_activate(fds[k]) || errno != 12345)
				fail("second tcpcp_activate not a success");
		}
	}
	fprintf(stderr, "timing %s: set %d sockets %.0f us, start %.0f us\n", api, n, t1 - t0,
		now_us() - t2);
	int eofs = 0;
	for (int k = 0; k < n; k++) {
		receive_pattern(fds[k], b, c);
		/* A FIN the donor had received came along: the end of the stream is there at once. */
		char byte;
		if (recv(fds[k], &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0)
			eofs++;
		send_pattern(fds[k], a, a + d);
		if (close(fds[k]))
			die("close");
	}
	printf("done eofs=%d\n", eofs);
	return 0;
}

/* ----- Malformed buffers --------------------------------------------------- */

static int open_fds(void)
{
	DIR *dir = opendir("/proc/self/fd");
	int n = 0;

	if (!dir)
		die("opendir");
	while (readdir(dir))
		n++;
	closedir(dir);
	return n;
}

static void put32(uint8_t *p, uint32_t v)
{
	v = htonl(v);
	memcpy(p, &v, 4);
}

static int malformed(const char *path)
{
	void *bufs[MAX_CONNS];
	uint32_t sizes[MAX_CONNS], a, b;
	struct result_list *res;
	struct sockaddr_in6 peer;
	socklen_t len = sizeof(peer);

	if (read_state(path, &a, &b, bufs, sizes) < 1)
		fail("no buffer");
	const uint8_t *good = bufs[0];
	uint32_t size = sizes[0];
	if (size < 8 + 164 + 32 + 16)
		fail("the buffer should hold queued bytes");
	uint8_t *bad = malloc(size + 8);
	int s = socket(AF_INET6, SOCK_STREAM, 0);
	if (!bad || s < 0)
		die("setup");

	struct {
		const char *what;
		size_t at;	/* byte to change (SIZE_MAX: only the length passed) */
		uint8_t value;
		long delta;	/* change of the length passed */
		int word;	/* write value as the big-endian word at `at` instead */
	} cases[] = {
		{ "truncated by 4", SIZE_MAX, 0, -4, 0 },
		{ "truncated to the header", SIZE_MAX, 0, -(long)(size - 8), 0 },
		{ "4 trailing bytes", SIZE_MAX, 0, 4, 0 },
		{ "major 1", 4, 1, 0, 0 },
		{ "minor 0", 5, 0, 0, 0 },
		{ "si_cnt 0", 7, 0, 0, 0 },
		{ "si_cnt 2", 7, 2, 0, 0 },
		{ "ip_version 5", 8 + 8, 5, 0, 0 },
		{ "state LISTEN", 8 + 60, 10, 0, 0 },
		{ "ECN", 8 + 52, 8 | 7, 0, 0 },
		{ "window scale 15", 8 + 53, 15, 0, 0 },
		{ "unknown socket flag", 8 + 88, 0x80, 0, 0 },
		{ "extension missing", 8 + 164, 0, 0, 0 },
		{ "extension version 2", 8 + 165, 2, 0, 0 },
		{ "buffer type 3", 8 + 196, 3, 0, 0 },
		/* The whole word: setting only its low byte to 1 changes nothing when the
		 * length (queued bytes included) happens to end in 1. */
		{ "si_length 1", 8, 1, 0, 1 },
	};
	int before = open_fds();
	unsigned n = 0;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		memcpy(bad, good, size);
		memset(bad + size, 0, 8);
		size_t bad_size = (size_t)((long)size + cases[i].delta);
		if (cases[i].word)
			put32(bad + cases[i].at, cases[i].value);
		else if (cases[i].at != SIZE_MAX)
			bad[cases[i].at] = cases[i].value;
		for (int flag = TCPCP_EXEC_ONE; flag <= TCPCP_EXEC_ALL; flag++) {
			res = (void *)1;
			errno = 0;
			if (tcpcp_set_si(s, flag, bad, (unsigned)bad_size, &res) != TCPCP_RET_NG ||
			    errno != EINVAL || res != NULL) {
				fprintf(stderr, "tcpcp_test: %s accepted by tcpcp_set_si (errno %d)\n",
					cases[i].what, errno);
				exit(1);
			}
			n++;
		}
		/* tcpcp_create reads the length from the buffer: make it match the bytes. */
		if (bad_size >= 4 && bad_size <= size + 8)
			put32(bad, (uint32_t)(bad_size / 4));
		errno = 0;
		if (bad_size % 4 == 0 && tcpcp_create(bad) != -1) {
			fprintf(stderr, "tcpcp_test: %s accepted by tcpcp_create\n", cases[i].what);
			exit(1);
		}
		if (bad_size % 4 == 0 && errno != EINVAL) {
			fprintf(stderr, "tcpcp_test: %s: tcpcp_create errno %d\n", cases[i].what,
				errno);
			exit(1);
		}
		n++;
	}
	if (open_fds() != before)
		fail("a refused buffer left a descriptor behind");
	if (getpeername(s, (struct sockaddr *)&peer, &len) == 0 || errno != ENOTCONN)
		fail("a refused buffer changed the caller's socket");

	/* Positive control: the undamaged buffer is accepted (then dropped silently). */
	if (tcpcp_set_si(s, TCPCP_EXEC_ONE, bufs[0], size, &res) != TCPCP_RET_OK)
		die("tcpcp_set_si of the undamaged buffer");
	free(res);
	if (tcpcp_close(s, &res) != TCPCP_RET_OK)
		die("tcpcp_close");
	check_list(res, 1, "tcpcp_close result");
	free(res);
	printf("refused %u\n", n);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 8 && !strcmp(argv[1], "donor"))
		return donor(argv[2], atoi(argv[3]), atoi(argv[4]), argv[5],
			     strtoul(argv[6], NULL, 0), strtoul(argv[7], NULL, 0));
	if (argc == 6 && !strcmp(argv[1], "acceptor"))
		return acceptor(argv[2], argv[3], strtoul(argv[4], NULL, 0),
				strtoul(argv[5], NULL, 0));
	if (argc == 3 && !strcmp(argv[1], "malformed"))
		return malformed(argv[2]);
	fprintf(stderr, "usage: see the comment at the top of tcpcp_test.c\n");
	return 2;
}
