/*
 * peer - a peer of hb in C: it follows services through the table, sleeping
 * in the kernel between changes (the README's C example; `make test` builds
 * and runs it against a live table).
 *
 * usage: peer SERVICE...   (the table: $HB_SHM, else /dev/shm/hb)
 * Prints "SERVICE PID" when a service's PID changes (0: not alive) and
 * "writer alive" / "writer dead" when the plugin's liveness changes.
 */
#define _POSIX_C_SOURCE 200809L
#include "hb_shm.h"

#include <stdio.h>

#define MAXSVC 64

int main(int argc, char **argv)
{
	const char *name = getenv("HB_SHM");
	struct hb_table t;
	int n = argc - 1, idx[MAXSVC], writer = -1;
	uint32_t seen[MAXSVC] = {0}, changes;
	uint64_t seq;
	int rc = hb_open(name && *name ? name : HB_DEFAULT_NAME, &t);

	if (rc < 0 || n < 1 || n > MAXSVC) {
		fprintf(stderr, "peer: %s\n", rc < 0 ? hb_strerror(rc) : "usage: peer SERVICE...");
		return 1;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	seq = hb_layout_seq(&t); /* before the lookups */
	for (int k = 0; k < n; k++)
		idx[k] = hb_lookup(&t, argv[k + 1]); /* once; -1 reads as pid 0 */
	changes = hb_changes(&t);
	for (;;) {
		int alive = hb_writer_alive(&t);

		for (int k = 0; k < n; k++) {
			uint32_t pid = hb_pid(&t, idx[k]); /* the hot path: one load */

			if (hb_layout_changed(&t, &seq)) { /* slots moved: look again, drop what was read */
				for (int j = 0; j < n; j++)
					idx[j] = hb_lookup(&t, argv[j + 1]);
				k = -1;
				continue;
			}
			if (!alive)
				pid = 0; /* a dead writer's pids may be recycled ones */
			if (pid != seen[k])
				printf("%s %u\n", argv[k + 1], (unsigned)(seen[k] = pid));
		}
		if (alive != writer)
			printf("writer %s\n", (writer = alive) ? "alive" : "dead");
		/* Sleep until some pid word is stored or the writer's liveness changes
		 * (-EPIPE: woken, the writer is dead; 1 s bound if nobody wakes us). */
		rc = hb_wait_changes(&t, &changes, 1000000000LL);
		if (rc < 0 && rc != -ETIMEDOUT && rc != -EPIPE) {
			fprintf(stderr, "peer: %s\n", hb_strerror(rc));
			return 1;
		}
	}
}
