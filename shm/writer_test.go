package shm

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestCreateNew(t *testing.T) {
	old := syscall.Umask(0o077) // the table must still be 0644
	defer syscall.Umask(old)
	dir := t.TempDir()
	w, err := Create("hb", Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(true)
	if w.Adopted() {
		t.Error("Adopted() = true for a new table")
	}
	if w.Len() != DefaultSlots {
		t.Errorf("Len() = %d, want %d", w.Len(), DefaultSlots)
	}
	if w.Path() != filepath.Join(dir, "hb") {
		t.Errorf("Path() = %q", w.Path())
	}
	fi, err := os.Lstat(w.Path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != 0o644 {
		t.Errorf("mode %v, want -rw-r--r--", fi.Mode())
	}
	if fi.Size() != HeaderSize+DefaultSlots*SlotSize {
		t.Errorf("size %d", fi.Size())
	}
	// Only the table itself: no temporary file left behind.
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory holds %d entries, want 1", len(ents))
	}
	h := w.Header()
	if h.WriterPID != uint32(os.Getpid()) || h.CreatedNs == 0 || h.WriterBeatNs == 0 || h.Flags != 0 {
		t.Errorf("header %+v", h)
	}
	beat := h.WriterBeatNs
	w.Beat()
	if got := w.Header().WriterBeatNs; got < beat {
		t.Errorf("Beat went back from %d to %d", beat, got)
	}
	w.SetHeaderFlags(FlagConnector)
	if got := w.Header().Flags; got != FlagConnector {
		t.Errorf("flags %#x", got)
	}
}

// TestCreateNamedTemp: without O_TMPFILE the table is built under a
// temporary name that is gone once the table is published.
func TestCreateNamedTemp(t *testing.T) {
	dir := t.TempDir()
	h := fixedHooks()
	h.noTmpfile = true
	w, err := Create("hb", Options{Slots: 2, Dir: dir, hooks: h})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(true)
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != "hb" {
		t.Errorf("directory holds %v, want only hb", ents)
	}
	if fi, err := os.Lstat(w.Path()); err != nil || fi.Mode() != 0o644 {
		t.Errorf("table: %v, %v", fi, err)
	}
	// Publishing never replaces an existing table: a second creator adopts.
	h2 := fixedHooks()
	h2.noTmpfile = true
	if _, err := Create("hb", Options{Slots: 2, Dir: dir, hooks: h2}); !errors.Is(err, ErrBusy) {
		t.Errorf("second Create: %v, want ErrBusy", err)
	}
}

func TestCreateSlotsRange(t *testing.T) {
	for _, n := range []int{-1, MaxSlots + 1} {
		if _, err := Create("hb", Options{Slots: n, Dir: t.TempDir()}); err == nil {
			t.Errorf("Create with %d slots: no error", n)
		}
	}
}

func TestAllocFreeReuse(t *testing.T) {
	w := newWriter(t, 4)
	r := openReader(t, w)
	a, b, c := mustAlloc(t, w, "a"), mustAlloc(t, w, "b"), mustAlloc(t, w, "c")
	if a != 0 || b != 1 || c != 2 {
		t.Fatalf("indexes %d %d %d", a, b, c)
	}
	if again := mustAlloc(t, w, "b"); again != b {
		t.Errorf("Alloc(b) again = %d, want %d", again, b)
	}
	s := r.Snapshot(b)
	if s != (Slot{Index: b, State: StateStopped, LastStatus: -1, ChangedNs: s.ChangedNs, Name: "b"}) || s.ChangedNs == 0 {
		t.Errorf("new slot: %+v", s)
	}
	w.Spawned(a, 100, 1, 5, StateRunning, 0)
	if err := w.Free(a); !errors.Is(err, ErrRunning) {
		t.Errorf("Free(running) = %v, want ErrRunning", err)
	}
	if r.PID(a) != 100 {
		t.Error("Free(running) changed the slot")
	}
	w.RecordExit(a, 100, 0, MonotonicNs(), StateStopped)
	if err := w.Free(a); err != nil {
		t.Fatalf("Free(a): %v", err)
	}
	if err := w.Free(a); err != nil {
		t.Errorf("Free(a) twice: %v", err)
	}
	if s := r.Snapshot(a); s != (Slot{Index: a}) {
		t.Errorf("freed slot: %+v", s)
	}
	if _, err := r.Lookup("a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup(freed) = %v, want ErrNotFound", err)
	}
	if _, err := w.Lookup("a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Writer.Lookup(freed) = %v, want ErrNotFound", err)
	}
	// A new name takes a slot never used first; the released one is reused
	// only when no other is left, and then starts fresh.
	if d := mustAlloc(t, w, "d"); d != 3 {
		t.Errorf("Alloc(d) = %d, want the never used 3", d)
	}
	if e := mustAlloc(t, w, "e"); e != a {
		t.Errorf("Alloc(e) = %d, want the released %d (the last one left)", e, a)
	}
	if s := r.Snapshot(a); s.Generation != 0 || s.Exits != 0 || s.LastStatus != -1 || s.Name != "e" {
		t.Errorf("reused slot: %+v", s)
	}
	if _, err := w.Alloc("f"); !errors.Is(err, ErrFull) {
		t.Errorf("Alloc on a full table = %v, want ErrFull", err)
	}
	if i, err := w.Alloc("c"); err != nil || i != c {
		t.Errorf("Alloc(existing) on a full table = %d, %v", i, err)
	}
	for _, i := range []int{-1, 4} {
		if err := w.Free(i); !errors.Is(err, ErrIndex) {
			t.Errorf("Free(%d) = %v, want ErrIndex", i, err)
		}
	}
	for _, name := range []string{"", "a/b", strings.Repeat("x", 48)} {
		if _, err := w.Alloc(name); !errors.Is(err, ErrBadName) {
			t.Errorf("Alloc(%q) = %v, want ErrBadName", name, err)
		}
	}
}

func TestSpawnExitProtocol(t *testing.T) {
	w := newWriter(t, 2)
	r := openReader(t, w)
	i := mustAlloc(t, w, "rx")
	w.Spawned(i, 100, 1, 777, StateRunning, SlotAdopted)
	if got := r.PID(i); got != 100 {
		t.Fatalf("PID = %d, want 100", got)
	}
	if w.ClearPID(i, 99) {
		t.Error("ClearPID with a stale pid succeeded")
	}
	if w.ClearPID(i, 0) || w.ClearPID(-1, 100) || w.ClearPID(2, 100) {
		t.Error("ClearPID with pid 0 or a bad index succeeded")
	}
	if got := r.PID(i); got != 100 {
		t.Fatalf("PID after stale ClearPID = %d", got)
	}
	if !w.ClearPID(i, 100) {
		t.Fatal("ClearPID(100) = false")
	}
	if r.PID(i) != 0 {
		t.Fatal("PID not 0 after ClearPID")
	}
	// ClearPID alone leaves the rest of the slot for RecordExit.
	if s := r.Snapshot(i); s.State != StateRunning || s.Exits != 0 {
		t.Errorf("after ClearPID: %+v", s)
	}
	w.RecordExit(i, 100, 137, 42, StateBackoff)
	want := Slot{Index: i, State: StateBackoff, Flags: SlotAdopted, Generation: 1, StartTime: 777, Exits: 1,
		LastStatus: 137, LastPID: 100, LastExitNs: 42, Name: "rx"}
	s := r.Snapshot(i)
	want.ChangedNs = s.ChangedNs
	if s != want {
		t.Errorf("after exit:\n got %+v\nwant %+v", s, want)
	}
	// RecordExit without ClearPID clears the PID itself.
	w.Spawned(i, 200, 2, 778, StateRunning, 0)
	w.RecordExit(i, 200, 0, 43, StateExited)
	if s := r.Snapshot(i); s.PID != 0 || s.State != StateExited || s.Exits != 2 || s.LastPID != 200 {
		t.Errorf("after second exit: %+v", s)
	}
	// A late exit of an old incarnation leaves the newer one's PID and state.
	w.Spawned(i, 300, 3, 779, StateRunning, 0)
	w.Spawned(i, 400, 4, 780, StateRunning, 0)
	w.RecordExit(i, 300, 9, 44, StateBackoff)
	if s := r.Snapshot(i); s.PID != 400 || s.State != StateRunning || s.Exits != 3 || s.LastPID != 300 {
		t.Errorf("after a stale exit: %+v", s)
	}
	w.SetState(i, StateStopping)
	w.SetFlags(i, SlotAdopted)
	if s := r.Snapshot(i); s.State != StateStopping || s.Flags != SlotAdopted || s.PID != 400 {
		t.Errorf("after SetState/SetFlags: %+v", s)
	}
}

// TestMovePID: a new main process takes the PID word from the old one in
// one compare-and-swap, with its start time; a word the old one's exit
// cleared stays 0, and another incarnation's slot is left alone.
func TestMovePID(t *testing.T) {
	w := newWriter(t, 2)
	r := openReader(t, w)
	i := mustAlloc(t, w, "rx")
	w.Spawned(i, 100, 1, 777, StateRunning, 0)
	if w.MovePID(i, 100, 101, 2, 778) {
		t.Error("MovePID for another generation succeeded")
	}
	if w.MovePID(i, 99, 101, 1, 778) {
		t.Error("MovePID from a stale pid succeeded")
	}
	if !w.MovePID(i, 100, 101, 1, 778) {
		t.Fatal("MovePID(100 → 101) = false")
	}
	if s := r.Snapshot(i); s.PID != 101 || s.StartTime != 778 || s.Generation != 1 || s.State != StateRunning {
		t.Errorf("after MovePID: %+v", s)
	}
	// Old exited first: the word stays 0, the start time is the new one's.
	w.ClearPID(i, 101)
	if w.MovePID(i, 101, 102, 1, 779) || r.PID(i) != 0 {
		t.Errorf("MovePID over a cleared word: pid %d, want 0", r.PID(i))
	}
	// Not published yet (old 0): only the start time changes.
	if w.MovePID(i, 0, 103, 1, 780) || r.PID(i) != 0 || r.Snapshot(i).StartTime != 780 {
		t.Errorf("MovePID of an unpublished pid: %+v", r.Snapshot(i))
	}
	if !w.Publish(i, 103, 1) || r.PID(i) != 103 {
		t.Errorf("Publish after MovePID: pid %d", r.PID(i))
	}
}

func TestWriterPanics(t *testing.T) {
	w := newWriter(t, 2)
	i := mustAlloc(t, w, "rx")
	tests := []struct {
		name string
		f    func()
	}{
		{"index out of range", func() { w.Spawned(2, 1, 1, 1, StateRunning, 0) }},
		{"negative index", func() { w.SetState(-1, StateRunning) }},
		{"free slot", func() { w.SetFlags(1, 0) }},
		{"state free", func() { w.SetState(i, StateFree) }},
		{"state out of range", func() { w.RecordExit(i, 1, 0, 0, State(99)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			tt.f()
		})
	}
}

func TestReader(t *testing.T) {
	w := newWriter(t, 8)
	r := openReader(t, w)
	if r.Len() != 8 {
		t.Errorf("Len = %d", r.Len())
	}
	mustAlloc(t, w, "a")
	b := mustAlloc(t, w, "b")
	c := mustAlloc(t, w, "c")
	w.Free(b)
	w.Spawned(c, 33, 1, 1, StateRunning, 0)
	if i, err := r.Lookup("c"); err != nil || i != c {
		t.Errorf("Lookup(c) = %d, %v", i, err)
	}
	for _, name := range []string{"b", "", "cc", strings.Repeat("c", 60)} {
		if i, err := r.Lookup(name); !errors.Is(err, ErrNotFound) || i != -1 {
			t.Errorf("Lookup(%q) = %d, %v; want -1, ErrNotFound", name, i, err)
		}
	}
	var names []string
	for s := range r.Used() {
		names = append(names, s.Name)
	}
	if strings.Join(names, ",") != "a,c" {
		t.Errorf("Used: %v", names)
	}
	for s := range r.Used() {
		if s.Name != "a" {
			t.Errorf("Used continued after break: %v", s.Name)
		}
		break
	}
	for _, i := range []int{-1, 8, 1 << 40} {
		if r.PID(i) != 0 {
			t.Errorf("PID(%d) != 0", i)
		}
		if s := r.Snapshot(i); s != (Slot{Index: i}) {
			t.Errorf("Snapshot(%d) = %+v", i, s)
		}
	}
	if s, ok := r.TrySnapshot(c, 10); !ok || s.PID != 33 {
		t.Errorf("TrySnapshot = %+v, %v", s, ok)
	}
	// A slot left mid-update (odd seq) by a dead writer: TrySnapshot gives up.
	seq := (*uint32)(unsafe.Add((*w.files.Load())[0].base, slotOff(c)+slSeq)) // in the file, not the writer's shadow
	orig := *seq
	*seq = orig | 1
	if _, ok := r.TrySnapshot(c, 100); ok {
		t.Error("TrySnapshot of a slot with an odd seq succeeded")
	}
	*seq = orig
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if r.PID(c) != 0 || r.Len() != 0 {
		t.Error("closed table still answers")
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestReaderOutlivesWriter: a peer's mapping stays valid and shows the
// writer's last word after the writer closes and the name is removed.
func TestReaderOutlivesWriter(t *testing.T) {
	w, err := Create("hb", Options{Slots: 2, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	r := openReader(t, w)
	i := mustAlloc(t, w, "rx")
	w.Spawned(i, 77, 1, 1, StateRunning, 0)
	if err := w.Close(false); err != nil {
		t.Fatal(err)
	}
	if got := r.Header().WriterPID; got != uint32(os.Getpid()) {
		t.Errorf("writer_pid after Close(false) = %d", got)
	}
	if err := w.Unlink(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(w.Path()); !os.IsNotExist(err) {
		t.Errorf("table still there after Unlink: %v", err)
	}
	if r.PID(i) != 77 {
		t.Error("reader lost the slot")
	}
	if err := w.Close(true); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := w.Alloc("x"); !errors.Is(err, ErrClosed) {
		t.Errorf("Alloc after Close = %v, want ErrClosed", err)
	}
}

func TestCloseClean(t *testing.T) {
	w, err := Create("hb", Options{Slots: 2, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	r := openReader(t, w)
	if err := w.Close(true); err != nil {
		t.Fatal(err)
	}
	if got := r.Header().WriterPID; got != 0 {
		t.Errorf("writer_pid after Close(true) = %d", got)
	}
}

func TestBusy(t *testing.T) {
	dir := t.TempDir()
	w, err := Create("hb", Options{Slots: 2, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	_, err = Create("hb", Options{Slots: 2, Dir: dir})
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "writer_pid") {
		t.Errorf("second writer: %v, want ErrBusy naming the writer_pid", err)
	}
	w.Close(false)
	w2, err := Create("hb", Options{Slots: 2, Dir: dir})
	if err != nil {
		t.Fatalf("after the first writer closed: %v", err)
	}
	w2.Close(true)
}

func TestAdopt(t *testing.T) {
	dir := t.TempDir()
	w, err := Create("hb", Options{Slots: 8, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	a, b, c := mustAlloc(t, w, "a"), mustAlloc(t, w, "b"), mustAlloc(t, w, "c")
	w.Spawned(b, 4242, 3, 99, StateRunning, 0)
	w.Free(a)
	before := map[int]Slot{}
	for s := range w.Used() {
		before[s.Index] = s
	}
	created := w.Header().CreatedNs
	w.Close(false) // the plugin dies or restarts

	w2, err := Create("hb", Options{Slots: 2, Dir: dir, hooks: fixedHooks()}) // a different count is ignored
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close(true)
	if !w2.Adopted() {
		t.Error("Adopted() = false")
	}
	if w2.Len() != 8 {
		t.Errorf("Len after adopt = %d, want the existing 8", w2.Len())
	}
	h := w2.Header()
	if h.CreatedNs != created || h.WriterPID != 4242 || h.WriterBeatNs != 5_000_001_000 {
		t.Errorf("header after adopt %+v (created was %d)", h, created)
	}
	for s := range w2.Used() {
		if s != before[s.Index] {
			t.Errorf("slot %d changed by adopt:\n got %+v\nwant %+v", s.Index, s, before[s.Index])
		}
		delete(before, s.Index)
	}
	if len(before) != 0 {
		t.Errorf("slots lost by adopt: %v", before)
	}
	if i := mustAlloc(t, w2, "b"); i != b {
		t.Errorf("Alloc(b) after adopt = %d, want %d", i, b)
	}
	if i := mustAlloc(t, w2, "c"); i != c {
		t.Errorf("Alloc(c) after adopt = %d, want %d", i, c)
	}
	if i := mustAlloc(t, w2, "d"); i == a {
		t.Errorf("Alloc(d) after adopt = %d, the released slot, while slots never used are left", i)
	}
	if !w2.ClearPID(b, 4242) {
		t.Error("ClearPID of the adopted pid failed")
	}
}

// TestAdoptRepairs: a writer that died inside an update leaves an odd seq or
// a half-freed slot; the next writer repairs both so readers never spin.
func TestAdoptRepairs(t *testing.T) {
	img := image(t, 4)           // slot 0 "rx"
	put32(img, 128+8, 5)         // slot 0 seq odd: died mid-update
	put32(img, 128+128+64, 0x41) // slot 1: free but a name byte left over
	put32(img, 128+128+8, 3)
	p := writeFile(t, t.TempDir(), "hb", img, 0o644)
	w, err := Create("hb", Options{Dir: filepath.Dir(p)})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(true)
	r := openReader(t, w)
	if s, ok := r.TrySnapshot(0, 10); !ok || s.Name != "rx" {
		t.Errorf("slot 0 after adopt: %+v, %v", s, ok)
	}
	if s, ok := r.TrySnapshot(1, 10); !ok || s != (Slot{Index: 1}) {
		t.Errorf("slot 1 after adopt: %+v, %v", s, ok)
	}
	if seq := atomicSeq(r, 0); seq != 6 {
		t.Errorf("slot 0 seq %d, want 6", seq)
	}
}

func atomicSeq(r *Table, i int) uint32 { return *r.u32(slotOff(i) + slSeq) }

// TestBadFiles: readers and the writer refuse files that are not hb tables
// or that others could tamper with, each with its own error.
func TestBadFiles(t *testing.T) {
	tests := []struct {
		name   string
		mutate func([]byte) []byte
		mode   os.FileMode
		want   error
	}{
		{"bad magic", func(b []byte) []byte { b[0] = 'X'; return b }, 0o644, ErrBadMagic},
		{"zero file", func(b []byte) []byte { return make([]byte, len(b)) }, 0o644, ErrBadMagic},
		{"version 2", func(b []byte) []byte { put32(b, 8, 2); return b }, 0o644, ErrVersion},
		{"header_size", func(b []byte) []byte { put32(b, 12, 64); return b }, 0o644, ErrLayout},
		{"slot_size", func(b []byte) []byte { put32(b, 16, 64); return b }, 0o644, ErrLayout},
		{"slot_count 0", func(b []byte) []byte { put32(b, 20, 0); return b }, 0o644, ErrLayout},
		{"slot_count vs size", func(b []byte) []byte { put32(b, 20, 5); return b }, 0o644, ErrLayout},
		{"truncated", func(b []byte) []byte { return b[:len(b)-1] }, 0o644, ErrLayout},
		{"shorter than header", func(b []byte) []byte { return b[:100] }, 0o644, ErrLayout},
		{"empty", func(b []byte) []byte { return nil }, 0o644, ErrLayout},
		{"group-writable", nil, 0o664, ErrMode},
		{"world-writable", nil, 0o646, ErrMode},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := image(t, 4)
			if tt.mutate != nil {
				b = tt.mutate(b)
			}
			dir := t.TempDir()
			p := writeFile(t, dir, "hb", b, tt.mode)
			if _, err := OpenPath(p); !errors.Is(err, tt.want) || !strings.Contains(err.Error(), p) {
				t.Errorf("OpenPath: %v, want %v naming %s", err, tt.want, p)
			}
			if _, err := Create("hb", Options{Dir: dir}); !errors.Is(err, tt.want) || !strings.Contains(err.Error(), p) {
				t.Errorf("Create: %v, want %v naming %s", err, tt.want, p)
			}
		})
	}

	t.Run("symlink", func(t *testing.T) {
		dir := t.TempDir()
		target := writeFile(t, dir, "real", image(t, 4), 0o644)
		link := filepath.Join(dir, "hb")
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		if _, err := OpenPath(link); !errors.Is(err, ErrSymlink) {
			t.Errorf("OpenPath: %v, want ErrSymlink", err)
		}
		if _, err := Create("hb", Options{Dir: dir}); !errors.Is(err, ErrSymlink) {
			t.Errorf("Create: %v, want ErrSymlink", err)
		}
		// A dangling symlink must not be followed to create a file either.
		os.Remove(target)
		if _, err := Create("hb", Options{Dir: dir}); !errors.Is(err, ErrSymlink) {
			t.Errorf("Create over a dangling symlink: %v, want ErrSymlink", err)
		}
		if _, err := os.Stat(target); !os.IsNotExist(err) {
			t.Errorf("Create followed the dangling symlink: %v", err)
		}
	})

	t.Run("fifo", func(t *testing.T) {
		dir := t.TempDir()
		p := filepath.Join(dir, "hb")
		if err := unix.Mkfifo(p, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := OpenPath(p); !errors.Is(err, ErrNotRegular) {
			t.Errorf("OpenPath: %v, want ErrNotRegular", err)
		}
		if _, err := Create("hb", Options{Dir: dir}); !errors.Is(err, ErrNotRegular) {
			t.Errorf("Create: %v, want ErrNotRegular", err)
		}
	})

	t.Run("missing", func(t *testing.T) {
		if _, err := OpenPath(filepath.Join(t.TempDir(), "hb")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("OpenPath: %v, want ErrNotExist", err)
		}
	})

	t.Run("owner", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root to chown a table to another user")
		}
		dir := t.TempDir()
		p := writeFile(t, dir, "hb", image(t, 4), 0o644)
		if err := os.Chown(p, 65534, 65534); err != nil {
			t.Skipf("chown: %v", err)
		}
		if _, err := Create("hb", Options{Dir: dir}); !errors.Is(err, ErrOwner) {
			t.Errorf("Create: %v, want ErrOwner", err)
		}
		// Anyone may create a file in /dev/shm first: a reader accepts
		// only root and the owner it is told of.
		if r, err := OpenPath(p); !errors.Is(err, ErrOwner) || !strings.Contains(err.Error(), "uid 65534") {
			t.Errorf("OpenPath of another user's table: %v, want ErrOwner naming uid 65534", err)
			if err == nil {
				r.Close()
			}
		}
		r, err := OpenPathOwned(p, 65534)
		if err != nil {
			t.Errorf("OpenPathOwned(65534) of uid 65534's table: %v", err)
		} else {
			r.Close()
		}
	})
}

// TestAdoptBadSlots: an adopted table whose used slots hold invalid or
// duplicate names is refused.
func TestAdoptBadSlots(t *testing.T) {
	for name, mutate := range map[string]func([]byte){
		"bad name":  func(b []byte) { b[128+64] = '/' },
		"duplicate": func(b []byte) { copy(b[256:384], b[128:256]) },
	} {
		t.Run(name, func(t *testing.T) {
			b := image(t, 2)
			mutate(b)
			dir := t.TempDir()
			writeFile(t, dir, "hb", b, 0o644)
			if _, err := Create("hb", Options{Dir: dir}); !errors.Is(err, ErrLayout) {
				t.Errorf("Create: %v, want ErrLayout", err)
			}
		})
	}
}
