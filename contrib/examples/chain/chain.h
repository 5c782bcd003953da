/* chain.h: what the three stages of the example chain share.
 *
 *   rx ──UDP──► work0 (active) ──UDP──► tx
 *          └──► work1 (standby) ─┘
 *
 * Ports, from a base B: B+0 rx's heartbeat port, B+1 work0, B+2 work1,
 * B+3 tx. Every packet is a struct chain_pkt; the workers forward it to tx
 * as it is. */
#ifndef CHAIN_H
#define CHAIN_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHAIN_PORT_BEAT 0
#define CHAIN_PORT_WORK(i) (1 + (i))
#define CHAIN_PORT_TX 3

struct chain_pkt {
	uint64_t seq;    /* 0, 1, 2, ... as rx sent them */
	uint32_t worker; /* set by the worker that forwarded it (or beat from) */
	uint32_t kind;   /* 0: data, 1: heartbeat (worker → rx) */
};

static volatile sig_atomic_t chain_stop;

static inline void chain_on_term(int sig)
{
	(void)sig;
	chain_stop = 1;
}

/* chain_signals makes SIGTERM and SIGINT end the stage's loop (no
 * SA_RESTART: a blocked recv returns EINTR). */
static inline void chain_signals(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = chain_on_term;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
}

static inline uint64_t chain_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline struct sockaddr_in chain_addr(int base, int port)
{
	struct sockaddr_in a;

	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a.sin_port = htons((uint16_t)(base + port));
	return a;
}

/* chain_socket returns a UDP socket bound to loopback port base+port (port
 * < 0: unbound), with large buffers, or exits saying why. */
static inline int chain_socket(const char *who, int base, int port)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	int buf = 4 << 20;

	if (fd < 0) {
		fprintf(stderr, "%s: socket: %s\n", who, strerror(errno));
		exit(1);
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
	if (port >= 0) {
		struct sockaddr_in a = chain_addr(base, port);

		if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
			fprintf(stderr, "%s: bind 127.0.0.1:%d: %s\n", who, base + port, strerror(errno));
			exit(1);
		}
	}
	return fd;
}

/* chain_int is argument i as a number, or exits with the usage line. */
static inline long chain_int(int argc, char **argv, int i, const char *usage)
{
	char *end;
	long v;

	if (i >= argc) {
		fprintf(stderr, "usage: %s %s\n", argv[0], usage);
		exit(2);
	}
	v = strtol(argv[i], &end, 10);
	if (*end != '\0' || end == argv[i]) {
		fprintf(stderr, "%s: \"%s\" is not a number\nusage: %s %s\n", argv[0], argv[i], argv[0], usage);
		exit(2);
	}
	return v;
}

/* chain_write_stats writes text to path through a temporary file renamed
 * into place, so a reader never sees half of it. */
static inline void chain_write_stats(const char *path, const char *text)
{
	char tmp[4096];
	FILE *f;

	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	f = fopen(tmp, "w");
	if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0) {
		fprintf(stderr, "stats %s: %s\n", tmp, strerror(errno));
		return;
	}
	if (rename(tmp, path) != 0)
		fprintf(stderr, "stats %s: %s\n", path, strerror(errno));
}

#endif
