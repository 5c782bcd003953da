package shim

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/plugin"
)

// appendFD writes b through fd as a child would.
func appendFD(t *testing.T, fd int, b []byte) {
	t.Helper()
	if _, err := unix.Write(fd, b); err != nil {
		t.Fatal(err)
	}
}

func TestLogRotateAtSpawn(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rx.out.log")
	l := newLogFile(dir, "rx.out.log", 10, 2)
	l.setMode(false, true) // direct: the child writes the file
	defer l.close()
	var want []string // contents of path, path.1, path.2 after each round
	for i, chunk := range []string{"first incarnation\n", "second incarnation\n", "third incarnation\n", "fourth\n"} {
		fd, err := l.spawnFD()
		if err != nil {
			t.Fatal(err)
		}
		appendFD(t, fd, []byte(chunk))
		want = append([]string{chunk}, want...)
		if len(want) > 3 {
			want = want[:3]
		}
		for k, w := range want {
			name := path
			if k > 0 {
				name = path + "." + string(rune('0'+k))
			}
			if got, _ := os.ReadFile(name); string(got) != w {
				t.Errorf("round %d: %s = %q; want %q", i, filepath.Base(name), got, w)
			}
		}
	}
	if _, err := os.Stat(path + ".3"); !os.IsNotExist(err) {
		t.Errorf("%s.3 exists: only 2 backups are kept", path)
	}
}

func TestLogTrimWhileRunning(t *testing.T) {
	t.Run("disk", func(t *testing.T) { testLogTrimWhileRunning(t, t.TempDir()) })
	t.Run("tmpfs", func(t *testing.T) { testLogTrimWhileRunning(t, tmpfsDir(t)) })
}

// tmpfsDir is a new directory on a tmpfs (/dev/shm), removed after the test.
func tmpfsDir(t *testing.T) string {
	t.Helper()
	var fs unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &fs); err != nil || fs.Type != unix.TMPFS_MAGIC {
		t.Skipf("/dev/shm is not a tmpfs here (%v)", err)
	}
	dir, err := os.MkdirTemp("/dev/shm", "hb-logtest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// testLogTrimWhileRunning: the beat's trim keeps a running incarnation's
// file within LogMaxBytes and loses nothing (with range collapse, or by
// copy and truncate where the filesystem has none, as tmpfs).
func testLogTrimWhileRunning(t *testing.T, dir string) {
	path := filepath.Join(dir, "rx.out.log")
	l := newLogFile(dir, "rx.out.log", 8192, 2)
	l.setMode(false, true) // direct: the child writes the file
	defer l.close()
	fd, err := l.spawnFD()
	if err != nil {
		t.Fatal(err)
	}
	var all bytes.Buffer
	for i := 0; all.Len() < 3*8192; i++ {
		line := []byte("line " + string(rune('a'+i%26)) + " of the running incarnation\n")
		appendFD(t, fd, line)
		all.Write(line)
	}
	if err := l.check(); err != nil {
		t.Fatal(err)
	}
	live, _ := os.ReadFile(path)
	head, _ := os.ReadFile(path + ".1")
	if len(head) == 0 || int64(len(live)) > 8192 {
		t.Fatalf("after trim: %s.1 %d bytes, live %d bytes; want a head moved out and the live file ≤ 8192", path, len(head), len(live))
	}
	// The child keeps appending to the same, trimmed file.
	tail := []byte("written after the trim\n")
	appendFD(t, fd, tail)
	all.Write(tail)
	live, _ = os.ReadFile(path)
	if got := append(head, live...); !bytes.Equal(got, all.Bytes()) {
		t.Errorf("%s.1 + %s differ from what was written (%d vs %d bytes)", path, path, len(got), all.Len())
	}
}

// TestLogSurvivesShimClose: with LogDirect, a child's log descriptor is the
// file itself, not a pipe to the shim, so what it writes after the shim is gone is kept (and it
// gets no SIGPIPE).
func TestLogSurvivesShimClose(t *testing.T) {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "logs")
	gate := filepath.Join(dir, "gate")
	h := newHarness(t, connector.DetectPidfd, dir)
	res := h.spawn(plugin.Spec{
		Name:    "chatty",
		Command: []string{"/bin/sh", "-c", "echo before; while [ ! -e " + gate + " ]; do sleep 0.01; done; echo after"},
		Env:     []string{"PATH=/usr/bin:/bin"}, UID: -1, GID: -1,
		Stdout: "file", Stderr: "null", LogDir: logDir, LogDirect: true,
	})
	out := filepath.Join(logDir, "chatty.out.log")
	waitFor(t, "before", func() bool { b, _ := os.ReadFile(out); return string(b) == "before\n" })
	h.cancel()
	h.s.Close()
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "after", func() bool { b, _ := os.ReadFile(out); return string(b) == "before\nafter\n" })
	// Nobody reaps it now: do it here.
	var ws unix.WaitStatus
	if _, err := unix.Wait4(res.PID, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}
	if !ws.Exited() || ws.ExitStatus() != 0 {
		t.Errorf("child status %v; want exit 0", ws)
	}
}
