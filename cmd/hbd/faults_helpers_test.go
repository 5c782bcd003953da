package main

// Helpers of the fault-injection suite (faults_test.go), on top of the
// end-to-end harness (harness_test.go).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/shm"
)

// userHZ is the unit of utime and stime in /proc/PID/stat (USER_HZ, which
// Linux fixes at 100 on every architecture hb supports).
const userHZ = 100

// faultReport counts what one fault test did and prints one summary line
// when the test ends (visible with -v), so the numbers in the README table
// come from a real run.
type faultReport struct {
	t    *testing.T
	name string

	mu        sync.Mutex
	injected  int // faults injected
	survived  int // of those, the ones after which every check held
	inputs    int // bad inputs tried
	restarted int // clients restarted although nothing asked for it
	lost      int // exits that happened and were not reported
	notes     []string
}

// newFaultReport registers the summary line. Call it before NewHarness, so
// that the line is printed after the harness's cleanup checks have run.
func newFaultReport(t *testing.T, name string) *faultReport {
	r := &faultReport{t: t, name: name}
	t.Cleanup(func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		result := "PASS"
		if t.Failed() {
			result = "FAIL"
		}
		t.Logf("FAULT %-10s faults_injected=%d survived=%d inputs_tried=%d clients_restarted_unnecessarily=%d exits_lost=%d result=%s%s",
			r.name, r.injected, r.survived, r.inputs, r.restarted, r.lost, result, strings.Join(r.notes, ""))
	})
	return r
}

// fault runs one injection and its checks: it counts as survived if the
// test has not failed by the end of f.
func (r *faultReport) fault(t *testing.T, f func()) {
	t.Helper()
	r.mu.Lock()
	r.injected++
	r.mu.Unlock()
	f()
	if !t.Failed() {
		r.mu.Lock()
		r.survived++
		r.mu.Unlock()
	}
}

// attack is fault for a hostile input or action: it prints what is tried
// as the suite tries it (`make faults` shows each attack as it runs), then
// runs f and its checks as one injected fault.
func (r *faultReport) attack(t *testing.T, what string, f func()) {
	t.Helper()
	t.Logf("ATTACK %s: %s", r.name, what)
	r.fault(t, f)
}

func (r *faultReport) addInputs(n int) { r.mu.Lock(); r.inputs += n; r.mu.Unlock() }

func (r *faultReport) addRestarted(n int) { r.mu.Lock(); r.restarted += n; r.mu.Unlock() }

func (r *faultReport) addLost(n int) { r.mu.Lock(); r.lost += n; r.mu.Unlock() }

// note adds key=value to the summary line.
func (r *faultReport) note(k string, v any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.notes = append(r.notes, fmt.Sprintf(" %s=%v", k, v))
}

// procStat is what the suite reads from /proc/PID/stat.
type procStat struct {
	State        byte
	PPID, PGID   int
	UTime, STime uint64 // clock ticks (userHZ)
	StartTime    uint64 // clock ticks since boot
}

// readStat parses /proc/PID/stat; a zombie still has one.
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	// Fields after the command, numbered from 3 (state).
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	num := func(k int) uint64 { n, _ := strconv.ParseUint(f[k-3], 10, 64); return n }
	return procStat{
		State: f[0][0], PPID: int(num(4)), PGID: int(num(5)),
		UTime: num(14), STime: num(15), StartTime: num(22),
	}, nil
}

// cpuTicks is the user+system CPU time of pid, in clock ticks.
func cpuTicks(t *testing.T, pid int) uint64 {
	t.Helper()
	st, err := readStat(pid)
	if err != nil {
		t.Fatalf("cpu time of %d: %v", pid, err)
	}
	return st.UTime + st.STime
}

// stillThere reports whether the process the harness tracked as pid still
// exists in any form, zombie included (same PID and start time).
func (h *Harness) stillThere(pid int) bool {
	st, ok := h.tracked[pid]
	if !ok {
		return false
	}
	now, err := shm.StartTime(pid)
	return err == nil && now == st
}

// waitReaped waits until the tracked pid has left the process table, zombie
// included: its parent reaped it.
func (h *Harness) waitReaped(pid int, what string) {
	h.T.Helper()
	h.Eventually(fmt.Sprintf("%s (pid %d) to be reaped", what, pid), func() (bool, string) {
		st, _ := readStat(pid)
		return !h.stillThere(pid), fmt.Sprintf("state %c ppid %d", st.State, st.PPID)
	})
}

// instanceCensus follows, for the harness's table, how many instances of
// each service run at the same time. An instance is a process group of live
// processes whose environment has HB_SERVICE=<name> and HB_SHM=<table path>
// (what the plugin gives every service): a service's children share its
// group, a second incarnation has its own.
type instanceCensus struct {
	h    *Harness
	stop chan struct{}
	done chan struct{}

	mu    sync.Mutex
	scans int
	max   map[string]int    // service -> most instances seen at once
	worst map[string]string // service -> description of that moment
}

// watchInstances scans /proc until the returned census is stopped.
func watchInstances(h *Harness) *instanceCensus {
	c := &instanceCensus{h: h, stop: make(chan struct{}), done: make(chan struct{}),
		max: map[string]int{}, worst: map[string]string{}}
	go func() {
		defer close(c.done)
		for {
			c.scan()
			select {
			case <-c.stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return c
}

func (c *instanceCensus) scan() {
	groups := serviceGroups(c.h.ShmPath)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.scans++
	for name, pg := range groups {
		if len(pg) > c.max[name] {
			c.max[name] = len(pg)
			c.worst[name] = fmt.Sprint(pg)
		}
	}
}

// serviceGroups maps each service of the table at shmPath to its live
// process groups, each with its processes.
func serviceGroups(shmPath string) map[string]map[int][]int {
	out := map[string]map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	mark := []byte("\x00HB_SHM=" + shmPath + "\x00")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil || len(env) == 0 {
			continue
		}
		env = append(append([]byte{0}, env...), 0)
		if !bytes.Contains(env, mark) {
			continue
		}
		i := bytes.Index(env, []byte("\x00HB_SERVICE="))
		if i < 0 {
			continue
		}
		name := env[i+len("\x00HB_SERVICE="):]
		name = name[:bytes.IndexByte(name, 0)]
		st, err := readStat(pid)
		if err != nil || st.State == 'Z' || st.State == 'X' {
			continue
		}
		if out[string(name)] == nil {
			out[string(name)] = map[int][]int{}
		}
		out[string(name)][st.PGID] = append(out[string(name)][st.PGID], pid)
	}
	return out
}

// Stop ends the census and fails the test for every service seen with more
// than one instance at once. It returns the number of scans made.
func (c *instanceCensus) Stop(t *testing.T) int {
	t.Helper()
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	names := make([]string, 0, len(c.max))
	for n := range c.max {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if c.max[n] > 1 {
			t.Errorf("service %s: %d instances at once (process groups and their pids: %s)", n, c.max[n], c.worst[n])
		}
	}
	return c.scans
}

// rawHTTP sends one HTTP request to hbd's control socket as this process
// (root) and returns the status code and body.
func rawHTTP(t *testing.T, socket, method, path, contentType string, body io.Reader, header http.Header) (int, string) {
	t.Helper()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: WaitTimeout}
	req, err := http.NewRequest(method, "http://hb"+path, body)
	if err != nil {
		t.Fatalf("request %s %s: %v", method, path, err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}

// rawConn writes bytes that are not a sane HTTP request to the socket and
// returns what the server answered before it closed the connection.
func rawConn(t *testing.T, socket string, payload []byte) string {
	t.Helper()
	c, err := net.DialTimeout("unix", socket, WaitTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", socket, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(WaitTimeout))
	_, _ = c.Write(payload)
	if uc, ok := c.(*net.UnixConn); ok {
		_ = uc.CloseWrite()
	}
	b, _ := io.ReadAll(io.LimitReader(c, 1<<20))
	return string(b)
}

// runAs runs prog as uid:gid (no supplementary groups) and returns its
// output and exit code. Root only.
func runAs(t *testing.T, uid, gid uint32, prog string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), WaitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
	cmd.Dir = "/"
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("run %s as %d: %v", prog, uid, err)
	}
	return out.String(), errb.String(), code
}

// publicCopy copies the executable src into a directory anyone may enter
// and returns the copy's path (the test binaries live in private
// directories).
func publicCopy(t *testing.T, dir, src string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, filepath.Base(src))
	// The write descriptor must not leak into a child forked meanwhile by
	// another test: a child holding it open until its exec makes the exec
	// of dst fail with ETXTBSY. os/exec forks under ForkLock's read side.
	syscall.ForkLock.Lock()
	err = os.WriteFile(dst, b, 0o755)
	syscall.ForkLock.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// compileC builds a small C program from source into dir, or skips the test
// when there is no C compiler.
func compileC(t *testing.T, dir, name, src string) string {
	t.Helper()
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "gcc"
	}
	if _, err := exec.LookPath(cc); err != nil {
		t.Skipf("no C compiler (%s) to build %s: %v", cc, name, err)
	}
	c := filepath.Join(dir, name+".c")
	if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, name)
	if b, err := exec.Command(cc, "-std=c11", "-O2", "-Wall", "-pthread", "-o", out, c).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", cc, err, b)
	}
	return out
}

// fileState is what "untouched" means for a file: content, mode, owner,
// modification time and the target of a symlink.
type fileState struct {
	Content string
	Mode    os.FileMode
	UID     uint32
	ModNs   int64
	Link    string
}

func readFileState(t *testing.T, path string) fileState {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		t.Fatalf("lstat %s: %v", path, err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	fs := fileState{Mode: fi.Mode(), UID: st.Uid, ModNs: fi.ModTime().UnixNano()}
	if fi.Mode()&os.ModeSymlink != 0 {
		fs.Link, _ = os.Readlink(path)
		return fs
	}
	if fi.IsDir() {
		return fs
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fs.Content = string(b)
	return fs
}

// statusByName indexes hbctl status --json.
func statusByName(h *Harness) map[string]api.ServiceStatus {
	h.T.Helper()
	out := map[string]api.ServiceStatus{}
	for _, st := range h.Status() {
		out[st.Name] = st
	}
	return out
}
