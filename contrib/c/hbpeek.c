/*
 * hbpeek - print an hb shared-memory liveness table.
 *
 * usage: hbpeek [-H] [-s SERVICE] [-p PATH] [-u UID] [NAME]
 *   NAME        table under /dev/shm (default: $HB_SHM, else "hb")
 *   -p PATH     read the table file at PATH instead of /dev/shm/NAME
 *   -s SERVICE  print only SERVICE's slot line (exit 1 if it has none)
 *   -u UID      accept a table owned by UID (the user hb runs as; default:
 *               $HB_SHM_OWNER, else hbpeek's effective user); a table owned
 *               by root is always accepted, any other is refused, since any
 *               local user can create /dev/shm/NAME before hb does
 *   -H          do not print the header line
 *   -h          print this help and exit 0
 *
 * Output, stable and parseable: single spaces between fields, decimal numbers
 * unless marked 0x. First a header line starting with "#":
 *
 *   # hb path=PATH version=V slots=N used=U writer_pid=P flags=0xF created_ns=C writer_beat_ns=B
 *     layout_seq=L writer_alive=0xA alive=0|1 changes=K
 *
 * (one line; alive is hb_writer_alive: 1 while the writer lives)
 *
 * then one line per used slot (state != free), in index order:
 *
 *   index name pid state generation exits last_status last_pid
 *
 * state is the lower-case state name (free, stopped, starting, running,
 * backoff, exited, fatal, stopping; "unknown" otherwise), pid is 0 when the
 * service is not running, last_status is the last exit code or 128+signal
 * (-1: no exit yet). Exit status 0, or 1 with a message on stderr on error,
 * 2 on a usage error.
 */
#define _POSIX_C_SOURCE 200809L
#include "hb_shm.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

static void usage(FILE *f)
{
	fputs("usage: hbpeek [-H] [-s SERVICE] [-p PATH] [-u UID] [NAME]\n"
	      "  NAME        table under /dev/shm (default: $HB_SHM, else \"hb\")\n"
	      "  -p PATH     read the table file at PATH\n"
	      "  -s SERVICE  print only SERVICE's slot line\n"
	      "  -u UID      accept a table owned by UID besides root\n"
	      "              (default: $HB_SHM_OWNER, else our effective uid)\n"
	      "  -H          omit the header line\n"
	      "  -h          print this help\n",
	      f);
}

/* parse_uid parses a decimal uid; -1 if s is not one. */
static long parse_uid(const char *s)
{
	char *end;
	long v;

	if (!s || *s < '0' || *s > '9')
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || v < 0 || (uid_t)v != v || v == (long)(uid_t)-1)
		return -1;
	return v;
}

/* refused explains an -EPERM from hb_open*: who owns path, its mode, the fix. */
static void refused(const char *path, uid_t owner)
{
	struct stat st;

	if (lstat(path, &st) < 0) {
		fprintf(stderr, "hbpeek: %s: %s\n", path, hb_strerror(-EPERM));
		return;
	}
	if (st.st_mode & (S_IWGRP | S_IWOTH))
		fprintf(stderr, "hbpeek: %s: refused: mode %04o is writable by group or others (anyone could forge it); "
				"if no hb runs, remove it (rm %s)\n",
			path, (unsigned)(st.st_mode & 07777), path);
	else
		fprintf(stderr, "hbpeek: %s: refused: owned by uid %lu (mode %04o), not by root or uid %lu: "
				"not a table hb made; if no hb runs, remove it (rm %s); "
				"if hb runs as uid %lu, say so with -u %lu or HB_SHM_OWNER=%lu\n",
			path, (unsigned long)st.st_uid, (unsigned)(st.st_mode & 07777), (unsigned long)owner, path,
			(unsigned long)st.st_uid, (unsigned long)st.st_uid, (unsigned long)st.st_uid);
}

static void print_slot(const struct hb_slot_snapshot *s)
{
	printf("%d %s %" PRIu32 " %s %" PRIu64 " %" PRIu64 " %" PRId32 " %" PRIu32 "\n", s->index, s->name,
	       s->pid, hb_state_name(s->state), s->generation, s->exits, s->last_status, s->last_pid);
}

int main(int argc, char **argv)
{
	const char *path = NULL, *name = NULL, *service = NULL;
	char where[sizeof HB_SHM_DIR + NAME_MAX];
	struct hb_table t;
	struct hb_header h;
	struct hb_slot_snapshot *slots;
	int opt, rc, header = 1;
	uint32_t used = 0;
	uid_t owner = geteuid();
	const char *owner_s = getenv("HB_SHM_OWNER");

	while ((opt = getopt(argc, argv, "Hhp:s:u:")) != -1) {
		switch (opt) {
		case 'H':
			header = 0;
			break;
		case 'p':
			path = optarg;
			break;
		case 's':
			service = optarg;
			break;
		case 'u':
			owner_s = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc)
		name = argv[optind++];
	if (optind < argc || (path && name)) {
		usage(stderr);
		return 2;
	}
	if (owner_s && *owner_s) {
		long v = parse_uid(owner_s);
		if (v < 0) {
			fprintf(stderr, "hbpeek: owner %s (-u or HB_SHM_OWNER): not a numeric uid\n", owner_s);
			return 2;
		}
		owner = (uid_t)v;
	}
	if (!path) {
		if (!name)
			name = getenv("HB_SHM");
		if (!name || !*name)
			name = HB_DEFAULT_NAME;
		rc = hb_open_owner(name, owner, &t);
		snprintf(where, sizeof where, "%s%s", name[0] == '/' ? "" : HB_SHM_DIR, name);
		path = where;
	} else {
		rc = hb_open_path_owner(path, owner, &t);
	}
	if (rc == -EPERM) {
		refused(path, owner);
		return 1;
	}
	if (rc < 0) {
		fprintf(stderr, "hbpeek: %s: %s\n", path, hb_strerror(rc));
		return 1;
	}

	if (service) {
		struct hb_slot_snapshot s;
		int idx = hb_lookup(&t, service);
		if (idx < 0) {
			fprintf(stderr, "hbpeek: %s: no service %s\n", path, service);
			return 1;
		}
		rc = hb_read(&t, idx, &s);
		if (rc < 0 || s.state == HB_STATE_FREE || strcmp(s.name, service) != 0) {
			fprintf(stderr, "hbpeek: %s: slot %d: %s\n", path, idx,
				rc < 0 ? hb_strerror(rc) : "freed while reading");
			return 1;
		}
		print_slot(&s);
		hb_close(&t);
		return 0;
	}

	slots = calloc(t.slot_count, sizeof *slots);
	if (!slots) {
		fprintf(stderr, "hbpeek: %s: out of memory\n", path);
		return 1;
	}
	for (uint32_t i = 0; i < t.slot_count; i++) {
		rc = hb_read(&t, (int)i, &slots[used]);
		if (rc < 0) {
			fprintf(stderr, "hbpeek: %s: slot %" PRIu32 ": %s\n", path, i, hb_strerror(rc));
			return 1;
		}
		if (slots[used].state != HB_STATE_FREE)
			used++;
	}
	if (header) {
		hb_header(&t, &h);
		printf("# hb path=%s version=%" PRIu32 " slots=%" PRIu32 " used=%" PRIu32 " writer_pid=%" PRIu32
		       " flags=0x%" PRIx32 " created_ns=%" PRIu64 " writer_beat_ns=%" PRIu64 " layout_seq=%" PRIu64
		       " writer_alive=0x%" PRIx32 " alive=%d changes=%" PRIu32 "\n",
		       path, h.version, h.slot_count, used, h.writer_pid, h.flags, h.created_ns, h.writer_beat_ns,
		       h.layout_seq, h.writer_alive, hb_writer_alive(&t), h.changes);
	}
	for (uint32_t i = 0; i < used; i++)
		print_slot(&slots[i]);
	free(slots);
	hb_close(&t);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "hbpeek: write: %s\n", strerror(errno));
		return 1;
	}
	return 0;
}
