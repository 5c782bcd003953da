package shm

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/table-v1.golden from the current code")

const goldenFile = "testdata/table-v1.golden"

// goldenTable builds the table behind testdata/table-v1.golden: 4 slots,
// fixed clocks and writer_pid 4242, both detector flags, and
//
//	slot 0 "rx"       running, pid 1001, generation 1
//	slot 1 "tx"       backoff after pid 1002 was killed (137), adopted flag
//	slot 2 "ips-0.a"  hung: pid 1003 missed its watchdog deadline (pid 0, state 8)
//	slot 3            free again after "tmp" came and went (seq 4, its name's hash at 112)
//
// and, in the header, layout_seq 5 (four allocations, one release), writer_alive
// 4243 (a TID; MarkAlive with the hook's value) and changes 6 (five pid stores, then MarkAlive).
func goldenTable(t *testing.T) []byte {
	t.Helper()
	w, err := Create("golden", Options{Slots: 4, Dir: t.TempDir(), hooks: fixedHooks()})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(false)
	rx := mustAlloc(t, w, "rx")
	tx := mustAlloc(t, w, "tx")
	ips := mustAlloc(t, w, "ips-0.a")
	tmp := mustAlloc(t, w, "tmp")
	if rx != 0 || tx != 1 || ips != 2 || tmp != 3 {
		t.Fatalf("indexes %d %d %d %d, want 0 1 2 3", rx, tx, ips, tmp)
	}
	if err := w.Free(tmp); err != nil {
		t.Fatal(err)
	}
	w.SetHeaderFlags(FlagConnector | FlagPidfd)
	w.Spawned(rx, 1001, 1, 123456, StateRunning, 0)
	w.Spawned(tx, 1002, 1, 123457, StateRunning, SlotAdopted)
	if !w.ClearPID(tx, 1002) {
		t.Fatal("ClearPID(tx, 1002) = false")
	}
	w.RecordExit(tx, 1002, 137, 9_999_000, StateBackoff)
	w.Spawned(ips, 1003, 1, 123458, StateRunning, 0)
	if !w.ClearPID(ips, 1003) || !w.SetStateOf(ips, StateHung, 1) {
		t.Fatal("ips-0.a could not be made hung")
	}
	if err := w.MarkAlive(); err != nil {
		t.Fatal(err)
	}
	w.Beat()
	b, err := os.ReadFile(w.Path())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestGolden pins the bytes of a table with known contents, so the layout
// cannot drift. Run `go test ./shm -run Golden -update` after an intended
// ABI change (which also needs a new Version).
func TestGolden(t *testing.T) {
	got := goldenTable(t)
	if *update {
		if err := os.WriteFile(goldenFile, got, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s (%d bytes)", goldenFile, len(got))
	}
	want, err := os.ReadFile(goldenFile)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if bytes.Equal(got, want) {
		return
	}
	if len(got) != len(want) {
		t.Errorf("table is %d bytes, golden %d", len(got), len(want))
	}
	diffs := 0
	for off := 0; off+4 <= min(len(got), len(want)) && diffs < 20; off += 4 {
		if g, w := get32(got, off), get32(want, off); g != w {
			t.Errorf("%s: word at %s: got %#08x, want %#08x", goldenFile, where(off), g, w)
			diffs++
		}
	}
}

// where names a byte offset: "header+24" or "slot 2+52".
func where(off int) string {
	if off < HeaderSize {
		return fmt.Sprintf("header+%d", off)
	}
	return fmt.Sprintf("slot %d+%d", (off-HeaderSize)/SlotSize, (off-HeaderSize)%SlotSize)
}

// TestLayoutOffsets checks every field of the ABI v1 tables at its literal
// offset in the file, independently of the constants in abi.go.
func TestLayoutOffsets(t *testing.T) {
	w, err := Create("layout", Options{Slots: 3, Dir: t.TempDir(), hooks: fixedHooks()})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(false)
	mustAlloc(t, w, "first")
	i := mustAlloc(t, w, "the-service.1")
	if i != 1 {
		t.Fatalf("second Alloc = %d, want 1", i)
	}
	w.SetHeaderFlags(FlagPidfd)
	w.Spawned(i, 0x0a0b0c0d, 0x1111111122222222, 0x3333333344444444, StateRunning, SlotAdopted)
	w.RecordExit(i, 0x0a0b0c0d, -7, 0x5555555566666666, StateFatal) // changed_ns from the hook
	w.Spawned(i, 0x01020304, 0x1111111122222223, 0x3333333344444445, StateStopping, 0)
	w.Beat()

	b, err := os.ReadFile(w.Path())
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 128+3*128 {
		t.Fatalf("file size %d, want %d", len(b), 128+3*128)
	}
	const s = 128 + 128*1 // slot 1
	fields := []struct {
		name string
		off  int
		size int // 4 or 8
		want uint64
	}{
		{"header version", 8, 4, 1},
		{"header header_size", 12, 4, 128},
		{"header slot_size", 16, 4, 128},
		{"header slot_count", 20, 4, 3},
		{"header writer_pid", 24, 4, 4242},
		{"header flags", 28, 4, 2},
		{"header created_ns", 32, 8, 1_700_000_000_123_456_789},
		// mono hook: create 5e9+1000; allocs +2000,+3000; spawn +4000; exit +5000; spawn +6000; beat +7000.
		{"header writer_beat_ns", 40, 8, 5_000_007_000},
		{"header layout_seq", 48, 8, 2},   // two allocations
		{"header writer_alive", 56, 4, 0}, // not marked alive
		{"header changes", 60, 4, 3},      // spawn, exit, spawn: three pid stores
		{"slot pid", s + 0, 4, 0x01020304},
		{"slot state", s + 4, 4, uint64(StateStopping)},
		{"slot seq", s + 8, 4, 8}, // alloc, spawn, exit, spawn: 4 updates
		{"slot flags", s + 12, 4, 0},
		{"slot generation", s + 16, 8, 0x1111111122222223},
		{"slot start_time", s + 24, 8, 0x3333333344444445},
		{"slot changed_ns", s + 32, 8, 5_000_006_000},
		{"slot exits", s + 40, 8, 1},
		{"slot last_status", s + 48, 4, uint64(uint32(0xfffffff9))}, // -7
		{"slot last_pid", s + 52, 4, 0x0a0b0c0d},
		{"slot last_exit_ns", s + 56, 8, 0x5555555566666666},
		{"slot 0 last_status (none yet)", 128 + 48, 4, 0xffffffff},
		{"slot 2 state (free)", 128 + 2*128 + 4, 4, 0},
	}
	for _, f := range fields {
		var got uint64
		if f.size == 4 {
			got = uint64(get32(b, f.off))
		} else {
			got = get64(b, f.off)
		}
		if got != f.want {
			t.Errorf("%s at offset %d: got %#x, want %#x", f.name, f.off, got, f.want)
		}
	}
	if m := b[0:8]; string(m) != "HBSHM\x00\x00\x00" {
		t.Errorf("magic at 0: % x", m)
	}
	if z := b[64:128]; !bytes.Equal(z, make([]byte, 64)) {
		t.Errorf("header bytes 64-127 not zero: % x", z)
	}
	wantName := append([]byte("the-service.1"), make([]byte, 48-13)...)
	if n := b[s+64 : s+112]; !bytes.Equal(n, wantName) {
		t.Errorf("slot name at 64-111: %q", n)
	}
	if z := b[s+112 : s+128]; !bytes.Equal(z, make([]byte, 16)) {
		t.Errorf("slot bytes 112-127 not zero: % x", z)
	}
	if n := b[128+64 : 128+112]; !bytes.Equal(n, append([]byte("first"), make([]byte, 43)...)) {
		t.Errorf("slot 0 name: %q", n)
	}
	if z := b[128+2*128 : 128+3*128]; !bytes.Equal(z, make([]byte, 128)) {
		t.Errorf("never used slot 2 is not all zero: % x", z)
	}
}

// TestGoldenReadable reads the golden file back through the reader, so the
// file documents the expected decoding too.
func TestGoldenReadable(t *testing.T) {
	b, err := os.ReadFile(goldenFile)
	if err != nil {
		t.Skipf("no golden file: %v", err)
	}
	r, err := OpenPath(writeFile(t, t.TempDir(), "golden", b, 0o644))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	h := r.Header()
	if h != (Header{Version: 1, HeaderSize: 128, SlotSize: 128, SlotCount: 4, WriterPID: 4242,
		Flags: FlagConnector | FlagPidfd, CreatedNs: 1_700_000_000_123_456_789, WriterBeatNs: h.WriterBeatNs,
		LayoutSeq: 5, WriterAlive: 4243, Changes: 6}) {
		t.Errorf("header: %+v", h)
	}
	var got []string
	for s := range r.Used() {
		got = append(got, fmt.Sprintf("%d %s %d %v gen=%d exits=%d last=%d/%d flags=%d", s.Index, s.Name, s.PID,
			s.State, s.Generation, s.Exits, s.LastStatus, s.LastPID, s.Flags))
	}
	want := []string{
		"0 rx 1001 running gen=1 exits=0 last=-1/0 flags=0",
		"1 tx 0 backoff gen=1 exits=1 last=137/1002 flags=1",
		"2 ips-0.a 0 hung gen=1 exits=0 last=-1/0 flags=0",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("used slots:\n got %q\nwant %q", got, want)
	}
}
