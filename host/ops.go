package host

import (
	"context"
	"errors"
	"fmt"
	"github.com/hbshim/hb/bridge"
	"slices"
	"syscall"
	"time"

	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/host/config"
	"github.com/hbshim/hb/host/policy"
	"github.com/hbshim/hb/plugin"
)

var _ api.Backend = (*Daemon)(nil)
var _ api.PluginInfoer = (*Daemon)(nil)
var _ api.Expander = (*Daemon)(nil)

// List returns every service in config order.
func (d *Daemon) List() []api.ServiceStatus {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]api.ServiceStatus, 0, len(d.order)+len(d.bridged))
	for _, name := range d.order {
		out = append(out, d.svcs[name].status())
	}
	for _, name := range d.bridgedOrder {
		if b := d.bridged[name]; b != nil {
			out = append(out, b.status())
		}
	}
	return out
}

// Names returns every service name in start order: the config order, with
// each service after those its after list names (startOrder).
func (d *Daemon) Names() []string {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.startOrderLocked()
}

// Get returns one service.
func (d *Daemon) Get(name string) (api.ServiceStatus, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	s := d.svcs[name]
	if s == nil {
		if b := d.bridged[name]; b != nil {
			return b.status(), nil
		}
		return api.ServiceStatus{}, notFound(name)
	}
	return s.status(), nil
}

func notFound(name string) error { return api.Errorf(api.ErrNotFound, "no service %q", name) }

// lookup checks every name before anything is done; the name of a
// service with instances stands for all of them. Called with mu held.
func (d *Daemon) lookup(names []string) ([]*service, error) {
	out := make([]*service, 0, len(names))
	for _, n := range d.expand(names) {
		s := d.svcs[n]
		if s == nil {
			return nil, notFound(n)
		}
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out, nil
}

// expand replaces the name of a service with instances by its instances'
// names. Called with mu (or its view) held.
func (d *Daemon) expand(names []string) []string {
	out := make([]string, 0, len(names))
	for _, n := range names {
		if g, ok := d.cfg.InstanceGroups[n]; ok && d.svcs[n] == nil {
			out = append(out, g...)
			continue
		}
		out = append(out, n)
	}
	return out
}

// Expand implements api.Expander.
func (d *Daemon) Expand(names []string) []string {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.expand(names)
}

// Start starts the named services; running ones are left alone, a fatal or
// backing-off one starts at once with its failure count cleared.
func (d *Daemon) Start(names []string) error {
	names, berr := d.controlBridged(names, bridge.ActionStart)
	if berr != nil || len(names) == 0 {
		return berr
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	svcs, err := d.lookup(names)
	if err != nil {
		return err
	}
	if d.closing {
		return api.Errorf(api.ErrConflict, "hbd is shutting down")
	}
	var errs []error
	for _, s := range svcs {
		s.wantDown = false
		switch s.state() {
		case policy.StateStarting, policy.StateRunning:
			continue
		case policy.StateStopping:
			errs = append(errs, &api.ServiceError{Name: s.cfg.Name,
				Err: api.Errorf(api.ErrConflict, "%s is stopping; start it once it has stopped", s.cfg.Name)})
			continue
		}
		s.failedStarts = 0
		d.spawn(s, "started by request")
		if st := s.state(); st == policy.StateFatal || st == policy.StateBackoff {
			// The service cannot start as configured here (no such
			// program, bad user, ...): the request's fault, not hbd's.
			errs = append(errs, &api.ServiceError{Name: s.cfg.Name,
				Err: api.Errorf(api.ErrConflict, "%s did not start: %s", s.cfg.Name, s.reason)})
		}
	}
	return errors.Join(errs...)
}

// Stop stops the named services, one after the other in the order given,
// and returns once each has exited.
func (d *Daemon) Stop(names []string) error {
	names, berr := d.controlBridged(names, bridge.ActionStop)
	if berr != nil || len(names) == 0 {
		return berr
	}
	d.mu.Lock()
	svcs, err := d.lookup(names)
	d.mu.Unlock()
	if err != nil {
		return err
	}
	var errs []error
	for _, s := range svcs {
		if err := d.stopOne(s); err != nil {
			errs = append(errs, &api.ServiceError{Name: s.cfg.Name, Err: err})
		}
	}
	return errors.Join(errs...)
}

// stopOne stops s and waits until hbd has processed its exit.
func (d *Daemon) stopOne(s *service) error {
	d.mu.Lock()
	s.wantDown = true
	s.cancelTimer()
	name := s.cfg.Name
	switch s.state() {
	case policy.StateStopped:
		d.mu.Unlock()
		return nil
	case policy.StateBackoff, policy.StateExited, policy.StateFatal:
		// Down as hbd sees it. The plugin is still asked to stop it below:
		// hbd's view lags the plugin's by the events in flight, and the
		// plugin may have respawned it already (Spec.Respawn); a stop of a
		// service that runs nothing only records stopped. What it was, and
		// why, stays in the reason.
		d.setState(s, policy.StateStopped, "stopped by request (was "+s.state().String()+": "+s.reason+")")
		d.mirror(s)
	case policy.StateStarting, policy.StateRunning:
		d.setState(s, policy.StateStopping, "stop requested")
	}
	sh := d.shim
	sig, timeout := s.cfg.StopSignal, s.cfg.StopTimeout
	if d.forced {
		sig, timeout = syscall.SIGKILL, 0
	}
	d.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), timeout+30*time.Second)
	defer cancel()
	err := sh.Stop(ctx, name, sig, timeout)
	if err != nil && !errors.Is(err, plugin.ErrNotRunning) && !errors.Is(err, plugin.ErrNotFound) {
		// (Not found: a service the plugin never had, one whose spawn failed.)
		return fmt.Errorf("stop %q: %w", name, err)
	}
	// The exit travels to hbd on the event stream; wait for it so that a
	// Get after Stop says stopped. (An incarnation the plugin respawned just
	// before the Stop arrived was the one stopped: wait for that one too.)
	d.mu.Lock()
	for s.pid != 0 {
		down := s.down
		d.mu.Unlock()
		select {
		case <-down:
		case <-ctx.Done():
			return fmt.Errorf("stop %q: exit not reported: %w", name, ctx.Err())
		}
		d.mu.Lock()
	}
	defer d.mu.Unlock()
	if st := s.state(); st != policy.StateStopped && s.pid == 0 && s.wantDown {
		d.setState(s, policy.StateStopped, "stopped by request")
		d.mirror(s)
	}
	return nil
}

// Restart stops then starts the named services; those whose stop failed
// are not started.
func (d *Daemon) Restart(names []string) error {
	names, berr := d.controlBridged(names, bridge.ActionRestart)
	if berr != nil || len(names) == 0 {
		return berr
	}
	d.mu.Lock()
	svcs, err := d.lookup(names)
	d.mu.Unlock()
	if err != nil {
		return err
	}
	var errs []error
	var stopped []string
	for _, s := range svcs {
		if err := d.stopOne(s); err != nil {
			errs = append(errs, &api.ServiceError{Name: s.cfg.Name, Err: err})
			continue
		}
		stopped = append(stopped, s.cfg.Name)
	}
	if len(stopped) > 0 {
		errs = append(errs, d.Start(stopped))
	}
	return errors.Join(errs...)
}

// Signal sends sig to the service's main process.
func (d *Daemon) Signal(name string, sig syscall.Signal) error {
	d.mu.RLock()
	s := d.svcs[name]
	sh := d.shim
	d.mu.RUnlock()
	if s == nil {
		return notFound(name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	if err := sh.Signal(ctx, name, sig); err != nil {
		if errors.Is(err, plugin.ErrNotRunning) || errors.Is(err, plugin.ErrNotFound) {
			return api.Errorf(api.ErrConflict, "%s is not running", name)
		}
		return err
	}
	return nil
}

// Reload re-reads the configuration file. A file that does not load is
// rejected with every error, and the running configuration keeps serving.
// Otherwise removed services are stopped and their slots freed, changed ones
// are restarted with the new definition, added ones start (if autostart).
// Settings of [hbd] take effect at the next start of hbd.
func (d *Daemon) Reload() (api.ReloadResult, error) {
	next, err := config.Load(d.cfgPath)
	if err != nil {
		d.log.Error("reload rejected; keeping the running configuration", "err", err)
		return api.ReloadResult{}, api.InvalidConfig(err)
	}
	d.mu.Lock()
	prev := d.cfg
	if d.closing {
		d.mu.Unlock()
		return api.ReloadResult{}, api.Errorf(api.ErrConflict, "hbd is shutting down")
	}
	added, removed, changed := config.Diff(prev, next)
	if next.HBD != prev.HBD {
		d.log.Warn("[hbd] settings changed; they take effect when hbd restarts")
	}
	next.HBD = prev.HBD
	d.cfg = next
	d.order = append([]string(nil), next.Order...)
	var stopping []*service
	for _, name := range removed {
		stopping = append(stopping, d.svcs[name])
	}
	for _, name := range changed {
		s := d.svcs[name]
		stopping = append(stopping, s)
	}
	for _, name := range added {
		d.svcs[name] = newService(next.Services[name], next.HBD.LogDir)
	}
	d.mu.Unlock()

	res := api.ReloadResult{Added: added, Removed: removed, Changed: changed}
	d.log.Info("reloaded", "added", added, "removed", removed, "changed", changed)
	var errs []error
	for _, s := range stopping {
		if err := d.stopOne(s); err != nil {
			errs = append(errs, err)
		}
	}
	d.mu.Lock()
	for _, name := range removed {
		delete(d.svcs, name)
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		if err := d.shim.Free(ctx, name); err != nil && !errors.Is(err, plugin.ErrNotFound) {
			errs = append(errs, fmt.Errorf("free slot of %q: %w", name, err))
		} else {
			d.dropPipes(name)
		}
		cancel()
	}
	d.setBridged(next)
	d.syncBridges()
	for _, name := range changed {
		s := d.svcs[name]
		s.cfg = next.Services[name]
		s.wantDown = false
		s.failedStarts = 0
		if s.cfg.Autostart {
			d.spawn(s, "configuration changed")
		}
	}
	for _, name := range added {
		if s := d.svcs[name]; s.cfg.Autostart {
			d.spawn(s, "added by reload")
		}
	}
	d.publish(api.Event{Kind: api.EventReload,
		Reason: fmt.Sprintf("added %d, removed %d, changed %d", len(added), len(removed), len(changed))})
	d.mu.Unlock()
	releaseMemory()
	return res, errors.Join(errs...)
}

// Subscribe streams control API events.
func (d *Daemon) Subscribe(ctx context.Context) <-chan api.Event { return d.bus.subscribe(ctx) }

// PluginInfo describes the plugin for /v1/health: an error (so health is
// 503) while there is none, or while hbd is still attaching to it.
func (d *Daemon) PluginInfo(ctx context.Context) (api.PluginInfo, error) {
	d.mu.RLock()
	sh, attaching := d.shim, d.attaching
	d.mu.RUnlock()
	switch {
	case attaching:
		return api.PluginInfo{}, api.ErrAttaching
	case sh == nil:
		return api.PluginInfo{}, errors.New("no plugin")
	}
	i, err := sh.Info(ctx)
	if err != nil {
		return api.PluginInfo{}, err
	}
	return api.PluginInfo{PID: i.PID, Shm: i.ShmName, Slots: i.Slots, Tracepoint: i.Tracepoint, Connector: i.Connector, Pidfd: i.Pidfd,
		Adopted: i.Adopted, LastSeq: i.LastSeq, Version: i.Version, FeatureVersion: i.FeatureVersion, DetectorPriority: i.DetectorPriority,
		ShmRepairs: i.ShmRepairs, ShmProblem: i.ShmProblem, Cgroups: i.Cgroups, ConnectorNote: i.ConnectorNote,
		KillTracepoint: i.KillTracepoint, KillNote: i.KillNote}, nil
}
