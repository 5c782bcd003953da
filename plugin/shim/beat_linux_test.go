package shim

import (
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/plugin"
)

// TestNativeBeatSkipsTruncated: the beat thread stores into a file mapping,
// keeps going (does not die of SIGBUS, which would kill the test binary)
// while the file is truncated under it, counting the stores it skipped, and
// beats into the file again once it has its size back.
func TestNativeBeatSkipsTruncated(t *testing.T) {
	nb, err := startNativeBeat(5 * time.Millisecond)
	if err != nil {
		t.Skipf("no native beat thread in this build: %v", err)
	}
	defer nb.stop()
	f, err := os.OpenFile(filepath.Join(t.TempDir(), "table"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(4096); err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	word := (*uint64)(unsafe.Pointer(&mem[40]))
	nb.set([]uintptr{uintptr(unsafe.Pointer(word))})
	if atomic.LoadUint64(word) == 0 {
		t.Fatal("set did not beat at once")
	}
	first := atomic.LoadUint64(word)
	waitFor(t, "a beat of the thread", func() bool { return atomic.LoadUint64(word) > first })

	if err := f.Truncate(0); err != nil {
		t.Fatal(err)
	}
	skipped := nb.skipped()
	waitFor(t, "beats skipped on the truncated file", func() bool { return nb.skipped() >= skipped+3 })

	if err := f.Truncate(4096); err != nil {
		t.Fatal(err)
	}
	// The page came back zeroed: a beat shows as a non-zero word.
	waitFor(t, "a beat into the restored file", func() bool { return atomic.LoadUint64(word) != 0 })
}

// TestIdlePluginArmsNoTimer: with its services running and nothing else to
// do, the shim's chores timer is not armed (an idle plugin's only periodic
// wake is the native beat thread), writer_beat_ns still advances, and a
// removed table name is put back without a timer (the table watch).
func TestIdlePluginArmsNoTimer(t *testing.T) {
	h := newHarness(t, connector.DetectPidfd, "")
	if h.s.nbeat == nil {
		t.Skip("built without cgo: writer_beat_ns is beaten on the chores timer")
	}
	if h.s.tableWatch == nil {
		t.Fatal("no table watch")
	}
	h.spawn(plugin.Spec{Name: "idle", Command: []string{"/bin/sleep", "1000"}, UID: -1, GID: -1, Stdout: "null", Stderr: "null"})
	waitFor(t, "the chores timer to stay unarmed", func() bool { return !h.s.choresDue() })

	beat0 := h.s.w.Header().WriterBeatNs
	waitFor(t, "writer_beat_ns to advance", func() bool { return h.s.w.Header().WriterBeatNs > beat0 })
	if h.s.nbeat.beats() == 0 {
		t.Error("writer_beat_ns advanced, but not by the beat thread")
	}

	path := h.s.w.Path()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the table's name to be published again", func() bool {
		_, err := os.Lstat(path)
		return err == nil
	})
	if h.s.choresDue() {
		t.Error("the chores timer is due after the table was put back")
	}
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the truncated table to be restored", func() bool {
		st, err := os.Stat(path)
		return err == nil && st.Size() > 0
	})
}
