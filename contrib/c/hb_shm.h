/*
 * hb_shm.h - read hb's shared-memory liveness table from C (ABI v1).
 *
 * Header-only, C11 (<stdatomic.h>) and POSIX.1-2008, no other dependency.
 * Include it before any system header, or define _POSIX_C_SOURCE 200809L
 * (or _GNU_SOURCE / _DEFAULT_SOURCE) yourself.
 *
 *     struct hb_table t;
 *     int rc = hb_open("hb", &t);            // maps /dev/shm/hb read-only
 *                                          // (or getenv("HB_SHM"): a full path)
 *     if (rc < 0) { fprintf(stderr, "%s\n", hb_strerror(rc)); exit(1); }
 *     uint64_t seq = hb_layout_seq(&t);
 *     int rx = hb_lookup(&t, "rx");          // once: a slot keeps its index
 *     ...
 *     if (!hb_alive(&t, rx)) bypass_rx();    // the hot path: two acquire loads
 *     if (hb_layout_changed(&t, &seq)) rx = hb_lookup(&t, "rx"); // rare
 *     ...
 *     long pid = hb_wait(&t, rx, seen, -1);  // or sleep until the pid word changes
 *     hb_close(&t);
 *
 * The table is written by one process (the hb plugin) and never shrinks, so
 * a mapping stays valid for as long as it is held. Its layout is described in
 * docs/abi.md (shm/testdata/table-v1.golden pins it). pid is written
 * atomically (0 before an exit is reported; the new PID last at a spawn);
 * bytes 4-127 of a slot are guarded by the seqlock seq (odd while being
 * written). This reader uses only 4-byte atomic loads on the slots, so it
 * never writes to the read-only mapping, even where 8-byte atomics would.
 * It does not check the file's owner: see docs/security.md.
 */
#ifndef HB_SHM_H
#define HB_SHM_H

#if !defined(_POSIX_C_SOURCE) && !defined(_XOPEN_SOURCE) && !defined(_GNU_SOURCE) && !defined(_DEFAULT_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(O_CLOEXEC) || !defined(O_NOFOLLOW)
#error "hb_shm.h needs POSIX.1-2008: include it first or define _POSIX_C_SOURCE 200809L"
#endif

#if ATOMIC_INT_LOCK_FREE != 2
#error "hb_shm.h needs lock-free (address-free) 32-bit atomics"
#endif

#define HB_VERSION 1u
#define HB_HEADER_SIZE 128u
#define HB_SLOT_SIZE 128u
#define HB_NAME_MAX 47 /* service name bytes, [A-Za-z0-9._-] */
#define HB_DEFAULT_NAME "hb"
#define HB_SHM_DIR "/dev/shm/"

/* Header flags: exit detectors the writer runs. */
#define HB_FLAG_CONNECTOR (1u << 0)
#define HB_FLAG_PIDFD (1u << 1)
#define HB_FLAG_TRACEPOINT (1u << 2) /* exit tracepoint (eBPF); unknown bits are ignored */
/* writer_alive (header offset 56): the writer thread's TID while the writer
 * lives; the kernel sets this bit (FUTEX_OWNER_DIED) when the writer dies;
 * 0 after a clean shutdown. */
#define HB_WRITER_OWNER_DIED 0x40000000u
/* hb_wait_any waits on at most this many slots (futex_waitv's limit). */
#define HB_WAIT_MAX 128
/* Slot flags. */
#define HB_SLOT_ADOPTED (1u << 0) /* not the writer's child */
#define HB_SLOT_BRIDGED (1u << 1) /* started by another manager (supervisord, runit, s6) */
#define HB_SLOT_MANAGER_GONE (1u << 2) /* bridged, and its manager is not running */

/* hb_read gives up with -EAGAIN after this many attempts (the writer died
 * inside an update; the next writer repairs the slot). */
#ifndef HB_READ_TRIES
#define HB_READ_TRIES (1 << 20)
#endif

/* Slot states (slot offset 4). */
enum hb_state {
	HB_STATE_FREE = 0,
	HB_STATE_STOPPED = 1,
	HB_STATE_STARTING = 2,
	HB_STATE_RUNNING = 3,
	HB_STATE_BACKOFF = 4,
	HB_STATE_EXITED = 5,
	HB_STATE_FATAL = 6,
	HB_STATE_STOPPING = 7,
	HB_STATE_HUNG = 8 /* missed its watchdog deadline: pid already 0, being killed */
};

/* A mapped table. Treat as opaque; fill with hb_open, release with hb_close. */
struct hb_table {
	unsigned char *base; /* read-only mapping of the whole file */
	size_t size;         /* bytes mapped */
	uint32_t slot_count; /* 0 when closed: hb_pid then returns 0 */
};

/* A copy of the header (each field read atomically). */
struct hb_header {
	uint32_t version, header_size, slot_size, slot_count;
	uint32_t writer_pid; /* 0 after a clean shutdown */
	uint32_t flags;      /* HB_FLAG_* */
	uint64_t created_ns; /* CLOCK_REALTIME */
	uint64_t writer_beat_ns; /* CLOCK_MONOTONIC, refreshed each second */
	uint64_t layout_seq;     /* +1 after every slot assignment, release or reuse */
	uint32_t writer_alive;   /* see HB_WRITER_OWNER_DIED; hb_writer_alive */
	uint32_t changes;        /* +1 after every store to a slot's pid word */
};

/* A consistent (never torn) copy of one slot, from hb_read. */
struct hb_slot_snapshot {
	int index;
	uint32_t pid;   /* 0 = not running */
	uint32_t state; /* enum hb_state */
	uint32_t seq;   /* the even sequence number the copy was taken at */
	uint32_t flags; /* HB_SLOT_* */
	uint64_t generation;
	uint64_t start_time; /* /proc/PID/stat field 22 */
	uint64_t changed_ns;
	uint64_t exits;
	int32_t last_status; /* exit code or 128+signal; -1 none yet */
	uint32_t last_pid;
	uint64_t last_exit_ns;
	char name[HB_NAME_MAX + 1]; /* NUL-terminated */
};

/* Word k (byte offset 4k) of slot idx, or of the header for idx < 0. */
static inline _Atomic uint32_t *hb__word(const struct hb_table *t, int idx, unsigned k)
{
	size_t off = idx < 0 ? 0 : HB_HEADER_SIZE + (size_t)idx * HB_SLOT_SIZE;
	return (_Atomic uint32_t *)(void *)(t->base + off + 4u * k);
}

static inline uint64_t hb__u64(const uint32_t *w)
{
	uint64_t v;
	memcpy(&v, w, sizeof v);
	return v;
}

/* hb_pid returns the PID in slot idx: non-zero while the service runs, 0 if
 * it does not (or idx is out of range, or t is closed). One acquire load. */
static inline uint32_t hb_pid(const struct hb_table *t, int idx)
{
	if ((unsigned)idx >= t->slot_count)
		return 0;
	return atomic_load_explicit(hb__word(t, idx, 0), memory_order_acquire);
}

/* hb_open_path_owner maps the table at path read-only if the file is owned by
 * root or by owner (the user hb runs as). Returns 0, or -errno:
 *   -ELOOP            path is a symlink
 *   -EINVAL           not a regular file, or bad sizes (header_size,
 *                     slot_size, slot_count, file size)
 *   -EPERM            owned by another user (any local user can create a file
 *                     in /dev/shm before hb does and forge the slots), or
 *                     writable by group or others (anyone could forge it);
 *                     stat the path to tell which and to name the owner
 *   -EBADMSG          bad magic: not an hb table
 *   -EPROTONOSUPPORT  ABI version other than 1
 *   or the errno of open, fstat or mmap. */
static inline int hb_open_path_owner(const char *path, uid_t owner, struct hb_table *t)
{
	struct stat st;
	unsigned char *p;
	uint32_t hdr[6];
	int fd, err;

	memset(t, 0, sizeof *t);
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		err = -errno;
		close(fd);
		return err;
	}
	if (!S_ISREG(st.st_mode) || st.st_size < (off_t)HB_HEADER_SIZE) {
		close(fd);
		return -EINVAL;
	}
	if ((st.st_uid != 0 && st.st_uid != owner) || (st.st_mode & (S_IWGRP | S_IWOTH))) {
		close(fd);
		return -EPERM;
	}
	p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	err = p == MAP_FAILED ? -errno : 0;
	close(fd);
	if (err)
		return err;
	t->base = p;
	t->size = (size_t)st.st_size;
	for (unsigned k = 0; k < 6; k++)
		hdr[k] = atomic_load_explicit(hb__word(t, -1, k), memory_order_acquire);
	if (memcmp(hdr, "HBSHM\0\0\0", 8) != 0)
		err = -EBADMSG;
	else if (hdr[2] != HB_VERSION)
		err = -EPROTONOSUPPORT;
	else if (hdr[3] != HB_HEADER_SIZE || hdr[4] != HB_SLOT_SIZE || hdr[5] == 0 ||
		 t->size != HB_HEADER_SIZE + (size_t)hdr[5] * HB_SLOT_SIZE)
		err = -EINVAL;
	if (err) {
		munmap(p, t->size);
		memset(t, 0, sizeof *t);
		return err;
	}
	t->slot_count = hdr[5];
	return 0;
}

/* hb_open_path maps the table at path read-only if it is owned by root or by
 * the caller's effective user: hb_open_path_owner(path, geteuid(), t). */
static inline int hb_open_path(const char *path, struct hb_table *t)
{
	return hb_open_path_owner(path, geteuid(), t);
}

/* hb_open_owner maps /dev/shm/NAME read-only (NAME as for shm_open, without
 * the leading '/': not empty, no '/', not "." or ".."), or NAME itself if it
 * is a full path, if the file is owned by root or by owner. Errors as
 * hb_open_path_owner, plus -EINVAL for a bad name. */
static inline int hb_open_owner(const char *name, uid_t owner, struct hb_table *t)
{
	char path[sizeof HB_SHM_DIR + NAME_MAX];
	size_t n = strlen(name);

	memset(t, 0, sizeof *t);
	if (name[0] == '/') /* a full path, as $HB_SHM gives it to services */
		return hb_open_path_owner(name, owner, t);
	if (n == 0 || n > NAME_MAX || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, ".."))
		return -EINVAL;
	memcpy(path, HB_SHM_DIR, sizeof HB_SHM_DIR - 1);
	memcpy(path + sizeof HB_SHM_DIR - 1, name, n + 1);
	return hb_open_path_owner(path, owner, t);
}

/* hb_open is hb_open_owner(name, geteuid(), t): it accepts a table owned by
 * root or by the caller's effective user. */
static inline int hb_open(const char *name, struct hb_table *t)
{
	return hb_open_owner(name, geteuid(), t);
}

/* hb_close unmaps the table; hb_pid then returns 0. */
static inline void hb_close(struct hb_table *t)
{
	if (t->base)
		munmap(t->base, t->size);
	memset(t, 0, sizeof *t);
}

/* The 8-byte header field at word k (byte 4k). */
static inline uint64_t hb__header_u64(const struct hb_table *t, unsigned k)
{
#if ATOMIC_LLONG_LOCK_FREE == 2
	return atomic_load_explicit((_Atomic uint64_t *)(void *)(t->base + 4u * k), memory_order_acquire);
#else
	/* No lock-free 8-byte load here: read both halves twice until they agree. */
	uint32_t a[2], b[2];
	do {
		a[0] = atomic_load_explicit(hb__word(t, -1, k), memory_order_acquire);
		a[1] = atomic_load_explicit(hb__word(t, -1, k + 1), memory_order_acquire);
		b[0] = atomic_load_explicit(hb__word(t, -1, k), memory_order_acquire);
		b[1] = atomic_load_explicit(hb__word(t, -1, k + 1), memory_order_acquire);
	} while (a[0] != b[0] || a[1] != b[1]);
	return hb__u64(a);
#endif
}

/* hb_header copies the header (each field atomically; the fields change
 * independently). */
static inline void hb_header(const struct hb_table *t, struct hb_header *h)
{
	uint32_t w[8];

	memset(h, 0, sizeof *h);
	if (!t->base)
		return;
	for (unsigned k = 2; k < 8; k++)
		w[k] = atomic_load_explicit(hb__word(t, -1, k), memory_order_acquire);
	h->version = w[2];
	h->header_size = w[3];
	h->slot_size = w[4];
	h->slot_count = w[5];
	h->writer_pid = w[6];
	h->flags = w[7];
	h->created_ns = hb__header_u64(t, 8);
	h->writer_beat_ns = hb__header_u64(t, 10);
	h->layout_seq = hb__header_u64(t, 12);
	h->writer_alive = atomic_load_explicit(hb__word(t, -1, 14), memory_order_acquire);
	h->changes = atomic_load_explicit(hb__word(t, -1, 15), memory_order_acquire);
}

/* hb_writer_alive returns 1 while the table's writer (the plugin) lives, 0
 * once it died (by any means, SIGKILL included: the kernel itself marks the
 * word during the exit) or shut down. One acquire load, no system call, no
 * clock. A live writer may still be stopped or slow: writer_beat_ns says
 * that, at the cost of a clock read. */
static inline int hb_writer_alive(const struct hb_table *t)
{
	uint32_t w;

	if (!t->base)
		return 0;
	w = atomic_load_explicit(hb__word(t, -1, 14), memory_order_acquire);
	return w != 0 && !(w & HB_WRITER_OWNER_DIED);
}

/* hb_alive returns 1 if slot idx's service is alive as a live writer says:
 * pid word non-zero, then writer alive (two acquire loads). A pid read after
 * the writer died may name a recycled process; this never counts it. */
static inline int hb_alive(const struct hb_table *t, int idx)
{
	return hb_pid(t, idx) != 0 && hb_writer_alive(t);
}

/* hb_layout_seq returns layout_seq: read it before hb_lookup. */
static inline uint64_t hb_layout_seq(const struct hb_table *t)
{
	return t->base ? hb__header_u64(t, 12) : 0;
}

/* hb_layout_changed returns 1 if layout_seq differs from *seq (and stores
 * the new value there): slots were assigned, released or reused since, so
 * cached indexes must be looked up again and a pid just read from one is
 * not to be trusted. One acquire load. */
static inline int hb_layout_changed(const struct hb_table *t, uint64_t *seq)
{
	uint64_t v = hb_layout_seq(t);
	int changed = v != *seq;

	*seq = v;
	return changed;
}

/* hb_changes returns the changes word (for hb_wait_changes). */
static inline uint32_t hb_changes(const struct hb_table *t)
{
	return t->base ? atomic_load_explicit(hb__word(t, -1, 15), memory_order_acquire) : 0;
}

/* hb_read copies slot idx consistently: the seqlock-guarded words are copied
 * until seq is even and unchanged, and the pid is accepted only if it did not
 * change meanwhile. Returns 0, -ERANGE for idx out of range, or -EAGAIN if no
 * consistent copy was obtained in HB_READ_TRIES attempts. */
static inline int hb_read(const struct hb_table *t, int idx, struct hb_slot_snapshot *out)
{
	uint32_t w[HB_SLOT_SIZE / 4];

	if ((unsigned)idx >= t->slot_count)
		return -ERANGE;
	for (long tries = 0; tries < HB_READ_TRIES; tries++) {
		uint32_t s1, s2, p1, p2;

		if (tries >= 64)
			sched_yield();
		s1 = atomic_load_explicit(hb__word(t, idx, 2), memory_order_acquire);
		if (s1 & 1u)
			continue;
		p1 = atomic_load_explicit(hb__word(t, idx, 0), memory_order_acquire);
		for (unsigned k = 1; k < 28; k++)
			if (k != 2)
				w[k] = atomic_load_explicit(hb__word(t, idx, k), memory_order_relaxed);
		atomic_thread_fence(memory_order_acquire);
		s2 = atomic_load_explicit(hb__word(t, idx, 2), memory_order_relaxed);
		p2 = atomic_load_explicit(hb__word(t, idx, 0), memory_order_relaxed);
		if (s1 != s2 || p1 != p2)
			continue;
		out->index = idx;
		out->pid = p1;
		out->state = w[1];
		out->seq = s1;
		out->flags = w[3];
		out->generation = hb__u64(&w[4]);
		out->start_time = hb__u64(&w[6]);
		out->changed_ns = hb__u64(&w[8]);
		out->exits = hb__u64(&w[10]);
		out->last_status = (int32_t)w[12];
		out->last_pid = w[13];
		out->last_exit_ns = hb__u64(&w[14]);
		memcpy(out->name, &w[16], HB_NAME_MAX);
		out->name[HB_NAME_MAX] = '\0';
		return 0;
	}
	return -EAGAIN;
}

/* hb_lookup returns the index of service svc's slot, or -1 if no used slot
 * holds that name. A slot keeps its index while its service exists, so look
 * up once and then poll hb_pid. */
static inline int hb_lookup(const struct hb_table *t, const char *svc)
{
	size_t n = strlen(svc);

	if (n == 0 || n > HB_NAME_MAX)
		return -1;
	for (uint32_t i = 0; i < t->slot_count; i++) {
		char name[HB_NAME_MAX + 1];
		uint32_t w[12], s1, state;
		int idx = (int)i;

		if (atomic_load_explicit(hb__word(t, idx, 1), memory_order_relaxed) == HB_STATE_FREE)
			continue;
		for (long tries = 0;; tries++) {
			if (tries >= 64)
				sched_yield();
			if (tries >= HB_READ_TRIES)
				return -1;
			s1 = atomic_load_explicit(hb__word(t, idx, 2), memory_order_acquire);
			if (s1 & 1u)
				continue;
			state = atomic_load_explicit(hb__word(t, idx, 1), memory_order_relaxed);
			for (unsigned k = 0; k < 12; k++)
				w[k] = atomic_load_explicit(hb__word(t, idx, 16 + k), memory_order_relaxed);
			atomic_thread_fence(memory_order_acquire);
			if (atomic_load_explicit(hb__word(t, idx, 2), memory_order_relaxed) == s1)
				break;
		}
		memcpy(name, w, HB_NAME_MAX);
		name[HB_NAME_MAX] = '\0';
		if (state != HB_STATE_FREE && strcmp(name, svc) == 0)
			return idx;
	}
	return -1;
}

#ifdef __linux__
/*
 * Blocking waits (Linux). The writer does a shared FUTEX_WAKE on a slot's pid
 * word after every store to it, and increments and wakes the header's
 * changes word (also at every change of writer_alive); a read-only mapping
 * can wait on both. timeout_ns < 0 waits for ever. The waits return -EPIPE
 * when woken while the writer is not alive. The writer's own death wakes
 * nobody by itself (the kernel marks writer_alive without a wake); hbd, when
 * it lives, wakes every waiter as soon as it sees the plugin die. A peer
 * that must notice within a bound even with hbd gone bounds its waits.
 */
#include <sys/syscall.h>
#include <time.h>
#include <linux/futex.h>
#ifndef __NR_futex_waitv
#define __NR_futex_waitv 449
#endif
extern long syscall(long number, ...);

/* The CLOCK_MONOTONIC deadline timeout_ns from now (timeout_ns >= 0). */
static inline struct timespec hb__deadline(long long timeout_ns)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += (time_t)(timeout_ns / 1000000000LL);
	ts.tv_nsec += (long)(timeout_ns % 1000000000LL);
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

/* The time left until dl, or -ETIMEDOUT. */
static inline int hb__left(const struct timespec *dl, struct timespec *left)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	left->tv_sec = dl->tv_sec - now.tv_sec;
	left->tv_nsec = dl->tv_nsec - now.tv_nsec;
	if (left->tv_nsec < 0) {
		left->tv_sec--;
		left->tv_nsec += 1000000000L;
	}
	return left->tv_sec < 0 ? -ETIMEDOUT : 0;
}

/* Sleep while *w == seen; returns its new value (>= 0) or -ETIMEDOUT /
 * -EPIPE (woken while the writer is not alive) / -errno. */
static inline long hb__wait_word(const struct hb_table *t, _Atomic uint32_t *w, uint32_t seen, long long timeout_ns)
{
	long rc;

	struct timespec dl, left;

	if (timeout_ns >= 0)
		dl = hb__deadline(timeout_ns);
	for (;;) {
		uint32_t v = atomic_load_explicit(w, memory_order_acquire);

		if (v != seen)
			return (long)v;
		if (timeout_ns >= 0 && hb__left(&dl, &left) < 0)
			return -ETIMEDOUT;
		/* Shared (no FUTEX_PRIVATE_FLAG): the key is the file's, so the
		 * writer's wake through its own mapping reaches this one. */
		rc = syscall(__NR_futex, (uint32_t *)w, FUTEX_WAIT, seen, timeout_ns >= 0 ? &left : NULL, NULL, 0);
		if (rc == 0 && atomic_load_explicit(w, memory_order_acquire) == seen && !hb_writer_alive(t))
			return -EPIPE;
		if (rc < 0 && errno != EAGAIN && errno != EINTR && errno != ETIMEDOUT)
			return -errno;
	}
}

/* hb_wait sleeps until slot idx's pid word differs from seen_pid and returns
 * the new value (>= 0: 0 = the service died, else its new PID), or
 * -ETIMEDOUT, -ERANGE for idx out of range, -errno. */
static inline long hb_wait(const struct hb_table *t, int idx, uint32_t seen_pid, long long timeout_ns)
{
	if ((unsigned)idx >= t->slot_count)
		return -ERANGE;
	return hb__wait_word(t, hb__word(t, idx, 0), seen_pid, timeout_ns);
}

/* hb_wait_changes sleeps until the changes word differs from *seen (some pid
 * word was stored since), stores its new value there and returns 0; or
 * -ETIMEDOUT. Then look at the slots you care about. */
static inline int hb_wait_changes(const struct hb_table *t, uint32_t *seen, long long timeout_ns)
{
	long v;

	if (!t->base)
		return -EINVAL;
	v = hb__wait_word(t, hb__word(t, -1, 15), *seen, timeout_ns);
	if (v < 0)
		return (int)v;
	*seen = (uint32_t)v;
	return 0;
}

/* One slot for hb_wait_any: its index and the pid last seen in it. */
struct hb_watch {
	int slot;
	uint32_t pid;
};

/* hb_wait_any sleeps until the pid word of one of the n (1..HB_WAIT_MAX)
 * watched slots differs from its .pid, with futex_waitv (Linux 5.16), and
 * returns the position in w of such a slot (others may have changed too);
 * or -ETIMEDOUT, -ERANGE (a slot out of range), -EINVAL (n), -ENOSYS (an
 * older kernel: use hb_wait_changes), -errno. */
static inline int hb_wait_any(const struct hb_table *t, const struct hb_watch *w, int n, long long timeout_ns)
{
	struct {
		uint64_t val, uaddr;
		uint32_t flags, reserved;
	} v[HB_WAIT_MAX];
	struct timespec dl;

	if (n < 1 || n > HB_WAIT_MAX)
		return -EINVAL;
	for (int k = 0; k < n; k++) {
		if ((unsigned)w[k].slot >= t->slot_count)
			return -ERANGE;
		v[k].val = w[k].pid;
		v[k].uaddr = (uint64_t)(uintptr_t)hb__word(t, w[k].slot, 0);
		v[k].flags = 2; /* FUTEX2_SIZE_U32, shared */
		v[k].reserved = 0;
	}
	if (timeout_ns >= 0)
		dl = hb__deadline(timeout_ns);
	for (;;) {
		for (int k = 0; k < n; k++)
			if (hb_pid(t, w[k].slot) != w[k].pid)
				return k;
		long rc = syscall(__NR_futex_waitv, v, (unsigned)n, 0u, timeout_ns >= 0 ? &dl : NULL, CLOCK_MONOTONIC);

		if (rc >= 0 && rc < n && hb_pid(t, w[rc].slot) == w[rc].pid && !hb_writer_alive(t))
			return -EPIPE;
		if (rc < 0 && errno != EAGAIN && errno != EINTR)
			return -errno;
	}
}
#endif /* __linux__ */

/* hb_state_name returns the lower-case name of a state ("running"), or
 * "unknown" outside ABI v1. */
static inline const char *hb_state_name(uint32_t state)
{
	static const char *const names[] = {
		"free", "stopped", "starting", "running", "backoff", "exited", "fatal", "stopping", "hung",
	};
	return state < sizeof names / sizeof names[0] ? names[state] : "unknown";
}

/* hb_strerror describes a negative return of hb_open / hb_open_path / hb_read
 * in the table's terms where the errno is hb-specific. */
static inline const char *hb_strerror(int rc)
{
	switch (-rc) {
	case ELOOP: return "is a symlink";
	case EPERM: return "not owned by root or hb's user, or writable by group or others: not a table hb made";
	case EBADMSG: return "bad magic: not an hb table";
	case EPROTONOSUPPORT: return "unsupported ABI version";
	case EINVAL: return "not a regular file, bad name or bad table layout";
	case EAGAIN: return "slot busy: the writer died inside an update";
	case ERANGE: return "slot index out of range";
	case ETIMEDOUT: return "timed out";
	case EPIPE: return "the table's writer is not alive";
	default: return strerror(-rc);
	}
}

/*
 * The watchdog beat (a service started by hb with `watchdog = "..."`).
 *
 *     for (;;) { hb_beat(); process_burst(); }   // one relaxed store
 *
 * hb hands the service a beat area at spawn: a sealed memfd (it cannot be
 * grown or shrunk) inherited on the descriptor named by $HB_BEAT_FD, whose
 * first 8 bytes are a counter only this service (and the plugin, which
 * reads it) can reach; the table itself stays written by the plugin alone.
 * The plugin checks the counter once per watchdog period: a period without
 * a change makes the slot read 0 and the state hung (docs/watchdog.md).
 * Beats from several threads may overwrite each other's increment, never
 * all of them: any change counts. Without $HB_BEAT_FD (not run by hb, or no
 * watchdog) hb_beat does nothing. The first call maps the area; call
 * hb_beat_init() first to do it outside the hot path and learn whether a
 * watchdog is set (1), none is (0), or the descriptor is unusable (< 0).
 */
#define HB_BEAT_FD_ENV "HB_BEAT_FD"
#define HB_BEAT_SIZE 4096u

#if ATOMIC_LLONG_LOCK_FREE != 2
#error "hb_shm.h needs lock-free 64-bit atomics for hb_beat"
#endif

static _Atomic(uint64_t *) hb__beat_word;
static _Atomic int hb__beat_tried;

static inline int hb_beat_init(void)
{
	const char *v;
	char *end;
	long fd;
	void *p;

	if (atomic_load_explicit(&hb__beat_word, memory_order_acquire) != NULL)
		return 1;
	atomic_store_explicit(&hb__beat_tried, 1, memory_order_relaxed);
	v = getenv(HB_BEAT_FD_ENV);
	if (v == NULL || *v == '\0')
		return 0;
	errno = 0;
	fd = strtol(v, &end, 10);
	if (errno != 0 || *end != '\0' || fd < 0 || fd > INT_MAX)
		return -EINVAL;
	p = mmap(NULL, HB_BEAT_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, (int)fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	atomic_store_explicit(&hb__beat_word, (uint64_t *)p, memory_order_release);
	return 1;
}

/* hb_beat tells hb the service is making progress: a relaxed load and
 * store of the beat counter, no system call, no fence. */
static inline void hb_beat(void)
{
	uint64_t *w = atomic_load_explicit(&hb__beat_word, memory_order_relaxed);
	_Atomic uint64_t *c;

	if (__builtin_expect(w == NULL, 0)) {
		if (atomic_load_explicit(&hb__beat_tried, memory_order_relaxed) || hb_beat_init() != 1)
			return;
		w = atomic_load_explicit(&hb__beat_word, memory_order_relaxed);
	}
	c = (_Atomic uint64_t *)(void *)w;
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1, memory_order_relaxed);
}

#endif /* HB_SHM_H */
