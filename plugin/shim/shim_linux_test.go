package shim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// clearRecord is what the exit fast path saw when it cleared a slot.
type clearRecord struct {
	idx, pid int
	cleared  bool
	zombie   bool // the process was still unreaped: waitable, or (exit tracepoint) exiting or killed
}

// recordClears returns Options whose fast-path hook records, for each clear,
// whether the process was still unreaped — a killed or exiting process (the
// exit tracepoint reports it that early) or a zombie — the property that makes
// "slot 0 before reaping" safe against PID reuse.
func recordClears(opts Options) (Options, func() []clearRecord) {
	var mu sync.Mutex
	var recs []clearRecord
	opts.onCleared = func(idx, pid int, cleared bool) {
		var ci childInfo
		err := waitid(unix.P_PID, pid, &ci, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT)
		mu.Lock()
		unreaped := err == nil && int(ci.Pid) == pid || exiting(pid) || killPending(pid)
		recs = append(recs, clearRecord{idx: idx, pid: pid, cleared: cleared, zombie: unreaped})
		mu.Unlock()
	}
	return opts, func() []clearRecord {
		mu.Lock()
		defer mu.Unlock()
		return append([]clearRecord(nil), recs...)
	}
}

func TestSpawnKillRespawn(t *testing.T) {
	for _, det := range detectors {
		t.Run(det.String(), func(t *testing.T) {
			dir := t.TempDir()
			opts, clears := recordClears(Options{ShmName: "t", ShmDir: dir, Slots: 16, Detector: det})
			h := openHarness(t, opts, dir)
			logDir := filepath.Join(dir, "logs")
			out := filepath.Join(dir, "report")
			spec := h.childSpec("rx", "report", "HB_TEST_OUT="+out)
			spec.Stdout, spec.Stderr, spec.LogDir = "file", "file", logDir
			spec.Env = append(spec.Env, "HB_SLOT=stale") // replaced by the shim's own

			res := h.spawn(spec)
			report := readFile(t, out)
			sl := h.slot(res.Slot)
			st, err := shm.StartTime(res.PID)
			if err != nil {
				t.Fatal(err)
			}
			if sl.PID != uint32(res.PID) || sl.State != shm.StateStarting || sl.Generation != 1 ||
				sl.StartTime != st || res.Generation != 1 || res.StartTime != st || sl.Name != "rx" {
				t.Fatalf("slot after spawn = %+v, result %+v; want pid %d, starting, generation 1, start time %d",
					sl, res, res.PID, st)
			}
			for _, want := range []string{
				"HB_SERVICE=rx\n",
				"HB_SLOT=" + strconv.Itoa(res.Slot) + "\n",
				"HB_SHM=" + filepath.Join(dir, "t") + "\n",
				"HB_GENERATION=1\n",
				fmt.Sprintf("pgid=%d\n", res.PID), // its own process group
			} {
				if !strings.Contains(report, want) {
					t.Errorf("child report lacks %q:\n%s", want, report)
				}
			}
			if strings.Contains(report, "HB_SLOT=stale") {
				t.Errorf("child saw the caller's HB_SLOT:\n%s", report)
			}
			waitFor(t, "stdout/stderr in the log files", func() bool {
				o, _ := os.ReadFile(filepath.Join(logDir, "rx.out.log"))
				e, _ := os.ReadFile(filepath.Join(logDir, "rx.err.log"))
				return string(o) == "out-line\n" && string(e) == "err-line\n"
			})
			if ev := h.next(plugin.EventSpawn, "rx"); ev.PID != res.PID || ev.Generation != 1 || ev.Seq == 0 {
				t.Errorf("spawn event = %+v", ev)
			}

			// kill -9: the slot goes to 0 first, while the process is
			// still unreaped (exiting, or a zombie).
			killed := time.Now()
			if err := unix.Kill(res.PID, unix.SIGKILL); err != nil {
				t.Fatal(err)
			}
			for h.s.w.PID(res.Slot) != 0 {
				if time.Since(killed) > 10*time.Second {
					t.Fatal("slot still holds the PID 10 s after kill -9")
				}
			}
			t.Logf("kill -9 → slot 0 in %v (informal)", time.Since(killed))
			ev := h.next(plugin.EventExit, "rx")
			if ev.Status != 137 || ev.PID != res.PID || ev.Generation != 1 || ev.Source == "" {
				t.Errorf("exit event = %+v; want status 137 for pid %d", ev, res.PID)
			}
			t.Logf("detected by %s", ev.Source)
			sl = h.slot(res.Slot)
			if sl.PID != 0 || sl.State != shm.StateExited || sl.Exits != 1 || sl.LastPID != uint32(res.PID) ||
				sl.LastStatus != 137 || sl.LastExitNs != ev.DetectedNs {
				t.Errorf("slot after exit = %+v", sl)
			}
			if !gone(res.PID) {
				t.Errorf("pid %d not reaped", res.PID)
			}
			recs := clears()
			if len(recs) != 1 || !recs[0].cleared || !recs[0].zombie || recs[0].pid != res.PID || recs[0].idx != res.Slot {
				t.Errorf("fast path records = %+v; want one clear of pid %d while it was unreaped", recs, res.PID)
			}

			// Respawn: same slot, generation 2.
			os.Remove(out)
			res2 := h.spawn(spec)
			if res2.Slot != res.Slot || res2.Generation != 2 {
				t.Errorf("respawn = %+v; want slot %d generation 2", res2, res.Slot)
			}
			if r := readFile(t, out); !strings.Contains(r, "HB_GENERATION=2\n") {
				t.Errorf("respawned child env:\n%s", r)
			}
			if sl := h.slot(res.Slot); sl.PID != uint32(res2.PID) || sl.Generation != 2 || sl.Exits != 1 {
				t.Errorf("slot after respawn = %+v", sl)
			}
			// Spawning a running service is refused.
			if _, err := h.s.Spawn(context.Background(), spec); !errors.Is(err, plugin.ErrRunning) {
				t.Errorf("Spawn of a running service: %v; want ErrRunning", err)
			}
		})
	}
}

func TestExitStatus(t *testing.T) {
	for _, det := range detectors {
		t.Run(det.String(), func(t *testing.T) {
			h := newHarness(t, det, "")
			for _, tc := range []struct {
				code string
				want int
			}{{"3", 3}, {"0", 0}, {"255", 255}} {
				res := h.spawn(h.childSpec("x"+tc.code, "exit", "HB_EXIT_CODE="+tc.code))
				// The spawn is reported before the exit, however fast the child.
				if ev := h.nextOf("x" + tc.code); ev.Kind != plugin.EventSpawn {
					t.Errorf("exit %s: first event %+v; want the spawn", tc.code, ev)
				}
				ev := h.nextOf("x" + tc.code)
				if ev.Kind != plugin.EventExit || ev.Status != tc.want || ev.PID != res.PID {
					t.Errorf("exit %s: event %+v; want status %d", tc.code, ev, tc.want)
				}
				if sl := h.slot(res.Slot); sl.PID != 0 || sl.LastStatus != int32(tc.want) || sl.State != shm.StateExited {
					t.Errorf("exit %s: slot %+v", tc.code, sl)
				}
			}
		})
	}
}

func TestSpawnErrors(t *testing.T) {
	h := newHarness(t, connector.DetectPidfd, "")
	notExec := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(notExec, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	base := plugin.Spec{Name: "rx", UID: -1, GID: -1, Stdout: "null", Stderr: "null", Env: []string{"PATH=/usr/bin:/bin"}}
	for _, tc := range []struct {
		name string
		edit func(*plugin.Spec)
		want string
	}{
		{"missing", func(s *plugin.Spec) { s.Command = []string{"/nope"} },
			`spawn "rx": exec "/nope": no such file or directory`},
		{"not on PATH", func(s *plugin.Spec) { s.Command = []string{"no-such-program-hb"} },
			`spawn "rx": exec "no-such-program-hb": not found in PATH "/usr/bin:/bin"`},
		{"not executable", func(s *plugin.Spec) { s.Command = []string{notExec} },
			`spawn "rx": exec "` + notExec + `": is not executable (mode -rw-r--r--)`},
		{"directory", func(s *plugin.Spec) { s.Command = []string{"/tmp"} },
			`spawn "rx": exec "/tmp": is a directory`},
		{"empty", func(s *plugin.Spec) { s.Command = nil }, `spawn "rx": empty command`},
		{"bad dir", func(s *plugin.Spec) { s.Command = []string{"/bin/true"}; s.Dir = "/nope" },
			`spawn "rx": dir "/nope": no such file or directory`},
		{"bad stdout", func(s *plugin.Spec) { s.Command = []string{"/bin/true"}; s.Stdout = "tty" },
			`spawn "rx": stdout "tty": want "file", "inherit" or "null"`},
		{"file without dir", func(s *plugin.Spec) { s.Command = []string{"/bin/true"}; s.Stderr = "file" },
			`spawn "rx": stderr "file": no log directory`},
		{"bad name", func(s *plugin.Spec) { s.Name = "a b"; s.Command = []string{"/bin/true"} }, `"a b"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fds := openFDs(t)
			spec := base
			tc.edit(&spec)
			_, err := h.s.Spawn(context.Background(), spec)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, plugin.ErrBadSpec) {
				t.Fatalf("Spawn error = %v; want ErrBadSpec containing %q", err, tc.want)
			}
			if i, err := h.s.w.Lookup("rx"); err == nil && h.s.w.PID(i) != 0 {
				t.Errorf("slot holds pid %d after a failed spawn", h.s.w.PID(i))
			}
			if leaked := newFDs(fds, openFDs(t)); len(leaked) != 0 {
				t.Errorf("descriptors left open: %v", leaked)
			}
		})
	}
	if len(h.s.incs) != 0 {
		t.Errorf("incarnations left: %v", h.s.incs)
	}
}

func TestStopEscalates(t *testing.T) {
	h := newHarness(t, connector.DetectAuto, "")
	pidFile := tempPath(t, "gc")
	// The shell and its background sleep ignore SIGTERM and share the
	// shell's process group.
	res := h.spawn(plugin.Spec{
		Name:    "stubborn",
		Command: []string{"/bin/sh", "-c", `trap "" TERM; /bin/sleep 1000 & echo $! > ` + pidFile + `.tmp; mv ` + pidFile + `.tmp ` + pidFile + `; wait`},
		Env:     []string{"PATH=/usr/bin:/bin"}, UID: -1, GID: -1, Stdout: "null", Stderr: "null",
	})
	gc, err := strconv.Atoi(strings.TrimSpace(readFile(t, pidFile)))
	if err != nil {
		t.Fatal(err)
	}
	if pg, _ := unix.Getpgid(gc); pg != res.PID {
		t.Fatalf("grandchild %d in group %d; want %d", gc, pg, res.PID)
	}
	if err := h.s.Stop(context.Background(), "stubborn", unix.SIGTERM, 200*time.Millisecond); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if ev := h.next(plugin.EventExit, "stubborn"); ev.Status != 137 {
		t.Errorf("exit event %+v; want status 137 (SIGKILL after the timeout)", ev)
	}
	sl := h.slot(res.Slot)
	if sl.PID != 0 || sl.State != shm.StateStopped {
		t.Errorf("slot after Stop = %+v; want pid 0, stopped", sl)
	}
	waitFor(t, "the group member to be gone", func() bool { return gone(gc) })

	// Idempotent on a stopped service.
	if err := h.s.Stop(context.Background(), "stubborn", unix.SIGTERM, time.Second); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := h.s.Stop(context.Background(), "nosuch", unix.SIGTERM, time.Second); !errors.Is(err, plugin.ErrNotFound) {
		t.Errorf("Stop unknown: %v; want ErrNotFound", err)
	}
}

func TestStopGraceful(t *testing.T) {
	h := newHarness(t, connector.DetectPidfd, "")
	res := h.spawn(h.childSpec("calm", "sleep"))
	if err := h.s.Stop(context.Background(), "calm", unix.SIGTERM, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if ev := h.next(plugin.EventExit, "calm"); ev.Status != 128+int(unix.SIGTERM) {
		t.Errorf("exit %+v; want 143", ev)
	}
	if sl := h.slot(res.Slot); sl.State != shm.StateStopped || sl.PID != 0 {
		t.Errorf("slot %+v", sl)
	}
}

func TestSignalSetStateFreeList(t *testing.T) {
	h := newHarness(t, connector.DetectPidfd, "")
	ready := tempPath(t, "ready")
	res := h.spawn(h.childSpec("sig", "usr1", "HB_TEST_OUT="+ready))
	readFile(t, ready)

	if err := h.s.SetState(context.Background(), "sig", shm.StateRunning, res.Generation); err != nil {
		t.Fatal(err)
	}
	if sl := h.slot(res.Slot); sl.State != shm.StateRunning {
		t.Errorf("state %v; want running", sl.State)
	}
	// The state word agrees with the PID word: a state of a dead
	// incarnation while it lives, or one about another generation, is
	// refused and leaves the slot alone.
	for _, c := range []struct {
		st  shm.State
		gen uint64
	}{{shm.StateFatal, res.Generation}, {shm.StateBackoff, 0}, {shm.StateStarting, res.Generation + 1}} {
		if err := h.s.SetState(context.Background(), "sig", c.st, c.gen); !errors.Is(err, plugin.ErrStale) {
			t.Errorf("SetState(%v, generation %d) while generation %d runs: %v; want ErrStale", c.st, c.gen, res.Generation, err)
		}
		if sl := h.slot(res.Slot); sl.State != shm.StateRunning || sl.PID != uint32(res.PID) {
			t.Errorf("after a refused SetState(%v): state %v pid %d; want running %d", c.st, sl.State, sl.PID, res.PID)
		}
	}
	if err := h.s.Free(context.Background(), "sig"); !errors.Is(err, plugin.ErrRunning) {
		t.Errorf("Free running: %v; want ErrRunning", err)
	}
	list, err := h.s.List(context.Background())
	if err != nil || len(list) != 1 || list[0].Name != "sig" || list[0].PID != uint32(res.PID) {
		t.Errorf("List = %+v, %v", list, err)
	}
	if err := h.s.Signal(context.Background(), "sig", unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if ev := h.next(plugin.EventExit, "sig"); ev.Status != 42 {
		t.Errorf("exit %+v; want 42", ev)
	}
	// hbd's "running", decided before it saw the exit, must not make the
	// slot say running with PID 0.
	if err := h.s.SetState(context.Background(), "sig", shm.StateRunning, res.Generation); !errors.Is(err, plugin.ErrStale) {
		t.Errorf("SetState(running) after the exit: %v; want ErrStale", err)
	}
	if sl := h.slot(res.Slot); sl.State != shm.StateExited || sl.PID != 0 {
		t.Errorf("after the exit and a stale running: state %v pid %d; want exited 0", sl.State, sl.PID)
	}
	if err := h.s.SetState(context.Background(), "sig", shm.StateFatal, res.Generation); err != nil {
		t.Errorf("SetState(fatal) of the exited incarnation: %v", err)
	}
	if sl := h.slot(res.Slot); sl.State != shm.StateFatal {
		t.Errorf("state %v; want fatal", sl.State)
	}
	if err := h.s.Signal(context.Background(), "sig", unix.SIGUSR1); !errors.Is(err, plugin.ErrNotRunning) {
		t.Errorf("Signal stopped: %v; want ErrNotRunning", err)
	}
	if err := h.s.Free(context.Background(), "sig"); err != nil {
		t.Fatal(err)
	}
	if list, _ := h.s.List(context.Background()); len(list) != 0 {
		t.Errorf("List after Free = %+v", list)
	}
	for _, err := range []error{
		h.s.Free(context.Background(), "sig"),
		h.s.SetState(context.Background(), "sig", shm.StateRunning, 0),
		h.s.Signal(context.Background(), "sig", unix.SIGUSR1),
	} {
		if !errors.Is(err, plugin.ErrNotFound) {
			t.Errorf("after Free: %v; want ErrNotFound", err)
		}
	}
	// A freed name can be spawned again (a new slot allocation).
	h.spawn(h.childSpec("sig", "sleep"))
}

func TestStrayReaped(t *testing.T) {
	h := newHarness(t, connector.DetectPidfd, "")
	var mu sync.Mutex
	strays := map[int]int{}
	reaper.mu.Lock()
	reaper.reaped = func(pid, st int) { mu.Lock(); strays[pid] = st; mu.Unlock() }
	reaper.mu.Unlock()
	t.Cleanup(func() { reaper.mu.Lock(); reaper.reaped = nil; reaper.mu.Unlock() })

	pidFile := tempPath(t, "gc")
	h.spawn(plugin.Spec{
		Name:    "forker",
		Command: []string{"/bin/sh", "-c", `/bin/sleep 1000 & echo $! > ` + pidFile + `.tmp; mv ` + pidFile + `.tmp ` + pidFile},
		Env:     []string{"PATH=/usr/bin:/bin"}, UID: -1, GID: -1, Stdout: "null", Stderr: "null",
	})
	gc, err := strconv.Atoi(strings.TrimSpace(readFile(t, pidFile)))
	if err != nil {
		t.Fatal(err)
	}
	if ev := h.next(plugin.EventExit, "forker"); ev.Status != 0 {
		t.Errorf("forker exit %+v", ev)
	}
	// The grandchild was re-parented to this process, the subreaper.
	waitFor(t, "re-parenting", func() bool {
		ps, err := readProcStat(gc)
		return err == nil && ps.PPID == os.Getpid()
	})
	if err := unix.Kill(gc, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the stray to be reaped", func() bool { return gone(gc) })
	mu.Lock()
	st, ok := strays[gc]
	mu.Unlock()
	if !ok || st != 137 {
		t.Errorf("stray reaper saw %v (%v); want pid %d status 137", strays, ok, gc)
	}
}

func TestCredentials(t *testing.T) {
	requireRoot(t)
	h := newHarness(t, connector.DetectPidfd, "")
	logDir := t.TempDir()
	res := h.spawn(plugin.Spec{
		Name:    "nobody",
		Command: []string{"/bin/sh", "-c", "echo uid=$(id -u) gid=$(id -g) groups=$(id -G)"},
		Env:     []string{"PATH=/usr/bin:/bin"}, UID: 65534, GID: 65534, Groups: []int{65533},
		Stdout: "file", Stderr: "file", LogDir: logDir,
	})
	if ev := h.next(plugin.EventExit, "nobody"); ev.Status != 0 || ev.PID != res.PID {
		t.Fatalf("exit %+v", ev)
	}
	got, err := os.ReadFile(filepath.Join(logDir, "nobody.out.log"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "uid=65534 gid=65534 groups=65534 65533\n"; string(got) != want {
		e, _ := os.ReadFile(filepath.Join(logDir, "nobody.err.log"))
		t.Errorf("child said %q (stderr %q); want %q", got, e, want)
	}
}

// TestConcurrentUse drives several services from several goroutines at once
// (run it with -race).
func TestConcurrentUse(t *testing.T) {
	h := newHarness(t, connector.DetectAuto, "")
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("svc%d", g)
			for range 5 {
				if _, err := h.s.Spawn(ctx, h.childSpec(name, "sleep")); err != nil {
					errs <- err
					return
				}
				if err := h.s.SetState(ctx, name, shm.StateRunning, 0); err != nil {
					errs <- err
				}
				if _, err := h.s.List(ctx); err != nil {
					errs <- err
				}
				if err := h.s.Stop(ctx, name, unix.SIGTERM, 5*time.Second); err != nil {
					errs <- err
					return
				}
			}
			if err := h.s.Free(ctx, name); err != nil {
				errs <- err
			}
		}()
	}
	// Meanwhile, one subscriber that comes and goes.
	for range 3 {
		sub, cancel := context.WithCancel(ctx)
		if _, err := h.s.Events(sub, 0); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if list, _ := h.s.List(ctx); len(list) != 0 {
		t.Errorf("slots left: %+v", list)
	}
}

// TestCloseUnblocksStop: Close while a Stop waits makes the Stop return.
func TestCloseUnblocksStop(t *testing.T) {
	h := newHarness(t, connector.DetectPidfd, "")
	res := h.spawn(h.childSpec("deaf", "sleep"))
	stopped := make(chan error, 1)
	go func() { stopped <- h.s.Stop(context.Background(), "deaf", 0, time.Hour) }()
	waitFor(t, "stopping", func() bool { return h.slot(res.Slot).State == shm.StateStopping })
	h.cancel()
	if err := h.s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-stopped; !errors.Is(err, plugin.ErrShutdown) {
		t.Errorf("Stop during Close: %v; want ErrShutdown", err)
	}
	unix.Kill(res.PID, unix.SIGKILL)
	var ws unix.WaitStatus
	unix.Wait4(res.PID, &ws, 0, nil)
}

// TestCleanShutdownReapsStrays: what a service left behind in its process
// group (a child that outlived the main process's own exit, one that
// ignores SIGTERM, the zombies of a stopped group) has the plugin as its
// parent (a subreaper); a clean shutdown stops it (SIGTERM, SIGKILL after
// drainTimeout) and reaps it before it returns, so nothing outlives the
// plugin, not even as a zombie of init.
func TestCleanShutdownReapsStrays(t *testing.T) {
	h := newHarness(t, connector.DetectPidfd, "")
	pidFile := tempPath(t, "gc")
	h.spawn(plugin.Spec{
		Name: "leaver",
		Command: []string{"/bin/sh", "-c",
			`/bin/sleep 1000 & a=$!; /bin/sh -c 'trap "" TERM; exec /bin/sleep 1000' & ` +
				`echo $a $! > ` + pidFile + `.tmp; mv ` + pidFile + `.tmp ` + pidFile + `; exit 0`},
		Env: []string{"PATH=/usr/bin:/bin"}, UID: -1, GID: -1, Stdout: "null", Stderr: "null",
	})
	var calm, deaf int
	if _, err := fmt.Sscan(readFile(t, pidFile), &calm, &deaf); err != nil {
		t.Fatal(err)
	}
	h.next(plugin.EventExit, "leaver")
	for _, pid := range []int{calm, deaf} {
		waitFor(t, "the stray to be the plugin's child", func() bool {
			st, err := readProcStat(pid)
			return err == nil && st.PPID == os.Getpid()
		})
	}
	h.cancel()
	if err := h.s.Shutdown(context.Background(), true); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for _, pid := range []int{calm, deaf} {
		if !gone(pid) {
			st, _ := readProcStat(pid)
			t.Errorf("pid %d (%s) outlived the clean shutdown: state %c, parent %d", pid, procCmdline(pid), st.State, st.PPID)
			unix.Kill(pid, unix.SIGKILL)
		}
	}
}

// TestSpawnedChildHoldsNoPluginFD: once Spawn returns, the child holds
// none of the plugin's descriptors beyond 0, 1 and 2, not even for the
// moment between the parent's resumption and the kernel's close-on-exec
// (a child holding the table's descriptor holds its flock). A descriptor
// of the child counts as the plugin's when it is the same open file as one
// of the plugin's (dev and inode): the new program's own (the dynamic
// loader's, say) are not.
func TestSpawnedChildHoldsNoPluginFD(t *testing.T) {
	h := newHarness(t, connector.DetectPidfd, "")
	spec := plugin.Spec{Name: "fds", Command: []string{"/bin/sleep", "1000"}, UID: -1, GID: -1,
		Env: []string{"PATH=/usr/bin:/bin"}, Stdout: "null", Stderr: "null"}
	type file struct{ dev, ino uint64 }
	files := func(pid int, from int) map[file]string {
		m := map[file]string{}
		dir := fmt.Sprintf("/proc/%d/fd", pid)
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if n, _ := strconv.Atoi(e.Name()); n < from {
				continue
			}
			var st unix.Stat_t
			if unix.Stat(dir+"/"+e.Name(), &st) == nil {
				l, _ := os.Readlink(dir + "/" + e.Name())
				m[file{st.Dev, st.Ino}] = e.Name() + " " + l
			}
		}
		return m
	}
	for i := 0; i < 300; i++ {
		res := h.spawn(spec)
		child := files(res.PID, 3)
		for f, what := range files(os.Getpid(), 0) {
			if c, ok := child[f]; ok {
				t.Errorf("spawn %d: child %d holds the plugin's fd %s as its fd %s right after Spawn returned", i, res.PID, what, c)
			}
		}
		if err := h.s.Stop(context.Background(), "fds", unix.SIGKILL, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		h.next(plugin.EventExit, "fds")
		if t.Failed() {
			return
		}
	}
}

// TestSpawnMany: the shim's SpawnMany starts each spec as Spawn would, the
// outcomes in the order of the specs, a bad one failing alone.
func TestSpawnMany(t *testing.T) {
	h := newHarness(t, connector.DetectPidfd, "")
	var specs []plugin.Spec
	for _, name := range []string{"m0", "m1", "bad", "m2", "m3"} {
		cmd := []string{"/bin/sleep", "1000"}
		if name == "bad" {
			cmd = []string{"/nonexistent/hb-test"}
		}
		specs = append(specs, plugin.Spec{Name: name, Command: cmd, UID: -1, GID: -1, Stdout: "null", Stderr: "null"})
	}
	outs, err := h.s.SpawnMany(t.Context(), specs)
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range outs {
		if specs[i].Name == "bad" {
			if !errors.Is(o.Err, plugin.ErrBadSpec) {
				t.Errorf("bad: %v, want ErrBadSpec", o.Err)
			}
			continue
		}
		if o.Err != nil {
			t.Errorf("%s: %v", specs[i].Name, o.Err)
			continue
		}
		if got := h.s.w.PID(o.Result.Slot); int(got) != o.Result.PID || got == 0 {
			t.Errorf("%s: slot %d holds %d, want its PID %d", specs[i].Name, o.Result.Slot, got, o.Result.PID)
		}
		if slot, err := h.s.w.Lookup(specs[i].Name); err != nil || slot != o.Result.Slot {
			t.Errorf("%s: outcome names slot %d, the table %d (%v)", specs[i].Name, o.Result.Slot, slot, err)
		}
	}
}
