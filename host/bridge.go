package host

import (
	"context"
	"fmt"
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

// newBridged makes hbd's bridged programs from the configuration, keeping
// what is known of the ones already there. Called with mu held.
func (d *Daemon) setBridged(cfg *config.Config) {
	old := d.bridged
	d.bridged = map[string]*bridged{}
	for _, name := range cfg.BridgedOrder {
		b := old[name]
		if b == nil || *b.cfg != *cfg.Bridged[name] {
			b = &bridged{cfg: cfg.Bridged[name], slot: -1, lastStatus: -1, since: time.Now()}
		}
		b.cfg = cfg.Bridged[name]
		d.bridged[name] = b
	}
}

// bridgeSpecs is the set of programs the plugin is to watch.
func (d *Daemon) bridgeSpecs() []plugin.BridgeSpec {
	var out []plugin.BridgeSpec
	for _, name := range d.cfg.BridgedOrder {
		c := d.cfg.Bridged[name]
		out = append(out, plugin.BridgeSpec{Name: c.Name, Manager: c.Manager, Dir: c.Dir, URL: c.URL, Process: c.Process})
	}
	return out
}

// syncBridges hands the plugin the set of bridged programs (when there is
// one, or the table still has bridged slots to drop) and takes their slots'
// state. Called with mu held, after reconcile.
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
	if len(d.bridged) == 0 && !had && !d.bridgeSent {
		return
	}
	specs := d.bridgeSpecs()
	d.bridgeSent = len(specs) > 0
	d.mu.outside(func() { err = d.shim.Bridge(ctx, specs) })
	if err != nil {
		d.log.Error("bridge", "err", err)
	}
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
		answer, cerr := bridge.Control(context.Background(), p, action)
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
