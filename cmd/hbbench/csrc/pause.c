/* pause: the tiny service of hbbench's peers test. It tells hbbench that it
 * runs, with its PID in one datagram to notify.sock in the directory of its
 * own executable (so every supervisor can exec it with no argument, no
 * environment and no shell, and each run has its own socket), then sleeps
 * until killed. */
#define _GNU_SOURCE
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(void)
{
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	uint32_t pid = (uint32_t)getpid();
	char exe[sizeof a.sun_path];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	char *slash;
	int fd;

	if (n > 0) {
		exe[n] = '\0';
		slash = strrchr(exe, '/');
		if (slash != NULL && (size_t)(slash - exe) + sizeof "/notify.sock" <= sizeof a.sun_path) {
			memcpy(a.sun_path, exe, (size_t)(slash - exe));
			strcpy(a.sun_path + (slash - exe), "/notify.sock");
			fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
			if (fd >= 0) {
				sendto(fd, &pid, sizeof pid, 0, (struct sockaddr *)&a, sizeof a);
				close(fd);
			}
		}
	}
	for (;;)
		pause();
}
