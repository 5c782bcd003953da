//go:build cgo

package shim

/*
#include <stdlib.h>
#include "beat_linux.h"
*/
import "C"

import (
	"fmt"
	"time"
	"unsafe"
)

// nativeBeat is the thread that refreshes writer_beat_ns (beat_linux.c): a
// plain POSIX thread, unknown to the Go runtime, that sleeps on a futex until
// the next period and stores the time. A Go timer firing once a second woke
// three or four of the runtime's threads each time (its sleeping scheduler
// thread, the monitor thread that sleeps until the next timer, a spinning
// thread looking for work): about seven context switches a beat, where this
// thread costs one wake. It stops with the process, so a dead or stopped
// plugin stops beating, as before.
type nativeBeat struct{ b *C.hb_beater }

func startNativeBeat(period time.Duration) (*nativeBeat, error) {
	b, err := C.hb_beater_start(C.int64_t(period.Nanoseconds()))
	if b == nil {
		return nil, fmt.Errorf("start the beat thread: %w", err)
	}
	return &nativeBeat{b: b}, nil
}

// set makes the thread beat into words (shm.Writer.BeatWords) and beats
// into them at once.
func (n *nativeBeat) set(words []uintptr) {
	if len(words) == 0 {
		C.hb_beater_set(n.b, nil, 0)
		return
	}
	arr := (*C.uintptr_t)(C.malloc(C.size_t(len(words)) * C.size_t(unsafe.Sizeof(C.uintptr_t(0)))))
	defer C.free(unsafe.Pointer(arr))
	s := unsafe.Slice(arr, len(words))
	for i, w := range words {
		s[i] = C.uintptr_t(w)
	}
	C.hb_beater_set(n.b, arr, C.int(len(words)))
}

// beats is the number of the thread's passes; skipped the stores it left
// out because a word's page could not be written.
func (n *nativeBeat) beats() uint64   { return uint64(C.hb_beater_beats(n.b)) }
func (n *nativeBeat) skipped() uint64 { return uint64(C.hb_beater_skipped(n.b)) }

// stop ends the thread and waits for it; call it before the table is closed.
func (n *nativeBeat) stop() { C.hb_beater_stop(n.b) }
