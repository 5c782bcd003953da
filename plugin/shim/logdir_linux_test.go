package shim

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hbshim/hb/plugin/logdir"
)

// wantUnsafe checks that err is a logdir.ErrUnsafe whose text has every one
// of parts.
func wantUnsafe(t *testing.T, err error, parts ...string) {
	t.Helper()
	if !errors.Is(err, logdir.ErrUnsafe) {
		t.Fatalf("err = %v; want logdir.ErrUnsafe", err)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("err = %q; want it to mention %q", err, p)
		}
	}
}

// TestLogTrimReplacesPlantedTemp: a symlink at the trim's temporary name is
// replaced, never written through.
func TestLogTrimReplacesPlantedTemp(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(dir, "rx.out.log.rotating")); err != nil {
		t.Fatal(err)
	}
	l := newLogFile(dir, "rx.out.log", 4096, 1)
	l.setMode(false, true) // direct: the child writes the file
	defer l.close()
	fd, err := l.spawnFD()
	if err != nil {
		t.Fatal(err)
	}
	appendFD(t, fd, []byte(strings.Repeat("x", 3*4096)))
	if err := l.check(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
		t.Errorf("victim changed: %d bytes", len(b))
	}
	if st, err := os.Lstat(filepath.Join(dir, "rx.out.log.1")); err != nil || !st.Mode().IsRegular() {
		t.Errorf("rx.out.log.1: %v %v; want the trimmed head, a regular file", st, err)
	}
}

// TestLogSpawnRefusesPlantedLink: spawnFD refuses a log name that has become
// a symlink and leaves its target alone.
func TestLogSpawnRefusesPlantedLink(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l := newLogFile(dir, "rx.out.log", 1<<20, 1)
	l.setMode(false, true) // direct: the child writes the file
	defer l.close()
	if _, err := l.spawnFD(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "rx.out.log")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, path); err != nil {
		t.Fatal(err)
	}
	_, err := l.spawnFD()
	wantUnsafe(t, err, path+" is a symlink")
	if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
		t.Errorf("victim changed: %q", b)
	}
}
