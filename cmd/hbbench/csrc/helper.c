/*
 * hbbench-helper - the C side of hbbench, compiled by hbbench at run time
 * (gcc -O2 -I contrib/c). It does the timed parts that must not go through
 * the Go runtime: kill(2) followed by a reader spinning on hb_pid(), the raw
 * pidfd and proc connector baselines, the bare fork/exec+wait loop, the peer
 * check loops, the kill-all scan of the scale test, and the exit-flood
 * generator.
 *
 *   hbbench-helper serve        commands on stdin, one reply line each on stdout
 *   hbbench-helper flood SECS PROCS
 *
 * Every reply starts with "ok" or "err". Times are CLOCK_MONOTONIC ns.
 */
#define _GNU_SOURCE
#include "hb_shm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/netlink.h>

extern char **environ;

/* Proc connector constants (linux/connector.h, linux/cn_proc.h), spelled
 * out so that old installed headers (without struct proc_input) do. */
#define CN_IDX_PROC_ 1u
#define CN_VAL_PROC_ 1u
#define PROC_CN_MCAST_LISTEN_ 1u
#define PROC_EVENT_EXIT_ 0x80000000u
#define CN_FRAME_WHAT 36
#define CN_FRAME_EXIT_PID 52
#define CN_FRAME_EXIT_TGID 56
#define CN_FRAME_LEN 76

#define MAX_TABLES 8
#define MAX_EXES 8
#define TIMEOUT_NS 10000000000ull /* 10 s for any wait on hb */
#define KILLALL_SCAN_US 100       /* the kill-all reader's scan interval (scale.go: killallScanUs) */

static struct hb_table tables[MAX_TABLES];
static char *exes[MAX_EXES];
static int devnull = -1;
static int cnfd = -1;
static int yield_mode = 1;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_us(long us)
{
	struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static inline void relax(void)
{
	if (yield_mode)
		sched_yield();
	else
		__builtin_ia32_pause();
}

/* spawn starts exe with stdio on /dev/null in its own process group, dying
 * with this helper. vfork: the parent resumes once the child has exec'd, so
 * on return the new process has started (the same point at which hb's
 * ForkExec returns and the PID is stored). */
static pid_t spawn(const char *exe)
{
	char *argv[2] = {(char *)exe, NULL};
	pid_t pid = vfork();
	if (pid == 0) {
		dup2(devnull, 0);
		dup2(devnull, 1);
		dup2(devnull, 2);
		setpgid(0, 0);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		execve(exe, argv, environ);
		_exit(127);
	}
	return pid;
}

static int reap(pid_t pid)
{
	int st;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -1;
	return st;
}

/* wait_words is the one reader loop: it spins (or yields) until each of
 * the n words holds something else than its old value, noting in seen[i]
 * when it first saw word i change and in val[i] its new value, or until the
 * deadline passes. It returns how many words changed. It reads an hb slot
 * (wait_change) and a baseline's word alike, and both at once when a raw
 * waiter watches the same kill as hb. */
static int wait_words(int n, _Atomic uint32_t *const *words, const uint32_t *old, uint32_t *val, uint64_t *seen,
		      uint64_t deadline)
{
	unsigned spins = 0;
	int left = n;
	for (int i = 0; i < n; i++)
		seen[i] = 0;
	for (;;) {
		for (int i = 0; i < n; i++) {
			if (seen[i])
				continue;
			uint32_t v = atomic_load_explicit(words[i], memory_order_acquire);
			if (v != old[i]) {
				seen[i] = now_ns();
				val[i] = v;
				left--;
			}
		}
		if (left == 0)
			return n;
		relax();
		if ((++spins & 255) == 0 && now_ns() > deadline) {
			for (int i = 0; i < n; i++)
				if (!seen[i])
					val[i] = old[i];
			return n - left;
		}
	}
}

/* wait_word is wait_words on one word: it returns the new value, or old
 * at the deadline. */
static uint32_t wait_word(_Atomic uint32_t *word, uint32_t old, uint64_t deadline)
{
	uint32_t v;
	uint64_t seen;
	wait_words(1, &word, &old, &v, &seen, deadline);
	return v;
}

/* wait_change is wait_word on slot idx's PID word (what hb_pid reads). */
static uint32_t wait_change(const struct hb_table *t, int idx, uint32_t old, uint64_t deadline)
{
	if ((unsigned)idx >= t->slot_count)
		return 0;
	return wait_word(hb__word(t, idx, 0), old, deadline);
}

/* kill_wait kills pid, the holder of slot idx, and waits for the slot to
 * change, and for *raw too when raw is not NULL (a raw waiter's word on the
 * same kill), in one loop: t0 is the kill, t1 the slot's change seen, *traw
 * the raw word's. It returns the slot's new value, or pid after printing
 * the error reply. */
static uint32_t kill_wait(const struct hb_table *t, int idx, uint32_t pid, _Atomic uint32_t *raw, uint64_t *t0,
			  uint64_t *t1, uint64_t *traw)
{
	if (!t || (unsigned)idx >= t->slot_count || hb_pid(t, idx) != pid) {
		printf("err slot %d does not hold pid %u\n", idx, pid);
		return pid;
	}
	_Atomic uint32_t *words[2] = {hb__word(t, idx, 0), raw};
	uint32_t old[2] = {pid, pid}, val[2];
	uint64_t seen[2] = {0, 0};
	int n = raw ? 2 : 1;
	*t0 = now_ns();
	if (kill((pid_t)pid, SIGKILL) < 0) {
		printf("err kill %u: %s\n", pid, strerror(errno));
		return pid;
	}
	int changed = wait_words(n, words, old, val, seen, *t0 + TIMEOUT_NS);
	*t1 = seen[0];
	if (traw)
		*traw = seen[1];
	if (changed < n) {
		printf("err timeout: %s still holds %u\n", val[0] == pid ? "the slot" : "the raw waiter's word", pid);
		return pid;
	}
	return val[0];
}

/* wait_recorded waits until the slot's seqlocked record names pid as the last
 * exit, and returns the snapshot. */
static int wait_recorded(const struct hb_table *t, int idx, uint32_t pid, struct hb_slot_snapshot *s,
			 uint64_t deadline)
{
	for (;;) {
		if (hb_read(t, idx, s) == 0 && s->last_pid == pid)
			return 0;
		if (now_ns() > deadline)
			return -1;
		sched_yield();
	}
}

static struct hb_table *table(int id)
{
	if (id < 0 || id >= MAX_TABLES || tables[id].slot_count == 0)
		return NULL;
	return &tables[id];
}

static const char *exe(int id)
{
	if (id < 0 || id >= MAX_EXES)
		return NULL;
	return exes[id];
}

static int cn_open(void)
{
	struct sockaddr_nl sa;
	unsigned char req[16 + 20 + 8];
	uint32_t u32;
	uint16_t u16;
	int rcv = 4 << 20;

	if (cnfd >= 0)
		return 0;
	cnfd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_CONNECTOR);
	if (cnfd < 0)
		return -errno;
	memset(&sa, 0, sizeof sa);
	sa.nl_family = AF_NETLINK;
	sa.nl_groups = CN_IDX_PROC_;
	if (bind(cnfd, (struct sockaddr *)&sa, sizeof sa) < 0)
		goto fail;
	if (setsockopt(cnfd, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof rcv) < 0)
		setsockopt(cnfd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
	memset(req, 0, sizeof req);
	u32 = sizeof req;
	memcpy(req + 0, &u32, 4); /* nlmsg_len */
	u16 = NLMSG_DONE;
	memcpy(req + 4, &u16, 2); /* nlmsg_type */
	u32 = CN_IDX_PROC_;
	memcpy(req + 16, &u32, 4); /* cn_msg.id.idx */
	u32 = CN_VAL_PROC_;
	memcpy(req + 20, &u32, 4); /* cn_msg.id.val */
	u16 = 8;
	memcpy(req + 32, &u16, 2); /* cn_msg.len: struct proc_input */
	u32 = PROC_CN_MCAST_LISTEN_;
	memcpy(req + 36, &u32, 4);
	u32 = PROC_EVENT_EXIT_;
	memcpy(req + 40, &u32, 4);
	if (send(cnfd, req, sizeof req, 0) < 0)
		goto fail;
	return 0;
fail:
	u32 = (uint32_t)errno;
	close(cnfd);
	cnfd = -1;
	return -(int)u32;
}

/* cn_drain drops what the connector socket holds. */
static void cn_drain(void)
{
	unsigned char buf[8192];
	while (recv(cnfd, buf, sizeof buf, MSG_DONTWAIT) >= 0 || errno == ENOBUFS || errno == EINTR)
		;
}

/* respawn T SLOT PID: kill -9 PID, wait for the slot to change, then for a
 * new non-zero PID. */
static void cmd_respawn(int tid, int idx, uint32_t pid)
{
	struct hb_table *t = table(tid);
	struct hb_slot_snapshot s, r;
	uint64_t t0, t1;
	uint32_t v = kill_wait(t, idx, pid, NULL, &t0, &t1, NULL);
	if (v == pid)
		return;
	uint32_t seen = v;
	uint64_t t2 = t1;
	if (v == 0) {
		v = wait_change(t, idx, 0, t1 + TIMEOUT_NS);
		t2 = now_ns();
		if (v == 0) {
			printf("err timeout: slot %d not respawned\n", idx);
			return;
		}
	}
	/* changed_ns now is the Spawned record's (hbd's next SetState comes
	 * only after its Spawn call returned). */
	if (hb_read(t, idx, &s) != 0)
		memset(&s, 0, sizeof s);
	if (wait_recorded(t, idx, pid, &r, t2 + TIMEOUT_NS) < 0 && s.last_pid != pid) {
		printf("err timeout: exit of %u not recorded in slot %d\n", pid, idx);
		return;
	}
	if (s.last_pid == pid)
		r = s;
	printf("ok t0=%llu t1=%llu t2=%llu seen=%u newpid=%u spawned=%llu detected=%llu gen=%llu exits=%llu\n",
	       (unsigned long long)t0, (unsigned long long)t1, (unsigned long long)t2, seen, v,
	       (unsigned long long)(s.pid == v ? s.changed_ns : 0), (unsigned long long)r.last_exit_ns,
	       (unsigned long long)s.generation, (unsigned long long)r.exits);
}

/*
 * The baselines run the way hb does: a long-lived waiter thread, not the
 * killer, learns of the death and publishes it in a 32-bit word, and the
 * killing thread reads that word with the same loop as it reads an hb slot
 * (wait_change). So both sides pay for the same hand-over between threads,
 * the same wake-up of a thread that slept since the last kill, and the same
 * CPU taken by a reader that waits; the waiter's own wake-up time is
 * reported as well. The pidfd waiter blocks in epoll_wait on an epoll set
 * (as hb's does), the connector waiter in poll+recv on the socket.
 */
struct waiter {
	int kind; /* WAIT_PIDFD or WAIT_CN */
	int epfd; /* WAIT_PIDFD */
	pthread_t thread;
	int started;
	_Atomic uint32_t target; /* the PID being waited for; 0: none */
	_Atomic uint32_t word;   /* target's PID, then 0 once its death is seen */
	_Atomic uint64_t woke;   /* when the waiter learnt of the death */
	_Atomic int rc;          /* -errno: the waiter has stopped */
	/* WAIT_CN: the waiter reads the socket only while armed, so that the
	 * other tests' exits do not wake it; unarmed, it waits on cond. */
	pthread_mutex_t mu;
	pthread_cond_t cond;
	int armed;
};
enum { WAIT_PIDFD, WAIT_CN };
static struct waiter waiters[2] = {
	{.kind = WAIT_PIDFD, .epfd = -1, .mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER},
	{.kind = WAIT_CN, .epfd = -1, .mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER},
};

static void publish_death(struct waiter *w)
{
	atomic_store(&w->woke, now_ns());
	atomic_store(&w->target, 0);
	atomic_store_explicit(&w->word, 0, memory_order_release);
}

static void *waiter_main(void *arg)
{
	struct waiter *w = arg;
	unsigned char buf[8192];
	for (;;) {
		if (w->kind == WAIT_PIDFD) {
			struct epoll_event ev;
			int n = epoll_wait(w->epfd, &ev, 1, -1);
			if (n < 0 && errno != EINTR) {
				atomic_store(&w->rc, -errno);
				return NULL;
			}
			if (n == 1 && atomic_load(&w->target) != 0)
				publish_death(w);
			continue;
		}
		pthread_mutex_lock(&w->mu);
		while (!w->armed)
			pthread_cond_wait(&w->cond, &w->mu);
		pthread_mutex_unlock(&w->mu);
		struct pollfd p = {.fd = cnfd, .events = POLLIN};
		if (poll(&p, 1, -1) < 0 && errno != EINTR) {
			atomic_store(&w->rc, -errno);
			return NULL;
		}
		ssize_t r;
		while ((r = recv(cnfd, buf, sizeof buf, MSG_DONTWAIT)) >= 0 || errno == ENOBUFS || errno == EINTR) {
			if (r < CN_FRAME_LEN)
				continue;
			uint32_t what, epid, etgid, t = atomic_load(&w->target);
			memcpy(&what, buf + CN_FRAME_WHAT, 4);
			memcpy(&epid, buf + CN_FRAME_EXIT_PID, 4);
			memcpy(&etgid, buf + CN_FRAME_EXIT_TGID, 4);
			if (t != 0 && what == PROC_EVENT_EXIT_ && etgid == t && epid == t) {
				publish_death(w);
				pthread_mutex_lock(&w->mu);
				w->armed = 0;
				pthread_mutex_unlock(&w->mu);
			}
		}
	}
}

static int start_waiter(struct waiter *w)
{
	if (w->started)
		return atomic_load(&w->rc);
	if (w->kind == WAIT_PIDFD && (w->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0)
		return -errno;
	if (pthread_create(&w->thread, NULL, waiter_main, w) != 0)
		return -EAGAIN;
	w->started = 1;
	return 0;
}

/* arm points waiter w at pid, which need not be our child: a pidfd in the
 * pidfd waiter's epoll set, or the connector waiter reading its socket. It
 * returns the pidfd (-1 for the connector waiter) or -errno. */
static int arm(struct waiter *w, pid_t pid)
{
	int rc = start_waiter(w);
	if (rc < 0)
		return rc;
	atomic_store(&w->word, (uint32_t)pid);
	atomic_store(&w->target, (uint32_t)pid);
	if (w->kind == WAIT_PIDFD) {
		int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
		struct epoll_event ev = {.events = EPOLLIN | EPOLLONESHOT};
		if (pfd < 0 || epoll_ctl(w->epfd, EPOLL_CTL_ADD, pfd, &ev) < 0) {
			rc = -errno;
			if (pfd >= 0)
				close(pfd);
			atomic_store(&w->target, 0);
			return rc;
		}
		return pfd;
	}
	if (cnfd < 0)
		return -ENOTCONN;
	cn_drain();
	pthread_mutex_lock(&w->mu);
	w->armed = 1;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->mu);
	return -1;
}

/* disarm undoes arm; pfd is what arm returned. */
static void disarm(struct waiter *w, int pfd)
{
	atomic_store(&w->target, 0);
	if (w->kind == WAIT_PIDFD) {
		epoll_ctl(w->epfd, EPOLL_CTL_DEL, pfd, NULL);
		close(pfd);
		return;
	}
	pthread_mutex_lock(&w->mu);
	w->armed = 0;
	pthread_mutex_unlock(&w->mu);
}

/* rawpidfd EXE SETTLE_US (kind WAIT_PIDFD), rawcn EXE SETTLE_US (WAIT_CN):
 * our own child, watched by a raw waiter, killed and reaped. */
/* beat N: the cost of one hb_beat() (a beat area of its own: a memfd named
 * by HB_BEAT_FD, as hb hands one to a service) and of one sd_notify
 * "WATCHDOG=1" datagram to a unix socket, each timed over N calls, in ns. */
static void cmd_beat(long n)
{
	int fd = (int)syscall(SYS_memfd_create, "hbbench-beat", 0);
	int sv[2];
	char v[16];
	uint64_t t0, t1, t2;

	if (n < 1 || fd < 0 || ftruncate(fd, HB_BEAT_SIZE) != 0) {
		printf("err beat area: %s\n", strerror(errno));
		return;
	}
	snprintf(v, sizeof v, "%d", fd);
	setenv(HB_BEAT_FD_ENV, v, 1);
	if (hb_beat_init() != 1 || socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) != 0) {
		printf("err beat init: %s\n", strerror(errno));
		close(fd);
		return;
	}
	t0 = now_ns();
	for (long i = 0; i < n; i++)
		hb_beat();
	t1 = now_ns();
	long m = n / 1000 > 0 ? n / 1000 : 1;
	char buf[64];
	for (long i = 0; i < m; i++) {
		if (send(sv[0], "WATCHDOG=1", 10, 0) != 10 || recv(sv[1], buf, sizeof buf, 0) != 10)
			break;
	}
	t2 = now_ns();
	printf("ok beat_ps=%llu notify_ns=%llu\n", (unsigned long long)((t1 - t0) * 1000 / (uint64_t)n),
	       (unsigned long long)((t2 - t1) / (uint64_t)m));
	close(sv[0]);
	close(sv[1]);
}

static void cmd_raw(int kind, int eid, long settle)
{
	const char *e = exe(eid);
	struct waiter *w = &waiters[kind];
	if (!e) {
		printf("err no exe %d\n", eid);
		return;
	}
	pid_t pid = spawn(e);
	if (pid < 0) {
		printf("err spawn: %s\n", strerror(errno));
		return;
	}
	int pfd = arm(w, pid);
	if (pfd < -1) {
		kill(pid, SIGKILL);
		reap(pid);
		printf("err arm waiter: %s\n", strerror(-pfd));
		return;
	}
	sleep_us(settle);
	uint64_t t0 = now_ns();
	kill(pid, SIGKILL);
	uint32_t v = wait_word(&w->word, (uint32_t)pid, t0 + TIMEOUT_NS);
	uint64_t t1 = now_ns();
	disarm(w, pfd);
	reap(pid);
	if (v == (uint32_t)pid) {
		printf("err waiter timed out\n");
		return;
	}
	printf("ok t0=%llu t1=%llu woke=%llu\n", (unsigned long long)t0, (unsigned long long)t1,
	       (unsigned long long)atomic_load(&w->woke));
}

/* kill0 T SLOT PID RAW: kill -9 PID, the holder of slot SLOT, and wait for
 * the slot to change. RAW -1: alone; RAW 0 (pidfd) or 1 (connector): a raw
 * waiter watches the same kill, and the reader waits for its word too, in
 * the same loop, so that both see one death at one moment. */
static void cmd_kill0(int tid, int idx, uint32_t pid, int raw)
{
	struct hb_table *t = table(tid);
	struct hb_slot_snapshot s;
	struct waiter *w = raw >= 0 && raw <= WAIT_CN ? &waiters[raw] : NULL;
	int pfd = -1;
	if (w && (pfd = arm(w, (pid_t)pid)) < -1) {
		printf("err arm waiter: %s\n", strerror(-pfd));
		return;
	}
	uint64_t t0, t1, traw = 0;
	uint32_t v = kill_wait(t, idx, pid, w ? &w->word : NULL, &t0, &t1, &traw);
	if (w)
		disarm(w, pfd);
	if (v == pid)
		return;
	if (wait_recorded(t, idx, pid, &s, t1 + TIMEOUT_NS) < 0) {
		printf("err timeout: exit of %u not recorded in slot %d\n", pid, idx);
		return;
	}
	printf("ok t0=%llu t1=%llu seen=%u detected=%llu exits=%llu raw=%llu woke=%llu\n", (unsigned long long)t0,
	       (unsigned long long)t1, v, (unsigned long long)s.last_exit_ns,
	       (unsigned long long)s.exits, (unsigned long long)traw,
	       (unsigned long long)(w ? atomic_load(&w->woke) : 0));
}

/* futex TID IDX PID: kill -9 of slot idx's pid, seen three ways at once: a
 * thread blocked in hb_wait on the slot (woken by the plugin's FUTEX_WAKE
 * after its store), this thread spinning on hb_pid (kill_wait), and the raw
 * pidfd waiter thread (woken by the kernel). Times: t0 the kill, t1 the
 * spinner saw 0, futex the blocked thread returned, woke the raw waiter
 * learnt of the death. */
struct fwait {
	const struct hb_table *t;
	int idx;
	uint32_t pid;
	_Atomic int ready;
	_Atomic uint64_t woke;
	long rc;
};

static void *fwait_main(void *arg)
{
	struct fwait *f = arg;
	atomic_store(&f->ready, 1);
	f->rc = hb_wait(f->t, f->idx, f->pid, (long long)TIMEOUT_NS);
	atomic_store(&f->woke, now_ns());
	return NULL;
}

static void cmd_futex(int tid, int idx, uint32_t pid, long settle)
{
	struct hb_table *t = table(tid);
	struct waiter *w = &waiters[WAIT_PIDFD];
	struct fwait f = {.t = t, .idx = idx, .pid = pid};
	pthread_t th;
	uint64_t t0, t1, traw;
	int pfd;

	if (!t || hb_pid(t, idx) != pid) {
		printf("err slot %d does not hold pid %u\n", idx, pid);
		return;
	}
	if ((pfd = arm(w, (pid_t)pid)) < 0) {
		printf("err arm waiter: %s\n", strerror(-pfd));
		return;
	}
	if (pthread_create(&th, NULL, fwait_main, &f) != 0) {
		disarm(w, pfd);
		printf("err pthread_create\n");
		return;
	}
	while (!atomic_load(&f.ready))
		sched_yield();
	sleep_us(settle); /* asleep in the kernel by then */
	uint32_t v = kill_wait(t, idx, pid, &w->word, &t0, &t1, &traw);
	pthread_join(th, NULL);
	disarm(w, pfd);
	if (v == pid)
		return;
	if (f.rc < 0) {
		printf("err hb_wait: %s\n", hb_strerror((int)f.rc));
		return;
	}
	printf("ok t0=%llu t1=%llu futex=%llu woke=%llu\n", (unsigned long long)t0, (unsigned long long)t1,
	       (unsigned long long)atomic_load(&f.woke), (unsigned long long)atomic_load(&w->woke));
}

/* wdead TID PID: kill -9 of the table's writer (the plugin, pid), seen by
 * this thread spinning on hb_writer_alive (one load: the kernel marks the
 * word during the exit) and by the raw pidfd waiter on the same process.
 * Times: t0 the kill, dead the reader saw the writer dead, woke the raw
 * waiter learnt of the death. */
static void cmd_wdead(int tid, uint32_t pid)
{
	struct hb_table *t = table(tid);
	struct waiter *w = &waiters[WAIT_PIDFD];
	uint64_t t0, dead = 0, raw = 0;
	unsigned spins = 0;
	int pfd;

	if (!t || !hb_writer_alive(t)) {
		printf("err the table's writer is not alive\n");
		return;
	}
	if ((pfd = arm(w, (pid_t)pid)) < 0) {
		printf("err arm waiter: %s\n", strerror(-pfd));
		return;
	}
	t0 = now_ns();
	if (kill((pid_t)pid, SIGKILL) < 0) {
		disarm(w, pfd);
		printf("err kill %u: %s\n", pid, strerror(errno));
		return;
	}
	while (!dead || !raw) {
		if (!dead && !hb_writer_alive(t))
			dead = now_ns();
		if (!raw && atomic_load_explicit(&w->word, memory_order_acquire) == 0)
			raw = now_ns();
		relax();
		if ((++spins & 255) == 0 && now_ns() > t0 + TIMEOUT_NS)
			break;
	}
	disarm(w, pfd);
	if (!dead || !raw) {
		printf("err timeout: %s\n", dead ? "the raw waiter never woke" : "writer_alive still says alive");
		return;
	}
	printf("ok t0=%llu dead=%llu raw=%llu woke=%llu\n", (unsigned long long)t0, (unsigned long long)dead,
	       (unsigned long long)raw, (unsigned long long)atomic_load(&w->woke));
}

/* wake TID N: the cost of one shared FUTEX_WAKE with nobody waiting, on the
 * table's changes word (what the plugin adds after each store to a pid
 * word, twice: the pid word and changes), over N calls, beside an atomic
 * store to a word of this process, in ps. */
static void cmd_wake(int tid, long n)
{
	struct hb_table *t = table(tid);
	static _Atomic uint32_t word;
	uint64_t t0, t1, t2;

	if (!t || n < 1) {
		printf("err bad table or count\n");
		return;
	}
	t0 = now_ns();
	for (long i = 0; i < n; i++)
		syscall(SYS_futex, (uint32_t *)hb__word(t, -1, 15), FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
	t1 = now_ns();
	for (long i = 0; i < n * 100; i++)
		atomic_store_explicit(&word, (uint32_t)i, memory_order_release);
	t2 = now_ns();
	printf("ok wake_ps=%llu store_ps=%llu\n", (unsigned long long)((t1 - t0) * 1000 / (uint64_t)n),
	       (unsigned long long)((t2 - t1) * 10 / (uint64_t)n));
}

/* The bare supervisor of one program: a thread that starts it, waits for
 * it, starts it again, for ever, publishing each PID in word (0 between
 * the death and the new start). Its children die with it (they are
 * started with PR_SET_PDEATHSIG by this thread). */
struct bare {
	const char *exe;
	pthread_t thread;
	int started;
	_Atomic uint32_t word;
	_Atomic uint64_t reaped;  /* when waitpid returned */
	_Atomic uint64_t spawned; /* when vfork returned */
	_Atomic int rc;           /* -errno: the supervisor has stopped */
};
static struct bare bares[MAX_EXES];

static void *bare_main(void *arg)
{
	struct bare *b = arg;
	for (;;) {
		pid_t pid = spawn(b->exe);
		atomic_store(&b->spawned, now_ns());
		if (pid < 0) {
			atomic_store(&b->rc, -errno);
			return NULL;
		}
		atomic_store_explicit(&b->word, (uint32_t)pid, memory_order_release);
		if (reap(pid) < 0) {
			atomic_store(&b->rc, -errno);
			return NULL;
		}
		atomic_store(&b->reaped, now_ns());
		atomic_store_explicit(&b->word, 0, memory_order_release);
	}
}

/* bare EXE SETTLE_US: kill the bare supervisor's current child and read its
 * word, with the loop used on an hb slot, until the new PID is there.
 * "Started" is when vfork returns in the supervisor: the new process has
 * exec'd and its PID is known, the moment hb stores the PID in the slot. */
static void cmd_bare(int eid, long settle)
{
	const char *e = exe(eid);
	if (!e) {
		printf("err no exe %d\n", eid);
		return;
	}
	struct bare *b = &bares[eid];
	if (!b->started) {
		b->exe = e;
		if (pthread_create(&b->thread, NULL, bare_main, b) != 0) {
			printf("err pthread_create\n");
			return;
		}
		b->started = 1;
	}
	uint32_t pid = wait_word(&b->word, 0, now_ns() + TIMEOUT_NS);
	sleep_us(settle);
	if (atomic_load(&b->rc) < 0 || pid == 0) {
		printf("err bare supervisor: %s\n", strerror(-atomic_load(&b->rc)));
		return;
	}
	uint64_t t0 = now_ns();
	kill((pid_t)pid, SIGKILL);
	uint32_t v = wait_word(&b->word, pid, t0 + TIMEOUT_NS);
	uint64_t t1 = now_ns(), t2 = t1;
	if (v == 0) {
		v = wait_word(&b->word, 0, t1 + TIMEOUT_NS);
		t2 = now_ns();
	}
	if (v == 0 || v == pid) {
		printf("err bare supervisor: no new PID after killing %u\n", pid);
		return;
	}
	printf("ok t0=%llu t1=%llu t2=%llu reaped=%llu spawned=%llu newpid=%u\n", (unsigned long long)t0,
	       (unsigned long long)t1, (unsigned long long)t2, (unsigned long long)atomic_load(&b->reaped),
	       (unsigned long long)atomic_load(&b->spawned), v);
}

/* peer T SLOT PID FILE BATCHES NHB NKILL NFILE: ns per check for hb_pid,
 * kill(pid, 0) and open+read+close of a small status file, in interleaved
 * batches. */
static void cmd_peer(int tid, int idx, pid_t pid, const char *file, int batches, long nhb, long nkill, long nfile)
{
	struct hb_table *t = table(tid);
	if (!t || batches <= 0 || batches > 100000) {
		printf("err bad peer arguments\n");
		return;
	}
	double *res = calloc((size_t)batches * 3, sizeof *res);
	if (!res) {
		printf("err out of memory\n");
		return;
	}
	volatile uint32_t sink = 0;
	char buf[64];
	for (int b = 0; b < batches; b++) {
		uint32_t sum = 0;
		uint64_t t0 = now_ns();
		for (long i = 0; i < nhb; i++)
			sum += hb_pid(t, idx);
		uint64_t t1 = now_ns();
		sink += sum;
		if (sum == 0) {
			free(res);
			printf("err hb_pid read 0\n");
			return;
		}
		res[b] = (double)(t1 - t0) / (double)nhb;

		t0 = now_ns();
		for (long i = 0; i < nkill; i++)
			if (kill(pid, 0) != 0)
				sink++;
		t1 = now_ns();
		res[batches + b] = (double)(t1 - t0) / (double)nkill;

		t0 = now_ns();
		for (long i = 0; i < nfile; i++) {
			int fd = open(file, O_RDONLY | O_CLOEXEC);
			if (fd >= 0) {
				if (read(fd, buf, sizeof buf) > 0)
					sink += (uint32_t)buf[0];
				close(fd);
			}
		}
		t1 = now_ns();
		res[2 * batches + b] = (double)(t1 - t0) / (double)nfile;
	}
	static const char *names[3] = {"hb", "kill", "file"};
	fputs("ok", stdout);
	for (int k = 0; k < 3; k++) {
		printf(" %s=", names[k]);
		for (int b = 0; b < batches; b++)
			printf(b ? ",%.4f" : "%.4f", res[k * batches + b]);
	}
	printf(" sink=%u\n", sink);
	free(res);
}

/* killall T: kill -9 every PID in the table at once, then scan until every
 * slot has changed (cleared) and holds a new PID (back). Prints, per slot,
 * ns from the first kill to the first scan that saw each, and to the
 * plugin's store of 0 (stored: its detection stamp, last_exit_ns). */
static void cmd_killall(int tid, long timeout_ms)
{
	struct hb_table *t = table(tid);
	if (!t) {
		printf("err no table %d\n", tid);
		return;
	}
	uint32_t n = t->slot_count, k = 0;
	uint32_t *old = calloc(n, sizeof *old);
	int *idx = calloc(n, sizeof *idx);
	uint64_t *cleared = calloc(n, sizeof *cleared), *back = calloc(n, sizeof *back);
	uint64_t *stored = calloc(n, sizeof *stored);
	if (!old || !idx || !cleared || !back || !stored) {
		printf("err out of memory\n");
		goto out;
	}
	for (uint32_t i = 0; i < n; i++) {
		uint32_t p = hb_pid(t, (int)i);
		if (p) {
			idx[k] = (int)i;
			old[k++] = p;
		}
	}
	uint64_t t0 = now_ns();
	for (uint32_t j = 0; j < k; j++)
		kill((pid_t)old[j], SIGKILL);
	uint64_t tk = now_ns();
	uint64_t deadline = t0 + (uint64_t)timeout_ms * 1000000ull;
	uint32_t nclear = 0, nback = 0;
	while (nback < k) {
		uint64_t now = now_ns();
		for (uint32_t j = 0; j < k; j++) {
			if (back[j])
				continue;
			uint32_t p = hb_pid(t, idx[j]);
			if (p == old[j])
				continue;
			if (!cleared[j]) {
				cleared[j] = now - t0;
				nclear++;
			}
			if (p != 0) {
				back[j] = now - t0;
				nback++;
			}
		}
		if (now > deadline)
			break;
		/* A scan of 1000 slots takes about a microsecond; between scans
		 * the reader sleeps, so that it does not take a CPU from the exits
		 * and respawns it measures (the bare baseline sleeps in
		 * epoll_wait). The resolution is the sleep plus timer slack. */
		sleep_us(KILLALL_SCAN_US);
	}
	/* When the plugin stored each 0: its detection stamp, recorded in the
	 * slot as last_exit_ns with the exit (after the new PID, so wait for
	 * it). The store follows the stamp on the same thread, before any
	 * reader can see it: this is the slot's own time of death, free of the
	 * scan's interval and of this reader's scheduling among 1000 respawns. */
	uint32_t ndet = 0;
	for (uint32_t j = 0; j < k; j++) {
		struct hb_slot_snapshot s = {0};
		while (hb_read(t, idx[j], &s) != 0 || s.last_pid != old[j] || s.last_exit_ns < t0) {
			if (now_ns() > deadline)
				break;
			sleep_us(KILLALL_SCAN_US);
		}
		if (s.last_pid == old[j] && s.last_exit_ns >= t0) {
			stored[j] = s.last_exit_ns - t0;
			ndet++;
		}
	}
	printf("ok n=%u killns=%llu nclear=%u nback=%u nstored=%u clear=", k, (unsigned long long)(tk - t0), nclear, nback, ndet);
	for (uint32_t j = 0; j < k; j++)
		printf(j ? ",%llu" : "%llu", (unsigned long long)cleared[j]);
	fputs(" back=", stdout);
	for (uint32_t j = 0; j < k; j++)
		printf(j ? ",%llu" : "%llu", (unsigned long long)back[j]);
	fputs(" stored=", stdout);
	for (uint32_t j = 0; j < k; j++)
		printf(j ? ",%llu" : "%llu", (unsigned long long)stored[j]);
	putchar('\n');
out:
	free(old);
	free(idx);
	free(cleared);
	free(back);
	free(stored);
}

/* rawkillall EXE N SETTLE_US: the kernel floor of the scale test, without
 * hb. Starts N children one after the other (vfork+exec), watches their
 * pidfds in one epoll, kills them all at once and waits until every pidfd
 * is readable. Prints the time to start them all, to send the kills, and
 * per child the ns from the first kill to the epoll wake-up that saw it. */
static void cmd_rawkillall(int eid, long n, long settle)
{
	const char *e = exe(eid);
	if (!e || n < 1 || n > 65536) {
		printf("err bad rawkillall arguments\n");
		return;
	}
	pid_t *pids = calloc((size_t)n, sizeof *pids);
	int *pfds = calloc((size_t)n, sizeof *pfds);
	uint64_t *seen = calloc((size_t)n, sizeof *seen);
	struct epoll_event *evs = calloc(256, sizeof *evs);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	long started = 0;
	if (!pids || !pfds || !seen || !evs || ep < 0) {
		printf("err out of memory\n");
		goto out;
	}
	uint64_t ts = now_ns();
	for (; started < n; started++) {
		pids[started] = spawn(e);
		if (pids[started] < 0)
			break;
		pfds[started] = (int)syscall(SYS_pidfd_open, pids[started], 0);
		struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)started};
		if (pfds[started] < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, pfds[started], &ev) < 0) {
			kill(pids[started], SIGKILL);
			reap(pids[started]);
			break;
		}
	}
	uint64_t tstart = now_ns() - ts;
	if (started < n) {
		printf("err started only %ld of %ld: %s\n", started, n, strerror(errno));
		goto kill;
	}
	sleep_us(settle);
	uint64_t t0 = now_ns();
	for (long i = 0; i < n; i++)
		kill(pids[i], SIGKILL);
	uint64_t tk = now_ns() - t0;
	long got = 0;
	while (got < n) {
		int k = epoll_wait(ep, evs, 256, 10000);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		uint64_t now = now_ns() - t0;
		for (int j = 0; j < k; j++) {
			uint64_t i = evs[j].data.u64;
			if (!seen[i]) {
				seen[i] = now;
				got++;
				epoll_ctl(ep, EPOLL_CTL_DEL, pfds[i], NULL);
			}
		}
	}
	printf("ok n=%ld got=%ld startns=%llu killns=%llu seen=", n, got, (unsigned long long)tstart, (unsigned long long)tk);
	for (long i = 0; i < n; i++)
		printf(i ? ",%llu" : "%llu", (unsigned long long)seen[i]);
	putchar('\n');
kill:
	for (long i = 0; i < started; i++) {
		kill(pids[i], SIGKILL);
		reap(pids[i]);
		close(pfds[i]);
	}
out:
	if (ep >= 0)
		close(ep);
	free(pids);
	free(pfds);
	free(seen);
	free(evs);
}

static int serve(void)
{
	char line[8192];
	setvbuf(stdout, NULL, _IOLBF, 0);
	while (fgets(line, sizeof line, stdin)) {
		char cmd[32], arg[4096];
		int a, b;
		long c, d, e, f, g;
		unsigned u;
		if (sscanf(line, "%31s", cmd) != 1)
			continue;
		if (!strcmp(cmd, "open") && sscanf(line, "%*s %d %4095s", &a, arg) == 2) {
			if (a < 0 || a >= MAX_TABLES) {
				printf("err bad table id\n");
				continue;
			}
			hb_close(&tables[a]);
			int rc = hb_open_path(arg, &tables[a]);
			if (rc < 0)
				printf("err open %s: %s\n", arg, hb_strerror(rc));
			else
				printf("ok slots=%u\n", tables[a].slot_count);
		} else if (!strcmp(cmd, "close") && sscanf(line, "%*s %d", &a) == 1) {
			if (a >= 0 && a < MAX_TABLES)
				hb_close(&tables[a]);
			printf("ok\n");
		} else if (!strcmp(cmd, "exe") && sscanf(line, "%*s %d %4095s", &a, arg) == 2) {
			if (a < 0 || a >= MAX_EXES) {
				printf("err bad exe id\n");
				continue;
			}
			free(exes[a]);
			exes[a] = strdup(arg);
			printf("ok\n");
		} else if (!strcmp(cmd, "mode") && sscanf(line, "%*s %4095s", arg) == 1) {
			yield_mode = strcmp(arg, "spin") != 0;
			printf("ok mode=%s\n", yield_mode ? "yield" : "spin");
		} else if (!strcmp(cmd, "cnopen")) {
			int rc = cn_open();
			if (rc < 0)
				printf("err proc connector: %s\n", strerror(-rc));
			else
				printf("ok\n");
		} else if (!strcmp(cmd, "kill0") && sscanf(line, "%*s %d %d %u %ld", &a, &b, &u, &c) == 4) {
			cmd_kill0(a, b, u, (int)c);
		} else if (!strcmp(cmd, "respawn") && sscanf(line, "%*s %d %d %u", &a, &b, &u) == 3) {
			cmd_respawn(a, b, u);
		} else if (!strcmp(cmd, "rawpidfd") && sscanf(line, "%*s %d %ld", &a, &c) == 2) {
			cmd_raw(WAIT_PIDFD, a, c);
		} else if (!strcmp(cmd, "rawcn") && sscanf(line, "%*s %d %ld", &a, &c) == 2) {
			cmd_raw(WAIT_CN, a, c);
		} else if (!strcmp(cmd, "bare") && sscanf(line, "%*s %d %ld", &a, &c) == 2) {
			cmd_bare(a, c);
		} else if (!strcmp(cmd, "peer") &&
			   sscanf(line, "%*s %d %d %ld %4095s %ld %ld %ld %ld", &a, &b, &c, arg, &d, &e, &f, &g) == 8) {
			cmd_peer(a, b, (pid_t)c, arg, (int)d, e, f, g);
		} else if (!strcmp(cmd, "killall") && sscanf(line, "%*s %d %ld", &a, &c) == 2) {
			cmd_killall(a, c);
		} else if (!strcmp(cmd, "rawkillall") && sscanf(line, "%*s %d %ld %ld", &a, &c, &d) == 3) {
			cmd_rawkillall(a, c, d);
		} else if (!strcmp(cmd, "futex") && sscanf(line, "%*s %d %d %u %ld", &a, &b, &u, &c) == 4) {
			cmd_futex(a, b, u, c);
		} else if (!strcmp(cmd, "wdead") && sscanf(line, "%*s %d %u", &a, &u) == 2) {
			cmd_wdead(a, u);
		} else if (!strcmp(cmd, "wake") && sscanf(line, "%*s %d %ld", &a, &c) == 2) {
			cmd_wake(a, c);
		} else if (!strcmp(cmd, "beat") && sscanf(line, "%*s %ld", &c) == 1) {
			cmd_beat(c);
		} else if (!strcmp(cmd, "quit")) {
			/* The bare supervisors' children die with their threads. */
			printf("ok\n");
			return 0;
		} else {
			printf("err unknown or malformed command: %s", line);
			if (!strchr(line, '\n'))
				putchar('\n');
		}
	}
	return 0;
}

/* flood SECS PROCS: PROCS processes, each creating and reaping short-lived
 * children (vfork + _exit) as fast as it can for SECS seconds. Prints the
 * number of exits. */
static int flood(double secs, int procs)
{
	int fds[2];
	uint64_t total = 0, t0 = now_ns(), end = t0 + (uint64_t)(secs * 1e9);
	if (procs < 1 || procs > 256 || pipe(fds) < 0) {
		printf("err bad flood arguments\n");
		return 2;
	}
	for (int i = 0; i < procs; i++) {
		pid_t w = fork();
		if (w < 0) {
			printf("err fork: %s\n", strerror(errno));
			return 1;
		}
		if (w == 0) {
			uint64_t n = 0;
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			close(fds[0]);
			while (now_ns() < end) {
				for (int j = 0; j < 16; j++) {
					pid_t c = vfork();
					if (c == 0)
						_exit(0);
					if (c > 0 && reap(c) >= 0)
						n++;
				}
			}
			if (write(fds[1], &n, sizeof n) != (ssize_t)sizeof n)
				_exit(1);
			_exit(0);
		}
	}
	close(fds[1]);
	for (int i = 0; i < procs; i++) {
		uint64_t n;
		if (read(fds[0], &n, sizeof n) == (ssize_t)sizeof n)
			total += n;
	}
	while (wait(NULL) > 0 || errno == EINTR)
		;
	printf("ok exits=%llu ns=%llu\n", (unsigned long long)total, (unsigned long long)(now_ns() - t0));
	return 0;
}

int main(int argc, char **argv)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (argc >= 2 && !strcmp(argv[1], "serve"))
		return serve();
	if (argc == 4 && !strcmp(argv[1], "flood"))
		return flood(atof(argv[2]), atoi(argv[3]));
	fputs("usage: hbbench-helper serve | flood SECS PROCS\n", stderr);
	return 2;
}
