/* rx: the first stage of the example chain. It sends RATE packets a second
 * to the active worker and, before every packet, checks that the worker is
 * alive; when it is not, it switches to the other one. How it checks is
 * METHOD:
 *
 *   hb         the worker's slot in hb's table: one load (hb_pid), the PID
 *              hb sets to 0 the moment the worker dies;
 *   heartbeat  the workers' UDP heartbeats, every 10 ms, the worker declared
 *              dead after 3 missed (30 ms);
 *   kill0      kill(pid, 0) every 1 ms, the PID read from hb's table.
 *
 * It starts sending once both workers have sent a heartbeat (they are up).
 * hb passes the table's path in HB_SHM. On SIGTERM rx writes "sent N" and
 * "switches K" to STATS and exits.
 *
 *	rx BASE METHOD RATE STATS */
#include "chain.h"

#include "hb_shm.h"

#define BEAT_DEAD_NS 30000000ull /* 3 heartbeats of 10 ms */
#define PROBE_NS 1000000ull      /* kill0: every 1 ms */

enum method { M_HB, M_HEARTBEAT, M_KILL0 };

static struct hb_table table;
static int slot[2] = {-1, -1};

/* lookup finds work0's and work1's slots, waiting up to 10 s for hb to
 * start them. A slot keeps its index: looked up once. */
static int lookup(void)
{
	const char *path = getenv("HB_SHM");
	int rc;

	if (path == NULL) {
		fprintf(stderr, "rx: HB_SHM is not set: run rx under hb, or use --method heartbeat\n");
		return -1;
	}
	if ((rc = hb_open_path(path, &table)) != 0) {
		fprintf(stderr, "rx: open %s: %s\n", path, hb_strerror(rc));
		return -1;
	}
	for (int tries = 0; tries < 10000; tries++) {
		slot[0] = hb_lookup(&table, "work0");
		slot[1] = hb_lookup(&table, "work1");
		if (slot[0] >= 0 && slot[1] >= 0)
			return 0;
		usleep(1000);
	}
	fprintf(stderr, "rx: no slot for work0 or work1 in %s\n", path);
	return -1;
}

int main(int argc, char **argv)
{
	const char *usage = "BASE hb|heartbeat|kill0 RATE STATS";
	int base = (int)chain_int(argc, argv, 1, usage);
	long rate = chain_int(argc, argv, 3, usage);
	const char *m = argv[2], *stats = argc > 4 ? argv[4] : NULL;
	enum method method;
	struct sockaddr_in work[2] = {chain_addr(base, CHAIN_PORT_WORK(0)), chain_addr(base, CHAIN_PORT_WORK(1))};
	uint64_t period, next, sent = 0, switches = 0, next_probe = 0, last_beat[2];
	uint32_t pid[2] = {0, 0};
	int out, beats, active = 0;
	char text[256];

	if (stats == NULL || rate <= 0) {
		fprintf(stderr, "usage: %s %s\n", argv[0], usage);
		return 2;
	}
	if (strcmp(m, "hb") == 0)
		method = M_HB;
	else if (strcmp(m, "heartbeat") == 0)
		method = M_HEARTBEAT;
	else if (strcmp(m, "kill0") == 0)
		method = M_KILL0;
	else {
		fprintf(stderr, "rx: method \"%s\": want hb, heartbeat or kill0\n", m);
		return 2;
	}
	chain_signals();
	out = chain_socket("rx", base, -1);
	beats = chain_socket("rx", base, CHAIN_PORT_BEAT);
	if (method != M_HEARTBEAT && lookup() != 0)
		return 1;
	for (int up = 0; up != 3 && !chain_stop;) {
		struct chain_pkt b;

		if (recv(beats, &b, sizeof b, 0) == (ssize_t)sizeof b && b.kind == 1 && b.worker < 2)
			up |= 1 << b.worker;
	}
	pid[0] = method == M_KILL0 ? hb_pid(&table, slot[0]) : 0;
	period = 1000000000ull / (uint64_t)rate;
	next = chain_now_ns();
	last_beat[0] = last_beat[1] = next;
	while (!chain_stop) {
		uint64_t now = chain_now_ns();
		int other = 1 - active;

		if (now < next) {
			struct timespec ts = {.tv_sec = (time_t)(next / 1000000000u), .tv_nsec = (long)(next % 1000000000u)};

			clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
			continue;
		}
		switch (method) {
		case M_HB:
			/* One load per packet: the whole liveness check. */
			if (hb_pid(&table, slot[active]) == 0 && hb_pid(&table, slot[other]) != 0) {
				active = other;
				switches++;
			}
			break;
		case M_HEARTBEAT: {
			struct chain_pkt b;

			while (recv(beats, &b, sizeof b, MSG_DONTWAIT) == (ssize_t)sizeof b)
				if (b.kind == 1 && b.worker < 2)
					last_beat[b.worker] = now;
			if (now - last_beat[active] > BEAT_DEAD_NS && now - last_beat[other] <= BEAT_DEAD_NS) {
				active = other;
				switches++;
			}
			break;
		}
		case M_KILL0:
			if (now >= next_probe) {
				next_probe = now + PROBE_NS;
				if (kill((pid_t)pid[active], 0) != 0 && errno == ESRCH) {
					pid[other] = hb_pid(&table, slot[other]);
					if (pid[other] != 0) {
						active = other;
						switches++;
					}
				}
			}
			break;
		}
		struct chain_pkt pkt = {.seq = sent, .kind = 0};

		sendto(out, &pkt, sizeof pkt, 0, (struct sockaddr *)&work[active], sizeof work[active]);
		sent++;
		next += period;
		if (now > next + 1000000u)
			next = now; /* after a stall, keep the rate: no burst */
	}
	snprintf(text, sizeof text, "sent %llu\nswitches %llu\nmethod %s\n",
		 (unsigned long long)sent, (unsigned long long)switches, m);
	chain_write_stats(stats, text);
	return 0;
}
