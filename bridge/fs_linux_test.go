package bridge

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckTrusted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the files must be root's (or hb's) to be trusted, and chown to make them another's")
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	ok := filepath.Join(dir, "ok")
	os.Mkdir(ok, 0o755)
	status := filepath.Join(ok, "status")
	os.WriteFile(status, make([]byte, RunitStatusSize), 0o644)
	if err := CheckTrusted(ok); err != nil {
		t.Fatalf("a root 0755 directory: %v", err)
	}
	if b, err := ReadStatusFile(status, 64); err != nil || len(b) != RunitStatusSize {
		t.Fatalf("ReadStatusFile: %d bytes, %v", len(b), err)
	}

	open := filepath.Join(dir, "open")
	os.Mkdir(open, 0o755)
	os.Chmod(open, 0o777)
	owned := filepath.Join(dir, "owned")
	os.Mkdir(owned, 0o755)
	os.Chown(owned, 12345, 12345)
	below := filepath.Join(open, "svc")
	os.Mkdir(below, 0o755)
	link := filepath.Join(dir, "link")
	os.Symlink(ok, link)
	gw := filepath.Join(ok, "gw")
	os.WriteFile(gw, make([]byte, RunitStatusSize), 0o664)
	os.Chmod(gw, 0o664)
	big := filepath.Join(ok, "big")
	os.WriteFile(big, make([]byte, 100), 0o644)
	for _, tc := range []struct {
		path, want string
		read       bool
	}{
		{open, "mode 0777 is writable by group or others", false},
		{owned, "owned by uid 12345", false},
		{below, "above it: " + open + ": mode 0777", false},
		{link, "is a symlink", false},
		{gw, "mode 0664", true},
		{big, "longer than 64 bytes", true},
		{filepath.Join(ok, "missing"), "no such file", true},
	} {
		var err error
		if tc.read {
			_, err = ReadStatusFile(tc.path, 64)
		} else {
			err = CheckTrusted(tc.path)
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.path, err, tc.want)
		}
	}
}

// TrustedServiceDir: a directory as CheckTrusted; a symlink to a trusted
// directory gives the target; a link to an untrusted one, a link owned by
// another user and a dangling link are refused.
func TestTrustedServiceDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the files must be root's (or hb's) to be trusted, and chown to make them another's")
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	sv, scan := filepath.Join(dir, "sv"), filepath.Join(dir, "scan")
	os.Mkdir(sv, 0o755)
	os.Mkdir(scan, 0o755)
	good, open := filepath.Join(sv, "good"), filepath.Join(sv, "open")
	os.Mkdir(good, 0o755)
	os.Mkdir(open, 0o755)
	os.Chmod(open, 0o777)
	os.Symlink(good, filepath.Join(scan, "good"))
	os.Symlink(open, filepath.Join(scan, "open"))
	os.Symlink(good, filepath.Join(scan, "theirs"))
	os.Lchown(filepath.Join(scan, "theirs"), 12345, 12345)
	os.Symlink(filepath.Join(sv, "nothing"), filepath.Join(scan, "dangling"))
	os.Mkdir(filepath.Join(scan, "plain"), 0o755)
	// A chain through a directory anyone can write: its middle link could
	// be pointed at another service's directory.
	mid := filepath.Join(dir, "mid")
	os.Mkdir(mid, 0o755)
	os.Chmod(mid, 0o777)
	os.Symlink(good, filepath.Join(mid, "hop"))
	os.Symlink(filepath.Join(mid, "hop"), filepath.Join(scan, "chain"))
	// A chain through trusted directories only is followed.
	os.Symlink(good, filepath.Join(sv, "alias"))
	os.Symlink(filepath.Join(sv, "alias"), filepath.Join(scan, "aliased"))
	if got, err := TrustedServiceDir(filepath.Join(scan, "good")); err != nil || got != good {
		t.Errorf("a link to a trusted directory: %q, %v; want %q", got, err, good)
	}
	if got, err := TrustedServiceDir(filepath.Join(scan, "aliased")); err != nil || got != good {
		t.Errorf("a chain of trusted links: %q, %v; want %q", got, err, good)
	}
	if got, err := TrustedServiceDir(filepath.Join(scan, "plain")); err != nil || got != filepath.Join(scan, "plain") {
		t.Errorf("a directory: %q, %v", got, err)
	}
	for name, want := range map[string]string{
		"open":     "mode 0777 is writable by group or others",
		"theirs":   "a symlink owned by uid 12345",
		"dangling": "no such file",
		"chain":    "mode 0777 is writable by group or others",
	} {
		if _, err := TrustedServiceDir(filepath.Join(scan, name)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", name, err, want)
		}
	}
}
