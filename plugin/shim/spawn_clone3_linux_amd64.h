/*
 * hb's clone3 spawner (linux/amd64, cgo builds): see spawn_clone3_linux_amd64.c.
 */
#ifndef HB_SPAWN_CLONE3_H
#define HB_SPAWN_CLONE3_H

#include <stdint.h>

/* One spawn: what the child does before execve, and what it reports back.
 * The child shares the parent's memory (CLONE_VM) until it execs or exits,
 * so err/step are written by the child and read by the parent after
 * hb_spawn returns. Every pointer is to C memory. */
struct hb_spawn_req {
	const char *path;  /* executable, as given to execve */
	char *const *argv; /* NULL-terminated */
	char *const *envp; /* NULL-terminated */
	const char *dir;   /* working directory; NULL keeps the parent's */
	int fd[3];         /* descriptors that become the child's 0, 1, 2 */
	int setpgid;       /* non-zero: own process group (setpgid(0, 0)) */
	int cred;          /* non-zero: setgroups(groups), setgid(gid), setuid(uid);
	                    * ngroups < 0 leaves the supplementary groups alone */
	uint32_t uid, gid;
	const uint32_t *groups;
	int ngroups;
	int set_nofile;    /* non-zero: RLIMIT_NOFILE = {nofile_cur, nofile_max} */
	uint64_t nofile_cur, nofile_max;

	/* Results. */
	int pidfd; /* the child's pidfd (O_CLOEXEC), in the parent */
	int err;   /* errno of the step that failed in the child; 0: exec'd */
	int step;  /* which step failed (HB_STEP_*) */
};

enum {
	HB_STEP_NONE = 0,
	HB_STEP_SETPGID,
	HB_STEP_SETGROUPS,
	HB_STEP_SETGID,
	HB_STEP_SETUID,
	HB_STEP_CHDIR,
	HB_STEP_RLIMIT,
	HB_STEP_FDS,
	HB_STEP_EXEC,
	HB_STEP_SIGMASK,
};

/* hb_spawn starts req->path in a new process and returns its PID once the
 * child has exec'd (or failed: then req->err is set and the child has
 * exited with status 127, to be reaped through req->pidfd). A negative
 * return is -errno of clone3 itself (no child). */
long hb_spawn(struct hb_spawn_req *req);

/* hb_nofile_at_start reports RLIMIT_NOFILE as it was when the program was
 * loaded, before any runtime raised it; 0 when it could not be read. */
int hb_nofile_at_start(uint64_t *cur, uint64_t *max);

#endif
