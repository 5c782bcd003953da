//go:build !linux

package connector

import (
	"fmt"
	"runtime"
)

// Watcher reports the exit of watched processes. It is implemented on Linux
// only; elsewhere NewWatcher fails.
type Watcher struct{}

var errNotLinux = fmt.Errorf("connector: %w: not implemented on %s/%s", ErrUnavailable, runtime.GOOS, runtime.GOARCH)

// Available reports why the proc connector cannot be used: it is Linux only.
func Available() error { return errNotLinux }

// TraceAvailable reports why the exit tracepoint cannot be used: it is
// Linux only.
func TraceAvailable() error {
	return fmt.Errorf("connector: %w: not implemented on %s/%s", ErrTraceUnavailable, runtime.GOOS, runtime.GOARCH)
}

// NewWatcher fails: not implemented on this platform.
func NewWatcher(Options) (*Watcher, error) { return nil, errNotLinux }

// Watch fails: not implemented on this platform.
func (*Watcher) Watch(key uint64, pid, pidfd int) error { return errNotLinux }

// WatchChild fails: not implemented on this platform.
func (*Watcher) WatchChild(key uint64, pid, pidfd int) error { return errNotLinux }

// Unwatch does nothing on this platform.
func (*Watcher) Unwatch(key uint64) {}

// Exits returns nil on this platform.
func (*Watcher) Exits() <-chan Exit { return nil }

// Active reports no detector on this platform.
func (*Watcher) Active() (connector, pidfd bool) { return false, false }

// Traced reports no tracepoint on this platform.
func (*Watcher) Traced() bool { return false }

// Stats returns zero counters on this platform.
func (*Watcher) Stats() Stats { return Stats{} }

// Close does nothing on this platform.
func (*Watcher) Close() error { return nil }
