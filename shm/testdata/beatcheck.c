/* beatcheck N [time]: hb_beat_init, then N beats; prints what hb_beat_init
 * said and, with "time", the nanoseconds per beat. Used by shm's tests and
 * benchmark of the C beat against the Go side of the beat area. */
#include "hb_shm.h"

#include <stdio.h>
#include <time.h>

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? strtol(argv[1], NULL, 10) : 0;
	int rc = hb_beat_init();
	double t0 = now_ns();

	for (long i = 0; i < n; i++)
		hb_beat();
	if (argc > 2 && n > 0)
		printf("ns_per_beat=%.3f\n", (now_ns() - t0) / (double)n);
	printf("init=%d\n", rc);
	return 0;
}
