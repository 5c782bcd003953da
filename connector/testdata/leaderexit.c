// leaderexit: the thread-group leader ends before the process does.
//
// Usage: leaderexit pthread|raw
//
// Once a line has been read from stdin, a second thread is started,
// "leader-exiting" is written to stdout, and the leader thread ends with pthread_exit (pthread) or a bare exit system call
// (raw), leaving a zombie leader and a live process. The second thread reads
// stdin to EOF, then calls exit(5), which ends the process.
#define _GNU_SOURCE
#include <pthread.h>
#include <string.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

static void *worker(void *arg) {
	char buf[64];
	(void)arg;
	while (read(0, buf, sizeof buf) > 0) {
	}
	exit(5);
}

int main(int argc, char **argv) {
	pthread_t t;
	const char msg[] = "leader-exiting\n";
	char c = 0;

	if (argc != 2 || (strcmp(argv[1], "pthread") != 0 && strcmp(argv[1], "raw") != 0))
		return 2;
	while (c != '\n')
		if (read(0, &c, 1) != 1)
			return 1;
	if (pthread_create(&t, NULL, worker, NULL) != 0)
		return 1;
	if (write(1, msg, sizeof msg - 1) != (ssize_t)(sizeof msg - 1))
		return 1;
	if (strcmp(argv[1], "raw") == 0)
		syscall(SYS_exit, 0);
	pthread_exit(NULL);
}
