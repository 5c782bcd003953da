/* spin: one busy CPU of hbbench's --load: pinned to CPU, spinning for ever
 * at nice 0. alarm() is its watchdog: it dies by itself after SECS whatever
 * happens to hbbench.
 *
 *	spin CPU SECS */
#define _GNU_SOURCE
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	cpu_set_t set;
	volatile unsigned long n = 0;

	if (argc != 3)
		return 2;
	alarm((unsigned)atoi(argv[2]));
	CPU_ZERO(&set);
	CPU_SET(atoi(argv[1]), &set);
	if (sched_setaffinity(0, sizeof set, &set) != 0)
		return 1;
	for (;;)
		n++;
}
