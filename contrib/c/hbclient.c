/*
 * hbclient - a minimal service for hb's tests and benchmarks.
 *
 * usage: hbclient [-s MS] [-e CODE] [-b MS]
 *   (no flag)  print nothing; wait in pause() until SIGTERM, then exit 0
 *   -s MS      sleep MS milliseconds, then exit (0 unless -e is given)
 *   -e CODE    exit with status CODE (0..255): at once, or after -s MS
 *   -b MS      beat the watchdog (hb_beat) every MS milliseconds until
 *              SIGUSR1, then hang: wait in pause() without beating
 * SIGTERM always ends it with status 0 (other signals keep their default).
 * A usage error prints a message on stderr and exits 2.
 */
#define _POSIX_C_SOURCE 200809L
#include "hb_shm.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void on_term(int sig)
{
	(void)sig;
	_exit(0);
}

static volatile sig_atomic_t hang;

static void on_usr1(int sig)
{
	(void)sig;
	hang = 1;
}

static long number(const char *s, long max, const char *what)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < 0 || v > max) {
		fprintf(stderr, "hbclient: %s: %s is not a number in 0..%ld\n", what, s, max);
		exit(2);
	}
	return v;
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	long code = -1, ms = -1, beat = -1;
	int opt;

	while ((opt = getopt(argc, argv, "b:e:s:")) != -1) {
		switch (opt) {
		case 'b':
			beat = number(optarg, 1000000L, "-b");
			break;
		case 'e':
			code = number(optarg, 255, "-e");
			break;
		case 's':
			ms = number(optarg, LONG_MAX / 1000000L, "-s");
			break;
		default:
			fputs("usage: hbclient [-s MS] [-e CODE] [-b MS]\n", stderr);
			return 2;
		}
	}
	if (optind != argc) {
		fputs("usage: hbclient [-s MS] [-e CODE] [-b MS]\n", stderr);
		return 2;
	}
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) != 0) {
		perror("hbclient: sigaction");
		return 1;
	}
	if (ms >= 0) {
		struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
		while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
			;
		return code >= 0 ? (int)code : 0;
	}
	if (code >= 0)
		return (int)code;
	if (beat >= 0) {
		struct timespec ts = {.tv_sec = beat / 1000, .tv_nsec = (beat % 1000) * 1000000L};
		int rc = hb_beat_init();

		if (rc < 0) {
			fprintf(stderr, "hbclient: beat area: %s\n", strerror(-rc));
			return 1;
		}
		sa.sa_handler = on_usr1;
		if (sigaction(SIGUSR1, &sa, NULL) != 0) {
			perror("hbclient: sigaction");
			return 1;
		}
		while (!hang) {
			hb_beat();
			nanosleep(&ts, NULL);
		}
	}

	for (;;)
		pause();
}
