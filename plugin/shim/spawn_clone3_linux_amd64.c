//go:build cgo

/*
 * hb's spawner: clone3(CLONE_VM | CLONE_VFORK | CLONE_PIDFD |
 * CLONE_CLEAR_SIGHAND) with the child on its own small stack, then execve.
 *
 * Why not syscall.ForkExec: Go's child resets every signal handler the
 * runtime installed, one rt_sigaction per signal (about 60 system calls),
 * and the parent then waits on a close-on-exec pipe, whose write end is only
 * released when the exec'd program first returns to user space, i.e. after
 * the whole exec. Here the kernel clears the handlers in clone3 itself
 * (CLONE_CLEAR_SIGHAND: handled signals become SIG_DFL, ignored ones stay
 * ignored), and the parent resumes as soon as the child has exec'd
 * (CLONE_VFORK resumes it when the child releases the shared memory, at
 * exec's point of no return) or has failed: a failed step stores its errno
 * in the request, which the parent sees because the memory is shared.
 *
 * The child runs only the code below, on a stack carved from the caller's
 * frame (the caller is suspended until the child execs or exits, so that
 * memory is free for it), and makes raw system calls only: no libc
 * wrappers, which may touch thread state shared with the parent (errno, or
 * glibc's set*id broadcast to every thread of the process).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/sched.h>

#include "spawn_clone3_linux_amd64.h"

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif

#ifndef CLONE_CLEAR_SIGHAND
#define CLONE_CLEAR_SIGHAND 0x100000000ULL
#endif

#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif

/* The child's stack. It needs little: one frame of child_main. */
#define HB_CHILD_STACK 32768

static inline long raw_syscall4(long n, long a, long b, long c, long d)
{
	long ret;
	register long r10 __asm__("r10") = d;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "0"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
			 : "rcx", "r11", "memory");
	return ret;
}

#define sys1(n, a) raw_syscall4((n), (long)(a), 0, 0, 0)
#define sys2(n, a, b) raw_syscall4((n), (long)(a), (long)(b), 0, 0)
#define sys3(n, a, b, c) raw_syscall4((n), (long)(a), (long)(b), (long)(c), 0)
#define sys4(n, a, b, c, d) raw_syscall4((n), (long)(a), (long)(b), (long)(c), (long)(d))

/* clone3_run is clone3 whose child calls fn(arg) on args->stack and exits
 * with its return value. In the parent it returns what clone3 returned. */
static long clone3_run(struct clone_args *args, int (*fn)(void *), void *arg)
{
	long ret;
	register void *r12 __asm__("r12") = (void *)fn;
	register void *r13 __asm__("r13") = arg;
	__asm__ volatile("syscall\n\t"
			 "test %%rax, %%rax\n\t"
			 "jnz 1f\n\t"
			 /* Child: rsp is the top of args->stack. */
			 "xor %%ebp, %%ebp\n\t"
			 "mov %%r13, %%rdi\n\t"
			 "call *%%r12\n\t"
			 "mov %%eax, %%edi\n\t"
			 "mov %[exit], %%eax\n\t"
			 "syscall\n\t"
			 "hlt\n\t"
			 "1:\n\t"
			 : "=a"(ret)
			 : "0"((long)SYS_clone3), "D"(args), "S"(sizeof(*args)), "r"(r12), "r"(r13),
			   [exit] "i"(SYS_exit)
			 : "rcx", "r11", "memory");
	return ret;
}

static int child_fail(struct hb_spawn_req *r, int step, long e)
{
	r->err = (int)-e;
	r->step = step;
	return 127;
}

static int child_main(void *arg)
{
	struct hb_spawn_req *r = arg;
	int fd[HB_SPAWN_FDS];
	int n = r->nfd < 3 ? 3 : r->nfd > HB_SPAWN_FDS ? HB_SPAWN_FDS : r->nfd;
	long e;
	int i;

	/* With a shared descriptor table (CLONE_FILES, see hb_spawn) the child
	 * first takes a copy of its low end only: what it is given sits in
	 * reserved descriptors there, and nothing it does from here on touches
	 * the plugin's table. */
	if (r->unshare_below > 0 &&
	    (e = sys3(SYS_close_range, r->unshare_below, ~0U, CLOSE_RANGE_UNSHARE)) < 0)
		return child_fail(r, HB_STEP_FDS, e);

	/* The child inherits the signal mask of the thread that called
	 * hb_spawn. A service starts with no signal blocked, whatever that
	 * thread had, as services of other supervisors do (a Go thread's mask
	 * is empty unless hbd was started with signals blocked, so the
	 * syscall.ForkExec fallback normally agrees). */
	{
		unsigned long none = 0;
		if ((e = sys4(SYS_rt_sigprocmask, SIG_SETMASK, &none, 0, sizeof(none))) < 0)
			return child_fail(r, HB_STEP_SIGMASK, e);
	}
	if (r->setpgid && (e = sys2(SYS_setpgid, 0, 0)) < 0)
		return child_fail(r, HB_STEP_SETPGID, e);
	if (r->cpus && (e = sys3(SYS_sched_setaffinity, 0, r->cpus_len, r->cpus)) < 0)
		return child_fail(r, HB_STEP_AFFINITY, e);
	if (r->set_nice && (e = sys3(SYS_setpriority, PRIO_PROCESS, 0, r->nice)) < 0)
		return child_fail(r, HB_STEP_NICE, e);
	if (r->set_sched) {
		struct { int sched_priority; } sp = {.sched_priority = r->sched_priority};
		if ((e = sys3(SYS_sched_setscheduler, 0, r->sched_policy, &sp)) < 0)
			return child_fail(r, HB_STEP_SCHED, e);
	}
	for (i = 0; i < r->nrlimits; i++) {
		struct rlimit lim = {.rlim_cur = r->rlimit_cur[i], .rlim_max = r->rlimit_max[i]};
		if ((e = sys4(SYS_prlimit64, 0, r->rlimit_res[i], &lim, 0)) < 0)
			return child_fail(r, HB_STEP_RLIMITS, e);
	}
	if (r->set_umask)
		sys1(SYS_umask, r->umask);
	if (r->cred) {
		if (r->ngroups >= 0 && (e = sys2(SYS_setgroups, r->ngroups, r->groups)) < 0)
			return child_fail(r, HB_STEP_SETGROUPS, e);
		if ((e = sys1(SYS_setgid, r->gid)) < 0)
			return child_fail(r, HB_STEP_SETGID, e);
		if ((e = sys1(SYS_setuid, r->uid)) < 0)
			return child_fail(r, HB_STEP_SETUID, e);
	}
	if (r->dir && (e = sys1(SYS_chdir, r->dir)) < 0)
		return child_fail(r, HB_STEP_CHDIR, e);
	if (r->set_nofile) {
		struct rlimit lim = {.rlim_cur = r->nofile_cur, .rlim_max = r->nofile_max};
		if ((e = sys4(SYS_prlimit64, 0, RLIMIT_NOFILE, &lim, 0)) < 0)
			return child_fail(r, HB_STEP_RLIMIT, e);
	}

	/* Descriptors 0..n-1: a source below its target position would be
	 * overwritten by an earlier dup3, so move those up first (to n or
	 * above, close-on-exec). Then place each one; a source already in
	 * place only loses its close-on-exec flag. */
	for (i = 0; i < n; i++) {
		fd[i] = r->unshare_below > 0 ? r->mapped[i] : r->fd[i];
		if (fd[i] >= 0 && fd[i] < i) {
			if ((e = sys3(SYS_fcntl, fd[i], F_DUPFD_CLOEXEC, n)) < 0)
				return child_fail(r, HB_STEP_FDS, e);
			fd[i] = (int)e;
		}
	}
	for (i = 0; i < n; i++) {
		if (fd[i] < 0)
			e = sys1(SYS_close, i);
		else if (fd[i] == i)
			e = sys3(SYS_fcntl, i, F_SETFD, 0);
		else
			e = sys3(SYS_dup3, fd[i], i, 0);
		if (e < 0 && fd[i] >= 0)
			return child_fail(r, HB_STEP_FDS, e);
	}

	/* Nothing else of the plugin's goes with the child. Close-on-exec
	 * alone is not enough: CLONE_VFORK resumes the parent at exec's point
	 * of no return, before the kernel closes those descriptors, so for a
	 * moment the new process would still hold the table's descriptor and
	 * its flock (a plugin started right then found the table "locked by
	 * another writer"). Kernels before 5.9 lack close_range (ENOSYS):
	 * close-on-exec is all they get. */
	sys3(SYS_close_range, n, ~0U, 0);

	e = sys3(SYS_execve, r->path, r->argv, r->envp);
	return child_fail(r, HB_STEP_EXEC, e);
}

/*
 * The descriptor table. Without CLONE_FILES, clone3 copies the plugin's
 * whole table into the child, and the child closes it again before exec:
 * with 1000 services (a pidfd, log files, a cgroup each: about 7000
 * descriptors) that is most of a spawn's cost, and it grows with every
 * service. So the child shares the table (CLONE_FILES) and copies only its
 * low end (close_range(.., CLOSE_RANGE_UNSHARE) copies the descriptors
 * below its first argument): the parent first puts what the child is given
 * into reserved descriptors there, HB_RESERVED_SETS sets of HB_SPAWN_FDS,
 * one set per spawn in flight. The reserve is made when the program loads,
 * before anything else opens descriptors; where it cannot be (a number
 * already taken, a kernel without CLOSE_RANGE_UNSHARE), or when every set
 * is in use, a spawn copies the whole table as before.
 */
#define HB_RESERVED_BASE 64
#define HB_RESERVED_SETS 16

static int reserve_null = -1;      /* /dev/null, what an idle reserved descriptor holds */
static int reserve_ok;             /* the reserve exists and the kernel can unshare */
static unsigned int reserve_busy;  /* bit k: set k is in use */

__attribute__((constructor)) static void make_reserve(void)
{
	int t, last = HB_RESERVED_BASE + HB_RESERVED_SETS * HB_SPAWN_FDS;

	/* The calling process's table is not shared yet: this only checks
	 * that the kernel knows the flag (5.9 and later). */
	if (syscall(SYS_close_range, 1U << 30, ~0U, CLOSE_RANGE_UNSHARE) != 0)
		return;
	for (t = HB_RESERVED_BASE; t < last; t++)
		if (fcntl(t, F_GETFD) != -1 || errno != EBADF)
			return; /* taken: no reserve */
	reserve_null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (reserve_null < 0)
		return;
	for (t = HB_RESERVED_BASE; t < last; t++)
		if (dup3(reserve_null, t, O_CLOEXEC) != t)
			return;
	reserve_ok = 1;
}

/* reserve_take returns a free set's first descriptor, or -1. */
static int reserve_take(void)
{
	unsigned int busy, k;

	if (!reserve_ok)
		return -1;
	busy = __atomic_load_n(&reserve_busy, __ATOMIC_RELAXED);
	for (;;) {
		for (k = 0; k < HB_RESERVED_SETS && (busy & (1U << k)); k++)
			;
		if (k == HB_RESERVED_SETS)
			return -1;
		if (__atomic_compare_exchange_n(&reserve_busy, &busy, busy | (1U << k), 0,
						__ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
			return HB_RESERVED_BASE + (int)k * HB_SPAWN_FDS;
	}
}

/* reserve_give_back points set base's descriptors at /dev/null again (so
 * they hold nothing of the child's) and frees the set. */
static void reserve_give_back(int base)
{
	int i;

	for (i = 0; i < HB_SPAWN_FDS; i++)
		dup3(reserve_null, base + i, O_CLOEXEC);
	__atomic_fetch_and(&reserve_busy, ~(1U << ((base - HB_RESERVED_BASE) / HB_SPAWN_FDS)), __ATOMIC_RELEASE);
}

long hb_spawn(struct hb_spawn_req *r)
{
	char stack[HB_CHILD_STACK] __attribute__((aligned(16)));
	struct clone_args args;
	int n = r->nfd < 3 ? 3 : r->nfd > HB_SPAWN_FDS ? HB_SPAWN_FDS : r->nfd;
	int base = reserve_take();
	long ret;
	int i;

	r->pidfd = -1;
	r->err = 0;
	r->step = HB_STEP_NONE;
	r->unshare_below = 0;
	memset(&args, 0, sizeof(args));
	args.flags = CLONE_VM | CLONE_VFORK | CLONE_PIDFD | CLONE_CLEAR_SIGHAND;
	if (base >= 0) {
		for (i = 0; i < n; i++) {
			r->mapped[i] = -1;
			if (r->fd[i] < 0)
				continue;
			if (dup3(r->fd[i], base + i, O_CLOEXEC) != base + i) {
				reserve_give_back(base);
				base = -1;
				break;
			}
			r->mapped[i] = base + i;
		}
	}
	if (base >= 0) {
		args.flags |= CLONE_FILES;
		r->unshare_below = base + n;
	}
	args.pidfd = (uint64_t)(uintptr_t)&r->pidfd;
	args.exit_signal = SIGCHLD;
	args.stack = (uint64_t)(uintptr_t)stack;
	args.stack_size = sizeof(stack);
	if (r->into_cgroup) {
		args.flags |= CLONE_INTO_CGROUP;
		args.cgroup = (uint64_t)r->cgroup_fd;
	}
	ret = clone3_run(&args, child_main, r);
	if (base >= 0)
		reserve_give_back(base);
	return ret;
}

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static uint64_t boot_ns(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_BOOTTIME, &ts) != 0)
		return 0;
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* wait_readable sleeps in poll until fd is readable or ms have passed. */
static void wait_readable(int fd, int ms)
{
	long deadline = now_ms() + ms;
	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		long left = deadline - now_ms();
		if (poll(&p, 1, left < 0 ? 0 : (int)left) >= 0 || errno != EINTR)
			return;
	}
}

/* hb_wanted is plugin.Respawn.WantsStatus (policy.Restarts), in C for the
 * reap-and-respawn step; a test checks the two agree. */
int hb_wanted(const struct hb_reap_req *r, int status)
{
	int i;

	if (!r->on_failure || status < 0)
		return 1;
	for (i = 0; i < r->ncodes; i++)
		if (r->codes[i] == status)
			return 0;
	return 1;
}

/* cgroup_populated: whether cgroup.events (fd) reads "populated 1"; an
 * unreadable file counts as populated. */
static int cgroup_populated(int fd)
{
	char buf[256];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	if (n < 0)
		return 1;
	buf[n] = 0;
	return strstr(buf, "populated 1") != NULL;
}

void hb_reap_respawn(struct hb_reap_req *r, const uint32_t *stop)
{
	siginfo_t si;
	int attempt;

	r->reaped = 0;
	r->status = -1;
	r->err = 0;
	r->spawned = 0;
	r->cg_busy = 0;
	for (attempt = 0; attempt < 2; attempt++) {
		memset(&si, 0, sizeof(si));
		if (syscall(SYS_waitid, P_PIDFD, r->pidfd, &si, WEXITED | WNOHANG, NULL) < 0) {
			if (errno == EINTR) {
				attempt--;
				continue;
			}
			r->err = errno;
			return;
		}
		if (si.si_pid != 0)
			break;
		if (attempt == 0)
			wait_readable(r->pidfd, r->wait_ms);
	}
	if (si.si_pid == 0)
		return;
	r->reaped = 1;
	switch (si.si_code) {
	case CLD_EXITED:
		r->status = si.si_status;
		break;
	case CLD_KILLED:
	case CLD_DUMPED:
		r->status = 128 + si.si_status;
		break;
	}
	if (hb_wanted(r, r->status) && !__atomic_load_n(stop, __ATOMIC_SEQ_CST)) {
		/* The exited process left its cgroup before it became a zombie:
		 * what is still there are leftovers of its incarnation, which the
		 * caller kills and waits for before the replacement starts. */
		if (r->cg_events_fd >= 0 && cgroup_populated(r->cg_events_fd)) {
			r->cg_busy = 1;
			return;
		}
		r->spawn_t0 = boot_ns();
		r->spawned = hb_spawn(r->spawn);
		r->spawn_t1 = boot_ns();
	}
}

static struct rlimit nofile_at_start;
static int nofile_saved;

/* Runs when the program is loaded, before the Go runtime starts (and raises
 * the soft RLIMIT_NOFILE): services get the limit hb itself was given, as
 * they do from syscall.ForkExec. */
__attribute__((constructor)) static void save_nofile(void)
{
	nofile_saved = getrlimit(RLIMIT_NOFILE, &nofile_at_start) == 0;
}

int hb_nofile_at_start(uint64_t *cur, uint64_t *max)
{
	if (!nofile_saved)
		return 0;
	*cur = nofile_at_start.rlim_cur;
	*max = nofile_at_start.rlim_max;
	return 1;
}
