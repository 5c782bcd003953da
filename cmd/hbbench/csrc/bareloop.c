/* bareloop: the bare supervisor of hbbench's peers test: it starts N copies
 * of PROGRAM one by one (vfork + exec), then respawns each one the moment
 * it is reaped. No policy, no table, no log: the floor a supervisor is
 * measured against. SIGTERM kills the children and exits.
 *
 *	bareloop N PROGRAM */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static pid_t *kids;
static long n;

static void on_term(int sig)
{
	(void)sig;
	for (long i = 0; i < n; i++)
		if (kids[i] > 0)
			kill(kids[i], SIGKILL);
	_exit(0);
}

static pid_t start(char *prog)
{
	char *argv[] = {prog, NULL};
	pid_t pid = vfork();

	if (pid == 0) {
		execv(prog, argv);
		_exit(127);
	}
	return pid;
}

int main(int argc, char **argv)
{
	if (argc != 3 || (n = strtol(argv[1], NULL, 10)) <= 0) {
		fprintf(stderr, "usage: bareloop N PROGRAM\n");
		return 2;
	}
	kids = calloc((size_t)n, sizeof *kids);
	signal(SIGTERM, on_term);
	for (long i = 0; i < n; i++)
		kids[i] = start(argv[2]);
	for (;;) {
		pid_t pid = waitpid(-1, NULL, 0);

		if (pid < 0)
			continue;
		for (long i = 0; i < n; i++)
			if (kids[i] == pid) {
				kids[i] = start(argv[2]);
				break;
			}
	}
}
