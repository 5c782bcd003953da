package shim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/plugin"
)

// logSet reads a log and its backups, oldest first.
func logSet(t *testing.T, path string, backups int) [][]byte {
	t.Helper()
	var out [][]byte
	for k := backups; k >= 0; k-- {
		name := path
		if k > 0 {
			name = path + "." + strconv.Itoa(k)
		}
		b, err := os.ReadFile(name)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// TestLogPipeRotatesAtLines: a running service's output goes through the
// plugin, which rotates its file by rename at line boundaries: across many
// rotations every line is in exactly one file, whole and in order, and
// what it wrote before it exited is in the file when its exit is told.
func TestLogPipeRotatesAtLines(t *testing.T) {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "logs")
	h := newHarness(t, connector.DetectPidfd, dir)
	const lines = 3000
	// Lines of varying length, one write each, then a last line without a
	// newline.
	script := `exec awk 'BEGIN { for (i = 0; i < ` + strconv.Itoa(lines) + `; i++) { s = ""; for (j = 0; j < i % 97; j++) s = s "x"; print "line " i " " s; fflush() }; printf "no newline"; exit 3 }'`
	spec := h.shSpec("chatty", script)
	spec.Stdout, spec.LogDir, spec.LogMaxBytes, spec.LogBackups = "file", logDir, 8192, 200
	res := h.spawn(spec)
	if len(res.LogPipes) != 1 || res.LogPipes[0].Stream != "out" || res.LogPipes[0].Ino == 0 {
		t.Fatalf("SpawnResult.LogPipes = %+v; want the new stdout pipe", res.LogPipes)
	}
	ex := h.next(plugin.EventExit, "chatty")
	if ex.Status != 3 {
		t.Fatalf("exit status %d; want 3", ex.Status)
	}
	// No waiting: the exit path drained the pipe before telling.
	files := logSet(t, filepath.Join(logDir, "chatty.out.log"), 200)
	if len(files) < 6 {
		t.Fatalf("%d files; want at least 5 rotations", len(files))
	}
	var all bytes.Buffer
	for i, f := range files {
		last := i == len(files)-1
		if len(f) == 0 || f[len(f)-1] != '\n' {
			t.Fatalf("file %d of %d does not end at a line's end: %q", i, len(files), f[max(0, len(f)-40):])
		}
		if !last && len(f) > 8192 {
			t.Errorf("file %d of %d has %d bytes; want at most the limit and one line", i, len(files), len(f))
		}
		all.Write(f)
	}
	var want strings.Builder
	for i := range lines {
		fmt.Fprintf(&want, "line %d %s\n", i, strings.Repeat("x", i%97))
	}
	want.WriteString("no newline\n") // ended when its writer exited
	if all.String() != want.String() {
		t.Fatalf("the files hold %d bytes; want the %d written, each line once, in order", all.Len(), want.Len())
	}
	// The pipe belongs to the service: the next incarnation writes into
	// the same one, and hbd is not told of it again.
	res = h.spawn(h.shSpecWith("chatty", "echo again", spec))
	if len(res.LogPipes) != 0 {
		t.Errorf("second spawn reported pipes %+v; want none new", res.LogPipes)
	}
	h.next(plugin.EventExit, "chatty")
	live, _ := os.ReadFile(filepath.Join(logDir, "chatty.out.log"))
	if !bytes.HasSuffix(live, []byte("no newline\nagain\n")) {
		t.Errorf("live file ends %q; want the second incarnation's line on a line of its own after the first's last", live[max(0, len(live)-40):])
	}
	info, err := h.s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(info.LogPipes) != 1 || info.LogPipes[0].Name != "chatty" {
		t.Errorf("Info.LogPipes = %+v; want chatty's", info.LogPipes)
	}
}

// TestLogPipeRotationKeepsTheName: across hundreds of rotations the live
// log's name is never missing, as a reader that stats it all the while
// sees (tail -F reports a missing name as "has become inaccessible", and
// then reads whatever file has the name when it looks again).
func TestLogPipeRotationKeepsTheName(t *testing.T) {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "logs")
	h := newHarness(t, connector.DetectPidfd, dir)
	spec := h.shSpec("rotor", `exec awk 'BEGIN { for (i = 0; i < 20000; i++) { print "line " i; fflush() } }'`)
	spec.Stdout, spec.LogDir, spec.LogMaxBytes, spec.LogBackups = "file", logDir, 1024, 3
	live := filepath.Join(logDir, "rotor.out.log")
	var (
		stop          atomic.Bool
		seen, missing atomic.Int64
		done          = make(chan struct{})
	)
	go func() {
		defer close(done)
		var st unix.Stat_t
		for !stop.Load() {
			switch err := unix.Stat(live, &st); {
			case err == nil:
				seen.Add(1)
			case errors.Is(err, unix.ENOENT) && seen.Load() > 0:
				missing.Add(1)
			}
		}
	}()
	h.spawn(spec)
	h.next(plugin.EventExit, "rotor")
	stop.Store(true)
	<-done
	if _, err := os.Stat(live + ".3"); err != nil {
		t.Fatalf("no third backup: %v; want many rotations", err)
	}
	if n := missing.Load(); n != 0 {
		t.Fatalf("the live log was missing at %d of %d looks during its rotations; want never", n, n+seen.Load())
	}
}

// shSpecWith is base with the shell script replaced.
func (h *harness) shSpecWith(name, script string, base plugin.Spec) plugin.Spec {
	spec := h.shSpec(name, script)
	spec.Stdout, spec.Stderr, spec.LogDir = base.Stdout, base.Stderr, base.LogDir
	spec.LogMaxBytes, spec.LogBackups, spec.LogTimestamps = base.LogMaxBytes, base.LogBackups, base.LogTimestamps
	return spec
}

// TestLogPipeTimestamps: with LogTimestamps each line starts with the RFC
// 3339 time it was read at, once per line even when the line comes in
// pieces.
func TestLogPipeTimestamps(t *testing.T) {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "logs")
	h := newHarness(t, connector.DetectPidfd, dir)
	before := time.Now().Add(-time.Second)
	spec := h.shSpec("stamped", `echo one; printf 'two '; sleep 0.05; echo halves; echo three >&2`)
	spec.Stdout, spec.Stderr, spec.LogDir, spec.LogTimestamps = "file", "file", logDir, true
	h.spawn(spec)
	h.next(plugin.EventExit, "stamped")
	after := time.Now().Add(time.Second)
	check := func(file string, want []string) {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(logDir, file))
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
		if len(got) != len(want) {
			t.Fatalf("%s: %q; want %d stamped lines", file, b, len(want))
		}
		for i, line := range got {
			stamp, text, _ := strings.Cut(line, " ")
			ts, err := time.Parse(time.RFC3339Nano, stamp)
			if err != nil || ts.Before(before) || ts.After(after) || !strings.HasSuffix(stamp, "Z") {
				t.Errorf("%s line %d: %q: want an RFC 3339 UTC time of this run first (%v)", file, i, line, err)
			}
			if text != want[i] {
				t.Errorf("%s line %d: text %q; want %q", file, i, text, want[i])
			}
		}
	}
	check("stamped.out.log", []string{"one", "two halves"})
	check("stamped.err.log", []string{"three"})
}

// TestLogDirectWritesFile: LogDirect keeps the old way: the child's
// descriptor is the file itself, and no pipe is made.
func TestLogDirectWritesFile(t *testing.T) {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "logs")
	h := newHarness(t, connector.DetectPidfd, dir)
	spec := h.shSpec("direct", `ls -l /proc/self/fd/1`)
	spec.Stdout, spec.LogDir, spec.LogDirect = "file", logDir, true
	res := h.spawn(spec)
	h.next(plugin.EventExit, "direct")
	if len(res.LogPipes) != 0 {
		t.Errorf("LogPipes = %+v; want none with LogDirect", res.LogPipes)
	}
	b, _ := os.ReadFile(filepath.Join(logDir, "direct.out.log"))
	if !bytes.Contains(b, []byte("-> "+filepath.Join(logDir, "direct.out.log"))) {
		t.Errorf("the child's stdout was %q; want the log file itself", b)
	}
}

// TestLogPipeSpewingDescendant: a descendant that keeps writing into the
// service's pipe after the main process exited does not hold up the exit's
// report (the exit path drains what was there, no more).
func TestLogPipeSpewingDescendant(t *testing.T) {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "logs")
	h := newHarness(t, connector.DetectPidfd, dir)
	spec := h.shSpec("spew", `yes spew & echo main done; exit 2`)
	spec.Stdout, spec.LogDir, spec.LogMaxBytes, spec.LogBackups = "file", logDir, 1<<20, 1
	spec.KillMode = KillProcess // the descendant outlives the main process
	res := h.spawn(spec)
	t.Cleanup(func() { _ = unix.Kill(-res.PID, unix.SIGKILL) })
	ex := h.next(plugin.EventExit, "spew")
	if ex.Status != 2 {
		t.Errorf("exit status %d; want 2", ex.Status)
	}
	if err := unix.Kill(-res.PID, unix.SIGKILL); err != nil {
		t.Fatalf("the writer's group: %v", err)
	}
}

// TestLogPipeRotationFails: a rotation that cannot rename (NAME.1 is a
// directory) does not stop the writer: the lines are written to the live
// file, the log is marked failed for the log pass, and the write returns.
func TestLogPipeRotationFails(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "x.log.1", "in-the-way"), 0o755); err != nil {
		t.Fatal(err)
	}
	l := newLogFile(dir, "x.log", 10, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.writeOut([]byte("line one\nline two\nline three\n"))
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("writeOut did not return after a failed rotation")
	}
	l.close()
	b, err := os.ReadFile(filepath.Join(dir, "x.log"))
	if err != nil || string(b) != "line one\nline two\nline three\n" {
		t.Errorf("x.log = %q (%v); want every line, unrotated", b, err)
	}
	if !l.failed.Load() {
		t.Error("the failed rotation did not mark the log for the log pass")
	}
}
