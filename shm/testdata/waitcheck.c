/*
 * waitcheck - the C reader's helpers and blocking waits (hb_shm.h) against a
 * table the Go writer writes (see TestCWaits in shm/c_test.go).
 *
 * usage: waitcheck PATH state
 *        waitcheck PATH wait SLOT SEEN TIMEOUT_MS
 *        waitcheck PATH any SLOT:SEEN[,SLOT:SEEN...] TIMEOUT_MS
 *        waitcheck PATH changes SEEN TIMEOUT_MS
 * "state" prints "writer_alive=W alive0=A layout_seq=L changes=C"; the waits
 * print "ready" (about to block) and then their result ("pid=P", "pos=K",
 * "changes=C", or "error=ERRNO-NAME").
 */
#define _POSIX_C_SOURCE 200809L
#include "hb_shm.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

static int result(long rc, const char *what)
{
	if (rc == -ETIMEDOUT)
		printf("error=ETIMEDOUT\n");
	else if (rc < 0)
		printf("error=%s\n", hb_strerror((int)rc));
	else
		printf("%s=%ld\n", what, rc);
	return 0;
}

int main(int argc, char **argv)
{
	struct hb_table t;
	int rc;

	if (argc < 3)
		return 2;
	rc = hb_open_path(argv[1], &t);
	if (rc < 0) {
		fprintf(stderr, "waitcheck: %s: %s\n", argv[1], hb_strerror(rc));
		return 1;
	}
	if (!strcmp(argv[2], "state")) {
		uint64_t seq = 0;
		int changed = hb_layout_changed(&t, &seq);
		printf("writer_alive=%d alive0=%d layout_seq=%" PRIu64 " changed=%d changes=%" PRIu32 "\n",
		       hb_writer_alive(&t), hb_alive(&t, 0), seq, changed, hb_changes(&t));
		return 0;
	}
	printf("ready\n");
	fflush(stdout);
	if (!strcmp(argv[2], "wait") && argc == 6)
		return result(hb_wait(&t, atoi(argv[3]), (uint32_t)strtoul(argv[4], NULL, 10), atoll(argv[5]) * 1000000LL), "pid");
	if (!strcmp(argv[2], "changes") && argc == 5) {
		uint32_t seen = (uint32_t)strtoul(argv[3], NULL, 10);
		rc = hb_wait_changes(&t, &seen, atoll(argv[4]) * 1000000LL);
		return result(rc < 0 ? rc : (long)seen, "changes");
	}
	if (!strcmp(argv[2], "any") && argc == 5) {
		struct hb_watch w[HB_WAIT_MAX];
		int n = 0;
		for (char *p = argv[3]; *p && n < HB_WAIT_MAX; n++) {
			w[n].slot = (int)strtol(p, &p, 10);
			if (*p++ != ':')
				return 2;
			w[n].pid = (uint32_t)strtoul(p, &p, 10);
			if (*p == ',')
				p++;
		}
		return result(hb_wait_any(&t, w, n, atoll(argv[4]) * 1000000LL), "pos");
	}
	return 2;
}
