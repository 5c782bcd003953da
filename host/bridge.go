package host

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/hbshim/hb/bridge"
	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/host/config"
	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// bridged is hbd's view of one program another manager runs
// (docs/bridges.md). The plugin watches it; hbd only shows it and sends
// control requests to its manager. Guarded by Daemon.mu.
type bridged struct {
	cfg        *config.Bridged
	slot       int
	pid        int
	generation uint64
	exits      uint64
	lastStatus int
	lastExit   time.Time
	since      time.Time
	gone       string // the manager is not running: why
	answer     string // what the manager answered the last control request
	// found: the plugin found it for a [bridge.MANAGER] without programs
	// (source is that table's dir or server_url), rather than listed.
	found  bool
	source string
}

func (b *bridged) status() api.ServiceStatus {
	st := api.ServiceStatus{
		Name: b.cfg.Name, PID: b.pid, Slot: b.slot, Generation: b.generation, Exits: b.exits,
		LastStatus: b.lastStatus, LastExit: b.lastExit, Since: b.since, Adopted: true,
		Manager: b.cfg.Manager, State: "running",
	}
	where := b.cfg.Dir
	if b.cfg.Manager == bridge.Supervisord {
		where = b.cfg.URL + " " + b.cfg.Process
	}
	st.Reason = "bridged: " + b.cfg.Manager + " " + where
	switch {
	case b.gone != "":
		st.State, st.PID = "exited", 0
		st.Reason = "manager gone: " + b.gone
	case b.pid == 0:
		st.State = "exited"
		if b.exits == 0 {
			st.State = "stopped"
		}
	}
	if b.answer != "" {
		st.Reason += "; " + b.answer
	}
	// Whether it should run is its manager's decision: hbctl status counts
	// it as in its wanted state while the manager is there.
	st.OK = b.gone == ""
	return st
}

// setBridged makes hbd's bridged programs from the configuration, keeping
// what is known of the ones already there, and of those the plugin found
// for a [bridge.MANAGER] without programs that is still configured.
// Called with mu held.
func (d *Daemon) setBridged(cfg *config.Config) {
	old := d.bridged
	d.bridged = map[string]*bridged{}
	for _, name := range cfg.BridgedOrder {
		b := old[name]
		if b == nil || b.found || *b.cfg != *cfg.Bridged[name] {
			b = &bridged{cfg: cfg.Bridged[name], slot: -1, lastStatus: -1, since: time.Now()}
		}
		b.cfg = cfg.Bridged[name]
		d.bridged[name] = b
	}
	for name, b := range old {
		if !b.found || d.bridged[name] != nil || cfg.Services[name] != nil {
			continue
		}
		if src := sourceOf(cfg, b.cfg.Manager); src != nil && src.Where() == b.source {
			d.bridged[name] = b
		}
	}
	d.orderBridged(cfg)
}

// orderBridged lists the bridged programs: the configuration's in its
// order, then those the plugin found, by name. Called with mu held.
func (d *Daemon) orderBridged(cfg *config.Config) {
	d.bridgedOrder = d.bridgedOrder[:0]
	var found []string
	for _, name := range cfg.BridgedOrder {
		if d.bridged[name] != nil {
			d.bridgedOrder = append(d.bridgedOrder, name)
		}
	}
	for name, b := range d.bridged {
		if b.found {
			found = append(found, name)
		}
	}
	slices.Sort(found)
	d.bridgedOrder = append(d.bridgedOrder, found...)
}

// sourceOf is cfg's [bridge.MANAGER] without programs, if there is one.
func sourceOf(cfg *config.Config, manager string) *config.BridgeSource {
	for _, s := range cfg.BridgeSources {
		if s.Manager == manager {
			return s
		}
	}
	return nil
}

// bridgeSpecs is the set of programs the plugin is to watch: the listed
// ones, and a spec with All per [bridge.MANAGER] without programs when the
// plugin can take it.
func (d *Daemon) bridgeSpecs() []plugin.BridgeSpec {
	var out []plugin.BridgeSpec
	for _, name := range d.cfg.BridgedOrder {
		c := d.cfg.Bridged[name]
		out = append(out, plugin.BridgeSpec{Name: c.Name, Manager: c.Manager, Dir: c.Dir, URL: c.URL, Process: c.Process})
	}
	for _, s := range d.cfg.BridgeSources {
		if d.info.FeatureVersion < plugin.FeatureBridgeAll {
			d.log.Error("the plugin cannot bridge every program of a manager (it is older than hbd): list the programs, or restart the plugin (hbctl reexec does not; stop hbd and the plugin)",
				"manager", s.Manager, "where", s.Where(), "plugin_features", d.info.FeatureVersion, "at", fmt.Sprintf("%s:%d", s.File, s.Line))
			continue
		}
		out = append(out, plugin.BridgeSpec{Manager: s.Manager, Dir: s.Dir, URL: s.URL, All: true})
	}
	return out
}

// syncBridges hands the plugin the set of bridged programs (when there is
// one, or the table still has bridged slots to drop) and the names it must
// not take for a [bridge.MANAGER] without programs (the services'), takes
// the programs it found, and their slots' state. Called with mu held,
// after reconcile.
func (d *Daemon) syncBridges() {
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	var slots []shm.Slot
	var err error
	d.mu.outside(func() { slots, err = d.shim.List(ctx) })
	if err != nil {
		d.log.Error("bridge: list", "err", err)
		return
	}
	had := false
	for _, sl := range slots {
		if sl.Flags&shm.SlotBridged != 0 {
			had = true
		}
	}
	if len(d.cfg.BridgedOrder) == 0 && len(d.cfg.BridgeSources) == 0 && !had && !d.bridgeSent {
		return
	}
	specs := d.bridgeSpecs()
	reserved := slices.Clone(d.cfg.Order)
	d.bridgeSent = len(specs) > 0
	d.mu.outside(func() { err = d.shim.Bridge(ctx, specs, reserved) })
	if err != nil {
		d.log.Error("bridge", "err", err)
	}
	d.refreshFound(ctx)
	var now []shm.Slot
	d.mu.outside(func() { now, err = d.shim.List(ctx) })
	if err != nil {
		return
	}
	for _, sl := range now {
		if b := d.bridged[sl.Name]; b != nil {
			b.slot, b.pid, b.generation, b.exits = sl.Index, int(sl.PID), sl.Generation, sl.Exits
			b.lastStatus = int(sl.LastStatus)
			if sl.Flags&shm.SlotManagerGone != 0 && b.gone == "" {
				b.gone = "not running"
			}
		}
	}
}

// refreshFound asks the plugin which programs it bridges and takes those
// it found for a [bridge.MANAGER] without programs: new ones are listed
// (hbctl status), gone ones no longer. Called with mu held.
func (d *Daemon) refreshFound(ctx context.Context) {
	if d.info.FeatureVersion < plugin.FeatureBridgeAll || len(d.cfg.BridgeSources) == 0 && !d.hasFound() {
		return
	}
	var specs []plugin.BridgeSpec
	var err error
	d.mu.outside(func() { specs, err = d.shim.Bridged(ctx) })
	if err != nil {
		d.log.Error("bridge: the plugin's bridged programs", "err", err)
		return
	}
	seen := map[string]bool{}
	for _, sp := range specs {
		if d.cfg.Bridged[sp.Name] != nil {
			continue // listed
		}
		src := sourceOf(d.cfg, sp.Manager)
		if src == nil {
			continue
		}
		seen[sp.Name] = true
		c := &config.Bridged{Name: sp.Name, Manager: sp.Manager, Dir: sp.Dir, URL: sp.URL, Process: sp.Process, File: src.File, Line: src.Line}
		if b := d.bridged[sp.Name]; b != nil && b.found && *b.cfg == *c {
			continue
		}
		d.bridged[sp.Name] = &bridged{cfg: c, found: true, source: src.Where(), slot: -1, lastStatus: -1, since: time.Now()}
	}
	for name, b := range d.bridged {
		if b.found && !seen[name] {
			delete(d.bridged, name)
		}
	}
	d.orderBridged(d.cfg)
	var slots []shm.Slot
	d.mu.outside(func() { slots, err = d.shim.List(ctx) })
	if err != nil {
		return
	}
	for _, sl := range slots {
		if b := d.bridged[sl.Name]; b != nil && b.found && b.slot < 0 {
			b.slot, b.pid, b.generation, b.exits = sl.Index, int(sl.PID), sl.Generation, sl.Exits
			b.lastStatus = int(sl.LastStatus)
			if sl.Flags&shm.SlotManagerGone != 0 && b.gone == "" {
				b.gone = "not running"
			}
		}
	}
}

func (d *Daemon) hasFound() bool {
	for _, b := range d.bridged {
		if b.found {
			return true
		}
	}
	return false
}

// bridgeChanged acts on plugin.EventBridge: a program found for a
// [bridge.MANAGER] without programs was added, dropped or skipped. It is
// logged and published, and the set is taken from the plugin again.
// Called with mu held.
func (d *Daemon) bridgeChanged(ev plugin.Event) {
	switch ev.Reason {
	case plugin.BridgeAdded:
		d.log.Info("bridged program found", "program", ev.Name, "manager", ev.Manager, "where", ev.Message)
		d.publish(api.Event{Kind: api.EventState, Name: ev.Name, Reason: "bridged: found by " + ev.Manager + " in " + ev.Message})
	case plugin.BridgeDropped:
		d.log.Info("bridged program gone", "program", ev.Name, "manager", ev.Manager, "why", ev.Message)
		d.publish(api.Event{Kind: api.EventState, Name: ev.Name, Reason: "no longer bridged: " + ev.Message})
	case plugin.BridgeSkipped:
		why := ev.Message
		if s := d.cfg.Services[ev.Name]; s != nil {
			why = fmt.Sprintf("[service.%s] (%s:%d) has the name and wins; %s", ev.Name, s.File, s.Line, ev.Message)
		} else if b := d.cfg.Bridged[ev.Name]; b != nil {
			why = fmt.Sprintf("[bridge.%s] lists %q (%s:%d) and wins; %s", b.Manager, ev.Name, b.File, b.Line, ev.Message)
		}
		d.log.Warn("program not bridged", "program", ev.Name, "manager", ev.Manager, "why", why)
		d.publish(api.Event{Kind: api.EventState, Name: ev.Name, Reason: "not bridged: " + why})
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	d.refreshFound(ctx)
}

// bridgedEvent records a plugin event about a bridged program. Called with
// mu held.
func (d *Daemon) bridgedEvent(b *bridged, ev plugin.Event) {
	switch ev.Kind {
	case plugin.EventSpawn:
		if ev.Generation < b.generation {
			return
		}
		b.slot, b.pid, b.generation, b.since = ev.Slot, ev.PID, ev.Generation, time.Now()
		d.log.Info("bridged program started", "program", b.cfg.Name, "manager", b.cfg.Manager, "pid", ev.PID)
		d.publish(api.Event{Kind: api.EventSpawn, Name: ev.Name, PID: ev.PID, Generation: ev.Generation,
			State: "running", Reason: "started by " + b.cfg.Manager})
	case plugin.EventExit:
		if ev.Generation == b.generation {
			b.pid = 0
		}
		b.exits++
		b.lastStatus, b.lastExit, b.since = ev.Status, time.Unix(0, ev.TimeUnixNs), time.Now()
		d.log.Info("exited", "service", b.cfg.Name, "manager", b.cfg.Manager, "pid", ev.PID,
			"status", ev.Status, "source", ev.Source)
		d.publish(api.Event{Kind: api.EventExit, Name: ev.Name, PID: ev.PID, Generation: ev.Generation,
			Status: ev.Status, Source: ev.Source, State: "exited", Reason: b.cfg.Manager + " restarts it"})
	case plugin.EventManager:
		b.gone = ev.Message
		b.since = time.Now()
		if ev.Message != "" {
			b.pid = 0
			d.log.Warn("bridged program's manager gone; slot reads 0", "program", b.cfg.Name, "manager", b.cfg.Manager, "why", ev.Message)
		} else {
			d.log.Info("bridged program's manager back", "program", b.cfg.Name, "manager", b.cfg.Manager)
		}
		reason := b.cfg.Manager + " back"
		if ev.Message != "" {
			reason = "manager gone: " + ev.Message
		}
		d.publish(api.Event{Kind: api.EventState, Name: ev.Name, State: b.status().State, Reason: reason})
	}
}

// controlBridged sends action to the managers of the bridged programs in
// names and returns the other names. The manager's answer is kept for the
// program's status (Reason). It takes mu itself, and releases it while the
// manager works.
func (d *Daemon) controlBridged(names []string, action string) (rest []string, err error) {
	d.mu.RLock()
	var progs []bridge.Program
	for _, n := range names {
		if b := d.bridged[n]; b != nil {
			c := b.cfg
			progs = append(progs, bridge.Program{Name: c.Name, Manager: c.Manager, Dir: c.Dir, URL: c.URL, Process: c.Process})
		} else {
			rest = append(rest, n)
		}
	}
	d.mu.RUnlock()
	var errs []error
	for _, p := range progs {
		var answer string
		var cerr error
		d.withTools(func() { answer, cerr = bridge.Control(context.Background(), p, action) })
		d.log.Info("bridged program control", "program", p.Name, "manager", p.Manager, "action", action,
			"answer", answer, "err", cerr)
		d.mu.Lock()
		if b := d.bridged[p.Name]; b != nil {
			b.answer = p.Manager + " " + action + ": " + answer
		}
		d.mu.Unlock()
		if cerr != nil {
			errs = append(errs, fmt.Errorf("%s %s through %s: %w: %w", action, p.Name, p.Manager, cerr, api.ErrConflict))
		}
	}
	if len(errs) > 0 {
		return rest, errs[0]
	}
	return rest, nil
}
