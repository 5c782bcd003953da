package logdir

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// wantUnsafe checks that err is an ErrUnsafe whose text has every one
// of parts.
func wantUnsafe(t *testing.T, err error, parts ...string) {
	t.Helper()
	if !errors.Is(err, ErrUnsafe) {
		t.Fatalf("err = %v; want ErrUnsafe", err)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("err = %q; want it to mention %q", err, p)
		}
	}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (chown to another uid)")
	}
}

// TestPrepareCreates: missing components are made 0755 whatever the
// umask, and the result passes the check.
func TestPrepareCreates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "log")
	old := syscall.Umask(0o002)
	err := Prepare(dir)
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filepath.Dir(dir), dir} {
		st, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o755 {
			t.Errorf("%s: mode %v; want 0755", d, st.Mode().Perm())
		}
	}
	if err := Prepare("log"); err == nil {
		t.Error("a relative log_dir was accepted")
	}
}

// TestPrepareRefuses: a log_dir others can change, a symlink on the
// way, or a writable directory above it is refused with the fix.
func TestPrepareRefuses(t *testing.T) {
	base := t.TempDir()
	mk := func(name string, mode os.FileMode) string {
		p := filepath.Join(base, name)
		if err := os.Mkdir(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // the umask
			t.Fatal(err)
		}
		return p
	}
	t.Run("group-writable", func(t *testing.T) {
		d := mk("gw", 0o775)
		wantUnsafe(t, Prepare(d), d, "mode 0775", "chmod go-w "+d)
	})
	t.Run("symlink", func(t *testing.T) {
		real := mk("real", 0o755)
		link := filepath.Join(base, "link")
		if err := os.Symlink(real, link); err != nil {
			t.Fatal(err)
		}
		wantUnsafe(t, Prepare(link), "is a symlink", `set log_dir = "`+real+`"`)
		wantUnsafe(t, Prepare(filepath.Join(link, "sub")), link+" is a symlink")
		if _, err := os.Stat(filepath.Join(real, "sub")); err == nil {
			t.Error("sub was created through the symlink")
		}
	})
	t.Run("writable-parent", func(t *testing.T) {
		p := mk("open", 0o777)
		wantUnsafe(t, Prepare(filepath.Join(p, "log")), p+" above it is writable", "chmod go-w "+p)
	})
	t.Run("sticky-parent", func(t *testing.T) {
		p := mk("sticky", 0o777|os.ModeSticky)
		if err := Prepare(filepath.Join(p, "log")); err != nil {
			t.Errorf("under a sticky directory: %v", err)
		}
	})
	t.Run("other-owner", func(t *testing.T) {
		needRoot(t)
		d := mk("nobody", 0o755)
		if err := os.Chown(d, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		wantUnsafe(t, Prepare(d), "owned by uid 65534", "chown root:root "+d)
		wantUnsafe(t, Prepare(filepath.Join(d, "log")), d+" above it is owned by uid 65534")
	})
	t.Run("not-a-dir", func(t *testing.T) {
		f := filepath.Join(base, "file")
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		wantUnsafe(t, Prepare(filepath.Join(f, "log")), f+" is not a directory")
	})
}

// TestOpenLogAtVets: only a regular file with one link, owned by the
// plugin's user, is opened; a symlink's target is never touched, and a FIFO
// is refused at once (the open does not wait for a reader).
func TestOpenLogAtVets(t *testing.T) {
	dir := t.TempDir()
	fd, err := Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	plant := func(name string, mk func(p string) error) {
		t.Helper()
		if err := mk(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	plant("link.out.log", func(p string) error { return os.Symlink(victim, p) })
	plant("fifo.out.log", func(p string) error { return unix.Mkfifo(p, 0o644) })
	plant("hard.out.log", func(p string) error { return os.Link(victim, p) })
	plant("dir.out.log", func(p string) error { return os.Mkdir(p, 0o755) })
	for name, want := range map[string]string{
		"link.out.log": "is a symlink",
		"fifo.out.log": "is a named pipe (FIFO)",
		"hard.out.log": "has 2 names",
		"dir.out.log":  "is a directory",
	} {
		f, err := OpenFile(fd, dir, name)
		if err == nil {
			f.Close()
		}
		wantUnsafe(t, err, filepath.Join(dir, name), want, "remove "+filepath.Join(dir, name))
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
		t.Errorf("victim changed: %q", b)
	}
	if os.Geteuid() == 0 {
		plant("other.out.log", func(p string) error {
			if err := os.WriteFile(p, nil, 0o644); err != nil {
				return err
			}
			return os.Chown(p, 65534, 65534)
		})
		_, err := OpenFile(fd, dir, "other.out.log")
		wantUnsafe(t, err, "owned by uid 65534")
	}
	f, err := OpenFile(fd, dir, "ok.out.log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if fl, _ := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0); fl&unix.O_NONBLOCK != 0 || fl&unix.O_APPEND == 0 {
		t.Errorf("flags %#x: want O_APPEND, not O_NONBLOCK (the child inherits it)", fl)
	}
}
