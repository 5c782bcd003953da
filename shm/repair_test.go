package shm

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestTruncatedUnderWriter: a table file truncated to 0 under the writer
// does not kill it with SIGBUS; Check restores the size and the contents,
// and a reader's mapping works again.
func TestTruncatedUnderWriter(t *testing.T) {
	dir := t.TempDir()
	w, err := Create("hb", Options{Slots: 4, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(true)
	i := mustAlloc(t, w, "rx")
	w.Spawned(i, 77, 1, 5, StateRunning, 0)
	if err := os.Truncate(w.Path(), 0); err != nil {
		t.Fatal(err)
	}
	// Every kind of store into the truncated mapping.
	w.Beat()
	w.SetState(i, StateRunning)
	j := mustAlloc(t, w, "tx")
	w.Spawned(j, 78, 1, 6, StateRunning, 0)
	if !w.ClearPID(j, 78) {
		t.Error("ClearPID on a truncated table = false")
	}
	w.RecordExit(j, 78, 0, 1, StateExited)
	if w.PID(i) != 77 || w.PID(j) != 0 {
		t.Errorf("writer's view: pid %d %d, want 77 0", w.PID(i), w.PID(j))
	}
	notes, err := w.Check()
	if err != nil || len(notes) != 1 || !strings.Contains(notes[0], "truncated") {
		t.Fatalf("Check = %q, %v; want one note about the truncation", notes, err)
	}
	r, err := OpenPath(w.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if s := r.Snapshot(i); s.PID != 77 || s.Name != "rx" || s.StartTime != 5 {
		t.Errorf("restored slot %d = %+v", i, s)
	}
	if s := r.Snapshot(j); s.PID != 0 || s.Name != "tx" || s.State != StateExited || s.Exits != 1 {
		t.Errorf("restored slot %d = %+v", j, s)
	}
	if notes, err := w.Check(); len(notes) != 0 || err != nil {
		t.Errorf("second Check = %q, %v", notes, err)
	}
}

// TestNameRemovedUnderWriter: Check publishes the table again under its
// name; a reader of the removed file and a reader of the new one both see
// later updates.
func TestNameRemovedUnderWriter(t *testing.T) {
	dir := t.TempDir()
	w, err := Create("hb", Options{Slots: 4, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		w.Close(true)
		w.Unlink()
	}()
	i := mustAlloc(t, w, "rx")
	w.Spawned(i, 77, 1, 5, StateRunning, 0)
	old, err := OpenPath(w.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := os.Remove(w.Path()); err != nil {
		t.Fatal(err)
	}
	notes, err := w.Check()
	if err != nil || len(notes) != 1 || !strings.Contains(notes[0], "removed") {
		t.Fatalf("Check = %q, %v; want one note about the removed name", notes, err)
	}
	cur, err := OpenPath(w.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	if cur.PID(i) != 77 {
		t.Errorf("new file: pid %d, want 77", cur.PID(i))
	}
	if !w.ClearPID(i, 77) {
		t.Fatal("ClearPID = false")
	}
	w.RecordExit(i, 77, 9, 1, StateExited)
	for _, r := range []*Table{old, cur} {
		if s := r.Snapshot(i); s.PID != 0 || s.LastPID != 77 || s.Exits != 1 {
			t.Errorf("after the exit: %+v", s)
		}
	}
	if notes, err := w.Check(); len(notes) != 0 || err != nil {
		t.Errorf("second Check = %q, %v", notes, err)
	}
	// A file planted under the name is reported, not touched.
	if err := os.Remove(w.Path()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(w.Path(), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(w.Path())
	if _, err := w.Check(); err == nil || !strings.Contains(err.Error(), "names another file") {
		t.Errorf("Check with another file at the name: %v", err)
	}
}

// TestCreateNoSpace: a table that does not fit in its file system fails at
// Create with ErrNoSpace, not with SIGBUS on a later store. The file system is
// a 64 KiB tmpfs mounted for the test.
func TestCreateNoSpace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=64k,mode=0755"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	_, err := Create("hb", Options{Slots: 4096, Dir: dir}) // 512 KiB
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Create of a 512 KiB table on a 64 KiB tmpfs: %v, want ErrNoSpace naming %s", err, dir)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
	w, err := Create("hb", Options{Slots: 64, Dir: dir})
	if err != nil {
		t.Fatalf("a table that fits: %v", err)
	}
	w.Close(true)
	if _, err := os.Stat(filepath.Join(dir, "hb")); err != nil {
		t.Error(err)
	}
}
