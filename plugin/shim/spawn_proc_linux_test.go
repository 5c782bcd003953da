package shim

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// spawners are the spawnProc implementations usable here, by name.
func spawners(t *testing.T) map[string]func(*procAttr) (int, int, error) {
	m := map[string]func(*procAttr) (int, int, error){"forkexec": spawnForkExec}
	if clone3Usable() {
		m["clone3"] = func(a *procAttr) (int, int, error) {
			pid, pidfd, err, ok := spawnClone3(a)
			if !ok {
				t.Skip("clone3 is not usable here")
			}
			return pid, pidfd, err
		}
	} else {
		t.Log("the clone3 spawner is not built (no cgo, or not linux/amd64) or not usable here: testing forkexec only")
	}
	return m
}

// spawnWait spawns a and waits for its exit through the pidfd; it returns
// the exit status.
func spawnWait(t *testing.T, spawn func(*procAttr) (int, int, error), a *procAttr) int {
	t.Helper()
	beginSpawn()
	pid, pidfd, err := spawn(a)
	endSpawn()
	if err != nil {
		t.Fatalf("spawn %v: %v", a.argv, err)
	}
	if pid <= 0 || pidfd < 0 {
		t.Fatalf("spawn: pid %d, pidfd %d", pid, pidfd)
	}
	defer unix.Close(pidfd)
	var ci childInfo
	if err := waitid(unix.P_PIDFD, pidfd, &ci, unix.WEXITED); err != nil {
		t.Fatalf("waitid: %v", err)
	}
	if int(ci.Pid) != pid {
		t.Fatalf("waitid reaped %d, spawned %d", ci.Pid, pid)
	}
	return ci.status()
}

// TestSpawnerParity runs one probe script under every spawner and checks
// what the child saw: its descriptors (including a source descriptor that
// another one overwrites), directory, environment, process group, signal
// dispositions and mask, and RLIMIT_NOFILE. The two spawners must agree,
// and both must match what hb promises.
func TestSpawnerParity(t *testing.T) {
	dir := t.TempDir()
	fileA, err := os.Create(filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	defer fileA.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	// The child's 0 is fileA, and its 1 is what is at the plugin's 0:
	// descriptor 0 is overwritten first, so the spawner must move it.
	if err := unix.Dup2(int(devnull.Fd()), 0); err != nil {
		t.Fatal(err)
	}
	script := `exec 3>"$OUT"
echo "fd0=$(readlink /proc/$$/fd/0)" >&3
echo "fd1=$(readlink /proc/$$/fd/1)" >&3
echo "fd2=$(readlink /proc/$$/fd/2)" >&3
echo "pwd=$(pwd -P)" >&3
echo "pgid=$(cut -d' ' -f5 /proc/$$/stat) pid=$$" >&3
while IFS= read -r l; do case $l in SigBlk:*|SigIgn:*|SigCgt:*) echo "$l" >&3;; esac; done </proc/$$/status
echo "nofile=$(ulimit -Sn)/$(ulimit -Hn)" >&3
env | grep -v '^PWD=' | sort >&3
exit 7
`
	outs := map[string]string{}
	for name, spawn := range spawners(t) {
		out := filepath.Join(dir, name+".out")
		st := spawnWait(t, spawn, &procAttr{
			path: "/bin/sh", argv: []string{"sh", "-c", script},
			env:   []string{"OUT=" + out, "HB_X=1", "PATH=/usr/bin:/bin"},
			dir:   dir,
			files: [3]int{int(fileA.Fd()), 0, 2},
		})
		if st != 7 {
			t.Fatalf("%s: exit status %d, want 7", name, st)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		got := string(b)
		for _, want := range []string{
			"fd0=" + fileA.Name() + "\n", "fd1=/dev/null\n", "pwd=" + dir + "\n",
			"SigBlk:\t0000000000000000\n", "HB_X=1\n", "OUT=" + out + "\n",
		} {
			if !strings.Contains(got, want) {
				t.Errorf("%s: child saw\n%s\nwant a line %q", name, got, want)
			}
		}
		// Own process group.
		var pgid, pid string
		for _, l := range strings.Split(got, "\n") {
			if strings.HasPrefix(l, "pgid=") {
				f := strings.Fields(l)
				pgid, pid = strings.TrimPrefix(f[0], "pgid="), strings.TrimPrefix(f[1], "pid=")
			}
		}
		if pgid == "" || pgid != pid {
			t.Errorf("%s: pgid %q, pid %q: want its own process group", name, pgid, pid)
		}
		// Drop what differs by nature between runs.
		var keep []string
		for _, l := range strings.Split(got, "\n") {
			if !strings.HasPrefix(l, "pgid=") && !strings.HasPrefix(l, "OUT=") {
				keep = append(keep, l)
			}
		}
		outs[name] = strings.Join(keep, "\n")
		t.Logf("%s: child saw:\n%s", name, outs[name])
	}
	if a, b := outs["forkexec"], outs["clone3"]; b != "" && a != b {
		t.Errorf("the spawners disagree:\nforkexec:\n%s\nclone3:\n%s", a, b)
	}
	if want := os.Getenv(nofileEnv); want != "" {
		for name, out := range outs {
			if !strings.Contains(out, "nofile="+want+"/") {
				t.Errorf("%s: want the soft RLIMIT_NOFILE hb was started with (%s), child saw:\n%s", name, want, out)
			}
		}
	}
}

// nofileEnv is set when TestSpawnerParity runs again under a lowered soft
// RLIMIT_NOFILE (see TestSpawnerKeepsNofile).
const nofileEnv = "HB_TEST_NOFILE"

// TestSpawnerKeepsNofile runs TestSpawnerParity in a new test process
// started with a soft RLIMIT_NOFILE below the hard one, which the Go
// runtime raises at start: services must get the limit as it was.
func TestSpawnerKeepsNofile(t *testing.T) {
	if os.Getenv(nofileEnv) != "" {
		t.Skip("already the re-run")
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Max < 512 {
		t.Skipf("RLIMIT_NOFILE %+v: cannot lower it to 256", lim)
	}
	cmd := exec.Command("/bin/sh", "-c", `ulimit -Sn 256 && exec "$@"`, "sh",
		os.Args[0], "-test.run=^TestSpawnerParity$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), nofileEnv+"=256")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestSpawnerParity") {
		t.Fatalf("TestSpawnerParity under ulimit -Sn 256: %v\n%s", err, out)
	}
}

// TestSpawnerCredentials: as root, the child runs with the given uid, gid
// and supplementary groups, under every spawner.
func TestSpawnerCredentials(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("changing credentials needs root")
	}
	dir, err := os.MkdirTemp("", "hb-spawner-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777)
	for name, spawn := range spawners(t) {
		out := filepath.Join(dir, name+".ids")
		st := spawnWait(t, spawn, &procAttr{
			path: "/bin/sh", argv: []string{"sh", "-c", `echo "$(id -u) $(id -g) $(id -G)" > "$OUT"`},
			env:   []string{"OUT=" + out, "PATH=/usr/bin:/bin"},
			files: [3]int{2, 2, 2},
			cred:  &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{65534, 4}},
		})
		if st != 0 {
			t.Fatalf("%s: exit status %d", name, st)
		}
		b, _ := os.ReadFile(out)
		if got, want := strings.TrimSpace(string(b)), "65534 65534 65534 4"; got != want && got != "65534 65534 4 65534" {
			t.Errorf("%s: ids %q, want %q", name, got, want)
		}
	}
}

// TestSpawnerErrors: every failure before or in exec comes back as its
// errno, with no child left behind.
func TestSpawnerErrors(t *testing.T) {
	dir := t.TempDir()
	noexec := filepath.Join(dir, "noexec")
	os.WriteFile(noexec, []byte("#!/bin/sh\n"), 0o644)
	garbage := filepath.Join(dir, "garbage")
	os.WriteFile(garbage, []byte{0x7f, 'E', 'L', 'F', 0, 0, 0, 0}, 0o755)
	cases := []struct {
		name string
		a    procAttr
		want error
	}{
		{"missing", procAttr{path: filepath.Join(dir, "nope")}, syscall.ENOENT},
		{"not executable", procAttr{path: noexec}, syscall.EACCES},
		{"bad binary", procAttr{path: garbage}, syscall.ENOEXEC},
		{"missing dir", procAttr{path: "/bin/true", dir: filepath.Join(dir, "nodir")}, syscall.ENOENT},
		{"bad descriptor", procAttr{path: "/bin/true", files: [3]int{2, 2, 999}}, syscall.EBADF},
	}
	if os.Getuid() != 0 {
		cases = append(cases, struct {
			name string
			a    procAttr
			want error
		}{"setuid", procAttr{path: "/bin/true", cred: &syscall.Credential{Uid: 0, Gid: 0}}, syscall.EPERM})
	}
	for name, spawn := range spawners(t) {
		for _, c := range cases {
			a := c.a
			a.argv = []string{a.path}
			if a.files == [3]int{} {
				a.files = [3]int{2, 2, 2}
			}
			beginSpawn()
			pid, pidfd, err := spawn(&a)
			endSpawn()
			if err == nil {
				unix.Close(pidfd)
				t.Errorf("%s: %s: spawned pid %d, want %v", name, c.name, pid, c.want)
				continue
			}
			if !errors.Is(err, c.want) {
				t.Errorf("%s: %s: error %v, want %v", name, c.name, err, c.want)
			}
			// No zombie left: the failed child was reaped.
			var ci childInfo
			if err := waitid(unix.P_ALL, 0, &ci, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT); err == nil && ci.Pid != 0 {
				t.Errorf("%s: %s: child %d left unreaped", name, c.name, ci.Pid)
			}
		}
	}
}

// TestBootTicksStartTime: a spawn whose two bootTicks (child.tick0, tick1)
// are equal has that start time in /proc/PID/stat (what start relies on to
// skip reading it).
func TestBootTicksStartTime(t *testing.T) {
	decided := 0
	for i := 0; i < 50; i++ {
		beginSpawn()
		c, err := spawnProc(&procAttr{path: "/bin/true", argv: []string{"true"}, files: [3]int{2, 2, 2}})
		endSpawn()
		if err != nil {
			t.Fatal(err)
		}
		pid, pidfd, t0, t1 := c.pid, c.pidfd, c.tick0, c.tick1
		st, err := shm.StartTime(pid) // unreaped: readable even after exit
		var ci childInfo
		waitid(unix.P_PIDFD, pidfd, &ci, unix.WEXITED)
		unix.Close(pidfd)
		if err != nil {
			t.Fatal(err)
		}
		if st < t0 || st > t1 {
			t.Fatalf("start time %d outside the ticks around the spawn [%d, %d]", st, t0, t1)
		}
		if t0 == t1 {
			decided++
		}
	}
	if decided == 0 {
		t.Fatal("no spawn fell within one tick")
	}
}

// TestSpawnerEmptySigmask: a service started by the clone3 spawner has no
// signal blocked even when the spawning thread has every signal blocked.
// The probe is grep, exec'd directly: a shell would clear its mask itself.
// (syscall.ForkExec, the fallback, passes on the thread's mask, which on a
// Go thread is empty unless hbd itself was started with signals blocked.)
func TestSpawnerEmptySigmask(t *testing.T) {
	spawn, ok := spawners(t)["clone3"]
	if !ok {
		t.Skip("the clone3 spawner is not used here")
	}
	grep, err := exec.LookPath("grep")
	if err != nil {
		t.Skip("needs grep")
	}
	out, err := os.Create(filepath.Join(t.TempDir(), "mask"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	var st int
	func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var all, old unix.Sigset_t
		for i := range all.Val {
			all.Val[i] = ^uint64(0)
		}
		if err := unix.PthreadSigmask(unix.SIG_SETMASK, &all, &old); err != nil {
			t.Fatal(err)
		}
		defer unix.PthreadSigmask(unix.SIG_SETMASK, &old, nil)
		st = spawnWait(t, spawn, &procAttr{
			path: grep, argv: []string{"grep", "^SigBlk:", "/proc/self/status"},
			files: [3]int{-1, int(out.Fd()), 2},
		})
	}()
	b, err := os.ReadFile(out.Name())
	if err != nil || st != 0 {
		t.Fatalf("exit status %d, %v", st, err)
	}
	if got := string(b); got != "SigBlk:\t0000000000000000\n" {
		t.Errorf("child's mask: %q, want none blocked", got)
	}
}

// TestReapRespawn: reapRespawn reaps an exited child exactly once and starts
// the replacement only when the policy wants the status and no stop was
// set; with the clone3 spawner the replacement is started by the same call.
func TestReapRespawn(t *testing.T) {
	sleeper := &procAttr{path: "/bin/sleep", argv: []string{"sleep", "1000"}, files: [3]int{2, 2, 2}}
	exit0 := &procAttr{path: "/bin/true", argv: []string{"true"}, files: [3]int{2, 2, 2}}
	always := plugin.Respawn{Enabled: true}
	onFailure := plugin.Respawn{Enabled: true, OnFailure: true, ExitCodes: []int{0}}
	for _, tc := range []struct {
		name       string
		first      *procAttr
		kill       bool
		a          *procAttr // nil: reap only
		pol        plugin.Respawn
		stop       bool
		wantStatus int
		wantSpawn  bool
	}{
		{"killed, always", sleeper, true, sleeper, always, false, 137, true},
		{"killed, on failure", sleeper, true, sleeper, onFailure, false, 137, true},
		{"exit 0, on failure", exit0, false, sleeper, onFailure, false, 0, false},
		{"killed, stop set", sleeper, true, sleeper, always, true, 137, false},
		{"reap only", sleeper, true, nil, always, false, 137, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			beginSpawn()
			c, err := spawnProc(tc.first)
			if err == nil {
				trackPID(c.pid)
			}
			endSpawn()
			if err != nil {
				t.Fatal(err)
			}
			defer untrackPID(c.pid)
			if tc.kill {
				unix.Kill(c.pid, unix.SIGKILL)
			}
			var stop atomic.Bool
			stop.Store(tc.stop)
			beginSpawn()
			r := reapRespawn(c.pidfd, 5*time.Second, tc.a, tc.pol, &stop)
			if r.spawned() {
				trackPID(r.c.pid)
			}
			endSpawn()
			unix.Close(c.pidfd)
			if !r.ok || r.err != nil || r.status != tc.wantStatus {
				t.Fatalf("reaped %v, err %v, status %d; want reaped, status %d", r.ok, r.err, r.status, tc.wantStatus)
			}
			if !gone(c.pid) {
				t.Errorf("pid %d is still there after the reap", c.pid)
			}
			if !clone3Usable() {
				// The ForkExec fallback never spawns here: finish does.
				tc.wantSpawn = false
			}
			if r.tried != tc.wantSpawn {
				t.Fatalf("respawn tried: %v; want %v", r.tried, tc.wantSpawn)
			}
			if !r.tried {
				return
			}
			if r.spawnErr != nil {
				t.Fatalf("respawn: %v", r.spawnErr)
			}
			defer untrackPID(r.c.pid)
			defer unix.Close(r.c.pidfd)
			// The replacement runs the new program, and is ours to reap.
			waitFor(t, "the replacement to exec", func() bool {
				b, err := os.ReadFile("/proc/" + strconv.Itoa(r.c.pid) + "/cmdline")
				return err == nil && strings.HasPrefix(string(b), "sleep\x00")
			})
			unix.Kill(r.c.pid, unix.SIGKILL)
			var ci childInfo
			if err := waitid(unix.P_PIDFD, r.c.pidfd, &ci, unix.WEXITED); err != nil || int(ci.Pid) != r.c.pid {
				t.Errorf("reap of the replacement: pid %d, err %v; want pid %d", ci.Pid, err, r.c.pid)
			}
		})
	}
}

// TestStrayReaperWaitsForSpawns: while a spawn is under way the stray
// reaper leaves an untracked zombie alone (it could be a child not yet
// tracked); the end of the last spawn has it reaped.
func TestStrayReaperWaitsForSpawns(t *testing.T) {
	startReaper(slog.New(slog.DiscardHandler))
	defer stopReaper()
	reaped := make(chan int, 4)
	reaper.mu.Lock()
	reaper.reaped = func(pid, st int) { reaped <- pid }
	reaper.mu.Unlock()
	t.Cleanup(func() { reaper.mu.Lock(); reaper.reaped = nil; reaper.mu.Unlock() })

	beginSpawn()
	c, err := spawnProc(&procAttr{path: "/bin/true", argv: []string{"true"}, files: [3]int{2, 2, 2}})
	if err != nil {
		endSpawn()
		t.Fatal(err)
	}
	unix.Close(c.pidfd)
	// Not tracked: once it has exited it looks like a stray.
	waitFor(t, "the child to exit", func() bool {
		var ci childInfo
		return waitid(unix.P_PID, c.pid, &ci, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT) == nil && int(ci.Pid) == c.pid
	})
	kickReaper()
	time.Sleep(50 * time.Millisecond)
	select {
	case pid := <-reaped:
		t.Fatalf("pid %d reaped as a stray while a spawn was under way", pid)
	default:
	}
	if gone(c.pid) {
		t.Fatalf("pid %d reaped while a spawn was under way", c.pid)
	}
	endSpawn()
	select {
	case pid := <-reaped:
		if pid != c.pid {
			t.Errorf("reaped %d; want %d", pid, c.pid)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("pid %d not reaped after the spawn ended", c.pid)
	}
}

// TestSpawnerExtraFDs: the descriptors of procAttr.extra become the child's
// 3, 4, … in order, whatever their numbers in the plugin.
func TestSpawnerExtraFDs(t *testing.T) {
	for name, spawn := range spawners(t) {
		t.Run(name, func(t *testing.T) {
			a, err := shm.NewBeatArea("x")
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			b, err := shm.NewBeatArea("y")
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			out := filepath.Join(t.TempDir(), "fds")
			devnull, err := os.Open(os.DevNull)
			if err != nil {
				t.Fatal(err)
			}
			defer devnull.Close()
			dn := int(devnull.Fd())
			attr := &procAttr{path: "/bin/sh", argv: []string{"sh", "-c",
				`{ readlink /proc/self/fd/3; readlink /proc/self/fd/4; readlink /proc/self/fd/5 || echo none; } > "$1" 2>/dev/null`, "sh", out},
				env: []string{"PATH=/usr/bin:/bin"}, files: [3]int{dn, dn, dn}, extra: []int{b.FD(), a.FD()}}
			if st := spawnWait(t, spawn, attr); st != 0 {
				t.Fatalf("child exited %d", st)
			}
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			want := "/memfd:hb-beat:y (deleted)\n/memfd:hb-beat:x (deleted)\nnone\n"
			if string(got) != want {
				t.Errorf("child's descriptors 3, 4, 5:\n%s\nwant\n%s", got, want)
			}
		})
	}
}

// TestSpawnerNothingElse: the child holds its 0, 1, 2 and extra
// descriptors and nothing else of the plugin's, not even a descriptor
// without close-on-exec, with thousands open in the plugin; and the
// plugin's own descriptors are unchanged by the spawn (the clone3 spawner
// shares the table with the child until the child has copied its low end).
// The clone3 spawner only: the syscall.ForkExec fallback relies on
// close-on-exec, which every descriptor the plugin opens has.
func TestSpawnerNothingElse(t *testing.T) {
	spawn, ok := spawners(t)["clone3"]
	if !ok {
		t.Skip("clone3 is not usable here")
	}
	var open []*os.File
	defer func() {
		for _, f := range open {
			f.Close()
		}
	}()
	for range 2000 {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, f)
	}
	inherit, err := unix.Open(os.DevNull, unix.O_RDONLY, 0) // no O_CLOEXEC
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(inherit)
	stdio := func() []string {
		var l []string
		for fd := range 3 {
			s, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
			l = append(l, s)
		}
		return l
	}
	before := stdio()
	for _, round := range []string{"first", "second"} { // a reserved set used again is clean
		t.Run(round, func(t *testing.T) {
			a, err := shm.NewBeatArea("x")
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			out := filepath.Join(t.TempDir(), "fds")
			w, err := os.Create(out)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			dn := int(open[0].Fd())
			attr := &procAttr{path: "/bin/ls", argv: []string{"ls", "-1", "/proc/self/fd"},
				env: []string{"PATH=/usr/bin:/bin"}, files: [3]int{dn, int(w.Fd()), dn}, extra: []int{a.FD()}}
			if st := spawnWait(t, spawn, attr); st != 0 {
				t.Fatalf("child exited %d", st)
			}
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			// 0, 1, 2, the beat area as 3, and ls's own directory.
			if want := "0\n1\n2\n3\n4\n"; string(got) != want {
				t.Errorf("the child's descriptors:\n%s\nwant\n%s", got, want)
			}
			if after := stdio(); !slices.Equal(after, before) {
				t.Errorf("the plugin's descriptors 0, 1, 2 were %q, are %q after the spawn", before, after)
			}
		})
	}
}
