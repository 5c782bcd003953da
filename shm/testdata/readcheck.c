/*
 * readcheck - consistency check of hb_read against a writer that flips one
 * slot through spawn/exit cycles (see flip in shm/race_test.go).
 *
 * usage: readcheck PATH INDEX READS
 * Prints "ok reads=N running=R exited=E busy=B max_generation=G" and exits 0,
 * or prints "torn: WHY: ..." and exits 2 (1 on other errors).
 */
#define _POSIX_C_SOURCE 200809L
#include "hb_shm.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

static const char *check(const struct hb_slot_snapshot *s)
{
	uint64_t g = s->generation;

	if (strcmp(s->name, "flip") != 0)
		return "name";
	if (g == 0)
		return s->state == HB_STATE_STOPPED && s->pid == 0 && s->exits == 0 && s->last_status == -1
			       ? NULL
			       : "initial slot";
	if (s->start_time != g * 3 || s->flags != (uint32_t)(g & 1))
		return "start_time/flags of another generation";
	if (s->pid != 0 && s->pid != (uint32_t)(g * 7))
		return "pid of another generation";
	switch (s->state) {
	case HB_STATE_RUNNING:
		if (s->exits != g - 1)
			return "running with exits != generation-1";
		if (g > 1 && (s->last_pid != (uint32_t)((g - 1) * 7) || s->last_exit_ns != (g - 1) * 11 ||
			      s->last_status != (int32_t)((g - 1) % 256)))
			return "running with last_* of another exit";
		return NULL;
	case HB_STATE_BACKOFF:
		if (s->pid != 0)
			return "exited with a pid";
		if (s->exits != g || s->last_pid != (uint32_t)(g * 7) || s->last_exit_ns != g * 11 ||
		    s->last_status != (int32_t)(g % 256))
			return "exited with fields of another generation";
		return NULL;
	default:
		return "state";
	}
}

int main(int argc, char **argv)
{
	struct hb_table t;
	struct hb_slot_snapshot s;
	long reads, running = 0, exited = 0, busy = 0;
	uint64_t maxgen = 0;
	int idx, rc;

	if (argc != 4) {
		fputs("usage: readcheck PATH INDEX READS\n", stderr);
		return 1;
	}
	rc = hb_open_path(argv[1], &t);
	if (rc < 0) {
		fprintf(stderr, "readcheck: %s: %s\n", argv[1], hb_strerror(rc));
		return 1;
	}
	idx = atoi(argv[2]);
	reads = atol(argv[3]);
	if (hb_lookup(&t, "flip") != idx) {
		fprintf(stderr, "readcheck: hb_lookup(flip) != %d\n", idx);
		return 1;
	}
	for (long n = 0; n < reads; n++) {
		uint32_t pid = hb_pid(&t, idx);
		const char *why;

		if (pid % 7 != 0) {
			printf("torn: hb_pid %" PRIu32 " is no incarnation's\n", pid);
			return 2;
		}
		rc = hb_read(&t, idx, &s);
		if (rc == -EAGAIN) {
			busy++;
			continue;
		}
		if (rc < 0) {
			fprintf(stderr, "readcheck: hb_read: %s\n", hb_strerror(rc));
			return 1;
		}
		why = check(&s);
		if (why) {
			printf("torn: %s: pid=%" PRIu32 " state=%s gen=%" PRIu64 " start=%" PRIu64 " flags=%" PRIu32
			       " exits=%" PRIu64 " last_status=%" PRId32 " last_pid=%" PRIu32 " last_exit_ns=%" PRIu64 "\n",
			       why, s.pid, hb_state_name(s.state), s.generation, s.start_time, s.flags, s.exits,
			       s.last_status, s.last_pid, s.last_exit_ns);
			return 2;
		}
		if (s.state == HB_STATE_RUNNING)
			running++;
		else if (s.state == HB_STATE_BACKOFF)
			exited++;
		if (s.generation > maxgen)
			maxgen = s.generation;
	}
	printf("ok reads=%ld running=%ld exited=%ld busy=%ld max_generation=%" PRIu64 "\n", reads, running, exited,
	       busy, maxgen);
	hb_close(&t);
	return 0;
}
