// Package apitest provides a fake api.Backend for tests of the control API,
// of hbctl and of anything else that talks to hbd's socket. It keeps services
// in memory, starts and stops them instantly with made-up PIDs and emits the
// events a real manager would. Safe for concurrent use.
package apitest

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/hbshim/hb/host/api"
)

// Backend is an in-memory api.Backend.
type Backend struct {
	mu       sync.Mutex // guards every field below
	order    []string
	svcs     map[string]*api.ServiceStatus
	nextPID  int
	seq      uint64
	subs     map[chan api.Event]struct{}
	subsCh   chan struct{} // closed and replaced whenever subs changes
	calls    []string
	fail     map[string]error
	reload   func() (api.ReloadResult, error)
	plugin   *api.PluginInfo
	pluginEr error
}

// New returns a Backend holding the named services, all stopped.
func New(names ...string) *Backend {
	b := &Backend{svcs: map[string]*api.ServiceStatus{}, nextPID: 1000,
		subs: map[chan api.Event]struct{}{}, subsCh: make(chan struct{}), fail: map[string]error{}}
	now := time.Now()
	for i, n := range names {
		b.order = append(b.order, n)
		b.svcs[n] = &api.ServiceStatus{Name: n, State: "stopped", Slot: i, LastStatus: -1, Since: now, Restart: "always"}
	}
	return b
}

var _ api.Backend = (*Backend)(nil)
var _ api.PluginInfoer = (*Backend)(nil)

// Fail makes the next call of op ("start", "stop", "restart", "signal") return err.
func (b *Backend) Fail(op string, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fail[op] = err
}

// SetReload sets what Reload returns.
func (b *Backend) SetReload(f func() (api.ReloadResult, error)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.reload = f
}

// SetPluginInfo sets what PluginInfo returns (err: the plugin is unhealthy);
// by default it describes a healthy made-up plugin.
func (b *Backend) SetPluginInfo(info api.PluginInfo, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.plugin, b.pluginEr = &info, err
}

// PluginInfo implements api.PluginInfoer.
func (b *Backend) PluginInfo(ctx context.Context) (api.PluginInfo, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.plugin == nil {
		return api.PluginInfo{PID: os.Getpid(), Shm: "hb-test", Slots: 16, Pidfd: true, Version: "test"}, nil
	}
	return *b.plugin, b.pluginEr
}

// Calls returns the mutating calls made so far, as "start a,b", "signal HUP a", "reload".
func (b *Backend) Calls() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.calls)
}

// Update changes a service with f, then emits a state event for it.
func (b *Backend) Update(name string, f func(*api.ServiceStatus)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st, ok := b.svcs[name]
	if !ok {
		panic("apitest: Update of unknown service " + name)
	}
	f(st)
	st.Since = time.Now()
	b.emit(api.Event{Kind: api.EventState, Name: name, PID: st.PID, Generation: st.Generation, State: st.State, Reason: st.Reason})
}

// Emit sends ev to every subscriber (Seq and Time are filled in).
func (b *Backend) Emit(ev api.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.emit(ev)
}

func (b *Backend) emit(ev api.Event) {
	b.seq++
	ev.Seq = b.seq
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	for ch := range b.subs {
		select {
		case ch <- ev:
		default: // a slow subscriber loses events, as with the real manager
		}
	}
}

// WaitSubscribers blocks until there are exactly n subscribers or ctx ends.
func (b *Backend) WaitSubscribers(ctx context.Context, n int) error {
	for {
		b.mu.Lock()
		have, changed := len(b.subs), b.subsCh
		b.mu.Unlock()
		if have == n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("apitest: waiting for %d subscribers (have %d): %w", n, have, ctx.Err())
		}
	}
}

func (b *Backend) subsChanged() {
	close(b.subsCh)
	b.subsCh = make(chan struct{})
}

// List implements api.Backend.
func (b *Backend) List() []api.ServiceStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]api.ServiceStatus, 0, len(b.order))
	for _, n := range b.order {
		out = append(out, withWanted(*b.svcs[n]))
	}
	return out
}

// withWanted fills in Wanted and OK as hbd does, when the test left them
// unset: up and OK when starting or running, down and OK when stopped.
func withWanted(st api.ServiceStatus) api.ServiceStatus {
	if st.Wanted != "" {
		return st
	}
	switch st.State {
	case "starting", "running":
		st.Wanted, st.OK = api.WantedUp, true
	case "stopped":
		st.Wanted, st.OK = api.WantedDown, true
	default:
		st.Wanted = api.WantedUp
	}
	return st
}

// Get implements api.Backend.
func (b *Backend) Get(name string) (api.ServiceStatus, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st, ok := b.svcs[name]
	if !ok {
		return api.ServiceStatus{}, api.Errorf(api.ErrNotFound, "no service %q", name)
	}
	return withWanted(*st), nil
}

// Names implements api.Backend.
func (b *Backend) Names() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.order)
}

// check returns the injected failure for op, or ErrNotFound for the first unknown name.
func (b *Backend) check(op string, names []string) error {
	if err := b.fail[op]; err != nil {
		delete(b.fail, op)
		return err
	}
	for _, n := range names {
		if _, ok := b.svcs[n]; !ok {
			return api.Errorf(api.ErrNotFound, "no service %q", n)
		}
	}
	return nil
}

func (b *Backend) record(call string, names []string) {
	b.calls = append(b.calls, fmt.Sprintf("%s %s", call, joinNames(names)))
}

func joinNames(names []string) string {
	s := ""
	for i, n := range names {
		if i > 0 {
			s += ","
		}
		s += n
	}
	return s
}

// Start implements api.Backend: each stopped service becomes running with a new PID.
func (b *Backend) Start(names []string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.record("start", names)
	if err := b.check("start", names); err != nil {
		return err
	}
	for _, n := range names {
		b.start(b.svcs[n])
	}
	return nil
}

func (b *Backend) start(st *api.ServiceStatus) {
	if st.PID != 0 {
		return
	}
	b.nextPID++
	st.PID, st.State, st.Since, st.Reason = b.nextPID, "running", time.Now(), ""
	st.Generation++
	b.emit(api.Event{Kind: api.EventSpawn, Name: st.Name, PID: st.PID, Generation: st.Generation, State: st.State})
}

func (b *Backend) stop(st *api.ServiceStatus, status int) {
	if st.PID == 0 {
		st.State = "stopped"
		return
	}
	pid := st.PID
	st.PID, st.State, st.Since = 0, "stopped", time.Now()
	st.Exits++
	st.LastStatus, st.LastExit = status, time.Now()
	b.emit(api.Event{Kind: api.EventExit, Name: st.Name, PID: pid, Generation: st.Generation, Status: status, Source: "pidfd", State: st.State})
}

// Stop implements api.Backend: each running service exits with status 143 (SIGTERM).
func (b *Backend) Stop(names []string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.record("stop", names)
	if err := b.check("stop", names); err != nil {
		return err
	}
	for _, n := range names {
		b.stop(b.svcs[n], 128+int(syscall.SIGTERM))
	}
	return nil
}

// Restart implements api.Backend.
func (b *Backend) Restart(names []string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.record("restart", names)
	if err := b.check("restart", names); err != nil {
		return err
	}
	for _, n := range names {
		b.stop(b.svcs[n], 128+int(syscall.SIGTERM))
		b.start(b.svcs[n])
	}
	return nil
}

// Signal implements api.Backend: it records the signal; a stopped service is ErrConflict.
func (b *Backend) Signal(name string, sig syscall.Signal) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.record("signal "+api.SignalName(sig), []string{name})
	if err := b.check("signal", []string{name}); err != nil {
		return err
	}
	if b.svcs[name].PID == 0 {
		return api.Errorf(api.ErrConflict, "%s is %s", name, b.svcs[name].State)
	}
	return nil
}

// Reload implements api.Backend with the function given to SetReload (default: no change).
func (b *Backend) Reload() (api.ReloadResult, error) {
	b.mu.Lock()
	b.calls = append(b.calls, "reload")
	f := b.reload
	b.mu.Unlock()
	if f == nil {
		return api.ReloadResult{}, nil
	}
	res, err := f()
	if err == nil {
		b.Emit(api.Event{Kind: api.EventReload, Reason: fmt.Sprintf("added %d, removed %d, changed %d", len(res.Added), len(res.Removed), len(res.Changed))})
	}
	return res, err
}

// Subscribe implements api.Backend.
func (b *Backend) Subscribe(ctx context.Context) <-chan api.Event {
	ch := make(chan api.Event, 256)
	b.mu.Lock()
	b.subs[ch] = struct{}{}
	b.subsChanged()
	b.mu.Unlock()
	go func() {
		<-ctx.Done()
		b.mu.Lock()
		delete(b.subs, ch)
		b.subsChanged()
		close(ch)
		b.mu.Unlock()
	}()
	return ch
}
