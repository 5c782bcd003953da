/* spin: one busy CPU of hbbench's --load: pinned to CPU, spinning for ever.
 * alarm() is its watchdog: it dies by itself after SECS whatever happens to
 * hbbench.
 *
 *	spin CPU SECS            spin at nice 0 (--load ordinary)
 *	spin CPU SECS PRIORITY   SCHED_FIFO at PRIORITY (--load rt): say "ready"
 *	                         once real-time, wait for end of file on
 *	                         descriptor 3 (the gate), then spin */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	cpu_set_t set;
	volatile unsigned long n = 0;

	if (argc != 3 && argc != 4)
		return 2;
	alarm((unsigned)atoi(argv[2]));
	CPU_ZERO(&set);
	CPU_SET(atoi(argv[1]), &set);
	if (sched_setaffinity(0, sizeof set, &set) != 0)
		return 1;
	if (argc == 4) {
		struct sched_param sp = {.sched_priority = atoi(argv[3])};
		char c;

		if (sched_setscheduler(0, SCHED_FIFO, &sp) != 0) {
			perror("spin: sched_setscheduler");
			return 1;
		}
		if (write(1, "ready\n", 6) != 6)
			return 1;
		while (read(3, &c, 1) > 0)
			;
	}
	for (;;)
		n++;
}
