/* tx: the last stage of the example chain. It receives what the workers
 * forward (port B+3) and counts the distinct sequence numbers; on SIGTERM
 * it writes "received N" to STATS and exits.
 *
 *	tx BASE STATS */
#include "chain.h"

#define MAX_SEQ (1u << 26) /* 64 Mi packets: an hour at 18 kpps */

int main(int argc, char **argv)
{
	int base = (int)chain_int(argc, argv, 1, "BASE STATS");
	const char *stats = argc > 2 ? argv[2] : NULL;
	uint8_t *seen = calloc(MAX_SEQ / 8, 1);
	uint64_t received = 0, dups = 0, beyond = 0;
	char text[256];
	int in;

	if (stats == NULL) {
		fprintf(stderr, "usage: %s BASE STATS\n", argv[0]);
		return 2;
	}
	if (seen == NULL) {
		fprintf(stderr, "tx: out of memory\n");
		return 1;
	}
	chain_signals();
	in = chain_socket("tx", base, CHAIN_PORT_TX);
	while (!chain_stop) {
		struct chain_pkt pkt;
		ssize_t n = recv(in, &pkt, sizeof pkt, 0);

		if (n != (ssize_t)sizeof pkt || pkt.kind != 0)
			continue;
		if (pkt.seq >= MAX_SEQ) {
			beyond++;
			continue;
		}
		if (seen[pkt.seq / 8] & (1u << (pkt.seq % 8))) {
			dups++;
			continue;
		}
		seen[pkt.seq / 8] |= (uint8_t)(1u << (pkt.seq % 8));
		received++;
	}
	snprintf(text, sizeof text, "received %llu\nduplicates %llu\nbeyond %llu\n",
		 (unsigned long long)received, (unsigned long long)dups, (unsigned long long)beyond);
	chain_write_stats(stats, text);
	return 0;
}
