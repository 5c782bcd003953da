package host

import (
	"slices"
	"strings"

	"github.com/hbshim/hb/host/policy"
)

// Start ordering (config "after"). At hbd's start a service whose after
// list names services that are not running yet is held back (afterWait)
// and spawned once all of them are running: after start_secs, and with
// ready = "notify" after READY=1 as well.

// holdAfter splits the services to start at hbd's start into those that
// may start now and those held back for their after list, which it marks.
// Called with mu held.
func (d *Daemon) holdAfter(svcs []*service) (now []*service) {
	for _, s := range svcs {
		if missing := d.afterMissing(s); missing != "" {
			s.afterWait = true
			d.afterHeld++
			s.reason = "waiting for " + missing + " (after)"
			continue
		}
		now = append(now, s)
	}
	return now
}

// afterMissing names the services of s's after list that are not running,
// "" when none.
func (d *Daemon) afterMissing(s *service) string {
	var missing []string
	for _, name := range s.cfg.After {
		dep := d.svcs[name]
		if dep == nil || dep.pid == 0 || dep.state() != policy.StateRunning {
			missing = append(missing, name)
		}
	}
	return strings.Join(missing, ", ")
}

// releaseAfter spawns the held services whose after lists are now all
// running, in config order. Called with mu held (spawn lets go of it
// around the call to the plugin).
func (d *Daemon) releaseAfter() {
	held := 0
	defer func() { d.afterHeld = held }()
	for _, name := range d.order {
		s := d.svcs[name]
		if s == nil || !s.afterWait || d.closing {
			continue
		}
		if missing := d.afterMissing(s); missing != "" {
			s.reason = "waiting for " + missing + " (after)"
			held++
			continue
		}
		s.afterWait = false
		if s.wantDown || s.pid != 0 {
			continue
		}
		d.spawn(s, "after "+strings.Join(s.cfg.After, ", ")+" running")
	}
}

// afterRunning is called when s reaches running, with mu held: the
// services held for it are looked at on a goroutine of their own, not
// inside setState's caller.
func (d *Daemon) afterRunning() {
	if d.afterHeld == 0 {
		return // nothing held: no walk of every service per running one
	}
	go func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.releaseAfter()
	}()
}

// startOrder is order (the config order) with every service moved after
// the services its after list names, and otherwise unchanged: a stable
// topological order. Services start in it (hbctl start --all) and stop in
// its reverse (shutdown, hbctl stop --all), so a service never outlives
// what it was started after. Names not in order are ignored, and so is a
// cycle (hbd --check rejects both).
func startOrder(order []string, after func(string) []string) []string {
	out := make([]string, 0, len(order))
	state := make(map[string]int, len(order)) // 1: being placed, 2: placed
	var place func(string)
	place = func(name string) {
		if state[name] != 0 {
			return
		}
		state[name] = 1
		for _, dep := range after(name) {
			if slices.Contains(order, dep) {
				place(dep)
			}
		}
		state[name] = 2
		out = append(out, name)
	}
	for _, name := range order {
		place(name)
	}
	return out
}

// startOrderLocked is startOrder of the running configuration. Called with
// mu held (read or write).
func (d *Daemon) startOrderLocked() []string {
	return startOrder(d.order, func(name string) []string {
		if s := d.svcs[name]; s != nil {
			return s.cfg.After
		}
		return nil
	})
}
