package shim

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/plugin"
)

// TestRecordRestoresAdoption: a plugin whose table lost its name (removed)
// and then closed without a clean shutdown leaves its running services
// behind; the next plugin creates an empty table, restores them from
// RecordFile in the state directory and adopts them (same PID, start time
// verified) instead of knowing nothing about them.
func TestRecordRestoresAdoption(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	opts := Options{ShmName: "t", ShmDir: dir, StateDir: state, Slots: 16, Detector: connector.DetectPidfd}
	h1 := openHarness(t, opts, dir)
	res := h1.spawn(h1.childSpec("svc", "sleep"))
	record := filepath.Join(state, RecordFile)
	waitFor(t, "the record to name the service's pid", func() bool {
		b, _ := os.ReadFile(record)
		return strings.Contains(string(b), `"pid":`+strconv.Itoa(res.PID))
	})
	if fi, err := os.Stat(record); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("record file: %v %v, want mode 0600", fi, err)
	}
	h1.cancel()
	if err := h1.s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "t")); err != nil {
		t.Fatal(err)
	}
	h2 := openHarness(t, opts, dir)
	if h2.s.w.Adopted() {
		t.Fatal("the table was adopted, but it had been removed")
	}
	if h2.s.adopted != 1 {
		t.Fatalf("adopted %d services, want 1 (from the record)", h2.s.adopted)
	}
	if ev := h2.next(plugin.EventAdopt, "svc"); ev.PID != res.PID {
		t.Errorf("adopt event %+v, want pid %d", ev, res.PID)
	}
	slots, err := h2.s.List(context.Background())
	if err != nil || len(slots) != 1 || slots[0].PID != uint32(res.PID) {
		t.Errorf("List = %+v, %v; want svc with pid %d", slots, err, res.PID)
	}
}

// TestRecordRefusesUnsafeDir: a record in a state directory that group or
// others may write is not believed (anyone could have planted it).
func TestRecordRefusesUnsafeDir(t *testing.T) {
	state := t.TempDir()
	if err := writeRecordFile(state, []byte(`[{"name":"x","slot":0,"pid":1,"generation":1,"start_time":1}]`)); err != nil {
		t.Fatal(err)
	}
	if recs, err := readRecords(state); err != nil || len(recs) != 1 {
		t.Fatalf("readRecords = %+v, %v", recs, err)
	}
	if err := os.Chmod(state, 0o777); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(state, 0o700)
	if _, err := readRecords(state); err == nil || !strings.Contains(err.Error(), state) {
		t.Errorf("readRecords in a world-writable directory: %v, want an error naming it", err)
	}
	if err := writeRecordFile(state, []byte("[]")); err == nil {
		t.Error("writeRecordFile into a world-writable directory succeeded")
	}
}

// TestRecordRetriedAfterFailure: a record that could not be written (here:
// the state directory was briefly group-writable, so it is refused) is
// written at a later beat once it can be, with no spawn or exit to kick it.
func TestRecordRetriedAfterFailure(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	opts := Options{ShmName: "t", ShmDir: dir, StateDir: state, Slots: 16, Detector: connector.DetectPidfd}
	h := openHarness(t, opts, dir)
	record := filepath.Join(state, RecordFile)
	waitFor(t, "the first (empty) record", func() bool { _, err := os.Stat(record); return err == nil })
	if err := os.Chmod(state, 0o770); err != nil {
		t.Fatal(err)
	}
	res := h.spawn(h.childSpec("svc", "sleep"))
	waitFor(t, "the failed write to be noted", h.s.recordRetry.Load)
	if b, _ := os.ReadFile(record); strings.Contains(string(b), `"pid":`+strconv.Itoa(res.PID)) {
		t.Fatalf("the record was written into a group-writable state directory: %s", b)
	}
	if err := os.Chmod(state, 0o700); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the record to name the service's pid", func() bool {
		b, _ := os.ReadFile(record)
		return strings.Contains(string(b), `"pid":`+strconv.Itoa(res.PID))
	})
	if h.s.recordRetry.Load() {
		t.Error("recordRetry still set after a successful write")
	}
}
