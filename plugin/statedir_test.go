package plugin

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/hbshim/hb/shm"
)

// TestPrepareStateDirCreates0700 is not parallel: the umask is the
// process's, and t.TempDir of a test running beside it would make 0777
// directories while it is 0.
func TestPrepareStateDirCreates0700(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "state")
	old := syscall.Umask(0) // the mode must not depend on the umask
	got, err := PrepareStateDir(dir)
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(got)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("%s: mode %v, want 0700", got, fi.Mode().Perm())
	}
}

func TestStateDirRefused(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	groupWritable := filepath.Join(base, "gw")
	if err := os.Mkdir(groupWritable, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(groupWritable, 0o770); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(base, link); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(base, "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	below := filepath.Join(open, "state")
	if err := os.Mkdir(below, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ dir, want string }{
		{groupWritable, "writable by group or others"},
		{link, "is a symlink"},
		{below, "not sticky"},
	} {
		_, err := PrepareStateDir(tt.dir)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), tt.dir) {
			t.Errorf("PrepareStateDir(%s) = %v, want an error naming it and %q", tt.dir, err, tt.want)
		}
		if _, err := Reattach(tt.dir, nil); err == nil || errors.Is(err, ErrNoPlugin) {
			t.Errorf("Reattach(%s) = %v, want a refusal that is not ErrNoPlugin", tt.dir, err)
		}
	}
}

// A record that leaves out an identity field names no process that may be
// touched: Reattach reports ErrNoPlugin and never signals the PID.
func TestReattachIncompleteRecordSparesPID(t *testing.T) {
	t.Parallel()
	innocent := exec.Command("sleep", "1000")
	if err := innocent.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { innocent.Process.Kill(); innocent.Wait() }()
	pid := innocent.Process.Pid
	st, err := shm.StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	full := record{Protocol: "grpc", ProtocolVersion: 1, Network: "unix", Addr: "/nonexistent/plugin1",
		PID: pid, StartTime: st, Exe: procExe(pid), Args: []string{"1000"}}
	for name, mutate := range map[string]func(*record){
		"no start_time": func(r *record) { r.StartTime = 0 },
		"no exe":        func(r *record) { r.Exe = "" },
		"no args":       func(r *record) { r.Args = nil },
		"no addr":       func(r *record) { r.Addr = "" },
	} {
		rec := full
		mutate(&rec)
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, StateFile), mustMarshal(t, rec), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Reattach(dir, nil)
		if !errors.Is(err, ErrNoPlugin) || !strings.Contains(err.Error(), "not touching pid "+strconv.Itoa(pid)) {
			t.Errorf("%s: Reattach = %v, want ErrNoPlugin naming the untouched pid", name, err)
		}
		if err := syscall.Kill(pid, 0); err != nil {
			t.Fatalf("%s: the innocent pid %d: %v", name, pid, err)
		}
	}
}

func TestPluginJSONSymlinkNotFollowed(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	target := filepath.Join(t.TempDir(), "elsewhere.json")
	if err := os.WriteFile(target, []byte(`{}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(dir, StateFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := readRecord(dir); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("readRecord through a symlink = %v, want a refusal", err)
	}
}

func TestLockStateDirOnePerDir(t *testing.T) {
	t.Parallel()
	dir, err := PrepareStateDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	first, err := LockStateDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = LockStateDir(dir)
	if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Errorf("second LockStateDir = %v, want an error naming %s and pid %d", err, dir, os.Getpid())
	}
	first.Release()
	again, err := LockStateDir(dir)
	if err != nil {
		t.Fatalf("LockStateDir after Release: %v", err)
	}
	again.Release()
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
