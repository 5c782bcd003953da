/* beatcheck N: hb_beat_init, then N beats; prints what hb_beat_init said.
 * Used by shm's tests of the C beat against the Go side of the beat area. */
#include "hb_shm.h"

#include <stdio.h>

int main(int argc, char **argv)
{
	long n = argc > 1 ? strtol(argv[1], NULL, 10) : 0;
	int rc = hb_beat_init();

	for (long i = 0; i < n; i++)
		hb_beat();
	printf("init=%d\n", rc);
	return 0;
}
