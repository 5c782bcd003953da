// See beat_linux.h and beat_cgo_linux.go.
#include "beat_linux.h"

#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct hb_beater {
	pthread_t thread;
	pthread_mutex_t mu; // guards words and n
	uintptr_t words[HB_BEATER_MAX];
	int n;
	int64_t period_ns;
	uint32_t stop; // futex word: 1 once hb_beater_stop was called
	uint64_t skipped, beats; // atomic
};

static uint64_t mono_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

// writable asks the kernel whether the page of word can be written: an atomic
// add of 0 done by futex(2) faults the page in, or fails with EFAULT where a
// store would raise SIGBUS (a table file truncated under the writer). A
// SIGBUS on this thread would kill the plugin: the Go runtime cannot recover
// it here as it does for its own stores.
static int writable(uintptr_t word) {
	uint32_t *w = (uint32_t *)word; // the low half of the u64 (little-endian)
	long r = syscall(SYS_futex, w, FUTEX_WAKE_OP_PRIVATE, 0, (void *)0, w,
	                 FUTEX_OP(FUTEX_OP_ADD, 0, FUTEX_OP_CMP_EQ, 0));
	return r >= 0;
}

// store_all stores now into every word whose page can be written. The
// caller holds mu.
static void store_all(hb_beater *b, uint64_t now) {
	for (int i = 0; i < b->n; i++) {
		if (!writable(b->words[i])) {
			__atomic_add_fetch(&b->skipped, 1, __ATOMIC_RELAXED);
			continue;
		}
		__atomic_store_n((uint64_t *)b->words[i], now, __ATOMIC_RELEASE);
	}
}

// The thread's wake may come up to a fifth of the period early (timer
// slack): the kernel then fires it with another timer where it can, instead
// of waking an idle CPU for it alone. It asks for the period minus the
// slack after the last beat, so beats are never further apart than the
// period.
static void *beat_main(void *arg) {
	hb_beater *b = arg;
	uint64_t slack = (uint64_t)b->period_ns / 5;
	prctl(PR_SET_TIMERSLACK, (unsigned long)slack, 0, 0, 0);
	uint64_t next = mono_ns() + (uint64_t)b->period_ns - slack;
	for (;;) {
		struct timespec ts = {.tv_sec = (time_t)(next / 1000000000u), .tv_nsec = (long)(next % 1000000000u)};
		// FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC time; a stop
		// wakes it at once.
		long r = syscall(SYS_futex, &b->stop, FUTEX_WAIT_BITSET_PRIVATE, 0, &ts, (void *)0, FUTEX_BITSET_MATCH_ANY);
		if (__atomic_load_n(&b->stop, __ATOMIC_ACQUIRE))
			return NULL;
		if (r == 0 || errno != ETIMEDOUT) {
			if (mono_ns() < next)
				continue; // a spurious wake or a signal: not yet
		}
		uint64_t now = mono_ns();
		pthread_mutex_lock(&b->mu);
		store_all(b, now);
		pthread_mutex_unlock(&b->mu);
		__atomic_add_fetch(&b->beats, 1, __ATOMIC_RELAXED);
		next = now + (uint64_t)b->period_ns - slack;
	}
}

hb_beater *hb_beater_start(int64_t period_ns) {
	if (period_ns <= 0) {
		errno = EINVAL;
		return NULL;
	}
	hb_beater *b = calloc(1, sizeof *b);
	if (b == NULL)
		return NULL;
	b->period_ns = period_ns;
	pthread_mutex_init(&b->mu, NULL);
	// Every signal blocked from the thread's first instruction: the
	// process's signals go to the Go runtime's threads.
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 64 * 1024);
	int err = pthread_create(&b->thread, &attr, beat_main, b);
	pthread_attr_destroy(&attr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err != 0) {
		pthread_mutex_destroy(&b->mu);
		free(b);
		errno = err;
		return NULL;
	}
	return b;
}

int hb_beater_set(hb_beater *b, const uintptr_t *words, int n) {
	if (n > HB_BEATER_MAX)
		n = HB_BEATER_MAX;
	if (n < 0)
		n = 0;
	pthread_mutex_lock(&b->mu);
	for (int i = 0; i < n; i++)
		b->words[i] = words[i];
	b->n = n;
	store_all(b, mono_ns());
	pthread_mutex_unlock(&b->mu);
	return n;
}

uint64_t hb_beater_skipped(hb_beater *b) { return __atomic_load_n(&b->skipped, __ATOMIC_RELAXED); }

uint64_t hb_beater_beats(hb_beater *b) { return __atomic_load_n(&b->beats, __ATOMIC_RELAXED); }

void hb_beater_stop(hb_beater *b) {
	__atomic_store_n(&b->stop, 1, __ATOMIC_RELEASE);
	syscall(SYS_futex, &b->stop, FUTEX_WAKE_PRIVATE, 1, (void *)0, (void *)0, 0);
	pthread_join(b->thread, NULL);
	pthread_mutex_destroy(&b->mu);
	free(b);
}
