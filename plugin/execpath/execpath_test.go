package execpath

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// The cases where hbd's check and the plugin's spawn used to disagree:
// relative PATH entries (relative to the service's directory), an empty
// entry, and a match that is not executable before one that is.
func TestLook(t *testing.T) {
	dir := t.TempDir()
	mk := func(rel string, mode os.FileMode) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	mk("work/bin/rx", 0o755)
	mk("work/local", 0o755)
	mk("plain/rx", 0o644)
	mk("abs/rx", 0o755)
	if err := os.Mkdir(filepath.Join(dir, "work/sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(dir, "work")
	for _, tc := range []struct {
		name, file, dir, path string
		exec, local           string // want; local relative to dir
		err                   error
		msg                   string
	}{
		{name: "relative PATH entry, from the service's directory", file: "rx", dir: work, path: "/nonexistent:bin",
			exec: "bin/rx", local: "work/bin/rx"},
		{name: "empty PATH entry is the directory", file: "local", dir: work, path: "/nonexistent::",
			exec: "local", local: "work/local"},
		{name: "a non-executable match before an executable one", file: "rx", path: filepath.Join(dir, "plain") + ":" + filepath.Join(dir, "abs"),
			exec: filepath.Join(dir, "abs/rx"), local: "abs/rx"},
		{name: "only a non-executable match", file: "rx", path: filepath.Join(dir, "plain"),
			err: syscall.EACCES, msg: filepath.Join(dir, "plain/rx") + " is not executable (mode -rw-r--r--)"},
		{name: "relative with a slash, from the directory", file: "./local", dir: work,
			exec: "./local", local: "work/local"},
		{name: "a directory", file: "./sub", dir: work, err: syscall.EISDIR, msg: filepath.Join(work, "sub") + " is a directory"},
		{name: "missing", file: "/nonexistent/x", err: syscall.ENOENT, msg: "/nonexistent/x: no such file or directory"},
		{name: "not in PATH", file: "hb-nope", path: "/a:/b", err: ErrNotFound, msg: `"hb-nope" not found in PATH "/a:/b"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exec, local, err := Look(tc.file, tc.dir, tc.path)
			if tc.err != nil {
				var e *Error
				if !errors.Is(err, tc.err) || !errors.As(err, &e) || err.Error() != tc.msg {
					t.Fatalf("Look = %q, %q, %v; want an *Error wrapping %v saying %q", exec, local, err, tc.err, tc.msg)
				}
				return
			}
			if err != nil || exec != tc.exec || local != filepath.Join(dir, tc.local) {
				t.Fatalf("Look = %q, %q, %v; want %q, %q", exec, local, err, tc.exec, filepath.Join(dir, tc.local))
			}
		})
	}
}
