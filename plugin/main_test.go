package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hbshim/hb/shm"
)

// The test binary doubles as the plugin and as a throw-away host: TestMain
// dispatches on helperEnv before any test runs.
const (
	helperEnv = "HB_PLUGIN_TEST_HELPER" // "plugin" or "host"
	logEnv    = "HB_PLUGIN_TEST_LOG"    // plugin: its log file
	dirEnv    = "HB_PLUGIN_TEST_DIR"    // host: the state directory
	fakeSlots = 4
	// stdioService is a service name that makes the fake write to
	// descriptor 1 (the pipe to the host that launched it).
	stdioService = "__stdio"
)

// inheritedStdout is the plugin's original stdout: the pipe to the host
// that launched it.
var inheritedStdout *os.File

// pluginArgs are the arguments the plugin is launched with (and Reattach checks).
var pluginArgs = []string{"plugin", "--test"}

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "plugin":
		os.Exit(runPlugin())
	case "host":
		os.Exit(runHost())
	case "reattach":
		os.Exit(runReattach())
	}
	os.Exit(m.Run())
}

// runPlugin serves a fakeShim; it logs to $HB_PLUGIN_TEST_LOG.
func runPlugin() int {
	logf, err := os.OpenFile(os.Getenv(logEnv), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	f := newFakeShim(logf)
	inheritedStdout = os.Stdout // Serve replaces os.Stdout
	err = Serve(f, logf)
	fmt.Fprintf(logf, "serve returned: %v\n", err)
	if err != nil {
		return 1
	}
	return 0
}

// runHost launches a plugin in $HB_PLUGIN_TEST_DIR, spawns one service,
// detaches and exits, leaving the plugin behind with broken stdio pipes.
func runHost() int {
	dir := os.Getenv(dirEnv)
	conn, err := Launch(pluginConfig(dir))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err := conn.Shim().Spawn(context.Background(), Spec{Name: "orphan", Command: []string{"x"}}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := conn.Detach(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(conn.PID())
	return 0
}

// runReattach reattaches to the plugin in $HB_PLUGIN_TEST_DIR, prints
// Reattach's error (or "attached PID"), and detaches. It exits 0 only if it
// attached.
func runReattach() int {
	conn, err := Reattach(os.Getenv(dirEnv), nil)
	if err != nil {
		fmt.Println(err)
		if errors.Is(err, ErrHostConnected) {
			return 3
		}
		return 1
	}
	fmt.Println("attached", conn.PID())
	_ = conn.Detach()
	return 0
}

// pluginConfig launches this test binary as the plugin, state in dir.
func pluginConfig(dir string) LaunchConfig {
	return LaunchConfig{
		Args: pluginArgs,
		Env: []string{
			helperEnv + "=plugin",
			logEnv + "=" + filepath.Join(dir, "plugin.log"),
			// A -race plugin would otherwise linger a second at exit.
			strings.TrimSpace("GORACE=" + os.Getenv("GORACE") + " atexit_sleep_ms=0"),
		},
		StateDir: dir,
	}
}

// fakeShim is an in-memory Shim: services get made-up PIDs and no process
// is started. It keeps an event log with the replay semantics of the
// contract.
type fakeShim struct {
	log io.Writer

	mu      sync.Mutex
	svcs    map[string]*fakeSvc
	events  []Event
	changed chan struct{} // closed and replaced at every event
	nextPID int
}

type fakeSvc struct {
	slot       int
	pid        int
	gen        uint64
	state      shm.State
	exits      uint64
	lastStatus int32
}

func newFakeShim(log io.Writer) *fakeShim {
	return &fakeShim{log: log, svcs: map[string]*fakeSvc{}, changed: make(chan struct{}), nextPID: 40000}
}

// emit appends ev with the next sequence number; f.mu is held.
func (f *fakeShim) emit(ev Event) {
	ev.Seq = uint64(len(f.events)) + 1
	ev.TimeUnixNs = time.Now().UnixNano()
	f.events = append(f.events, ev)
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeShim) lookup(op, name string) (*fakeSvc, error) {
	s, ok := f.svcs[name]
	if !ok {
		return nil, fmt.Errorf("fake: %s %q: %w", op, name, ErrNotFound)
	}
	return s, nil
}

func (f *fakeShim) Info(context.Context) (Info, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return Info{PID: os.Getpid(), ShmName: "fake", Slots: fakeSlots, Pidfd: true, LastSeq: uint64(len(f.events)), Version: "test"}, nil
}

func (f *fakeShim) Spawn(_ context.Context, spec Spec) (SpawnResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := shm.ValidName(spec.Name); err != nil {
		return SpawnResult{}, fmt.Errorf("fake: spawn: %w", err)
	}
	if len(spec.Command) == 0 {
		return SpawnResult{}, fmt.Errorf("fake: spawn %q: %w: empty command", spec.Name, ErrBadSpec)
	}
	s, ok := f.svcs[spec.Name]
	if !ok {
		if len(f.svcs) == fakeSlots {
			return SpawnResult{}, fmt.Errorf("fake: spawn %q: %w", spec.Name, ErrFull)
		}
		s = &fakeSvc{slot: len(f.svcs), lastStatus: -1}
		f.svcs[spec.Name] = s
	}
	if s.pid != 0 {
		return SpawnResult{}, fmt.Errorf("fake: spawn %q: %w (pid %d)", spec.Name, ErrRunning, s.pid)
	}
	f.nextPID++
	s.pid, s.state = f.nextPID, shm.StateRunning
	s.gen++
	f.emit(Event{Kind: EventSpawn, Name: spec.Name, Slot: s.slot, PID: s.pid, Generation: s.gen, Status: -1})
	return SpawnResult{Slot: s.slot, PID: s.pid, Generation: s.gen, StartTime: 1000 + s.gen}, nil
}

func (f *fakeShim) Stop(_ context.Context, name string, sig syscall.Signal, _ time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.lookup("stop", name)
	if err != nil {
		return err
	}
	if s.pid == 0 {
		return fmt.Errorf("fake: stop %q: %w", name, ErrNotRunning)
	}
	pid := s.pid
	s.pid, s.state, s.exits, s.lastStatus = 0, shm.StateStopped, s.exits+1, int32(128+int(sig))
	f.emit(Event{Kind: EventExit, Name: name, Slot: s.slot, PID: pid, Generation: s.gen, Status: 128 + int(sig), Source: "pidfd"})
	return nil
}

func (f *fakeShim) Signal(_ context.Context, name string, sig syscall.Signal) error {
	if name == stdioService {
		// Write to the pipe the launching host reads, through the *os.File
		// (which raises SIGPIPE on EPIPE for descriptors 1 and 2); once that
		// host is gone this is a broken pipe.
		_, err := inheritedStdout.Write([]byte("hello from the plugin\n"))
		return fmt.Errorf("fake: stdout write: %v", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.lookup("signal", name)
	if err != nil {
		return err
	}
	if s.pid == 0 {
		return fmt.Errorf("fake: signal %q with %v: %w", name, sig, ErrNotRunning)
	}
	return nil
}

func (f *fakeShim) SetState(_ context.Context, name string, st shm.State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.lookup("set state", name)
	if err != nil {
		return err
	}
	s.state = st
	return nil
}

func (f *fakeShim) Free(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.lookup("free", name)
	if err != nil {
		return err
	}
	if s.pid != 0 {
		return fmt.Errorf("fake: free %q: %w", name, ErrRunning)
	}
	delete(f.svcs, name)
	return nil
}

func (f *fakeShim) List(context.Context) ([]shm.Slot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []shm.Slot
	for name, s := range f.svcs {
		out = append(out, shm.Slot{
			Index: s.slot, PID: uint32(s.pid), State: s.state, Generation: s.gen,
			Exits: s.exits, LastStatus: s.lastStatus, Name: name,
		})
	}
	slices.SortFunc(out, func(a, b shm.Slot) int { return a.Index - b.Index })
	return out, nil
}

func (f *fakeShim) Events(ctx context.Context, afterSeq uint64) (<-chan Event, error) {
	f.mu.Lock()
	last := uint64(len(f.events))
	f.mu.Unlock()
	if afterSeq > last {
		return nil, fmt.Errorf("fake: events after %d: %w: last is %d", afterSeq, ErrBadSpec, last)
	}
	ch := make(chan Event)
	go func() {
		defer close(ch)
		next := afterSeq
		for {
			f.mu.Lock()
			pending := slices.Clone(f.events[next:])
			wait := f.changed
			f.mu.Unlock()
			for _, ev := range pending {
				select {
				case ch <- ev:
					next = ev.Seq
				case <-ctx.Done():
					return
				}
			}
			if len(pending) == 0 {
				select {
				case <-wait:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return ch, nil
}

func (f *fakeShim) Shutdown(_ context.Context, clean bool) error {
	fmt.Fprintf(f.log, "fake shutdown clean=%v\n", clean)
	return nil
}
