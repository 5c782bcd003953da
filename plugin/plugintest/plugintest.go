// Package plugintest provides an in-memory plugin.Shim for tests of the
// host's logic and of the plugin's transport: services get made-up PIDs and
// no process is started, and the event log has the replay semantics of the
// plugin.Shim contract. Knobs make it misbehave as a real plugin can: an
// exit of a service (Exit), a lost event subscription (DropEvents,
// RefuseEvents, Forget), a dead plugin (Die) and a Spawn that does not
// return (StallSpawns), a host that lags behind (HoldEvents). Safe for
// concurrent use.
package plugintest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// Shim is an in-memory plugin.Shim over a table of Slots slots. It outlives
// the plugin "processes" that serve it: Conn starts a new one, which adopts
// the live services as a real new plugin adopts them from the table.
type Shim struct {
	slots int

	mu        sync.Mutex // guards every field below
	svcs      map[string]*svc
	bridged   []plugin.BridgeSpec
	reserved  []string
	found     []plugin.BridgeSpec // programs "found" by specs with All (Found)
	events    []plugin.Event      // events[i].Seq == first+i
	first     uint64              // Seq of events[0]
	lastSeq   uint64
	changed   chan struct{} // closed and replaced at every event and every drop
	dropGen   uint64        // subscriptions of an older dropGen end
	nextPID   int
	pid       int // the current "plugin process"
	conn      *Conn
	dead      bool
	refuse    bool
	stall     *Stall
	held      bool // HoldEvents: subscribers get nothing new until released
	adopted   int
	specs     map[string]plugin.Spec
	calls     []string
	shutdowns []bool
	features  int // Info's FeatureVersion
}

type svc struct {
	slot       int
	pid        int
	gen        uint64
	state      shm.State
	exits      uint64
	lastStatus int32
	lastExitNs uint64
	adopted    bool
	startedAt  time.Time
	startTime  uint64 // the slot's start_time (clock ticks after boot); 0 unless SetStartTime
}

// New returns a Shim with an empty table of slots slots.
func New(slots int) *Shim {
	return &Shim{slots: slots, svcs: map[string]*svc{}, specs: map[string]plugin.Spec{},
		changed: make(chan struct{}), first: 1, nextPID: 40000, pid: 1 << 22, features: plugin.FeatureSpawnMany}
}

var (
	_ plugin.Shim        = (*Shim)(nil)
	_ plugin.ManySpawner = (*Shim)(nil)
)

// SetFeatureVersion makes Info report v: a plugin of an older hbd.
func (f *Shim) SetFeatureVersion(v int) {
	f.mu.Lock()
	f.features = v
	f.mu.Unlock()
}

// SpawnMany implements plugin.ManySpawner: it records "spawn-many N" and
// spawns each spec in order, as Spawn (a stall holds each of them).
func (f *Shim) SpawnMany(ctx context.Context, specs []plugin.Spec) ([]plugin.SpawnOutcome, error) {
	f.mu.Lock()
	err := f.call(fmt.Sprintf("spawn-many %d", len(specs)))
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	outs := make([]plugin.SpawnOutcome, len(specs))
	for i, spec := range specs {
		outs[i].Result, outs[i].Err = f.Spawn(ctx, spec)
	}
	return outs, nil
}

// emit appends ev with the next sequence number; f.mu is held.
func (f *Shim) emit(ev plugin.Event) plugin.Event {
	f.lastSeq++
	ev.Seq = f.lastSeq
	if ev.TimeUnixNs == 0 {
		ev.TimeUnixNs = time.Now().UnixNano()
	}
	f.events = append(f.events, ev)
	f.wake()
	return ev
}

// wake tells every subscription to look again; f.mu is held.
func (f *Shim) wake() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// call records op and fails it if the plugin is dead; f.mu is held.
func (f *Shim) call(op string) error {
	f.calls = append(f.calls, op)
	if f.dead {
		return fmt.Errorf("plugintest: %s: %w: the plugin is dead", op, plugin.ErrUnavailable)
	}
	return nil
}

func (f *Shim) lookup(op, name string) (*svc, error) {
	s, ok := f.svcs[name]
	if !ok {
		return nil, fmt.Errorf("plugintest: %s %q: %w", op, name, plugin.ErrNotFound)
	}
	return s, nil
}

// Info implements plugin.Shim.
func (f *Shim) Info(context.Context) (plugin.Info, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("info"); err != nil {
		return plugin.Info{}, err
	}
	return plugin.Info{PID: f.pid, ShmName: "plugintest", Slots: f.slots, Pidfd: true,
		Adopted: f.adopted, LastSeq: f.lastSeq, Version: "test", FeatureVersion: f.features}, nil
}

// Spawn implements plugin.Shim. With StallSpawns in effect it blocks until
// the Stall is released or ctx ends.
func (f *Shim) Spawn(ctx context.Context, spec plugin.Spec) (plugin.SpawnResult, error) {
	f.mu.Lock()
	st := f.stall
	f.mu.Unlock()
	if st != nil {
		select {
		case st.arrived <- spec.Name:
		default:
		}
		select {
		case <-st.release:
		case <-ctx.Done():
			return plugin.SpawnResult{}, fmt.Errorf("plugintest: spawn %q: %w", spec.Name, ctx.Err())
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("spawn " + spec.Name); err != nil {
		return plugin.SpawnResult{}, err
	}
	if err := shm.ValidName(spec.Name); err != nil {
		return plugin.SpawnResult{}, fmt.Errorf("plugintest: spawn: %w", err)
	}
	if len(spec.Command) == 0 {
		return plugin.SpawnResult{}, fmt.Errorf("plugintest: spawn %q: %w: empty command", spec.Name, plugin.ErrBadSpec)
	}
	s, ok := f.svcs[spec.Name]
	if !ok {
		slot := f.freeSlot()
		if slot < 0 {
			return plugin.SpawnResult{}, fmt.Errorf("plugintest: spawn %q: %w", spec.Name, plugin.ErrFull)
		}
		s = &svc{slot: slot, lastStatus: -1}
		f.svcs[spec.Name] = s
	}
	if s.pid != 0 {
		return plugin.SpawnResult{}, fmt.Errorf("plugintest: spawn %q: %w (pid %d)", spec.Name, plugin.ErrRunning, s.pid)
	}
	f.specs[spec.Name] = spec
	return f.start(spec.Name, s), nil
}

// freeSlot is the lowest unused slot index, -1 if none; f.mu is held.
func (f *Shim) freeSlot() int {
	used := map[int]bool{}
	for _, s := range f.svcs {
		used[s.slot] = true
	}
	for i := range f.slots {
		if !used[i] {
			return i
		}
	}
	return -1
}

// start makes a new incarnation of s; f.mu is held.
func (f *Shim) start(name string, s *svc) plugin.SpawnResult {
	f.nextPID++
	s.pid, s.gen, s.adopted, s.startedAt = f.nextPID, s.gen+1, false, time.Now()
	s.state = shm.StateStarting
	if f.specs[name].RunningAtSpawn {
		s.state = shm.StateRunning
	}
	f.emit(plugin.Event{Kind: plugin.EventSpawn, Name: name, Slot: s.slot, PID: s.pid, Generation: s.gen, Status: -1})
	return plugin.SpawnResult{Slot: s.slot, PID: s.pid, Generation: s.gen, StartTime: 1000 + s.gen}
}

// exit records the exit of s's incarnation and, if its Spec asks, respawns
// it; f.mu is held.
func (f *Shim) exit(name string, s *svc, status int, source string, respawn bool) plugin.Event {
	pid := s.pid
	s.pid, s.exits, s.lastStatus, s.lastExitNs = 0, s.exits+1, int32(status), shm.MonotonicNs()
	spec := f.specs[name]
	respawn = respawn && s.state != shm.StateStopping && !s.adopted && spec.Respawn.Wants(time.Since(s.startedAt), status)
	if s.state != shm.StateStopping {
		s.state = shm.StateExited
	}
	ev := f.emit(plugin.Event{Kind: plugin.EventExit, Name: name, Slot: s.slot, PID: pid, Generation: s.gen,
		Status: status, Source: source, Adopted: s.adopted, Respawned: respawn})
	if respawn {
		f.start(name, s)
	}
	return ev
}

// Stop implements plugin.Shim: the service exits at once with 128+sig.
func (f *Shim) Stop(_ context.Context, name string, sig syscall.Signal, _ time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("stop " + name); err != nil {
		return err
	}
	s, err := f.lookup("stop", name)
	if err != nil {
		return err
	}
	if s.pid == 0 {
		return fmt.Errorf("plugintest: stop %q: %w", name, plugin.ErrNotRunning)
	}
	s.state = shm.StateStopping
	f.exit(name, s, 128+int(sig), "pidfd", false)
	s.state = shm.StateStopped
	return nil
}

// Signal implements plugin.Shim; it records the call and changes nothing.
func (f *Shim) Signal(_ context.Context, name string, sig syscall.Signal) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call(fmt.Sprintf("signal %s %d", name, sig)); err != nil {
		return err
	}
	s, err := f.lookup("signal", name)
	if err != nil {
		return err
	}
	if s.pid == 0 {
		return fmt.Errorf("plugintest: signal %q with %v: %w", name, sig, plugin.ErrNotRunning)
	}
	return nil
}

// SetState implements plugin.Shim.
func (f *Shim) SetState(_ context.Context, name string, st shm.State, gen uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("setstate " + name); err != nil {
		return err
	}
	s, err := f.lookup("set state", name)
	if err != nil {
		return err
	}
	if (gen != 0 && gen != s.gen) || (s.pid != 0) != st.Live() {
		return fmt.Errorf("set state %q to %s (generation %d): %w", name, st, gen, plugin.ErrStale)
	}
	s.state = st
	return nil
}

// Free implements plugin.Shim.
func (f *Shim) Free(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("free " + name); err != nil {
		return err
	}
	s, err := f.lookup("free", name)
	if err != nil {
		return err
	}
	if s.pid != 0 {
		return fmt.Errorf("plugintest: free %q: %w", name, plugin.ErrRunning)
	}
	delete(f.svcs, name)
	delete(f.specs, name)
	return nil
}

// Bridge implements plugin.Shim: it records the specs and the reserved
// names (BridgeSet, Reserved).
func (f *Shim) Bridge(_ context.Context, specs []plugin.BridgeSpec, reserved []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("bridge"); err != nil {
		return err
	}
	f.bridged = append([]plugin.BridgeSpec(nil), specs...)
	f.reserved = append([]string(nil), reserved...)
	return nil
}

// Bridged implements plugin.Shim: the named specs of the last Bridge call,
// then the programs Found gave.
func (f *Shim) Bridged(context.Context) ([]plugin.BridgeSpec, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("bridged"); err != nil {
		return nil, err
	}
	var out []plugin.BridgeSpec
	for _, sp := range f.bridged {
		if !sp.All {
			out = append(out, sp)
		}
	}
	return append(out, f.found...), nil
}

// Found sets the programs the specs with All stand for (what Bridged
// returns after the named ones), as a plugin that found them would; send
// an EventBridge (Emit) to tell the host.
func (f *Shim) Found(specs ...plugin.BridgeSpec) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.found = append([]plugin.BridgeSpec(nil), specs...)
}

// BridgeSet is the set of programs the last Bridge call gave.
func (f *Shim) BridgeSet() []plugin.BridgeSpec {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]plugin.BridgeSpec(nil), f.bridged...)
}

// Reserved is the reserved names the last Bridge call gave.
func (f *Shim) Reserved() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.reserved...)
}

// List implements plugin.Shim.
func (f *Shim) List(context.Context) ([]shm.Slot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("list"); err != nil {
		return nil, err
	}
	return f.table(), nil
}

// table is every used slot in index order; f.mu is held.
func (f *Shim) table() []shm.Slot {
	var out []shm.Slot
	for name, s := range f.svcs {
		sl := shm.Slot{Index: s.slot, PID: uint32(s.pid), State: s.state, Generation: s.gen,
			Exits: s.exits, LastStatus: s.lastStatus, LastExitNs: s.lastExitNs, Name: name, StartTime: s.startTime}
		if s.adopted {
			sl.Flags |= shm.SlotAdopted
		}
		out = append(out, sl)
	}
	slices.SortFunc(out, func(a, b shm.Slot) int { return a.Index - b.Index })
	return out
}

// Events implements plugin.Shim. Events the Shim forgot (Forget) are not
// replayed: the stream starts at the oldest one it keeps. The channel is
// closed when ctx ends, at DropEvents and at Die.
func (f *Shim) Events(ctx context.Context, afterSeq uint64) (<-chan plugin.Event, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("events"); err != nil {
		return nil, err
	}
	if f.refuse {
		return nil, fmt.Errorf("plugintest: events: %w: refused", plugin.ErrUnavailable)
	}
	if afterSeq > f.lastSeq {
		return nil, fmt.Errorf("plugintest: events after %d: %w: last is %d", afterSeq, plugin.ErrBadSpec, f.lastSeq)
	}
	gen := f.dropGen
	ch := make(chan plugin.Event)
	go func() {
		defer close(ch)
		next := afterSeq + 1
		for {
			f.mu.Lock()
			if f.dropGen != gen {
				f.mu.Unlock()
				return
			}
			next = max(next, f.first)
			var pending []plugin.Event
			if !f.held {
				pending = slices.Clone(f.events[next-f.first:])
			}
			wait := f.changed
			f.mu.Unlock()
			for _, ev := range pending {
				select {
				case ch <- ev:
					next = ev.Seq + 1
				case <-wait:
					// A drop ends the stream before a pending event.
					f.mu.Lock()
					dropped := f.dropGen != gen
					f.mu.Unlock()
					if dropped {
						return
					}
					select {
					case ch <- ev:
						next = ev.Seq + 1
					case <-ctx.Done():
						return
					}
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

// Shutdown implements plugin.Shim; it records clean.
func (f *Shim) Shutdown(_ context.Context, clean bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("shutdown"); err != nil {
		return err
	}
	f.shutdowns = append(f.shutdowns, clean)
	return nil
}

// Exit makes the current incarnation of the service exit with status
// (exit code or 128+signal), seen by source ("pidfd", "tracepoint", ...).
// Like the real plugin it respawns the service at once when the service's
// Spec.Respawn wants this status (the event then has Respawned set and an
// EventSpawn follows). It returns the exit event.
func (f *Shim) Exit(name string, status int, source string) (plugin.Event, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.lookup("exit", name)
	if err != nil {
		return plugin.Event{}, err
	}
	if s.pid == 0 {
		return plugin.Event{}, fmt.Errorf("plugintest: exit %q: %w", name, plugin.ErrNotRunning)
	}
	return f.exit(name, s, status, source, true), nil
}

// SetStartTime sets the start_time (clock ticks after boot, as
// /proc/PID/stat) the slot of name shows in List.
func (f *Shim) SetStartTime(name string, ticks uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.svcs[name]; s != nil {
		s.startTime = ticks
	}
}

// Emit sends ev on the event stream as the plugin would (a bridged
// program's spawn, exit or manager event). It returns ev with its Seq.
func (f *Shim) Emit(ev plugin.Event) plugin.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.emit(ev)
}

// Seed puts a slot into the table as a previous hbd and plugin left it,
// without an event: pid 0 is a service that is down, st its recorded state.
// It returns the slot's index.
func (f *Shim) Seed(name string, pid int, st shm.State, lastStatus int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.svcs[name]
	if s == nil {
		s = &svc{slot: f.freeSlot()}
		f.svcs[name] = s
	}
	s.pid, s.state, s.lastStatus, s.gen = pid, st, int32(lastStatus), s.gen+1
	s.adopted = pid != 0
	if pid == 0 {
		s.exits++
		s.lastExitNs = shm.MonotonicNs()
	}
	return s.slot
}

// DropEvents closes every open Events channel, as the plugin does to a
// subscriber that lags or as a lost connection does. Later subscriptions
// work (unless RefuseEvents).
func (f *Shim) DropEvents() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dropGen++
	f.wake()
}

// RefuseEvents makes Events fail (on) or work again (off).
func (f *Shim) RefuseEvents(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refuse = on
}

// Forget discards every buffered event: a subscription resumed from an
// earlier position starts after a gap, as from a plugin whose event buffer
// has moved on.
func (f *Shim) Forget() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.first = f.lastSeq + 1
	f.events = nil
}

// Die makes the plugin dead: every call fails with plugin.ErrUnavailable,
// the current Conn's Exited is closed and every Events channel ends. The
// table stays; the next Conn is a new plugin that adopts it.
func (f *Shim) Die() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dead = true
	f.dropGen++
	f.wake()
	if f.conn != nil {
		f.conn.close()
	}
}

// HoldEvents stops the delivery of events to every subscription, as a
// host that lags behind its plugin sees none of the plugin's latest events
// yet; the events are kept and delivered, in order, once release is called.
func (f *Shim) HoldEvents() (release func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.held = true
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.held = false
		f.wake()
	}
}

// StallSpawns makes every Spawn from now on block until the returned Stall
// is released (or the call's context ends).
func (f *Shim) StallSpawns() *Stall {
	st := &Stall{arrived: make(chan string, 1024), release: make(chan struct{})}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stall = st
	return st
}

// Stall holds Spawn calls; see Shim.StallSpawns.
type Stall struct {
	arrived chan string
	release chan struct{}
	once    sync.Once
}

// Arrived receives the service name of each Spawn as it starts to wait.
func (s *Stall) Arrived() <-chan string { return s.arrived }

// Release lets every held Spawn, and every later one, proceed.
func (s *Stall) Release() { s.once.Do(func() { close(s.release) }) }

// Calls returns the calls made so far ("spawn NAME", "stop NAME",
// "setstate NAME", "free NAME", "list", "events", "info", ...), in order.
func (f *Shim) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// Shutdowns returns the clean argument of each Shutdown call.
func (f *Shim) Shutdowns() []bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.shutdowns)
}

// Slots returns the table as List would, dead plugin or not.
func (f *Shim) Slots() []shm.Slot {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.table()
}

// Conn starts a new plugin "process" over the Shim's table and returns the
// host's connection to it: the Shim comes alive again, its event log starts
// anew, and each live service is adopted (an EventAdopt each). The first
// Conn adopts nothing that was not Seeded.
func (f *Shim) Conn() *Conn {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn != nil {
		f.conn.close()
	}
	f.pid++
	f.dead = false
	f.dropGen++
	f.events, f.first, f.lastSeq = nil, 1, 0
	f.wake()
	f.adopted = 0
	names := make([]string, 0, len(f.svcs))
	for name := range f.svcs {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if s := f.svcs[name]; s.pid != 0 {
			s.adopted = true
			f.adopted++
			f.emit(plugin.Event{Kind: plugin.EventAdopt, Name: name, Slot: s.slot, PID: s.pid, Generation: s.gen,
				Status: -1, Source: "adopt", Adopted: true})
		}
	}
	f.conn = &Conn{f: f, pid: f.pid, exited: make(chan struct{})}
	return f.conn
}

// Conn is a connection to one plugin "process" of a Shim; it has the
// methods of *plugin.Conn the host uses.
type Conn struct {
	f      *Shim
	pid    int
	once   sync.Once
	exited chan struct{}
}

func (c *Conn) close() { c.once.Do(func() { close(c.exited) }) }

// Shim returns the Shim.
func (c *Conn) Shim() plugin.Shim { return c.f }

// PID is the made-up PID of this plugin process.
func (c *Conn) PID() int { return c.pid }

// Exited is closed when this plugin process is gone (Die, Kill, a newer Conn).
func (c *Conn) Exited() <-chan struct{} { return c.exited }

// Detach leaves the plugin running.
func (c *Conn) Detach() error { return nil }

// Kill shuts the plugin down (Shutdown with clean) and ends it.
func (c *Conn) Kill(ctx context.Context, clean bool) error {
	err := c.f.Shutdown(ctx, clean)
	c.f.mu.Lock()
	c.f.dead = true
	c.f.dropGen++
	c.f.wake()
	c.f.mu.Unlock()
	c.close()
	return err
}
