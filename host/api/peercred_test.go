package api_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/host/api/apitest"
)

// peerEnv makes the test binary act as an API client (see TestMain): it GETs
// /v1/services on the socket named by the variable and prints the outcome.
const peerEnv = "HB_API_TEST_PEER_SOCKET"

func TestMain(m *testing.M) {
	if sock := os.Getenv(peerEnv); sock != "" {
		os.Exit(peerClient(sock))
	}
	os.Exit(m.Run())
}

// peerClient prints "status N: message" or "unreachable: error".
func peerClient(sock string) int {
	_, err := api.NewClient(sock).List(context.Background())
	var ae *api.APIError
	switch {
	case err == nil:
		fmt.Println("status 200")
	case errors.As(err, &ae):
		fmt.Printf("status %d: %s\n", ae.Status, ae.Message)
	default:
		fmt.Printf("unreachable: %v\n", err)
	}
	return 0
}

// TestPeerCredentials connects as an unprivileged user (uid 65534) from a
// child process and checks what SO_PEERCRED lets through.
func TestPeerCredentials(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another uid")
	}
	const nobody, group = 65534, 4242

	// The child (a copy of this test binary) and the socket must be
	// reachable by uid 65534.
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "api.test")
	copyFile(t, self, bin)

	b := apitest.New("rx")
	run := func(t *testing.T, sock string, cred *syscall.Credential) string {
		t.Helper()
		cmd := exec.Command(bin, "-test.run=^$")
		// atexit_sleep_ms=0: a race-enabled child would otherwise linger a second at exit.
		cmd.Env = append(os.Environ(), peerEnv+"="+sock, "GORACE=atexit_sleep_ms=0")
		cmd.Dir = dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child as uid %d: %v\n%s", cred.Uid, err, out)
		}
		return strings.TrimSpace(string(out))
	}

	tests := []struct {
		name     string
		group    string
		mode     os.FileMode // 0: keep the 0660 Listen sets
		cred     syscall.Credential
		wantPref string
	}{
		// A socket file opened up by hand still refuses an outsider.
		{"outsider on a world-writable socket", "", 0o666, syscall.Credential{Uid: nobody, Gid: nobody}, "status 403: permission denied: uid 65534"},
		{"outsider with a group configured", fmt.Sprint(group), 0o666, syscall.Credential{Uid: nobody, Gid: nobody}, "status 403: permission denied: uid 65534"},
		{"supplementary group member", fmt.Sprint(group), 0, syscall.Credential{Uid: nobody, Gid: nobody, Groups: []uint32{group}}, "status 200"},
		{"primary group member", fmt.Sprint(group), 0, syscall.Credential{Uid: nobody, Gid: group}, "status 200"},
		// The file mode keeps an outsider from connecting at all.
		{"outsider on a 0660 socket", fmt.Sprint(group), 0, syscall.Credential{Uid: nobody, Gid: nobody}, "unreachable: cannot reach hbd at"},
		{"root", "", 0, syscall.Credential{Uid: 0, Gid: 0}, "status 200"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(dir, fmt.Sprintf("s%d.sock", i))
			srv, err := api.Listen(sock, tc.group, b, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			if tc.mode != 0 {
				if err := os.Chmod(sock, tc.mode); err != nil {
					t.Fatal(err)
				}
			}
			got := run(t, sock, &tc.cred)
			if !strings.HasPrefix(got, tc.wantPref) {
				t.Errorf("child says %q, want prefix %q", got, tc.wantPref)
			}
		})
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
