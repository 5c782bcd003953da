package shm

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// cflags are the flags of the Makefile's C targets.
var cflags = []string{"-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-I", "../contrib/c"}

// buildC compiles src with gcc into a temporary directory, warning-free, and
// returns the binary's path. It skips the test if gcc is not installed.
func buildC(t testing.TB, src string) string {
	t.Helper()
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc not found: skipping the C reader test (install gcc to run it)")
	}
	bin := filepath.Join(t.TempDir(), strings.TrimSuffix(filepath.Base(src), ".c"))
	args := append(append([]string{}, cflags...), "-o", bin, src)
	if out, err := exec.Command(gcc, args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bin
}

// peekText is what hbpeek must print for r (see contrib/c/hbpeek.c).
func peekText(path string, r *Table, header bool) string {
	var b strings.Builder
	var used []Slot
	for s := range r.Used() {
		used = append(used, s)
	}
	if header {
		h := r.Header()
		alive := 0
		if r.WriterAlive() {
			alive = 1
		}
		fmt.Fprintf(&b, "# hb path=%s version=%d slots=%d used=%d writer_pid=%d flags=0x%x created_ns=%d writer_beat_ns=%d"+
			" layout_seq=%d writer_alive=0x%x alive=%d changes=%d\n",
			path, h.Version, h.SlotCount, len(used), h.WriterPID, h.Flags, h.CreatedNs, h.WriterBeatNs,
			h.LayoutSeq, h.WriterAlive, alive, h.Changes)
	}
	for _, s := range used {
		fmt.Fprintf(&b, "%d %s %d %s %d %d %d %d\n", s.Index, s.Name, s.PID, s.State, s.Generation, s.Exits, s.LastStatus, s.LastPID)
	}
	return b.String()
}

// fillPeekTable writes known contents: running, exited, never started, a
// freed gap, an adopted process and a long name.
func fillPeekTable(t *testing.T, w *Writer) {
	rx := mustAlloc(t, w, "rx")
	tx := mustAlloc(t, w, "tx")
	gap := mustAlloc(t, w, "gap")
	mustAlloc(t, w, "a.b-c_9")
	long := mustAlloc(t, w, strings.Repeat("L", NameMax))
	if err := w.Free(gap); err != nil {
		t.Fatal(err)
	}
	w.SetHeaderFlags(FlagConnector | FlagPidfd)
	w.Spawned(rx, 4000001, 3, 100, StateRunning, 0)
	w.Spawned(tx, 4000002, 1, 101, StateRunning, 0)
	w.RecordExit(tx, 4000002, 137, MonotonicNs(), StateFatal)
	w.Spawned(long, 99, 1<<40, 102, StateStopping, SlotAdopted)
}

func runPeek(t *testing.T, bin string, env []string, args ...string) (string, string, error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// TestCPeek: the C reader prints exactly what the Go reader sees.
func TestCPeek(t *testing.T) {
	bin := buildC(t, "../contrib/c/hbpeek.c")
	w := newWriter(t, 16)
	r := openReader(t, w)
	fillPeekTable(t, w)
	path := w.Path()

	want := peekText(path, r, true)
	if !strings.Contains(want, " "+strings.Repeat("L", NameMax)+" 99 stopping ") {
		t.Fatalf("fixture not as intended:\n%s", want)
	}
	got, stderr, err := runPeek(t, bin, nil, "-p", path)
	if err != nil {
		t.Fatalf("hbpeek -p %s: %v\n%s", path, err, stderr)
	}
	if got != want {
		t.Errorf("hbpeek -p output:\n got:\n%s\nwant:\n%s", got, want)
	}
	t.Logf("hbpeek -p %s:\n%s", path, got)

	got, stderr, err = runPeek(t, bin, nil, "-H", "-s", "tx", "-p", path)
	if want := "1 tx 0 fatal 1 1 137 4000002\n"; err != nil || got != want {
		t.Errorf("hbpeek -H -s tx: %q, %v %s; want %q", got, err, stderr, want)
	}

	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown service", []string{"-s", "gap", "-p", path}, "no service gap"},
		{"missing table", []string{"-p", path + ".missing"}, "No such file"},
		{"bad magic", []string{"-p", writeFile(t, t.TempDir(), "x", bytes.Repeat([]byte{1}, 256), 0o644)}, "bad magic"},
	} {
		_, stderr, err := runPeek(t, bin, nil, tt.args...)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(stderr, tt.want) {
			t.Errorf("%s: hbpeek %v: %v, stderr %q; want exit 1 mentioning %q", tt.name, tt.args, err, stderr, tt.want)
		}
	}
}

// TestCPeekDevShm: hbpeek NAME and HB_SHM=NAME open /dev/shm/NAME.
func TestCPeekDevShm(t *testing.T) {
	if fi, err := os.Stat(DefaultDir); err != nil || !fi.IsDir() {
		t.Skipf("no %s here: %v", DefaultDir, err)
	}
	bin := buildC(t, "../contrib/c/hbpeek.c")
	name := fmt.Sprintf("hb-test-%d-%x", os.Getpid(), rand.Uint32())
	w, err := Create(name, Options{Slots: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Unlink(); w.Close(true) })
	fillPeekTable(t, w)
	r, err := Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	want := peekText(filepath.Join(DefaultDir, name), r, true)
	got, stderr, err := runPeek(t, bin, nil, name)
	if err != nil || got != want {
		t.Errorf("hbpeek %s: %v %s\n got:\n%s\nwant:\n%s", name, err, stderr, got, want)
	}
	got, stderr, err = runPeek(t, bin, []string{"HB_SHM=" + name})
	if err != nil || got != want {
		t.Errorf("HB_SHM=%s hbpeek: %v %s\n got:\n%s\nwant:\n%s", name, err, stderr, got, want)
	}
}

// TestCReadConsistency: hb_read never returns a torn slot while a Go writer
// flips it through spawn/exit cycles (the scheme of TestConcurrentSnapshots).
func TestCReadConsistency(t *testing.T) {
	bin := buildC(t, "testdata/readcheck.c")
	w := newWriter(t, 4)
	mustAlloc(t, w, "other")
	fi := mustAlloc(t, w, "flip")
	var stop atomic.Bool
	var wg sync.WaitGroup
	var cycles uint64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for g := uint64(1); !stop.Load(); g++ {
			flip(w, fi, g)
			cycles = g
		}
	}()
	out, err := exec.Command(bin, w.Path(), fmt.Sprint(fi), "300000").CombinedOutput()
	stop.Store(true)
	wg.Wait()
	if err != nil || !strings.HasPrefix(string(out), "ok ") {
		t.Fatalf("readcheck: %v\n%s", err, out)
	}
	t.Logf("writer: %d cycles; readcheck: %s", cycles, strings.TrimSpace(string(out)))
}

// TestCReadersRefuseSquat: a table file that another user created (any local
// user can create /dev/shm/NAME before hb does, with forged slots) is refused
// by the C readers, hb_open_path and hbpeek, with EPERM and a message naming
// the owner and the fix; hbpeek accepts it once told that uid is hb's (-u,
// HB_SHM_OWNER).
func TestCReadersRefuseSquat(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown a table to another user")
	}
	peek := buildC(t, "../contrib/c/hbpeek.c")
	check := buildC(t, "testdata/readcheck.c")
	p := writeFile(t, t.TempDir(), "hb", image(t, 4), 0o644)
	if err := os.Chown(p, 65534, 65534); err != nil {
		t.Skipf("chown: %v", err)
	}
	out, err := exec.Command(check, p, "0", "1").CombinedOutput()
	if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "not owned by root") {
		t.Errorf("readcheck (hb_open_path) of uid 65534's table: %v, %q; want exit 1, not owned by root", err, out)
	}
	_, stderr, err := runPeek(t, peek, nil, "-p", p)
	if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) || ee.ExitCode() != 1 ||
		!strings.Contains(stderr, "owned by uid 65534") || !strings.Contains(stderr, "rm "+p) {
		t.Errorf("hbpeek -p of uid 65534's table: %v, %q; want exit 1 naming uid 65534 and rm %s", err, stderr, p)
	}
	t.Logf("hbpeek refuses: %s", strings.TrimSpace(stderr))
	if _, stderr, err := runPeek(t, peek, nil, "-u", "65534", "-p", p); err != nil {
		t.Errorf("hbpeek -u 65534: %v %s", err, stderr)
	}
	if _, stderr, err := runPeek(t, peek, []string{"HB_SHM_OWNER=65534"}, "-p", p); err != nil {
		t.Errorf("HB_SHM_OWNER=65534 hbpeek: %v %s", err, stderr)
	}
	if _, _, err := runPeek(t, peek, nil, "-u", "x1", "-p", p); err == nil {
		t.Error("hbpeek -u x1 accepted")
	}
}

// TestCWaits: the C helpers (hb_writer_alive, hb_alive, hb_layout_changed,
// hb_changes) read what the Go writer wrote, and hb_wait, hb_wait_any and
// hb_wait_changes, blocked on a read-only mapping in another process, are
// woken by the writer's stores, or time out when nothing changes.
func TestCWaits(t *testing.T) {
	bin := buildC(t, "testdata/waitcheck.c")
	w := newWriter(t, 4)
	a, b := mustAlloc(t, w, "a"), mustAlloc(t, w, "b")
	w.Spawned(a, 4242, 1, 1, StateRunning, 0)
	path := w.Path()
	state := func() string {
		out, err := exec.Command(bin, path, "state").CombinedOutput()
		if err != nil {
			t.Fatalf("waitcheck state: %v: %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got, want := state(), "writer_alive=0 alive0=0 layout_seq=2 changed=1 changes=1"; got != want {
		t.Errorf("before MarkAlive: %q, want %q", got, want)
	}
	if err := w.MarkAlive(); err != nil {
		t.Fatal(err)
	}
	if got, want := state(), "writer_alive=1 alive0=1 layout_seq=2 changed=1 changes=2"; got != want {
		t.Errorf("after MarkAlive: %q, want %q", got, want)
	}

	// start runs a wait and returns its result channel once it said "ready".
	start := func(args ...string) <-chan string {
		cmd := exec.Command(bin, append([]string{path}, args...)...)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		rd := bufio.NewReader(out)
		if l, _ := rd.ReadString('\n'); l != "ready\n" {
			t.Fatalf("waitcheck %v said %q", args, l)
		}
		res := make(chan string, 1)
		go func() {
			l, _ := rd.ReadString('\n')
			_ = cmd.Wait()
			res <- strings.TrimSpace(l)
		}()
		return res
	}
	changes := fmt.Sprint(w.Changes())
	one := start("wait", fmt.Sprint(a), "4242", "20000")
	many := start("any", fmt.Sprintf("%d:0,%d:4242", b, a), "20000")
	all := start("changes", changes, "20000")
	timeout := start("wait", fmt.Sprint(b), "0", "50")
	if got := <-timeout; got != "error=ETIMEDOUT" {
		t.Errorf("hb_wait on an unchanged slot: %q, want error=ETIMEDOUT", got)
	}
	w.ClearPID(a, 4242)
	if got := <-one; got != "pid=0" {
		t.Errorf("hb_wait: %q, want pid=0", got)
	}
	if got := <-many; got != "pos=1" {
		t.Errorf("hb_wait_any: %q, want pos=1", got)
	}
	if got, want := <-all, fmt.Sprintf("changes=%d", w.Changes()); got != want {
		t.Errorf("hb_wait_changes: %q, want %q", got, want)
	}
	if got := <-start("wait", "9", "0", "50"); got != "error=slot index out of range" {
		t.Errorf("hb_wait on slot 9: %q", got)
	}
}
