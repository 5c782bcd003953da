// Package bridgetest starts real process managers (runsv, s6-supervise,
// supervisord) on a scratch directory for tests, never as a system
// service, and makes sure each test leaves none of their processes
// behind.
package bridgetest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/hbshim/hb/bridge"
	"github.com/hbshim/hb/shm"
)

// TB is what the helpers need of a test: testing.TB has it, and so can a
// benchmark (cmd/hbbench) that is not a test.
type TB interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Errorf(format string, args ...any)
	Skip(args ...any)
	Skipf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

// Need skips t unless every binary is installed and the test runs as root
// (the managers' directories must be root's for hb to trust them).
func Need(t TB, bins ...string) {
	t.Helper()
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s is not installed (Debian: apt-get install runit s6 supervisor): %v", b, err)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: hb trusts only service directories and sockets root owns")
	}
}

// Manager is one manager process the test started.
type Manager struct {
	Kind string
	Dir  string // runit, s6: the service directory; supervisord: its scratch directory
	URL  string // supervisord: server_url
	cmd  *exec.Cmd
	t    TB
	args []string
	// Process is supervisord's group:name of the program.
	Process string
	orphans []int // programs left running by Kill
	closed  bool
}

// PID is the manager's PID.
func (m *Manager) PID() int { return m.cmd.Process.Pid }

// scratch is a root-owned 0755 directory under the test's temp directory.
func scratch(t TB) string {
	d := t.TempDir()
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// RunScript is a ./run that execs command (shell words).
func RunScript(command string) string { return "#!/bin/sh\nexec " + command + "\n" }

// Runit starts runsv on a new service directory NAME whose ./run is run.
func Runit(t TB, name, run string) *Manager {
	Need(t, "runsv", "sv")
	dir := filepath.Join(scratch(t), name)
	mustServiceDir(t, dir, run)
	m := &Manager{Kind: bridge.Runit, Dir: dir, t: t, args: []string{"runsv", dir}}
	m.Start()
	t.Cleanup(m.Close)
	m.WaitUp()
	return m
}

// S6 starts s6-supervise on a new service directory NAME.
func S6(t TB, name, run string) *Manager {
	Need(t, "s6-supervise", "s6-svc", "s6-svstat")
	dir := filepath.Join(scratch(t), name)
	mustServiceDir(t, dir, run)
	m := &Manager{Kind: bridge.S6, Dir: dir, t: t, args: []string{"s6-supervise", dir}}
	m.Start()
	t.Cleanup(m.Close)
	m.WaitUp()
	return m
}

func mustServiceDir(t TB, dir, run string) {
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "run"), []byte(run), 0o755); err != nil {
		t.Fatal(err)
	}
}

// Supervisord starts supervisord (nodaemon) with one [program:NAME] of
// command, startsecs 1, autorestart, and, when listener is not empty, an
// [eventlistener:hb] running listener (a command line).
func Supervisord(t TB, name, command, listener string) *Manager {
	Need(t, "supervisord", "supervisorctl")
	dir := scratch(t)
	sock := filepath.Join(dir, "supervisor.sock")
	conf := fmt.Sprintf(`[unix_http_server]
file=%[1]s
chmod=0700

[supervisord]
nodaemon=true
logfile=%[2]s/supervisord.log
pidfile=%[2]s/supervisord.pid
childlogdir=%[2]s

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://%[1]s

[include]
files=%[2]s/conf.d/*.conf

[program:%[3]s]
command=%[4]s
startsecs=1
autorestart=true
stopsignal=KILL
stdout_logfile=%[2]s/%[3]s.out
stderr_logfile=%[2]s/%[3]s.err
`, sock, dir, name, command)
	if listener != "" {
		conf += fmt.Sprintf(`
[eventlistener:hb]
command=%s
events=PROCESS_STATE,PROCESS_GROUP
buffer_size=100
stdout_logfile=NONE
stderr_logfile=%s/listener.err
autorestart=true
`, listener, dir)
	}
	cf := filepath.Join(dir, "supervisord.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "conf.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	m := &Manager{Kind: bridge.Supervisord, Dir: dir, URL: "unix://" + sock, t: t,
		args: []string{"supervisord", "-c", cf}, Process: name + ":" + name}
	m.Start()
	t.Cleanup(m.Close)
	m.WaitUp()
	return m
}

// AddProgram adds [program:NAME] running command to supervisord's
// configuration (an included file) and applies it as an operator would:
// supervisorctl reread, then update, which starts it.
func (m *Manager) AddProgram(name, command string) {
	m.t.Helper()
	conf := fmt.Sprintf("[program:%[1]s]\ncommand=%[2]s\nstartsecs=1\nautorestart=true\nstopsignal=KILL\n"+
		"stdout_logfile=%[3]s/%[1]s.out\nstderr_logfile=%[3]s/%[1]s.err\n", name, command, m.Dir)
	if err := os.WriteFile(filepath.Join(m.Dir, "conf.d", name+".conf"), []byte(conf), 0o644); err != nil {
		m.t.Fatal(err)
	}
	m.update()
}

// AddEventListener adds [eventlistener:NAME] running command (events
// PROCESS_STATE) as AddProgram adds a program; RemoveProgram removes it.
func (m *Manager) AddEventListener(name, command string) {
	m.t.Helper()
	conf := fmt.Sprintf("[eventlistener:%[1]s]\ncommand=%[2]s\nevents=PROCESS_STATE\nstdout_logfile=NONE\n"+
		"stderr_logfile=%[3]s/%[1]s.err\n", name, command, m.Dir)
	if err := os.WriteFile(filepath.Join(m.Dir, "conf.d", name+".conf"), []byte(conf), 0o644); err != nil {
		m.t.Fatal(err)
	}
	m.update()
}

// RemoveProgram removes what AddProgram added: supervisorctl reread and
// update stop the program and remove it.
func (m *Manager) RemoveProgram(name string) {
	m.t.Helper()
	if err := os.Remove(filepath.Join(m.Dir, "conf.d", name+".conf")); err != nil {
		m.t.Fatal(err)
	}
	m.update()
}

func (m *Manager) update() {
	m.t.Helper()
	cf := filepath.Join(m.Dir, "supervisord.conf")
	for _, verb := range []string{"reread", "update"} {
		if out, err := exec.Command("supervisorctl", "-c", cf, verb).CombinedOutput(); err != nil {
			m.t.Fatalf("supervisorctl %s: %v\n%s", verb, err, out)
		}
	}
}

// ProcessPID is the PID of supervisord's process group:name while it is
// RUNNING (supervisord only).
func (m *Manager) ProcessPID(process string) (int, error) {
	c, err := bridge.NewSupervisor(m.URL)
	if err != nil {
		return 0, err
	}
	in, err := c.ProcessInfo(context.Background(), process)
	if err != nil {
		return 0, err
	}
	if in.State != 20 {
		return 0, fmt.Errorf("%s is %s", process, in.StateName)
	}
	return in.PID, nil
}

// WaitProcess waits until supervisord reports process (group:name)
// RUNNING and returns its PID.
func (m *Manager) WaitProcess(process string) int {
	m.t.Helper()
	return waitPID(m.t, "supervisord "+process, func() (int, error) { return m.ProcessPID(process) })
}

func waitPID(t TB, what string, pid func() (int, error)) int {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		p, err := pid()
		if err == nil && p > 0 {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not report its program up: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Start starts the manager (again).
func (m *Manager) Start() {
	m.t.Helper()
	cmd := exec.Command(m.args[0], m.args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A file, not a pipe: a program the manager leaves behind (Kill) keeps
	// its descriptors, and Wait would wait for a pipe's last writer.
	out, err := os.OpenFile(filepath.Join(filepath.Dir(m.Dir), m.Kind+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		m.t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		m.t.Fatalf("%s: %v", m.args[0], err)
	}
	m.cmd = cmd
}

// WaitUp waits until the manager reports its program running and returns
// the program's PID.
func (m *Manager) WaitUp() int {
	m.t.Helper()
	return waitPID(m.t, m.Kind, m.ProgramPID)
}

// ProgramPID is the program's PID as the manager reports it now (0: not
// up): runit's and s6's status file, supervisord's getProcessInfo.
func (m *Manager) ProgramPID() (int, error) {
	switch m.Kind {
	case bridge.Runit, bridge.S6:
		b, err := os.ReadFile(filepath.Join(m.Dir, "supervise", "status"))
		if err != nil {
			return 0, err
		}
		st, err := bridge.Decode(m.Kind, b)
		return st.PID, err
	}
	return m.ProcessPID(m.Process)
}

// Kill SIGKILLs the manager alone (its program lives on, re-parented) and
// waits for it.
func (m *Manager) Kill() {
	m.t.Helper()
	if pid, err := m.ProgramPID(); err == nil && pid > 0 {
		m.orphans = append(m.orphans, pid)
	}
	m.orphans = append(m.orphans, descendants(m.cmd.Process.Pid)...)
	_ = m.cmd.Process.Kill()
	_ = m.cmd.Wait()
}

// Close stops the manager and its program and checks that no process of
// the scratch directory is left.
func (m *Manager) Close() {
	if m.closed {
		return
	}
	m.closed = true
	pids := append(descendants(m.cmd.Process.Pid), m.orphans...)
	if prog, err := m.ProgramPID(); err == nil && prog > 0 {
		pids = append(pids, prog)
	}
	switch m.Kind {
	case bridge.Runit:
		_ = exec.Command("sv", "-w", "5", "exit", m.Dir).Run()
	case bridge.S6:
		_ = exec.Command("s6-svc", "-wD", "-T", "5000", "-xd", m.Dir).Run()
	default:
		_ = m.cmd.Process.Signal(syscall.SIGTERM)
	}
	done := make(chan struct{})
	go func() { _ = m.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = m.cmd.Process.Kill()
		<-done
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pid := range pids {
		for i := 0; i < 500 && alive(pid); i++ {
			time.Sleep(10 * time.Millisecond)
		}
		if alive(pid) {
			m.t.Errorf("%s: pid %d outlived the test", m.Kind, pid)
		}
	}
}

// descendants are the processes in pid's process group.
func descendants(pid int) []int {
	var out []int
	for n, st := range procStats() {
		if st.PGRP == pid && n != pid {
			out = append(out, n)
		}
	}
	return out
}

// procStats are the /proc/PID/stat records of every process, by PID.
func procStats() map[int]shm.Stat {
	out := map[int]shm.Stat{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := shm.ReadStat(n); err == nil {
			out[n] = st
		}
	}
	return out
}

// alive: pid exists and is not a zombie.
func alive(pid int) bool {
	st, err := shm.ReadStat(pid)
	return err == nil && st.State != 'Z'
}
