package plugin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// bound is the longest any test waits for a state; reaching it is a failure,
// not a measurement.
const bound = 30 * time.Second

// launch starts the test binary as a plugin in a fresh state directory. At
// cleanup the process is SIGKILLed through a pidfd if it is still there.
func launch(t *testing.T) (*plugin.Conn, string) {
	t.Helper()
	dir := t.TempDir()
	conn, err := plugin.Launch(pluginConfig(dir))
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	killAtCleanup(t, conn.PID())
	dumpLogOnFailure(t, dir)
	return conn, dir
}

// killAtCleanup SIGKILLs pid at the end of the test, through a pidfd opened
// now so a recycled PID is never hit.
func killAtCleanup(t *testing.T, pid int) {
	t.Helper()
	pfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("pidfd_open(%d): %v", pid, err)
	}
	t.Cleanup(func() {
		_ = unix.PidfdSendSignal(pfd, unix.SIGKILL, nil, 0)
		_ = unix.Close(pfd)
	})
}

func dumpLogOnFailure(t *testing.T, dir string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		if b, err := os.ReadFile(filepath.Join(dir, "plugin.log")); err == nil {
			t.Logf("plugin.log:\n%s", b)
		}
	})
}

func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(bound):
		t.Fatalf("%s: not after %v", what, bound)
	}
}

func recv(t *testing.T, ch <-chan plugin.Event) plugin.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("event channel closed")
		}
		return ev
	case <-time.After(bound):
		t.Fatalf("no event after %v", bound)
	}
	return plugin.Event{}
}

// waitEventsClosed drains ch until it is closed.
func waitEventsClosed(t *testing.T, ch <-chan plugin.Event) {
	t.Helper()
	timeout := time.After(bound)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatalf("event channel still open after %v", bound)
		}
	}
}

func readLog(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "plugin.log"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// eventKey drops the fields that vary from run to run.
func eventKey(ev plugin.Event) plugin.Event {
	ev.TimeUnixNs = 0
	return ev
}

func TestLaunchRoundTrip(t *testing.T) {
	t.Parallel()
	conn, dir := launch(t)
	sh := conn.Shim()
	ctx := t.Context()

	info, err := sh.Info(ctx)
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	if info.PID != conn.PID() || info.Version != "test" || info.Slots != fakeSlots {
		t.Errorf("Info = %+v, want PID %d (plugin.Conn.PID), version test, %d slots", info, conn.PID(), fakeSlots)
	}

	rec, err := plugin.ReadRecord(dir)
	if err != nil {
		t.Fatalf("plugin.json: %v", err)
	}
	if rec.PID != conn.PID() || rec.Protocol != "grpc" || rec.Network != "unix" || rec.StartTime == 0 ||
		filepath.Dir(rec.Addr) != dir || !cmp.Equal(rec.Args, pluginArgs) {
		t.Errorf("plugin.json = %+v: want pid %d, grpc over a unix socket in %s, start time, args %q", rec, conn.PID(), dir, pluginArgs)
	}
	if fi, err := os.Stat(filepath.Join(dir, plugin.StateFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("plugin.json mode: %v, %v; want 0600", fi.Mode(), err)
	}

	events, err := sh.Events(ctx, 0)
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	spec := plugin.Spec{Name: "rx", Command: []string{"/bin/rx", "-q"}, UID: -1, GID: -1, Stdout: "null", Stderr: "file"}
	res, err := sh.Spawn(ctx, spec)
	if err != nil {
		t.Fatalf("Spawn: %v", err)
	}
	if diff := cmp.Diff(plugin.SpawnResult{Slot: 0, PID: 40001, Generation: 1, StartTime: 1001}, res); diff != "" {
		t.Errorf("Spawn result (-want +got):\n%s", diff)
	}
	wantSpawn := plugin.Event{Seq: 1, Kind: plugin.EventSpawn, Name: "rx", Slot: 0, PID: 40001, Generation: 1, Status: -1}
	if diff := cmp.Diff(wantSpawn, eventKey(recv(t, events))); diff != "" {
		t.Errorf("spawn event (-want +got):\n%s", diff)
	}

	if err := sh.SetState(ctx, "rx", shm.StateRunning, res.Generation); err != nil {
		t.Fatalf("SetState: %v", err)
	}
	if err := sh.Signal(ctx, "rx", syscall.SIGHUP); err != nil {
		t.Fatalf("Signal: %v", err)
	}
	slots, err := sh.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	wantSlots := []shm.Slot{{Index: 0, PID: 40001, State: shm.StateRunning, Generation: 1, LastStatus: -1, Name: "rx"}}
	if diff := cmp.Diff(wantSlots, slots); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}

	if err := sh.Stop(ctx, "rx", syscall.SIGTERM, time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	wantExit := plugin.Event{Seq: 2, Kind: plugin.EventExit, Name: "rx", PID: 40001, Generation: 1, Status: 128 + 15, Source: "pidfd"}
	if diff := cmp.Diff(wantExit, eventKey(recv(t, events))); diff != "" {
		t.Errorf("exit event (-want +got):\n%s", diff)
	}
	if err := sh.Free(ctx, "rx"); err != nil {
		t.Fatalf("Free: %v", err)
	}

	if err := conn.Kill(ctx, true); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	waitFor(t, conn.Exited(), "Exited after Kill")
	waitEventsClosed(t, events)
	if _, err := os.Stat(filepath.Join(dir, plugin.StateFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("plugin.json after Kill: %v, want it removed", err)
	}
	if _, err := os.Stat(rec.Addr); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket after Kill: %v, want it removed", err)
	}
	log := readLog(t, dir)
	for _, want := range []string{"fake shutdown clean=true", "serve returned: <nil>"} {
		if !strings.Contains(log, want) {
			t.Errorf("plugin.log lacks %q:\n%s", want, log)
		}
	}
}

func TestErrorsCrossTheBoundary(t *testing.T) {
	t.Parallel()
	conn, _ := launch(t)
	sh := conn.Shim()
	ctx := t.Context()
	for _, name := range []string{"a", "b", "c", "d"} {
		if _, err := sh.Spawn(ctx, plugin.Spec{Name: name, Command: []string{"x"}}); err != nil {
			t.Fatalf("Spawn %s: %v", name, err)
		}
	}
	if err := sh.Stop(ctx, "b", syscall.SIGTERM, time.Second); err != nil {
		t.Fatalf("Stop b: %v", err)
	}

	tests := []struct {
		name string
		call func() error
		want error
		msg  string // exact message, as the plugin wrote it
	}{
		{
			name: "stop unknown",
			call: func() error { return sh.Stop(ctx, "nope", syscall.SIGTERM, time.Second) },
			want: plugin.ErrNotFound,
			msg:  `plugintest: stop "nope": unknown service`,
		},
		{
			name: "set state unknown",
			call: func() error { return sh.SetState(ctx, "nope", shm.StateFatal, 0) },
			want: plugin.ErrNotFound,
			msg:  `plugintest: set state "nope": unknown service`,
		},
		{
			name: "spawn running",
			call: func() error { _, err := sh.Spawn(ctx, plugin.Spec{Name: "a", Command: []string{"x"}}); return err },
			want: plugin.ErrRunning,
			msg:  `plugintest: spawn "a": service is running (pid 40001)`,
		},
		{
			name: "free running",
			call: func() error { return sh.Free(ctx, "a") },
			want: plugin.ErrRunning,
			msg:  `plugintest: free "a": service is running`,
		},
		{
			name: "signal stopped",
			call: func() error { return sh.Signal(ctx, "b", syscall.SIGHUP) },
			want: plugin.ErrNotRunning,
			msg:  `plugintest: signal "b" with hangup: service is not running`,
		},
		{
			name: "table full",
			call: func() error { _, err := sh.Spawn(ctx, plugin.Spec{Name: "e", Command: []string{"x"}}); return err },
			want: plugin.ErrFull,
			msg:  `plugintest: spawn "e": slot table is full`,
		},
		{
			name: "empty command",
			call: func() error { _, err := sh.Spawn(ctx, plugin.Spec{Name: "b"}); return err },
			want: plugin.ErrBadSpec,
			msg:  `plugintest: spawn "b": invalid spec: empty command`,
		},
		{
			// shm.ErrBadName passed through by the implementation.
			name: "bad name",
			call: func() error {
				_, err := sh.Spawn(ctx, plugin.Spec{Name: "no/slash", Command: []string{"x"}})
				return err
			},
			want: plugin.ErrBadSpec,
		},
		{
			// Refused subscriptions are returned by Events itself.
			name: "events from the future",
			call: func() error { _, err := sh.Events(ctx, 99); return err },
			want: plugin.ErrBadSpec,
			msg:  `plugintest: events after 99: invalid spec: last is 5`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if err == nil {
				t.Fatalf("no error, want %v", tt.want)
			}
			for _, s := range plugin.Sentinels {
				if got := errors.Is(err, s); got != (s == tt.want) {
					t.Errorf("errors.Is(%q, %q) = %v, want %v", err, s, got, !got)
				}
			}
			var re *plugin.RemoteError
			if !errors.As(err, &re) {
				t.Errorf("error %q (%T) is not a *plugin.RemoteError", err, err)
			}
			if tt.msg != "" && err.Error() != tt.msg {
				t.Errorf("message = %q, want %q", err.Error(), tt.msg)
			}
		})
	}
}

func TestEventsReplay(t *testing.T) {
	t.Parallel()
	conn, _ := launch(t)
	sh := conn.Shim()
	ctx := t.Context()
	for _, name := range []string{"a", "b", "c"} {
		if _, err := sh.Spawn(ctx, plugin.Spec{Name: name, Command: []string{"x"}}); err != nil {
			t.Fatalf("Spawn %s: %v", name, err)
		}
	}

	subCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := sh.Events(subCtx, 1)
	if err != nil {
		t.Fatalf("Events(after 1): %v", err)
	}
	for _, want := range []struct {
		seq  uint64
		name string
	}{{2, "b"}, {3, "c"}} {
		if ev := recv(t, events); ev.Seq != want.seq || ev.Name != want.name {
			t.Errorf("replayed event %d %q, want %d %q", ev.Seq, ev.Name, want.seq, want.name)
		}
	}

	// Live events follow the replay, on every subscription.
	late, err := sh.Events(ctx, 3)
	if err != nil {
		t.Fatalf("Events(after 3): %v", err)
	}
	if _, err := sh.Spawn(ctx, plugin.Spec{Name: "d", Command: []string{"x"}}); err != nil {
		t.Fatalf("Spawn d: %v", err)
	}
	for _, ch := range []<-chan plugin.Event{events, late} {
		if ev := recv(t, ch); ev.Seq != 4 || ev.Name != "d" || ev.Kind != plugin.EventSpawn {
			t.Errorf("live event %+v, want seq 4 spawn d", ev)
		}
	}

	// Cancelling the context ends that subscription only.
	cancel()
	waitEventsClosed(t, events)
	if err := sh.Stop(ctx, "d", syscall.SIGKILL, time.Second); err != nil {
		t.Fatalf("Stop d: %v", err)
	}
	if ev := recv(t, late); ev.Seq != 5 || ev.Kind != plugin.EventExit {
		t.Errorf("event after cancel %+v, want seq 5 exit", ev)
	}
}

func TestDetachReattach(t *testing.T) {
	t.Parallel()
	conn, dir := launch(t)
	ctx := t.Context()
	if _, err := conn.Shim().Spawn(ctx, plugin.Spec{Name: "rx", Command: []string{"x"}}); err != nil {
		t.Fatalf("Spawn: %v", err)
	}
	pid := conn.PID()
	if err := conn.Detach(); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	if err := conn.Detach(); err != nil {
		t.Errorf("second Detach: %v", err)
	}
	if _, err := conn.Shim().Info(ctx); !errors.Is(err, plugin.ErrUnavailable) {
		t.Errorf("Info on a detached Conn: %v, want plugin.ErrUnavailable", err)
	}

	again, err := plugin.Reattach(dir, nil)
	if err != nil {
		t.Fatalf("Reattach: %v", err)
	}
	if again.PID() != pid {
		t.Fatalf("Reattach PID = %d, want the same process %d", again.PID(), pid)
	}
	info, err := again.Shim().Info(ctx)
	if err != nil || info.PID != pid {
		t.Fatalf("Info after plugin.Reattach = %+v, %v; want PID %d", info, err, pid)
	}
	slots, err := again.Shim().List(ctx)
	if err != nil || len(slots) != 1 || slots[0].Name != "rx" {
		t.Fatalf("List after plugin.Reattach = %+v, %v; want the service spawned before", slots, err)
	}
	events, err := again.Shim().Events(ctx, 0)
	if err != nil {
		t.Fatalf("Events after Reattach: %v", err)
	}
	if ev := recv(t, events); ev.Seq != 1 || ev.Name != "rx" {
		t.Errorf("replay after Reattach: %+v, want seq 1 rx", ev)
	}

	// Detach and reattach once more: a reattached Conn detaches the same way.
	if err := again.Detach(); err != nil {
		t.Fatalf("Detach reattached: %v", err)
	}
	third, err := plugin.Reattach(dir, nil)
	if err != nil {
		t.Fatalf("second Reattach: %v", err)
	}
	if err := third.Kill(ctx, true); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	waitFor(t, third.Exited(), "Exited after Kill")
	if _, err := plugin.Reattach(dir, nil); !errors.Is(err, plugin.ErrNoPlugin) {
		t.Errorf("Reattach after Kill: %v, want plugin.ErrNoPlugin", err)
	}
}

func TestExitedAfterSIGKILL(t *testing.T) {
	t.Parallel()
	for _, reattached := range []bool{false, true} {
		t.Run("reattached="+strconv.FormatBool(reattached), func(t *testing.T) {
			t.Parallel()
			conn, dir := launch(t)
			ctx := t.Context()
			if reattached {
				if err := conn.Detach(); err != nil {
					t.Fatal(err)
				}
				var err error
				if conn, err = plugin.Reattach(dir, nil); err != nil {
					t.Fatalf("Reattach: %v", err)
				}
			}
			events, err := conn.Shim().Events(ctx, 0)
			if err != nil {
				t.Fatalf("Events: %v", err)
			}
			select {
			case <-conn.Exited():
				t.Fatal("Exited closed while the plugin runs")
			default:
			}
			if err := unix.Kill(conn.PID(), unix.SIGKILL); err != nil {
				t.Fatal(err)
			}
			waitFor(t, conn.Exited(), "Exited after SIGKILL")
			waitEventsClosed(t, events)
			if _, err := conn.Shim().Info(ctx); !errors.Is(err, plugin.ErrUnavailable) {
				t.Errorf("Info on a dead plugin: %v, want plugin.ErrUnavailable", err)
			}
			if _, err := plugin.Reattach(dir, nil); !errors.Is(err, plugin.ErrNoPlugin) {
				t.Errorf("Reattach to a dead plugin: %v, want plugin.ErrNoPlugin", err)
			}
			if _, err := os.Stat(filepath.Join(dir, plugin.StateFile)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("stale plugin.json: %v, want it removed", err)
			}
			if err := conn.Detach(); err != nil {
				t.Errorf("Detach after exit: %v", err)
			}
		})
	}
}

func TestReattachNoPlugin(t *testing.T) {
	t.Parallel()
	// A PID that certainly belonged to a process that is gone.
	dead := exec.Command("/bin/true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	ownStart, err := shm.StartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		record string // plugin.json content; "" = no file
	}{
		{name: "no record"},
		{name: "corrupt record", record: `{"pid": `},
		{name: "dead pid", record: recordJSON(t, plugin.Record{Protocol: "grpc", ProtocolVersion: 1, Network: "unix", Addr: "/nonexistent", PID: dead.Process.Pid, StartTime: 1})},
		// A live process that is not the plugin (this test process, with
		// another start time): never touched, only refused.
		{name: "reused pid", record: recordJSON(t, plugin.Record{Protocol: "grpc", ProtocolVersion: 1, Network: "unix", Addr: "/nonexistent", PID: os.Getpid(), StartTime: ownStart + 1})},
		{name: "other program", record: recordJSON(t, plugin.Record{Protocol: "grpc", ProtocolVersion: 1, Network: "unix", Addr: "/nonexistent", PID: os.Getpid(), StartTime: ownStart, Exe: "/usr/sbin/not-hbd"})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			file := filepath.Join(dir, plugin.StateFile)
			if tt.record != "" {
				if err := os.WriteFile(file, []byte(tt.record), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			conn, err := plugin.Reattach(dir, nil)
			if !errors.Is(err, plugin.ErrNoPlugin) {
				t.Fatalf("Reattach = %v, %v; want plugin.ErrNoPlugin", conn, err)
			}
			if tt.record != "" && !strings.Contains(tt.name, "corrupt") {
				if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("stale plugin.json: %v, want it removed", err)
				}
			}
		})
	}
}

func recordJSON(t *testing.T, rec plugin.Record) string {
	t.Helper()
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A live plugin that cannot be used is killed by Reattach, so a fresh one
// never runs beside it.
func TestReattachKillsUnusablePlugin(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mutate func(t *testing.T, rec *plugin.Record)
	}{
		{"other protocol version", func(_ *testing.T, rec *plugin.Record) { rec.ProtocolVersion = 99 }},
		{"socket gone", func(t *testing.T, rec *plugin.Record) {
			if err := os.Remove(rec.Addr); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			conn, dir := launch(t)
			defer conn.Detach()
			file := filepath.Join(dir, plugin.StateFile)
			rec, err := plugin.ReadRecord(dir)
			if err != nil {
				t.Fatal(err)
			}
			tt.mutate(t, &rec)
			if err := plugin.WriteRecord(dir, rec); err != nil {
				t.Fatal(err)
			}
			if _, err := plugin.Reattach(dir, nil); !errors.Is(err, plugin.ErrNoPlugin) {
				t.Fatalf("Reattach: %v, want plugin.ErrNoPlugin", err)
			}
			waitFor(t, conn.Exited(), "plugin killed by plugin.Reattach")
			if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("plugin.json: %v, want it removed", err)
			}
		})
	}
}

// The plugin outlives the hbd that launched it: after that host exits, a
// write to the stdout pipe it inherited fails with EPIPE instead of killing
// it, and a new host reattaches.
func TestPluginSurvivesHost(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dumpLogOnFailure(t, dir)
	host := exec.Command(os.Args[0])
	host.Env = append(os.Environ(), helperEnv+"=host", dirEnv+"="+dir,
		strings.TrimSpace("GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	var stderr strings.Builder
	host.Stderr = &stderr
	out, err := host.Output()
	if err != nil {
		t.Fatalf("host: %v\n%s", err, stderr.String())
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("host printed %q: %v", out, err)
	}
	killAtCleanup(t, pid)

	conn, err := plugin.Reattach(dir, nil)
	if err != nil {
		t.Fatalf("Reattach: %v", err)
	}
	if conn.PID() != pid {
		t.Fatalf("Reattach PID = %d, want %d", conn.PID(), pid)
	}
	ctx := t.Context()
	err = conn.Shim().Signal(ctx, stdioService, 0)
	if err == nil || !strings.Contains(err.Error(), syscall.EPIPE.Error()) {
		t.Errorf("write to the dead host's pipe: %v, want %q", err, syscall.EPIPE.Error())
	}
	slots, err := conn.Shim().List(ctx)
	if err != nil {
		t.Fatalf("List after the write: %v (plugin died?)", err)
	}
	if len(slots) != 1 || slots[0].Name != "orphan" || slots[0].PID == 0 {
		t.Errorf("List = %+v, want the service the first host spawned", slots)
	}
	select {
	case <-conn.Exited():
		t.Fatal("plugin exited")
	default:
	}
	if err := conn.Kill(ctx, true); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	waitFor(t, conn.Exited(), "Exited after Kill")
}

// SIGTERM stops the plugin like a Shutdown(clean=false) the host did not send.
func TestSIGTERMShutsDown(t *testing.T) {
	t.Parallel()
	conn, dir := launch(t)
	defer conn.Detach()
	if err := unix.Kill(conn.PID(), unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, conn.Exited(), "Exited after SIGTERM")
	log := readLog(t, dir)
	for _, want := range []string{"fake shutdown clean=false", "serve returned: <nil>"} {
		if !strings.Contains(log, want) {
			t.Errorf("plugin.log lacks %q:\n%s", want, log)
		}
	}
}

// When Kill returns, the launched plugin is reaped, not only exited: an hbd
// that exits right after must not leave it a zombie for init.
func TestKillReaps(t *testing.T) {
	// Not parallel: its spinners would slow the package's other tests.
	// Busy CPUs, as in a loaded test run, so that go-plugin's reaping
	// thread is not always the first to run after the exit.
	var stop atomic.Bool
	var spin sync.WaitGroup
	for range 2 * runtime.NumCPU() {
		spin.Go(func() {
			for !stop.Load() {
			}
		})
	}
	defer spin.Wait()
	defer stop.Store(true)
	for range 10 {
		conn, _ := launch(t)
		ctx, cancel := context.WithTimeout(t.Context(), bound)
		err := conn.Kill(ctx, true)
		cancel()
		if err != nil {
			t.Fatalf("Kill: %v", err)
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", conn.PID())); !errors.Is(err, os.ErrNotExist) {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", conn.PID()))
			t.Fatalf("plugin %d still in the process table after Kill (%v): %s", conn.PID(), err, b)
		}
	}
}

// Kill without a clean shutdown works; a second Kill is refused, not hung.
func TestKillTwice(t *testing.T) {
	t.Parallel()
	conn, _ := launch(t)
	ctx, cancel := context.WithTimeout(t.Context(), bound)
	defer cancel()
	if err := conn.Kill(ctx, false); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if err := conn.Kill(ctx, false); err == nil {
		t.Error("second Kill succeeded, want an error")
	}
}

func TestServeRefusesWithoutHost(t *testing.T) {
	t.Setenv(plugin.Handshake.MagicCookieKey, "")
	err := plugin.Serve(newTestShim(nil), nil, nil)
	if err == nil || !strings.Contains(err.Error(), plugin.Handshake.MagicCookieKey) {
		t.Errorf("Serve without the cookie: %v, want an error naming %s", err, plugin.Handshake.MagicCookieKey)
	}
}

// The plugin serves one host process at a time: another process's Reattach
// is refused with ErrHostConnected and leaves the plugin running; once the
// first host has let go, it attaches.
func TestReattachWhileAnotherHostIsConnected(t *testing.T) {
	t.Parallel()
	conn, dir := launch(t)
	reattach := func() (string, int) {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"=reattach", dirEnv+"="+dir)
		out, err := cmd.Output()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out)), cmd.ProcessState.ExitCode()
	}
	out, code := reattach()
	if code != 3 || !strings.Contains(out, "another hbd is connected to the plugin (hbd pid "+strconv.Itoa(os.Getpid())+")") {
		t.Fatalf("second host's Reattach: exit %d: %s; want ErrHostConnected naming pid %d", code, out, os.Getpid())
	}
	select {
	case <-conn.Exited():
		t.Fatal("the plugin was killed by the refused Reattach")
	default:
	}
	if _, err := conn.Shim().List(context.Background()); err != nil {
		t.Fatalf("the first host after the refused Reattach: %v", err)
	}
	if err := conn.Detach(); err != nil {
		t.Fatal(err)
	}
	// The plugin notices the closed connection on its own time.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, code = reattach()
		if code == 0 || code != 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code != 0 || !strings.HasPrefix(out, "attached ") {
		t.Fatalf("Reattach after the first host detached: exit %d: %s", code, out)
	}
}

// TestSpawnManyCrossesTheBoundary: one SpawnMany through the real plugin
// process gives, for each spec in order, what a Spawn of it would have: the
// result, or the same error (sentinel, *RemoteError and message).
func TestSpawnManyCrossesTheBoundary(t *testing.T) {
	t.Parallel()
	conn, _ := launch(t)
	sh := conn.Shim()
	ctx := t.Context()
	if _, err := sh.Spawn(ctx, plugin.Spec{Name: "a", Command: []string{"x"}}); err != nil {
		t.Fatal(err)
	}
	many, ok := sh.(plugin.ManySpawner)
	if !ok {
		t.Fatalf("%T is not a plugin.ManySpawner", sh)
	}
	outs, err := many.SpawnMany(ctx, []plugin.Spec{
		{Name: "b", Command: []string{"x"}},
		{Name: "a", Command: []string{"x"}}, // running
		{Name: "c"},                         // empty command
		{Name: "d", Command: []string{"x"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(outs) != 4 {
		t.Fatalf("%d outcomes, want 4", len(outs))
	}
	for _, i := range []int{0, 3} {
		if outs[i].Err != nil || outs[i].Result.PID == 0 {
			t.Errorf("outcome %d: %+v, want a started service", i, outs[i])
		}
	}
	for i, want := range map[int]struct {
		err error
		msg string
	}{
		1: {plugin.ErrRunning, `plugintest: spawn "a": service is running (pid 40001)`},
		2: {plugin.ErrBadSpec, `plugintest: spawn "c": invalid spec: empty command`},
	} {
		err := outs[i].Err
		var re *plugin.RemoteError
		if !errors.Is(err, want.err) || !errors.As(err, &re) || err.Error() != want.msg {
			t.Errorf("outcome %d: %v (%T), want %q wrapping %v", i, err, err, want.msg, want.err)
		}
	}
	slots, err := sh.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(slots) != 3 {
		t.Errorf("List after SpawnMany: %+v, want a, b and d", slots)
	}
}
