package main

import (
	_ "embed"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

//go:embed csrc/pause.c
var pauseSource []byte

//go:embed csrc/bareloop.c
var bareloopSource []byte

// notifier receives the pause client's datagrams (its PID) and keeps, for
// each PID, when it arrived.
type notifier struct {
	conn *net.UnixConn
	mu   sync.Mutex
	seen map[uint32]time.Time
	more chan struct{} // poked after every datagram
}

func newNotifier(path string) (*notifier, error) {
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	_ = c.SetReadBuffer(8 << 20)
	n := &notifier{conn: c, seen: map[uint32]time.Time{}, more: make(chan struct{}, 1)}
	go func() {
		var b [4]byte
		for {
			k, err := c.Read(b[:])
			if err != nil {
				return
			}
			if k != 4 {
				continue
			}
			pid := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
			n.mu.Lock()
			n.seen[pid] = time.Now()
			n.mu.Unlock()
			select {
			case n.more <- struct{}{}:
			default:
			}
		}
	}()
	return n, nil
}

func (n *notifier) close() { _ = n.conn.Close() }

// since returns the PIDs that arrived at or after t0, and the last arrival.
func (n *notifier) since(t0 time.Time) (map[uint32]time.Time, time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	got := map[uint32]time.Time{}
	var last time.Time
	for pid, t := range n.seen {
		if !t.Before(t0) {
			got[pid] = t
			if t.After(last) {
				last = t
			}
		}
	}
	return got, last
}

// wait waits until count PIDs have arrived since t0 that are not in old,
// and returns them and how long after t0 the last one came.
func (n *notifier) wait(t0 time.Time, count int, old map[uint32]time.Time, timeout time.Duration) (map[uint32]time.Time, time.Duration, error) {
	deadline := time.After(timeout)
	for {
		got, last := n.since(t0)
		for pid := range old {
			delete(got, pid)
		}
		if len(got) >= count {
			return got, last.Sub(t0), nil
		}
		select {
		case <-n.more:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			return got, 0, fmt.Errorf("%d of %d running after %v", len(got), count, timeout)
		}
	}
}

// peerSup is one supervisor of the peers test, running n pause clients.
type peerSup struct {
	name string
	need string // the binary it needs on PATH ("" for none)
	// start launches the supervisor with n services under dir and returns
	// the PIDs that are the supervisor (for CPU and memory) and a stop.
	start func(e *env, dir, client string, n int) (sup func() []int, stop func(), err error)
}

// descendants returns top and every descendant of it, but not the pause
// clients (the services).
func descendants(top int, client string) []int {
	kids := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(f[1]); err == nil {
			kids[ppid] = append(kids[ppid], pid)
		}
	}
	var out []int
	var walk func(int)
	walk = func(p int) {
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", p)); exe == client {
			return
		}
		out = append(out, p)
		for _, k := range kids[p] {
			walk(k)
		}
	}
	walk(top)
	return out
}

// pssMiB is the sum of the processes' proportional set sizes.
func pssMiB(pids []int) float64 {
	kb := 0.0
	for _, p := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", p))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "Pss:"); ok {
				if f := strings.Fields(v); len(f) > 0 {
					x, _ := strconv.ParseFloat(f[0], 64)
					kb += x
				}
				break
			}
		}
	}
	return kb / 1024
}

// cpuNs is the processes' CPU time in nanoseconds: the sum over their
// threads of the scheduler's run time (/proc/PID/task/TID/schedstat), which
// unlike utime+stime (10 ms ticks) sees the few microseconds an idle
// supervisor spends.
func cpuNs(pids []int) uint64 {
	var t uint64
	for _, p := range pids {
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", p))
		for _, task := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", p, task.Name()))
			if err != nil {
				continue
			}
			if f := strings.Fields(string(b)); len(f) > 0 {
				v, _ := strconv.ParseUint(f[0], 10, 64)
				t += v
			}
		}
	}
	return t
}

// startGroup starts cmd in its own process group and returns a stop that
// sends SIGTERM, waits up to 10 s, then SIGKILLs the group.
func startGroup(cmd *exec.Cmd) (func(), error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
			}
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		})
	}
	atExit(stop)
	return stop, nil
}

// serviceDirs makes n service directories under dir whose run is the pause
// client (a symlink: runit and s6 exec ./run with no argument).
func serviceDirs(dir, client string, n int) error {
	for i := range n {
		d := filepath.Join(dir, fmt.Sprintf("s%05d", i))
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if err := os.Symlink(client, filepath.Join(d, "run")); err != nil {
			return err
		}
	}
	return nil
}

func peerSups(bareloop string) []peerSup {
	return []peerSup{
		{name: "bare fork/exec", start: func(e *env, dir, client string, n int) (func() []int, func(), error) {
			cmd := exec.Command(bareloop, strconv.Itoa(n), client)
			stop, err := startGroup(cmd)
			if err != nil {
				return nil, nil, err
			}
			return func() []int { return []int{cmd.Process.Pid} }, stop, nil
		}},
		{name: "hb", start: func(e *env, dir, client string, n int) (func() []int, func(), error) {
			services := make([]svc, n)
			for i := range services {
				services[i] = svc{name: fmt.Sprintf("s%05d", i), command: []string{client}}
			}
			h, err := e.startHBD(hbdConfig{label: "peers", detector: "auto", slots: max(1024, n), services: services})
			if err != nil {
				return nil, nil, err
			}
			return func() []int { return []int{h.pid(), h.pluginPID()} }, h.stop, nil
		}},
		{name: "runit", need: "runsvdir", start: func(e *env, dir, client string, n int) (func() []int, func(), error) {
			scan := filepath.Join(dir, "service")
			if err := serviceDirs(scan, client, n); err != nil {
				return nil, nil, err
			}
			// Without -P, the runsv processes stay in runsvdir's process
			// group, which the stop kills.
			cmd := exec.Command("runsvdir", scan)
			stop, err := startGroup(cmd)
			if err != nil {
				return nil, nil, err
			}
			return func() []int { return descendants(cmd.Process.Pid, client) }, stop, nil
		}},
		{name: "s6", need: "s6-svscan", start: func(e *env, dir, client string, n int) (func() []int, func(), error) {
			scan := filepath.Join(dir, "service")
			if err := serviceDirs(scan, client, n); err != nil {
				return nil, nil, err
			}
			cmd := exec.Command("s6-svscan", "-c", strconv.Itoa(n+16), scan)
			stop, err := startGroup(cmd)
			if err != nil {
				return nil, nil, err
			}
			return func() []int { return descendants(cmd.Process.Pid, client) }, stop, nil
		}},
		{name: "supervisord", need: "supervisord", start: func(e *env, dir, client string, n int) (func() []int, func(), error) {
			var b strings.Builder
			fmt.Fprintf(&b, "[supervisord]\nnodaemon=true\nlogfile=%s\npidfile=%s\nchildlogdir=%s\nminfds=%d\n\n",
				filepath.Join(dir, "supervisord.log"), filepath.Join(dir, "supervisord.pid"), dir, 2*n+1024)
			for i := range n {
				fmt.Fprintf(&b, "[program:s%05d]\ncommand=%s\nautorestart=true\nstartsecs=0\nstdout_logfile=NONE\nstderr_logfile=NONE\n\n", i, client)
			}
			conf := filepath.Join(dir, "supervisord.conf")
			if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
				return nil, nil, err
			}
			cmd := exec.Command("supervisord", "-c", conf)
			stop, err := startGroup(cmd)
			if err != nil {
				return nil, nil, err
			}
			return func() []int { return []int{cmd.Process.Pid} }, stop, nil
		}},
	}
}

// peerChosen reports whether --peers (comma-separated; "" all) names the
// supervisor called name ("bare" is the bare fork/exec loop).
func peerChosen(list, name string) bool {
	if list == "" {
		return true
	}
	for p := range strings.SplitSeq(list, ",") {
		p = strings.TrimSpace(p)
		if p == name || (p == "bare" && name == "bare fork/exec") {
			return true
		}
	}
	return false
}

// killAll SIGKILLs pids.
func killAll(pids map[uint32]time.Time) {
	for pid := range pids {
		_ = syscall.Kill(int(pid), syscall.SIGKILL)
	}
}

// runPeers: the same n tiny services under a bare fork/exec loop, hb,
// runit, s6 and supervisord, interleaved round by round: launch → all
// running, kill all → all replaced, the supervisor's PSS and idle CPU, and
// with one service, kill → the replacement runs.
func runPeers(e *env, r *Report) error {
	const test = "peers"
	n := e.opts.services
	dir := filepath.Join(e.dir, "peers")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	client := filepath.Join(dir, "pause")
	cc := exec.Command(e.cc, "-static", "-O2", "-o", client, "-x", "c", "-")
	cc.Stdin = strings.NewReader(string(pauseSource))
	if out, err := cc.CombinedOutput(); err != nil {
		// No static libc: a dynamic client still works, a little slower to exec.
		cc = exec.Command(e.cc, "-O2", "-o", client, "-x", "c", "-")
		cc.Stdin = strings.NewReader(string(pauseSource))
		if out2, err2 := cc.CombinedOutput(); err2 != nil {
			return fmt.Errorf("compile the pause client: %v\n%s\n%s", err, out, out2)
		}
		r.note("peers: the pause client is dynamically linked (no static libc here)")
	}
	bareloop := filepath.Join(dir, "bareloop")
	cc = exec.Command(e.cc, "-O2", "-o", bareloop, "-x", "c", "-")
	cc.Stdin = strings.NewReader(string(bareloopSource))
	if out, err := cc.CombinedOutput(); err != nil {
		return fmt.Errorf("compile bareloop: %v\n%s", err, out)
	}
	pauseBin, err := os.ReadFile(client)
	if err != nil {
		return err
	}
	var sups []peerSup
	for _, s := range peerSups(bareloop) {
		if !peerChosen(e.opts.peers, s.name) {
			continue
		}
		if s.need != "" {
			if _, err := exec.LookPath(s.need); err != nil {
				r.note("peers: %s skipped: %s is not installed (make bench-deps)", s.name, s.need)
				continue
			}
		}
		sups = append(sups, s)
	}
	startS := map[string][]float64{}
	killS := map[string][]float64{}
	seq := 0
	// one runs s with count services, waits for them all to run, then
	// measure; it stops s and kills whatever it left.
	one := func(s peerSup, count int, measure func(sup func() []int, nt *notifier, pids map[uint32]time.Time, took time.Duration) error) error {
		seq++
		d := filepath.Join(dir, fmt.Sprintf("%s-%d", strings.ReplaceAll(s.name, " ", "-"), seq))
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		// The run's own client and socket: a process of an earlier run
		// that is still dying cannot notify this one.
		client := filepath.Join(d, "pause")
		if err := os.WriteFile(client, pauseBin, 0o755); err != nil {
			return err
		}
		nt, err := newNotifier(filepath.Join(d, "notify.sock"))
		if err != nil {
			return err
		}
		defer nt.close()
		t0 := time.Now()
		sup, stop, err := s.start(e, d, client, count)
		if err != nil {
			return err
		}
		defer func() {
			stop()
			got, _ := nt.since(t0)
			killAll(got) // what the supervisor left behind
		}()
		pids, took, err := nt.wait(t0, count, nil, 120*time.Second)
		if err != nil {
			return fmt.Errorf("%s: start: %w", s.name, err)
		}
		return measure(sup, nt, pids, took)
	}
	for round := range e.opts.scaleRounds {
		for _, s := range sups {
			logf("peers: round %d: %s, %d services", round+1, s.name, n)
			err := one(s, n, func(sup func() []int, nt *notifier, pids map[uint32]time.Time, took time.Duration) error {
				startS[s.name] = append(startS[s.name], float64(took.Nanoseconds()))
				if round == 0 {
					if e.opts.idleSecs > 0 {
						// The start-up work settles (hb gives a burst's
						// memory back a second after it): the same wait
						// for every supervisor.
						time.Sleep(3 * time.Second)
					}
					procs := sup()
					r.addValue(test, fmt.Sprintf("%s: PSS of the supervisor, %d services", s.name, n), "MiB", pssMiB(procs)).Note =
						fmt.Sprintf("%d processes", len(procs))
					if e.opts.idleSecs > 0 {
						c0 := cpuNs(procs)
						time.Sleep(time.Duration(e.opts.idleSecs * float64(time.Second)))
						ms := float64(cpuNs(procs)-c0) / 1e6
						r.addValue(test, fmt.Sprintf("%s: idle CPU per 10 s, %d services", s.name, n), "ms", ms*10/e.opts.idleSecs)
					}
				}
				t1 := time.Now()
				killAll(pids)
				_, took, err := nt.wait(t1, n, pids, 120*time.Second)
				if err != nil {
					return fmt.Errorf("%s: kill all: %w", s.name, err)
				}
				killS[s.name] = append(killS[s.name], float64(took.Nanoseconds()))
				return nil
			})
			if err != nil {
				r.check(test, s.name+" ran", false, "%v", err)
			}
		}
	}
	// One service: kill → the replacement runs (its first instruction).
	// Each kill comes after more than 1 s of run: runit (and supervisord's
	// startsecs) treat a shorter run as a failed start and wait 1 s.
	kills := min(e.opts.chainKills, 5)
	for _, s := range sups {
		logf("peers: %s, one service, %d kills", s.name, kills)
		var lat []float64
		err := one(s, 1, func(_ func() []int, nt *notifier, pids map[uint32]time.Time, _ time.Duration) error {
			for range kills {
				time.Sleep(1200*time.Millisecond + e.jitter())
				t1 := time.Now()
				killAll(pids)
				got, took, err := nt.wait(t1, 1, pids, 30*time.Second)
				if err != nil {
					return err
				}
				lat = append(lat, float64(took.Nanoseconds()))
				pids = got
			}
			return nil
		})
		if err != nil {
			r.check(test, s.name+" ran with one service", false, "%v", err)
			continue
		}
		res := r.addSeries(test, fmt.Sprintf("%s: N = 1: kill → the replacement runs", s.name), "ms", lat)
		if s.name != "bare fork/exec" {
			r.against(res, "bare fork/exec: N = 1: kill → the replacement runs")
		}
	}
	for _, s := range sups {
		if xs := startS[s.name]; len(xs) > 0 {
			res := r.addSeries(test, fmt.Sprintf("%s: start %d services: launch → all running", s.name, n), "s", xs)
			if s.name != "bare fork/exec" {
				r.against(res, fmt.Sprintf("bare fork/exec: start %d services: launch → all running", n))
			}
			if s.name == "hb" {
				res.Target = "≤ 0.9× bare"
				meets(res, res.RatioP50 > 0 && res.RatioP50 <= 0.9)
			}
		}
		if xs := killS[s.name]; len(xs) > 0 {
			res := r.addSeries(test, fmt.Sprintf("%s: kill all %d → all replaced", s.name, n), "s", xs)
			if s.name != "bare fork/exec" {
				r.against(res, fmt.Sprintf("bare fork/exec: kill all %d → all replaced", n))
			}
			if s.name == "hb" {
				res.Target = "≤ 1× bare"
				meets(res, res.RatioP50 > 0 && res.RatioP50 <= 1)
			}
		}
	}
	return nil
}
