/* fat: a stage holding MIB mebibytes of touched memory (packet pools), for
 * hbbench's fat test: it allocates and writes every page, then sleeps until
 * killed. The kernel frees all of it on the way out, before a pidfd becomes
 * readable.
 *
 *	fat MIB */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 2048;
	size_t len = mib << 20;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

	if (p == MAP_FAILED)
		return 1;
	for (size_t off = 0; off < len; off += 4096)
		p[off] = 1;
	for (;;)
		pause();
}
