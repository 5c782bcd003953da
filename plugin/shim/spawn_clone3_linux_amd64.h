/*
 * hb's clone3 spawner (linux/amd64, cgo builds): see spawn_clone3_linux_amd64.c.
 */
#ifndef HB_SPAWN_CLONE3_H
#define HB_SPAWN_CLONE3_H

#include <stdint.h>

/* The most descriptors a child is given (0, 1, 2 and what hb hands over
 * after them, such as the beat area). */
#define HB_SPAWN_FDS 8

/* One spawn: what the child does before execve, and what it reports back.
 * The child shares the parent's memory (CLONE_VM) until it execs or exits,
 * so err/step are written by the child and read by the parent after
 * hb_spawn returns. Every pointer is to C memory. */
struct hb_spawn_req {
	const char *path;  /* executable, as given to execve */
	char *const *argv; /* NULL-terminated */
	char *const *envp; /* NULL-terminated */
	const char *dir;   /* working directory; NULL keeps the parent's */
	int fd[HB_SPAWN_FDS]; /* descriptors that become the child's 0 .. nfd-1 */
	int nfd;           /* 3 (stdio only) .. HB_SPAWN_FDS; a negative fd[i] is closed */
	int setpgid;       /* non-zero: own process group (setpgid(0, 0)) */
	int cred;          /* non-zero: setgroups(groups), setgid(gid), setuid(uid);
	                    * ngroups < 0 leaves the supplementary groups alone */
	uint32_t uid, gid;
	const uint32_t *groups;
	int ngroups;
	int set_nofile;    /* non-zero: RLIMIT_NOFILE = {nofile_cur, nofile_max} */
	uint64_t nofile_cur, nofile_max;
	int into_cgroup;   /* non-zero: start in the cgroup cgroup_fd (CLONE_INTO_CGROUP) */
	int cgroup_fd;
	/* Placement and limits, applied before the credentials change (raising
	 * them needs the plugin's privilege). */
	const unsigned long *cpus; /* sched_setaffinity mask of cpus_len bytes; NULL: keep */
	int cpus_len;
	int set_nice, nice;        /* setpriority(PRIO_PROCESS, 0, nice) */
	int set_sched, sched_policy, sched_priority; /* sched_setscheduler */
	int nrlimits;              /* prlimit64(0, rlimit_res[i], {cur[i], max[i]}) */
	const int *rlimit_res;
	const uint64_t *rlimit_cur, *rlimit_max;
	int set_umask, umask;

	/* Set by hb_spawn for the child: where fd[i] was put for it (a
	 * reserved descriptor), and below which descriptor the child keeps a
	 * copy of the shared table (0: the table was copied by clone3). */
	int mapped[HB_SPAWN_FDS];
	int unshare_below;
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
	HB_STEP_AFFINITY,
	HB_STEP_NICE,
	HB_STEP_SCHED,
	HB_STEP_RLIMITS,
};

/* hb_spawn starts req->path in a new process and returns its PID once the
 * child has exec'd (or failed: then req->err is set and the child has
 * exited with status 127, to be reaped through req->pidfd). A negative
 * return is -errno of clone3 itself (no child). */
long hb_spawn(struct hb_spawn_req *req);

struct hb_reap_req;

/* hb_wanted: whether the policy in r respawns an exit with status (-1:
 * unknown); plugin.Respawn.WantsStatus in Go. */
int hb_wanted(const struct hb_reap_req *r, int status);

/* One reap of an exited child, and the respawn that follows it when the
 * service's policy wants one. */
struct hb_reap_req {
	int pidfd;         /* the exited child's pidfd */
	int wait_ms;       /* how long to wait for its zombie */
	int on_failure;    /* respawn only a status not in codes (always when < 0) */
	int ncodes;
	const int *codes;
	struct hb_spawn_req *spawn;
	int cg_events_fd;  /* >= 0: the cgroup.events of spawn's cgroup; no spawn unless it reads "populated 0" */

	/* Results. */
	int reaped;        /* non-zero: the child was reaped */
	int status;        /* exit code, 128+signal, or -1 (not reaped) */
	int err;           /* errno of waitid; 0 */
	long spawned;      /* what hb_spawn returned; 0: no respawn was attempted */
	int cg_busy;       /* non-zero: not spawned, the cgroup was still populated */
	uint64_t spawn_t0, spawn_t1; /* CLOCK_BOOTTIME ns just before and after hb_spawn */
};

/* hb_reap_respawn waits up to req->wait_ms for the child behind req->pidfd
 * to become a zombie, reaps it (waitid P_PIDFD), and, when the status is
 * wanted and *stop (read atomically) is still 0, spawns
 * req->spawn at once: the replacement starts from the same thread, with no
 * other work in between. */
void hb_reap_respawn(struct hb_reap_req *req, const uint32_t *stop);

/* hb_nofile_at_start reports RLIMIT_NOFILE as it was when the program was
 * loaded, before any runtime raised it; 0 when it could not be read. */
int hb_nofile_at_start(uint64_t *cur, uint64_t *max);

#endif
