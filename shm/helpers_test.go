package shm

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// fixedHooks makes a Writer's output reproducible: writer_pid 4242,
// created_ns fixed, and a CLOCK_MONOTONIC that advances 1000 ns per call.
func fixedHooks() *hooks {
	mono := uint64(5_000_000_000)
	return &hooks{
		pid:   4242,
		alive: 4243,
		mono:  func() uint64 { mono += 1000; return mono },
		real:  func() uint64 { return 1_700_000_000_123_456_789 },
	}
}

// newWriter creates a table of slots slots in a fresh temporary directory and
// closes it at the end of the test.
func newWriter(t testing.TB, slots int) *Writer {
	t.Helper()
	w, err := Create("hb", Options{Slots: slots, Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() { w.Close(true) })
	return w
}

// openReader maps w's table read-only and unmaps it at the end of the test.
func openReader(t testing.TB, w *Writer) *Table {
	t.Helper()
	r, err := OpenPath(w.Path())
	if err != nil {
		t.Fatalf("OpenPath: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// mustAlloc allocates service or fails the test.
func mustAlloc(t testing.TB, w *Writer, service string) int {
	t.Helper()
	i, err := w.Alloc(service)
	if err != nil {
		t.Fatalf("Alloc(%q): %v", service, err)
	}
	return i
}

// image returns the bytes of a valid table with slots slots and one used
// slot ("rx").
func image(t *testing.T, slots int) []byte {
	t.Helper()
	w, err := Create("img", Options{Slots: slots, Dir: t.TempDir(), hooks: fixedHooks()})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	mustAlloc(t, w, "rx")
	b, err := os.ReadFile(w.Path())
	if err != nil {
		t.Fatal(err)
	}
	w.Close(true)
	return b
}

// writeFile writes b to dir/name with exactly mode (regardless of umask).
func writeFile(t *testing.T, dir, name string, b []byte, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func put32(b []byte, off int, v uint32) { binary.NativeEndian.PutUint32(b[off:], v) }
func get32(b []byte, off int) uint32    { return binary.NativeEndian.Uint32(b[off:]) }
func get64(b []byte, off int) uint64    { return binary.NativeEndian.Uint64(b[off:]) }
