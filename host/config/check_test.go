package config

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
)

func TestResolve(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "bin", "rx"), "#!/bin/sh\n")
	if err := os.Chmod(filepath.Join(dir, "bin", "rx"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "bin", "plain"), "data\n")
	if err := os.Mkdir(filepath.Join(dir, "bin", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "work", "local"), "#!/bin/sh\n")
	if err := os.Chmod(filepath.Join(dir, "work", "local"), 0o700); err != nil {
		t.Fatal(err)
	}

	root, err := user.LookupId("0")
	if err != nil {
		t.Skipf("no user database entry for uid 0: %v", err)
	}

	tests := []struct {
		name    string
		toml    string // service table body, after [service.s]
		exe     string // want Executable, relative to dir
		uid     int
		gid     int
		errKeys []string // keys with errors, in line order
		errs    []error
		msg     string
	}{
		{
			name: "absolute path",
			toml: `command = ["` + dir + `/bin/rx"]`,
			exe:  "bin/rx", uid: -1, gid: -1,
		},
		{
			name: "PATH from the service environment",
			toml: `command = "rx -v"` + "\n" + `environment = { PATH = "/nonexistent:` + dir + `/bin" }`,
			exe:  "bin/rx", uid: -1, gid: -1,
		},
		{
			name: "relative path from the directory",
			toml: `command = "./local"` + "\n" + `directory = "` + dir + `/work"`,
			exe:  "work/local", uid: -1, gid: -1,
		},
		{
			name: "user by name gives its primary group",
			toml: `command = ["` + dir + `/bin/rx"]` + "\n" + `user = "` + root.Username + `"`,
			exe:  "bin/rx", uid: 0, gid: atoi(t, root.Gid),
		},
		{
			name: "user and group by number",
			toml: `command = ["` + dir + `/bin/rx"]` + "\n" + `user = 0` + "\n" + `group = 4242`,
			exe:  "bin/rx", uid: 0, gid: 4242,
		},
		{
			name: "numeric user without passwd entry but with a group",
			toml: `command = ["` + dir + `/bin/rx"]` + "\n" + `user = 4242424` + "\n" + `group = 4242`,
			exe:  "bin/rx", uid: 4242424, gid: 4242,
		},
		{
			name: "not in PATH",
			toml: `command = "hb-no-such-program-x"` + "\n" + `environment = { PATH = "` + dir + `/bin" }`,
			uid:  -1, gid: -1, errKeys: []string{"command"}, errs: []error{ErrNoExec}, msg: `"hb-no-such-program-x" not found in PATH`,
		},
		{
			name: "missing file",
			toml: `command = "` + dir + `/bin/nope"`,
			uid:  -1, gid: -1, errKeys: []string{"command"}, errs: []error{ErrNoExec}, msg: "no such file or directory",
		},
		{
			name: "not executable",
			toml: `command = "` + dir + `/bin/plain"`,
			uid:  -1, gid: -1, errKeys: []string{"command"}, errs: []error{ErrNoExec}, msg: "is not executable",
		},
		{
			name: "a directory",
			toml: `command = "` + dir + `/bin/sub"`,
			uid:  -1, gid: -1, errKeys: []string{"command"}, errs: []error{ErrNoExec}, msg: "is a directory",
		},
		{
			name: "no such user, group or directory, all reported",
			toml: `command = ["` + dir + `/bin/rx"]` + "\n" + `user = "hb-no-such-user"` + "\n" + `group = "hb-no-such-group"` + "\n" + `directory = "/nonexistent/hb"`,
			uid:  -1, gid: -1,
			errKeys: []string{"user", "group", "directory"},
			errs:    []error{ErrNoUser, ErrNoGroup, ErrNoDirectory},
			msg:     `user "hb-no-such-user" does not exist`,
		},
		{
			name: "numeric user without passwd entry needs a group",
			toml: `command = ["` + dir + `/bin/rx"]` + "\n" + `user = 4242424`,
			uid:  4242424, gid: -1, errKeys: []string{"user"}, errs: []error{ErrNoUser}, msg: "set group too",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mustParse(t, "hb.toml", "# svc\n[service.s]\n"+tt.toml+"\n")
			s := cfg.Services["s"]
			r, err := Resolve(s)
			if len(tt.errKeys) == 0 {
				if err != nil {
					t.Fatalf("Resolve: %v", err)
				}
				if want := filepath.Join(dir, tt.exe); r.Executable != want {
					t.Errorf("Executable = %q, want %q", r.Executable, want)
				}
			} else {
				var errs Errors
				if !errors.As(err, &errs) {
					t.Fatalf("Resolve = %v, want Errors", err)
				}
				if len(errs) != len(tt.errKeys) {
					t.Fatalf("got %d errors, want %d:\n%v", len(errs), len(tt.errKeys), err)
				}
				for i, key := range tt.errKeys {
					e := errs[i]
					wantLine := s.KeyLine(key)
					if wantLine < 3 {
						t.Errorf("KeyLine(%q) = %d, want the key's own line", key, wantLine)
					}
					prefix := fmt.Sprintf("hb.toml:%d: service \"s\": key %q: ", wantLine, key)
					if !strings.HasPrefix(e.Error(), prefix) {
						t.Errorf("error %d = %q, want prefix %q", i, e.Error(), prefix)
					}
					if !errors.Is(e, tt.errs[i]) {
						t.Errorf("error %d = %v, want errors.Is %v", i, e, tt.errs[i])
					}
				}
				if !strings.Contains(err.Error(), tt.msg) {
					t.Errorf("error %q does not contain %q", err, tt.msg)
				}
			}
			if r.UID != tt.uid || r.GID != tt.gid {
				t.Errorf("UID, GID = %d, %d; want %d, %d", r.UID, r.GID, tt.uid, tt.gid)
			}
		})
	}
}

func TestCheckDoesNotBlockLoad(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "hb.toml"), `
[hbd]
socket_group = "hb-no-such-group"

[service.ok]
command = ["/bin/sh", "-c", "exit 0"]

[service.missing]
command = "/nonexistent/hb/rx --flag"
`)
	cfg, err := Load(filepath.Join(dir, "hb.toml"))
	if err != nil {
		t.Fatalf("Load must not look for executables: %v", err)
	}
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("no /bin/sh here")
	}
	err = cfg.Check()
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 2 {
		t.Fatalf("Check = %v, want 2 errors", err)
	}
	if !errors.Is(errs[0], ErrNoGroup) || errs[0].Line != 3 || errs[0].Key != "hbd.socket_group" {
		t.Errorf("first error = %q, want the socket_group at line 3", errs[0])
	}
	if !errors.Is(errs[1], ErrNoExec) || errs[1].Line != 9 || errs[1].Service != "missing" || errs[1].Key != "command" {
		t.Errorf("second error = %q, want service \"missing\" command at line 9", errs[1])
	}
	if _, err := Resolve(cfg.Services["ok"]); err != nil {
		t.Errorf("Resolve(ok) = %v", err)
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := parseID(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
