package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/shm"
)

// svc is one service of a benchmark configuration.
type svc struct {
	name    string
	command []string
	extra   string // more TOML lines of the service's table
}

// hbdConfig is what a benchmark hbd runs.
type hbdConfig struct {
	label    string // for messages and file names
	detector string // auto, connector, pidfd, tracepoint
	slots    int
	services []svc
	extra    string // more TOML after the services ([bridge.*] tables)
	stateDir string // [hbd] state_dir; "": DIR/state
}

// hbdProc is a running hbd on a temporary configuration, state directory and
// table.
type hbdProc struct {
	cfg      hbdConfig
	dir      string
	shmName  string
	shmPath  string
	sock     string
	logPath  string // hbd's stderr
	stateDir string
	cmd      *exec.Cmd
	done     chan struct{} // closed when hbd has exited
	started  time.Time
	table    *shm.Table
	client   *api.Client
	helperID int // table id in the helper, -1 if not opened there
	stopOnce sync.Once
}

// writeConfig renders c as hbd TOML.
func (h *hbdProc) writeConfig() (string, error) {
	var b strings.Builder
	q := strconv.Quote
	fmt.Fprintf(&b, "[hbd]\nshm = %s\nsocket = %s\nstate_dir = %s\nlog_dir = %s\nslots = %d\ndetector = %s\n\n",
		q(h.shmName), q(h.sock), q(h.stateDir), q(filepath.Join(h.dir, "log")), h.cfg.slots, q(h.cfg.detector))
	for _, s := range h.cfg.services {
		args := make([]string, len(s.command))
		for i, a := range s.command {
			args[i] = q(a)
		}
		// start_secs 0: every run counts as started, so every kill is
		// followed by an immediate respawn (no failed-start backoff).
		fmt.Fprintf(&b, "[service.%s]\ncommand = [%s]\nrestart = \"always\"\nstart_secs = \"0s\"\nstart_retries = 0\n"+
			"stop_timeout = \"5s\"\nstdout = \"null\"\nstderr = \"null\"\n%s\n", s.name, strings.Join(args, ", "), s.extra)
	}
	b.WriteString(h.cfg.extra)
	path := filepath.Join(h.dir, "hb.toml")
	return path, os.WriteFile(path, []byte(b.String()), 0o644)
}

// startHBD starts hbd on c and returns once its table exists (the services
// may still be starting; see waitUp).
func (e *env) startHBD(c hbdConfig) (*hbdProc, error) {
	e.seq++
	dir := filepath.Join(e.dir, fmt.Sprintf("%s-%d", c.label, e.seq))
	h := &hbdProc{
		cfg:      c,
		dir:      dir,
		shmName:  fmt.Sprintf("hbbench-%d-%d", os.Getpid(), e.seq),
		sock:     filepath.Join(dir, "hbd.sock"),
		stateDir: filepath.Join(dir, "state"),
		logPath:  filepath.Join(dir, "hbd.log"),
		done:     make(chan struct{}),
		helperID: -1,
	}
	h.shmPath = filepath.Join(shm.DefaultDir, h.shmName)
	if c.stateDir != "" {
		h.stateDir = c.stateDir
	}
	if err := os.MkdirAll(h.dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(h.stateDir, 0o755); err != nil {
		return nil, err
	}
	cfgPath, err := h.writeConfig()
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(h.logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	h.cmd = exec.Command(e.hbd, "-c", cfgPath)
	h.cmd.Stdout, h.cmd.Stderr = logf, logf
	// Own process group: a Ctrl-C on the terminal reaches hbbench only,
	// which then stops hbd in order. Pdeathsig: an hbbench killed outright
	// still gets its hbd to stop the services.
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	// Everything is registered before the start, so that a signal during
	// startup still removes the table.
	atExit(h.stop)
	h.started = time.Now()
	if err := h.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", e.hbd, err)
	}
	go func() {
		_ = h.cmd.Wait()
		close(h.done)
	}()
	h.client = api.NewClient(h.sock)
	deadline := time.Now().Add(30 * time.Second)
	for {
		t, err := shm.Open(h.shmName)
		if err == nil {
			h.table = t
			break
		}
		select {
		case <-h.done:
			return nil, fmt.Errorf("hbd %s exited during startup: %s", c.label, h.tail(5))
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("hbd %s: no table %s after 30 s: %w; log: %s", c.label, h.shmPath, err, h.tail(5))
		}
		time.Sleep(time.Millisecond)
	}
	if e.helper != nil {
		id := e.nextTableID()
		if _, err := e.helper.call("open %d %s", id, h.shmPath); err != nil {
			return nil, err
		}
		h.helperID = id
	}
	return h, nil
}

// waitUp waits until n slots hold a PID, and returns how long after hbd's
// start that was.
func (h *hbdProc) waitUp(n int, timeout time.Duration) (time.Duration, error) {
	deadline := time.Now().Add(timeout)
	for {
		up := 0
		for i := range h.table.Len() {
			if h.table.PID(i) != 0 {
				up++
			}
		}
		if up >= n {
			return time.Since(h.started), nil
		}
		select {
		case <-h.done:
			return 0, fmt.Errorf("hbd %s exited: %s", h.cfg.label, h.tail(5))
		default:
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("hbd %s: %d of %d services up after %v", h.cfg.label, up, n, timeout)
		}
		time.Sleep(500 * time.Microsecond)
	}
}

// slot returns the slot index of service name.
func (h *hbdProc) slot(name string) (int, error) {
	i, err := h.table.Lookup(name)
	if err != nil {
		return -1, fmt.Errorf("hbd %s: service %s: %w", h.cfg.label, name, err)
	}
	return i, nil
}

// pluginPID is the table's writer.
func (h *hbdProc) pluginPID() int { return int(h.table.Header().WriterPID) }

// pid is the hbd process.
func (h *hbdProc) pid() int { return h.cmd.Process.Pid }

// exits is hbd's own count of service name's exits (control API).
func (h *hbdProc) apiExits(name string) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := h.client.Get(ctx, name)
	return st.Exits, err
}

// health asks hbd which detectors its plugin runs, again while hbd is
// still attaching to the plugin (its spawns fill the table before that).
func (h *hbdProc) health() (api.Health, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		hl, err := h.client.Health(ctx)
		if err == nil || !hl.Attaching {
			return hl, err
		}
		select {
		case <-ctx.Done():
			return hl, err
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// stop ends hbd with SIGTERM (it stops every service, then the plugin),
// then makes sure nothing is left: hbd, plugin and services are killed if
// still there after the grace period, and the table is removed.
func (h *hbdProc) stop() { h.stopOnce.Do(h.doStop) }

func (h *hbdProc) doStop() {
	var plugin int
	var pids []int
	if h.table != nil {
		plugin = h.pluginPID()
		for s := range h.table.Used() {
			if s.PID != 0 {
				pids = append(pids, int(s.PID))
			}
		}
	}
	if h.cmd != nil && h.cmd.Process != nil {
		_ = h.cmd.Process.Signal(syscall.SIGTERM)
		grace := 30*time.Second + time.Duration(len(h.cfg.services))*20*time.Millisecond
		select {
		case <-h.done:
		case <-time.After(grace):
			fmt.Fprintf(os.Stderr, "hbbench: hbd %s did not stop within %v; killing it, its plugin and services\n", h.cfg.label, grace)
			_ = h.cmd.Process.Kill()
			<-h.done
		}
	}
	// Whatever survived (hbd killed, plugin wedged): the plugin first, so
	// that it does not respawn, then each service's process group.
	if plugin > 0 && processAlive(plugin) {
		_ = syscall.Kill(plugin, syscall.SIGKILL)
	}
	if h.table != nil {
		for s := range h.table.Used() {
			if s.PID != 0 {
				pids = append(pids, int(s.PID))
			}
		}
	}
	for _, p := range pids {
		if processAlive(p) && isOurService(p, h.shmPath) {
			_ = syscall.Kill(-p, syscall.SIGKILL)
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	}
	if h.table != nil {
		_ = h.table.Close()
	}
	if h.shmName != "" {
		if err := os.Remove(h.shmPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(os.Stderr, "hbbench: remove %s: %v\n", h.shmPath, err)
		}
	}
}

// isOurService reports whether process pid was started by the plugin of the
// table at shmPath (its environment names the table), so that a recycled
// PID is never killed.
func isOurService(pid int, shmPath string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return false
	}
	for _, kv := range strings.Split(string(b), "\x00") {
		if kv == "HB_SHM="+shmPath {
			return true
		}
	}
	return false
}

func processAlive(pid int) bool {
	return pid > 0 && syscall.Kill(pid, 0) == nil
}

// tail returns the last n lines of hbd's log, joined.
func (h *hbdProc) tail(n int) string {
	b, _ := os.ReadFile(h.logPath)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// exitSources counts hbd's "exited" log lines by detector (source=...).
func (h *hbdProc) exitSources() map[string]int {
	out := map[string]int{}
	f, err := os.Open(h.logPath)
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, "msg=exited") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "source="); ok {
				out[v]++
			}
		}
	}
	return out
}

// countPluginLog counts lines of the plugin's log (state_dir/plugin.log)
// that contain any of subs.
func (h *hbdProc) countPluginLog(subs ...string) int {
	b, err := os.ReadFile(filepath.Join(h.stateDir, "plugin.log"))
	if err != nil {
		return 0
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		l := strings.ToLower(line)
		for _, s := range subs {
			if strings.Contains(l, s) {
				n++
				break
			}
		}
	}
	return n
}

// formatSources renders exitSources.
func formatSources(m map[string]int) string {
	if len(m) == 0 {
		return "none logged"
	}
	var parts []string
	for _, k := range []string{"connector", "pidfd", "resync", "reaper", "adopt"} {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
		}
	}
	for k, v := range m {
		switch k {
		case "connector", "pidfd", "resync", "reaper", "adopt":
		default:
			parts = append(parts, fmt.Sprintf("%s %d", k, v))
		}
	}
	return strings.Join(parts, ", ")
}
