package shim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/plugin/cgroupfs"
)

var cgroupfsControllers = cgroupfs.Controllers

func TestCgroup2Mount(t *testing.T) {
	hybrid := `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
`
	unified := `30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
`
	// A bind mount of a subtree (ROOT not /) is not the hierarchy's top.
	bind := `50 23 0:26 /sub /mnt/x rw - cgroup2 cgroup2 rw
51 23 0:26 / /mnt/with\040space rw - cgroup2 cgroup2 rw
`
	for _, tc := range []struct{ in, want string }{
		{hybrid, "/sys/fs/cgroup/unified"}, {unified, "/sys/fs/cgroup"}, {bind, "/mnt/with space"},
	} {
		got, err := cgroup2Mount([]byte(tc.in))
		if err != nil || got != tc.want {
			t.Errorf("cgroup2Mount = %q, %v; want %q", got, err, tc.want)
		}
	}
	if _, err := cgroup2Mount([]byte("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n")); err == nil {
		t.Error("no cgroup2 mount: no error")
	}
	if p, err := cgroup2Path([]byte("4:memory:/x\n0::/system.slice/hbd.service\n")); err != nil || p != "/system.slice/hbd.service" {
		t.Errorf("cgroup2Path = %q, %v", p, err)
	}
	if _, err := cgroup2Path([]byte("4:memory:/x\n")); err == nil {
		t.Error("v1 only: no error")
	}
}

var cgroupSeq atomic.Int32

// cgroupHarness is a Shim with cgroups on a table of its own (its cgroup
// tree is unique to the test), or a skip where cgroups are not usable. The
// cleanup shuts it down cleanly and checks the tree is gone.
func cgroupHarness(t *testing.T) *harness {
	t.Helper()
	return cgroupHarnessWith(t, nil)
}

// cgroupHarnessWith is cgroupHarness with its Options changed by mod first.
func cgroupHarnessWith(t *testing.T, mod func(*Options)) *harness {
	t.Helper()
	name := fmt.Sprintf("hbcgt-%d-%d", os.Getpid(), cgroupSeq.Add(1))
	if m := openCgroups("", name); m.tree == nil {
		t.Skipf("cgroups cannot be used here (%s): the process-group fallback is what runs", m.reason)
	} else {
		m.tree.close()
		_ = m.tree.remove()
	}
	dir := t.TempDir()
	opts := Options{ShmName: name, ShmDir: dir, Slots: 16, Detector: connector.DetectAuto, Cgroups: true}
	if mod != nil {
		mod(&opts)
	}
	h := openHarness(t, opts, dir)
	if h.s.cg.tree == nil {
		t.Fatalf("no cgroup tree: %s", h.s.cg.reason)
	}
	tree := h.s.cg.tree.dir
	t.Cleanup(func() {
		h.stopAll()
		h.cancel()
		// A clean close signals the process groups of exited
		// incarnations by number: beside other test binaries churning
		// PIDs, such a number may name someone else's process by now.
		h.s.mu.Lock()
		clear(h.s.groups)
		h.s.mu.Unlock()
		if err := h.s.Shutdown(context.Background(), true); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if _, err := os.Stat(tree); !os.IsNotExist(err) {
			t.Errorf("cgroup tree %s left behind after a clean shutdown (stat: %v)", tree, err)
			// Leave nothing behind even so.
			dirs, _ := filepath.Glob(tree + "/*/cgroup.procs")
			for _, k := range dirs {
				c := &svcCgroup{path: filepath.Dir(k), rel: strings.TrimPrefix(filepath.Dir(k), h.s.cg.mnt)}
				if fd, err := unix.Open(c.path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
					c.dirfd = fd
					_ = c.kill()
					unix.Close(fd)
				}
			}
			time.Sleep(100 * time.Millisecond)
			for _, k := range dirs {
				_ = unix.Rmdir(filepath.Dir(k))
			}
			_ = unix.Rmdir(tree)
		}
	})
	return h
}

// stopAll stops every running service of h (SIGKILL).
func (h *harness) stopAll() {
	slots, _ := h.s.List(context.Background())
	for _, sl := range slots {
		if sl.PID != 0 {
			if err := h.s.Stop(context.Background(), sl.Name, unix.SIGKILL, 5*time.Second); err != nil {
				h.t.Errorf("cleanup: stop %s: %v", sl.Name, err)
			}
		}
	}
}

// shSpec is a Spec running script with /bin/sh.
func (h *harness) shSpec(name, script string) plugin.Spec {
	return plugin.Spec{
		Name: name, Command: []string{"/bin/sh", "-c", script}, UID: -1, GID: -1,
		Env: []string{"PATH=/usr/bin:/bin"}, Stdout: "null", Stderr: "null",
	}
}

// members waits until the service's cgroup holds n processes and returns them.
func (h *harness) members(name string, n int) []int {
	h.t.Helper()
	cg := h.svcCgroup(name)
	var pids []int
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids, _ = cg.pids()
		pids = slices.DeleteFunc(pids, exiting)
		if len(pids) == n {
			break
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %d processes in %s: %v", n, cg.path, pids)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return pids
}

func (h *harness) svcCgroup(name string) *svcCgroup {
	h.t.Helper()
	h.s.mu.Lock()
	defer h.s.mu.Unlock()
	svc := h.s.svcs[name]
	if svc == nil || svc.cg == nil {
		h.t.Fatalf("service %q has no cgroup", name)
	}
	return svc.cg
}

// escapees is a script whose main process leaves a setsid child that
// ignores SIGTERM, a backgrounded grandchild, and then waits.
const escapees = `setsid sh -c 'trap "" TERM; exec sleep 1000' & sh -c 'sleep 1000 & wait' & wait`

// TestCgroupStopKillsEscapees: in kill mode cgroup, a Stop leaves no
// process of the service: not a setsid child ignoring SIGTERM, not a
// backgrounded grandchild. The child started in its cgroup (it was never
// outside: /proc/PID/cgroup names it at once).
func TestCgroupStopKillsEscapees(t *testing.T) {
	h := cgroupHarness(t)
	res := h.spawn(h.shSpec("esc", escapees))
	cg := h.svcCgroup("esc")
	if !cg.contains(res.PID) {
		t.Fatalf("pid %d is not in %s", res.PID, cg.path)
	}
	pids := h.members("esc", 4) // sh, the setsid sleep, the inner sh and its sleep
	if err := h.s.Stop(context.Background(), "esc", unix.SIGTERM, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if !deadOrDying(pid) {
			t.Errorf("pid %d (%s) of the service outlived stop", pid, cmdlineOf(pid))
		}
	}
	if pop, _ := cg.populated(); pop {
		left, _ := cg.pids()
		t.Errorf("cgroup still populated after stop: %v", left)
	}
}

// TestCgroupProcessGroupMode: in kill mode process-group the service gets
// no cgroup: it is contained by its process group, as without cgroups.
func TestCgroupProcessGroupMode(t *testing.T) {
	h := cgroupHarness(t)
	spec := h.shSpec("pg", "exec sleep 1000")
	spec.KillMode = KillProcessGroup
	h.spawn(spec)
	h.s.mu.Lock()
	cg := h.s.svcs["pg"].cg
	h.s.mu.Unlock()
	if cg != nil {
		t.Fatalf("kill mode process-group: a cgroup %s was made", cg.path)
	}
}

func cmdlineOf(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " ")
}

// TestCgroupRespawnKillsLeftovers: when the main process dies, what it left
// in the cgroup is killed and the replacement starts only once the cgroup
// is empty, so it finds nothing of the old incarnation (here: a child that
// outlives it). The slot went to 0 at the main process's death as always.
func TestCgroupRespawnKillsLeftovers(t *testing.T) {
	h := cgroupHarness(t)
	spec := h.shSpec("rs", "sleep 1000 & exec sleep 1001")
	spec.Respawn = plugin.Respawn{Enabled: true}
	first := h.spawn(spec)
	h.next(plugin.EventSpawn, "rs")
	old := h.members("rs", 2)
	if err := unix.Kill(first.PID, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ex := h.next(plugin.EventExit, "rs")
	if !ex.Respawned {
		t.Fatalf("exit %+v not respawned", ex)
	}
	sp := h.next(plugin.EventSpawn, "rs")
	now := h.members("rs", 2)
	for _, pid := range old {
		if slices.Contains(now, pid) {
			t.Errorf("pid %d of the old incarnation is still in the cgroup: %v", pid, now)
		}
	}
	if !slices.Contains(now, sp.PID) {
		t.Errorf("replacement %d not in the cgroup: %v", sp.PID, now)
	}
}

// TestCgroupFreeRemoves: Free removes the service's cgroup; Spawn after an
// exit that left processes kills them first.
func TestCgroupFreeRemoves(t *testing.T) {
	h := cgroupHarness(t)
	res := h.spawn(h.shSpec("fr", "sleep 1000 & exit 0"))
	cg := h.svcCgroup("fr")
	path := cg.path
	h.next(plugin.EventSpawn, "fr")
	h.next(plugin.EventExit, "fr")
	// The main process's exit killed what it left.
	if err := cg.waitEmpty(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	_ = res
	if err := h.s.Free(context.Background(), "fr"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("cgroup %s still there after Free (stat: %v)", path, err)
	}
}

// TestCgroupAdopt: a new plugin on the table finds an adopted process's
// cgroup again: its Stop kills the setsid child too.
func TestCgroupAdopt(t *testing.T) {
	h := cgroupHarness(t)
	h.spawn(h.shSpec("ad", escapees))
	pids := h.members("ad", 4)
	h.cancel()
	if err := h.s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := New(h.s.opts)
	if err != nil {
		t.Fatal(err)
	}
	h.s = s2
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	if h.events, err = s2.Events(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if s2.adopted != 1 {
		t.Fatalf("adopted %d; want 1", s2.adopted)
	}
	h.s.mu.Lock()
	inc := h.s.svcs["ad"].cur
	h.s.mu.Unlock()
	if inc.cg == nil || inc.killMode != KillCgroup {
		t.Fatalf("adopted incarnation: cgroup %v, kill mode %q", inc.cg, inc.killMode)
	}
	if err := s2.Stop(context.Background(), "ad", unix.SIGTERM, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if !deadOrDying(pid) {
			t.Errorf("pid %d (%s) outlived stop after adoption", pid, cmdlineOf(pid))
		}
	}
}

// TestCgroupSpawners: with either spawner the child starts in the cgroup
// (CLONE_INTO_CGROUP): the first thing it reads, /proc/self/cgroup, names
// it.
func TestCgroupSpawners(t *testing.T) {
	// No Shim: its beat would kick the stray reaper, which would take the
	// children spawnWait waits for.
	m := openCgroups("", fmt.Sprintf("hbcgt-%d-%d", os.Getpid(), cgroupSeq.Add(1)))
	if m.tree == nil {
		t.Skipf("cgroups cannot be used here (%s)", m.reason)
	}
	cg, err := m.tree.service("sp")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := cg.remove(5 * time.Second); err != nil {
			t.Error(err)
		}
		cg.close()
		m.tree.close()
		if err := m.tree.remove(); err != nil {
			t.Error(err)
		}
	}()
	out := filepath.Join(t.TempDir(), "cgroup")
	for name, spawn := range spawners(t) {
		t.Run(name, func(t *testing.T) {
			st := spawnWait(t, spawn, &procAttr{
				path: "/bin/sh", argv: []string{"sh", "-c", "exec cat /proc/self/cgroup > " + out},
				files: [3]int{2, 2, 2}, intoCgroup: true, cgroup: cg.dirfd, cgEvents: cg.events,
			})
			if st != 0 {
				t.Fatalf("status %d", st)
			}
			got, err := cgroup2Path([]byte(readFile(t, out)))
			if err != nil || got != cg.rel {
				t.Fatalf("child's cgroup %q (%v); want %q", got, err, cg.rel)
			}
		})
	}
}

// BenchmarkRespawnCgroup: kill -9 of a /bin/sleep service until the
// plugin's own respawn is announced, with the service in a cgroup and
// without (process-group), alternately: what the cgroup costs a respawn
// that finds nothing left (one read of cgroup.events before the spawn,
// one after the reap, and CLONE_INTO_CGROUP). Informal; hbbench is the
// reference.
func BenchmarkRespawnCgroup(b *testing.B) {
	name := fmt.Sprintf("hbcgb-%d", os.Getpid())
	m := openCgroups("", name)
	if m.tree == nil {
		b.Skipf("cgroups cannot be used here: %s", m.reason)
	}
	m.tree.close()
	respawned := make(chan uint64, 1)
	opts := Options{ShmName: name, ShmDir: b.TempDir(), Slots: 4, Detector: connector.DetectAuto, Cgroups: true}
	opts.onRespawned = func(idx int, gen uint64) { respawned <- gen }
	s, err := New(opts)
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		for _, n := range []string{KillCgroup, KillProcessGroup} {
			_ = s.Stop(context.Background(), n, unix.SIGKILL, 5*time.Second)
		}
		if err := s.Shutdown(context.Background(), true); err != nil {
			b.Error(err)
		}
	}()
	lat := map[string][]time.Duration{}
	for _, mode := range []string{KillCgroup, KillProcessGroup} {
		spec := plugin.Spec{Name: mode, Command: []string{"/bin/sleep", "1000"}, UID: -1, GID: -1,
			Env: []string{"PATH=/usr/bin:/bin"}, Stdout: "null", Stderr: "null",
			Respawn: plugin.Respawn{Enabled: true}, KillMode: mode}
		if _, err := s.Spawn(context.Background(), spec); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for range b.N {
		for _, mode := range []string{KillCgroup, KillProcessGroup} {
			time.Sleep(time.Millisecond) // let it exec
			s.mu.Lock()
			pid := s.svcs[mode].cur.pid
			s.mu.Unlock()
			t0 := time.Now()
			unix.Kill(pid, unix.SIGKILL)
			<-respawned
			lat[mode] = append(lat[mode], time.Since(t0))
		}
	}
	b.StopTimer()
	for mode, l := range lat {
		slices.Sort(l)
		b.ReportMetric(float64(l[len(l)/2].Nanoseconds())/1e3, mode+"-p50-µs")
		b.ReportMetric(float64(l[len(l)*99/100].Nanoseconds())/1e3, mode+"-p99-µs")
	}
	b.ReportMetric(0, "ns/op")
}

// TestCgroupFallback: where the cgroup tree cannot be used (here a
// cgroup_root that does not exist; as a normal user, not root), services
// are contained by process groups, and Info says so and why.
func TestCgroupFallback(t *testing.T) {
	dir := t.TempDir()
	name := fmt.Sprintf("hbcgf-%d", os.Getpid())
	h := openHarness(t, Options{ShmName: name, ShmDir: dir, Slots: 4, Detector: connector.DetectPidfd,
		Cgroups: true, CgroupRoot: "/hb-no-such-cgroup"}, dir)
	info, err := h.s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := "/hb-no-such-cgroup: no such file or directory"
	if os.Geteuid() != 0 {
		want = "not running as root"
	}
	if !strings.HasPrefix(info.Cgroups, "process-group: ") || !strings.Contains(info.Cgroups, want) {
		t.Fatalf("Info.Cgroups = %q; want the process-group fallback naming %q", info.Cgroups, want)
	}
	spec := h.shSpec("fb", "sleep 1000 & exec sleep 1001")
	res := h.spawn(spec)
	h.s.mu.Lock()
	inc := h.s.svcs["fb"].cur
	h.s.mu.Unlock()
	if inc.killMode != KillProcessGroup || inc.cg != nil {
		t.Fatalf("kill mode %q, cgroup %v; want process-group without a cgroup", inc.killMode, inc.cg)
	}
	if err := h.s.Stop(context.Background(), "fb", unix.SIGTERM, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if !deadOrDying(res.PID) {
		t.Errorf("pid %d outlived stop", res.PID)
	}
}

// TestCgroupLimits: memory_max needs the memory controller in the v2
// hierarchy. Where the hierarchy does not offer it (a hybrid host such as
// the development machine, with only hugetlb there) the spawn fails with
// an error naming the key and why, and nothing starts; where it does, the
// service's cgroup gets memory.max.
func TestCgroupLimits(t *testing.T) {
	h := cgroupHarness(t)
	spec := h.shSpec("lim", "exec sleep 1000")
	spec.MemoryMax = 64 << 20
	parent := filepath.Dir(h.s.cg.tree.dir)
	have, _ := cgroupfsControllers(parent)
	_, err := h.s.Spawn(context.Background(), spec)
	if !slices.Contains(have, "memory") {
		if err == nil || !strings.Contains(err.Error(), "memory_max: the memory controller is not offered here") {
			t.Fatalf("Spawn without a memory controller: %v", err)
		}
		t.Logf("as expected here: %v", err)
		if sl := h.slot(h.s.svcs["lim"].idx); sl.PID != 0 {
			t.Fatalf("slot pid %d", sl.PID)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(readFile(t, filepath.Join(h.svcCgroup("lim").path, "memory.max"))); got != "67108864" {
		t.Fatalf("memory.max %q", got)
	}
}

// TestCgroupWaitEmptyBound: a cgroup that does not empty in time is an
// error naming it, how many processes it still holds and which (what a
// spawn reports when a leftover cannot be killed).
func TestCgroupWaitEmptyBound(t *testing.T) {
	h := cgroupHarness(t)
	res := h.spawn(h.shSpec("wb", "exec sleep 1000"))
	cg := h.svcCgroup("wb")
	err := cg.waitEmpty(50 * time.Millisecond)
	want := fmt.Sprintf("cgroup %s still holds 1 processes [%d] after 50ms", cg.path, res.PID)
	if !errors.Is(err, errNotEmpty) || !strings.Contains(err.Error(), want) {
		t.Fatalf("waitEmpty: %v; want %q", err, want)
	}
	// And once it is killed, the wait ends by the kernel's notification.
	if err := cg.kill(); err != nil {
		t.Fatal(err)
	}
	if err := cg.waitEmpty(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	h.next(plugin.EventSpawn, "wb")
	h.next(plugin.EventExit, "wb")
}

// TestCgroupRemovedUnderThePlugin: the service's cgroup, and the tree
// above it, removed while the service is stopped (rmdir of empty
// cgroups, by root): the next spawn makes them again and starts in them.
func TestCgroupRemovedUnderThePlugin(t *testing.T) {
	h := cgroupHarness(t)
	h.spawn(h.shSpec("rm", "exec sleep 1000"))
	if err := h.s.Stop(context.Background(), "rm", unix.SIGKILL, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	cg := h.svcCgroup("rm")
	if err := unix.Rmdir(cg.path); err != nil {
		t.Fatal(err)
	}
	if err := unix.Rmdir(h.s.cg.tree.dir); err != nil {
		t.Fatal(err)
	}
	res := h.spawn(h.shSpec("rm", "exec sleep 1000"))
	if now := h.svcCgroup("rm"); now == cg || !now.contains(res.PID) {
		t.Fatalf("pid %d not in a new cgroup %s", res.PID, now.path)
	}
}
