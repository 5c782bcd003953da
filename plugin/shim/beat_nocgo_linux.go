//go:build !cgo

package shim

import (
	"errors"
	"time"
)

// nativeBeat needs cgo (beat_cgo_linux.go); without it the chores loop
// beats writer_beat_ns on a Go timer.
type nativeBeat struct{}

func startNativeBeat(time.Duration) (*nativeBeat, error) {
	return nil, errors.New("built without cgo: writer_beat_ns is refreshed on a Go timer")
}

func (*nativeBeat) set([]uintptr)   {}
func (*nativeBeat) beats() uint64   { return 0 }
func (*nativeBeat) skipped() uint64 { return 0 }
func (*nativeBeat) stop()           {}
