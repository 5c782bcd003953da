/* work: the middle stage of the example chain. After INIT_MS of start-up
 * (a real stage loads its tables; default 100), it forwards every packet it
 * receives on port B+1+ID to tx (B+3), and sends a heartbeat to rx (B+0)
 * every 10 ms: rx waits for the first one before it sends, and its
 * heartbeat method watches them (hb's method needs none: the slot's PID is
 * the liveness). It beats hb's watchdog (hb_beat: one store; nothing without
 * a watchdog) at every turn of its loop, so a worker that hangs (or is
 * stopped) reads 0 in its slot within the watchdog's period.
 *
 *	work BASE ID [INIT_MS] */
#include "chain.h"

#include <poll.h>

#include "hb_shm.h"

#define BEAT_NS 10000000ull

int main(int argc, char **argv)
{
	const char *usage = "BASE ID [INIT_MS]";
	int base = (int)chain_int(argc, argv, 1, usage);
	int id = (int)chain_int(argc, argv, 2, usage);
	long init_ms = argc > 3 ? chain_int(argc, argv, 3, usage) : 100;
	int in, out;
	struct sockaddr_in tx = chain_addr(base, CHAIN_PORT_TX), rx = chain_addr(base, CHAIN_PORT_BEAT);
	struct chain_pkt beat = {.kind = 1};
	uint64_t next_beat = 0;

	if (id != 0 && id != 1) {
		fprintf(stderr, "work: ID %d: want 0 or 1\n", id);
		return 2;
	}
	chain_signals();
	for (long t = 0; t < init_ms; t += 5) {
		hb_beat();
		usleep(5000);
	}
	in = chain_socket("work", base, CHAIN_PORT_WORK(id));
	out = chain_socket("work", base, -1);
	beat.worker = (uint32_t)id;
	while (!chain_stop) {
		struct pollfd p = {.fd = in, .events = POLLIN};

		hb_beat();
		uint64_t now = chain_now_ns();
		struct chain_pkt pkt;
		ssize_t n;

		if (now >= next_beat) {
			sendto(out, &beat, sizeof beat, 0, (struct sockaddr *)&rx, sizeof rx);
			next_beat = now + BEAT_NS;
		}
		if (poll(&p, 1, (int)((next_beat - now) / 1000000u) + 1) <= 0)
			continue;
		while ((n = recv(in, &pkt, sizeof pkt, MSG_DONTWAIT)) == (ssize_t)sizeof pkt) {
			pkt.worker = (uint32_t)id;
			sendto(out, &pkt, sizeof pkt, 0, (struct sockaddr *)&tx, sizeof tx);
		}
	}
	return 0;
}
