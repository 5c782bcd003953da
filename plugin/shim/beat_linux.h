// The native beat thread: writer_beat_ns stored once a period by a thread the
// Go runtime does not know, so an idle plugin wakes one thread a second and
// nothing else (see beat_cgo_linux.go).
#ifndef HB_BEAT_LINUX_H
#define HB_BEAT_LINUX_H

#include <stdint.h>

typedef struct hb_beater hb_beater;

// hb_beater_start starts the thread; period_ns > 0. NULL with errno set on
// failure.
hb_beater *hb_beater_start(int64_t period_ns);
// hb_beater_set replaces the words the thread stores into (at most
// HB_BEATER_MAX; more are ignored) and stores the current time into each of
// them at once. Returns how many it took.
int hb_beater_set(hb_beater *b, const uintptr_t *words, int n);
// hb_beater_skipped counts the stores skipped because a word's page could not
// be written (its table file was truncated under the writer).
uint64_t hb_beater_skipped(hb_beater *b);
// hb_beater_beats counts the thread's passes.
uint64_t hb_beater_beats(hb_beater *b);
// hb_beater_stop stops the thread, waits for it and frees b.
void hb_beater_stop(hb_beater *b);

#define HB_BEATER_MAX 32

#endif
