package bridgetest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hbshim/hb/bridge"
	"github.com/hbshim/hb/shm"
)

// ScanDir is runsvdir or s6-svscan running on a scratch scan directory,
// to which a test adds service directories and from which it removes
// them as an operator would.
type ScanDir struct {
	Kind   string // bridge.Runit or bridge.S6
	Dir    string // the scan directory
	store  string // service directories linked or renamed into Dir are made here
	cmd    *exec.Cmd
	t      TB
	real   map[string]string // service directories added, by name: where they are
	pids   map[int]bool      // processes seen under the scanner, killed by Close
	log    string            // the scanner's output
	closed bool
}

// How says how Add puts a service directory into the scan directory.
type How int

const (
	// Mkdir makes the directory in place, then writes its ./run: the
	// scanner may see it before its ./run.
	Mkdir How = iota
	// Rename makes the service directory beside and renames it in.
	Rename
	// Symlink makes it beside and links it in (runit's /etc/sv layout).
	Symlink
)

// Runsvdir starts runsvdir on a new, empty scan directory. runsvdir looks
// at it every 5 seconds.
func Runsvdir(t TB) *ScanDir {
	Need(t, "runsvdir", "runsv", "sv")
	return startScan(t, bridge.Runit, "runsvdir")
}

// S6Svscan starts s6-svscan on a new, empty scan directory. Add and
// Remove make it scan at once (s6-svscanctl -a).
func S6Svscan(t TB) *ScanDir {
	Need(t, "s6-svscan", "s6-svscanctl", "s6-supervise", "s6-svc")
	return startScan(t, bridge.S6, "s6-svscan")
}

func startScan(t TB, kind, prog string) *ScanDir {
	root := scratch(t)
	s := &ScanDir{Kind: kind, Dir: filepath.Join(root, "scan"), store: filepath.Join(root, "sv"), t: t,
		real: map[string]string{}, pids: map[int]bool{}}
	for _, d := range []string{s.Dir, s.store} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s.log = filepath.Join(root, prog+".log")
	out, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	s.cmd = exec.Command(prog, s.Dir)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	s.cmd.Stdout, s.cmd.Stderr = out, out
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("%s: %v", prog, err)
	}
	t.Cleanup(s.Close)
	return s
}

// PID is the scanner's PID.
func (s *ScanDir) PID() int { return s.cmd.Process.Pid }

// Add puts a service directory NAME whose ./run is run into the scan
// directory, the way how says, and makes s6-svscan scan.
func (s *ScanDir) Add(name, run string, how How) {
	s.t.Helper()
	in := filepath.Join(s.Dir, name)
	switch how {
	case Mkdir:
		if err := os.Mkdir(in, 0o755); err != nil {
			s.t.Fatal(err)
		}
		// The scanner (and hb) may look in between.
		if err := os.WriteFile(filepath.Join(in, "run"), []byte(run), 0o755); err != nil {
			s.t.Fatal(err)
		}
		s.real[name] = in
	case Rename, Symlink:
		d := filepath.Join(s.store, name)
		mustServiceDir(s.t, d, run)
		var err error
		if how == Rename {
			err = os.Rename(d, in)
			d = in
		} else {
			err = os.Symlink(d, in)
		}
		if err != nil {
			s.t.Fatal(err)
		}
		s.real[name] = d
	}
	s.rescan()
}

// Remove takes NAME out of the scan directory (removes the symlink, or
// renames the directory out), then stops its supervisor and program as the
// scanner does not (runsv and s6-supervise of a removed directory may live
// on): sv exit, s6-svc -xd.
func (s *ScanDir) Remove(name string) {
	s.t.Helper()
	s.see()
	in := filepath.Join(s.Dir, name)
	d := s.real[name]
	if d == in {
		d = filepath.Join(s.store, name+".removed")
		if err := os.Rename(in, d); err != nil {
			s.t.Fatal(err)
		}
	} else if err := os.Remove(in); err != nil {
		s.t.Fatal(err)
	}
	delete(s.real, name)
	s.rescan()
	s.stop(d)
}

func (s *ScanDir) stop(dir string) {
	if s.Kind == bridge.Runit {
		_ = exec.Command("sv", "-w", "5", "exit", dir).Run()
	} else {
		_ = exec.Command("s6-svc", "-wD", "-T", "5000", "-xd", dir).Run()
	}
}

// rescan makes s6-svscan scan at once. s6-svscanctl answers "supervisor
// not listening" when nothing has s6-svscan's control FIFO open; that is
// retried for a while, and if it lasts, the error says whether s6-svscan
// is still alive, how it ended if not, and the end of its log.
func (s *ScanDir) rescan() {
	if s.Kind != bridge.S6 {
		return
	}
	var (
		out []byte
		err error
	)
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if out, err = exec.Command("s6-svscanctl", "-a", s.Dir).CombinedOutput(); err == nil {
			return
		}
		if !strings.Contains(string(out), "not listening") || !alive(s.cmd.Process.Pid) || time.Now().After(deadline) {
			break
		}
	}
	s.t.Errorf("s6-svscanctl -a: %v: %s; s6-svscan %d: %s; its log ends:\n%s",
		err, out, s.cmd.Process.Pid, s.scannerState(), tail(s.log, 2048))
}

// scannerState is the scanner's state as /proc has it; for a zombie, how
// it ended.
func (s *ScanDir) scannerState() string {
	st, err := shm.ReadStat(s.cmd.Process.Pid)
	switch {
	case err != nil:
		return err.Error()
	case st.State != 'Z':
		return "alive, state " + string(st.State)
	case !st.HaveExitCode:
		return "exited"
	}
	ws := syscall.WaitStatus(st.ExitCode)
	if ws.Signaled() {
		return "exited, killed by " + ws.Signal().String()
	}
	return fmt.Sprintf("exited with status %d", ws.ExitStatus())
}

// tail is the last n bytes of the file at path.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// ProgramPID is NAME's program's PID as its supervise/status says (0: not
// up).
func (s *ScanDir) ProgramPID(name string) (int, error) {
	d := s.real[name]
	if d == "" {
		return 0, errors.New(name + ": not added")
	}
	b, err := os.ReadFile(filepath.Join(d, "supervise", "status"))
	if err != nil {
		return 0, err
	}
	st, err := bridge.Decode(s.Kind, b)
	if st.PID > 0 {
		s.pids[st.PID] = true
	}
	return st.PID, err
}

// WaitUp waits until NAME's supervisor reports its program up (runsvdir
// starts a runsv within 5 s of the directory's appearance) and returns the
// program's PID.
func (s *ScanDir) WaitUp(name string) int {
	s.t.Helper()
	return waitPID(s.t, s.Kind+" "+name, func() (int, error) { return s.ProgramPID(name) })
}

// see records every process under the scanner, for Close.
func (s *ScanDir) see() {
	for _, pid := range tree(s.cmd.Process.Pid) {
		s.pids[pid] = true
	}
}

// Close stops the scanner, every supervisor and program it ran, and checks
// that none is left.
func (s *ScanDir) Close() {
	if s.closed {
		return
	}
	s.closed = true
	s.see()
	_ = s.cmd.Process.Signal(syscall.SIGTERM) // runsvdir exits at once; s6-svscan stops its supervisors
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
	for _, d := range s.real {
		s.stop(d)
	}
	for pid := range s.pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for pid := range s.pids {
		for i := 0; i < 500 && alive(pid); i++ {
			time.Sleep(10 * time.Millisecond)
		}
		if alive(pid) {
			s.t.Errorf("%s: pid %d outlived the test", s.Kind, pid)
		}
	}
}

// tree is every descendant of pid (by parent links in /proc).
func tree(pid int) []int {
	parent := map[int]int{}
	for n, st := range procStats() {
		parent[n] = st.PPID
	}
	var out []int
	for n := range parent {
		for p := parent[n]; p > 1; p = parent[p] {
			if p == pid {
				out = append(out, n)
				break
			}
		}
	}
	return out
}
