package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/shm"
)

// peerRun is one of the README's peers (contrib/examples/peer-c, peer-go)
// following services through the table; lines holds what it printed.
type peerRun struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	done  chan struct{}
}

func startPeer(h *Harness, bin string, svcs ...string) *peerRun {
	h.T.Helper()
	p := &peerRun{cmd: exec.Command(bin, svcs...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), "HB_SHM="+h.ShmPath)
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		h.T.Fatal(err)
	}
	p.cmd.Stderr = os.Stderr
	if err := p.cmd.Start(); err != nil {
		h.T.Fatal(err)
	}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
		}
	}()
	h.T.Cleanup(p.stop)
	return p
}

func (p *peerRun) stop() {
	if p.cmd.Process != nil && p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
		<-p.done
	}
}

func (p *peerRun) output() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.lines)
}

// pidFiles reads DIR/NAME.pids: every PID a service ever had (its command
// appends $$ before it execs).
func pidFiles(t *testing.T, dir string, names []string) map[string]map[int]bool {
	out := map[string]map[int]bool{}
	for _, n := range names {
		out[n] = map[int]bool{}
		b, _ := os.ReadFile(filepath.Join(dir, n+".pids"))
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				out[n][pid] = true
			}
		}
	}
	return out
}

// TestTablePeersNeverLie: the README's C and Go peers look each name up
// once (again only when layout_seq changes) and follow the services through
// five full hbd stop/start cycles, reloads that remove and add services, and
// plugin SIGKILLs. Every PID either reports for a service is one of that
// service's own; the slots keep their indexes across the cycles; and a
// killed plugin is seen through writer_alive alone.
func TestTablePeersNeverLie(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	svc := func(name string) string {
		return fmt.Sprintf(`
[service.%[1]s]
command    = ["sh", "-c", "echo $$ >> %[2]s/%[1]s.pids; exec sleep infinity"]
start_secs = "100ms"
`, name, h.Dir)
	}
	all := []string{"s1", "s2", "s3", "s4", "s5"}
	config := func(names ...string) string {
		var b strings.Builder
		for _, n := range names {
			b.WriteString(svc(n))
		}
		return b.String()
	}
	h.WriteConfig(config("s1", "s2", "s3", "s4"))
	d := h.Start()
	h.WaitRunning("s1", "s2", "s3", "s4")
	peers := []*peerRun{startPeer(h, h.PeerC, all...), startPeer(h, h.PeerGo, all...)}
	index := map[string]int{}
	for _, n := range []string{"s1", "s2", "s3", "s4"} {
		index[n] = h.SlotIndex(n)
	}

	// Five full stop/start cycles on the same table: the same indexes.
	for cycle := range 5 {
		d.Stop()
		d = h.Start()
		h.WaitRunning("s1", "s2", "s3", "s4")
		for n, i := range index {
			if got := h.SlotIndex(n); got != i {
				t.Errorf("cycle %d: %s has slot %d, it had %d", cycle, n, got, i)
			}
		}
	}

	// Reloads: s2 removed and s5 added (a slot never used, not s2's),
	// then s2 back (its own slot again) and s3 removed.
	h.WriteConfig(config("s1", "s3", "s4", "s5"))
	h.MustCtl("reload")
	h.WaitRunning("s5")
	if i := h.SlotIndex("s5"); i == index["s2"] {
		t.Errorf("s5 took the slot s2 released (%d) while never used slots are left", i)
	}
	h.WriteConfig(config("s1", "s2", "s4", "s5"))
	h.MustCtl("reload")
	h.WaitRunning("s2")
	if i := h.SlotIndex("s2"); i != index["s2"] {
		t.Errorf("s2 came back in slot %d, it had %d", i, index["s2"])
	}

	// The plugin killed: the peers see the writer die through writer_alive,
	// then alive again once the next plugin adopted the services.
	for range 2 {
		old := pluginPID(h)
		tid := h.Table().Header().WriterAlive
		if !shm.WriterAliveWord(tid) {
			t.Fatalf("writer_alive %#x with the plugin running", tid)
		}
		h.Kill(old, syscall.SIGKILL)
		h.WaitThreadsGone(old)
		// FUTEX_OWNER_DIED from the kernel, or already the next plugin's thread.
		if v := h.Table().Header().WriterAlive; v == tid || v == 0 {
			t.Errorf("writer_alive %#x after the plugin's SIGKILL (it was %#x)", v, tid)
		}
		waitNewPlugin(h, old)
		h.Eventually("writer_alive set by the new plugin", func() (bool, string) {
			return h.Table().WriterAlive(), fmt.Sprintf("%#x", h.Table().Header().WriterAlive)
		})
		h.WaitRunning("s1", "s2", "s4", "s5")
	}
	// hbd and the plugin killed together: nobody wakes the peers, the
	// kernel's mark alone tells them (they look at least every second).
	deaths := func(p *peerRun) int {
		n := 0
		for _, l := range p.output() {
			if l == "writer dead" {
				n++
			}
		}
		return n
	}
	before := []int{deaths(peers[0]), deaths(peers[1])}
	old := pluginPID(h)
	h.Kill(d.PID, syscall.SIGKILL)
	h.Kill(old, syscall.SIGKILL)
	d.Wait()
	h.WaitThreadsGone(old)
	if tab := h.Table(); tab.WriterAlive() {
		t.Errorf("writer_alive %#x with hbd and the plugin killed", tab.Header().WriterAlive)
	}
	h.Eventually("both peers to see the writer dead", func() (bool, string) {
		return deaths(peers[0]) > before[0] && deaths(peers[1]) > before[1], fmt.Sprint(before)
	})
	d = h.Start()
	h.WaitRunning("s1", "s2", "s4", "s5")

	// And a cycle after it all.
	d.Stop()
	if tab := h.Table(); tab.WriterAlive() || tab.Header().WriterAlive != 0 {
		t.Errorf("writer_alive %#x after a clean stop, want 0", tab.Header().WriterAlive)
	}
	d = h.Start()
	h.WaitRunning("s1", "s2", "s4", "s5")
	h.Eventually("both peers to report s5", func() (bool, string) {
		for _, p := range peers {
			if !slices.ContainsFunc(p.output(), func(l string) bool { return strings.HasPrefix(l, "s5 ") && l != "s5 0" }) {
				return false, strings.Join(p.output(), "; ")
			}
		}
		return true, ""
	})

	own := pidFiles(t, h.Dir, all)
	for k, p := range peers {
		p.stop()
		lines := p.output()
		var pids, deaths int
		for _, l := range lines {
			name, v, _ := strings.Cut(l, " ")
			if name == "writer" {
				if v == "dead" {
					deaths++
				}
				continue
			}
			pid, err := strconv.Atoi(v)
			if err != nil || !slices.Contains(all, name) {
				t.Errorf("peer %d printed %q", k, l)
				continue
			}
			if pid == 0 {
				continue
			}
			pids++
			if !own[name][pid] {
				t.Errorf("peer %d reported pid %d for %s, which is not one of its PIDs (%v)", k, pid, name, own[name])
			}
		}
		// 1 + 5 + 1 starts, 2 plugin kills: the writer was not alive at
		// least at each of those.
		if pids < 4 || deaths < 2 {
			t.Errorf("peer %d saw %d PIDs and %d writer deaths; want the services' and at least 2:\n%s", k, pids, deaths,
				strings.Join(lines, "\n"))
		}
	}
	d.Stop()
}

// TestTableAdoptedNeverRecycled: the services a killed plugin leaves are
// re-parented to hbd (a child subreaper), which holds the zombie of one that
// dies until its slot reads 0. With the next plugin stopped (it cannot clear
// the slot), a killed adopted service stays a zombie of hbd, so the kernel's
// ns_last_pid pointing at its PID cannot hand that PID to a new process;
// and adopted services' exit statuses are exact (an on-failure job that
// exits 0 is not run again).
func TestTableAdoptedNeverRecycled(t *testing.T) {
	t.Parallel()
	RequireRoot(t, "ns_last_pid is written by root only")
	h := NewHarness(t, Options{})
	h.WriteConfig(`
[service.victim]
command    = "sleep infinity"
start_secs = "100ms"

[service.zero]
command    = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.05; done"]
restart    = "on-failure"
start_secs = "100ms"

[service.three]
command    = ["sh", "-c", "trap 'exit 3' TERM; while :; do sleep 0.05; done"]
restart    = "on-failure"
start_secs = "100ms"
`)
	d := h.Start()
	before := h.WaitRunning("victim", "zero", "three")
	old := pluginPID(h)
	h.Kill(old, syscall.SIGKILL)
	plugin := waitNewPlugin(h, old)
	checkAdopted(h, before, plugin)
	for n, st := range before {
		if ps, err := readStat(st.PID); err != nil || ps.PPID != d.PID {
			t.Fatalf("%s (pid %d): parent %d (%v), want hbd %d", n, st.PID, ps.PPID, err, d.PID)
		}
	}

	h.Run("exact statuses", func(t *testing.T) {
		h.Kill(before["zero"].PID, syscall.SIGTERM)
		h.Kill(before["three"].PID, syscall.SIGTERM)
		st := h.WaitService("zero", "exited", func(st api.ServiceStatus) bool { return st.State == "exited" })
		if st.LastStatus != 0 || st.Generation != before["zero"].Generation {
			t.Errorf("zero after exit 0: %+v; want last_status 0 and no new run (on-failure)", st)
		}
		if s := h.Slot("zero"); s.LastStatus != 0 {
			t.Errorf("zero's slot: last_status %d, want 0", s.LastStatus)
		}
		st = h.WaitService("three", "run again", func(st api.ServiceStatus) bool {
			return IsRunning(st) && st.Generation == before["three"].Generation+1
		})
		if st.LastStatus != 3 {
			t.Errorf("three after exit 3: last_status %d, want 3", st.LastStatus)
		}
		h.waitReaped(before["zero"].PID, "zero's zombie")
		h.waitReaped(before["three"].PID, "three's zombie")
	})

	h.Run("no recycled pid", func(t *testing.T) {
		v := before["victim"].PID
		i := h.SlotIndex("victim")
		// Stopped for certain before the victim dies: a detector thread
		// not yet stopped would clear the slot.
		defer syscall.Kill(plugin, syscall.SIGCONT)
		h.StopProcess(plugin)
		h.Kill(v, syscall.SIGKILL)
		h.WaitGone(v)
		if ps, err := readStat(v); err != nil || ps.State != 'Z' || ps.PPID != d.PID {
			t.Fatalf("killed victim %d: %+v, %v; want a zombie of hbd %d", v, ps, err, d.PID)
		}
		// Aim the next PID at the victim's, a few times (other processes
		// on the machine may take PIDs in between).
		for try := range 5 {
			if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(v-1)), 0); err != nil {
				t.Skipf("ns_last_pid: %v", err)
			}
			c := exec.Command("sleep", "100")
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
			got := c.Process.Pid
			_ = c.Process.Kill()
			_ = c.Wait()
			if got == v {
				t.Fatalf("try %d: a new process got the victim's PID %d while its slot reads %d", try, v, h.Table().PID(i))
			}
		}
		if p := h.Table().PID(i); p != uint32(v) {
			t.Errorf("slot of victim reads %d with the plugin stopped, want %d", p, v)
		}
		syscall.Kill(plugin, syscall.SIGCONT)
		st := h.WaitService("victim", "running again", func(st api.ServiceStatus) bool { return IsRunning(st) && st.PID != v })
		if st.LastStatus != 128+9 {
			t.Errorf("victim's last_status %d, want 137 (SIGKILL)", st.LastStatus)
		}
		h.waitReaped(v, "the victim's zombie")
	})
	d.Stop()
}

// TestReadmePeerExcerpt: every line of the README's C peer excerpt is a
// line of the compiled example (contrib/examples/peer-c/peer.c), so the
// README shows nothing that does not build.
func TestReadmePeerExcerpt(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join(root, "contrib/examples/peer-c/peer.c"))
	if err != nil {
		t.Fatal(err)
	}
	lines := map[string]bool{}
	for l := range strings.Lines(string(src)) {
		lines[strings.TrimSpace(l)] = true
	}
	sec := string(readme)
	i := strings.Index(sec, "## Peers: reading the table")
	if i < 0 {
		t.Fatal("README has no peer section")
	}
	sec = sec[i:]
	start := strings.Index(sec, "```c\n")
	end := strings.Index(sec[start+5:], "```")
	if start < 0 || end < 0 {
		t.Fatal("the README's peer section has no C block")
	}
	n := 0
	for l := range strings.Lines(sec[start+5 : start+5+end]) {
		if l = strings.TrimSpace(l); l != "" {
			n++
			if !lines[l] {
				t.Errorf("README line %q is not in peer.c", l)
			}
		}
	}
	if n == 0 {
		t.Error("the README's C block is empty")
	}
}
