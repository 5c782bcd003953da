package main

import (
	"fmt"
)

// runRespawn: kill -9 → the replacement's PID is in the slot, for the C and
// the Go client, against a bare fork/exec+wait supervisor of the same
// program, interleaved. The bare supervisor is a thread of the helper that
// publishes the new PID in a word; the killing thread reads it with the loop
// it uses on the hb slot. "Started" is the same point for both: the new
// process has exec'd and its PID is known to (and written by) its parent.
func runRespawn(e *env, r *Report) error {
	const test = "respawn"
	det := e.bestDetector()
	h, err := e.sharedHBD(det)
	if err != nil {
		return err
	}
	type client struct {
		label string
		svc   string
		exe   int
		t     *hbTarget
		bare  []float64 // kill → reader sees the bare supervisor's new PID
		reap  []float64 // kill → waitpid returned (bare)
		hb    []float64 // kill → new PID in slot
		zero  []float64 // kill → slot 0
		det   []float64 // kill → plugin detects
		spawn []float64 // plugin detects → Spawned record (host round trip + fork/exec)
		seen  []float64 // Spawned record → reader sees the new PID
		gens  int       // respawns whose generation did not move by one
	}
	clients := []*client{{label: "C client (hbclient)", svc: svcC, exe: e.exeC}}
	if e.goClient != "" {
		clients = append(clients, &client{label: "Go client", svc: svcGo, exe: e.exeGo})
	}
	for _, c := range clients {
		if c.t, err = newTarget(h, c.svc); err != nil {
			return err
		}
	}
	bareSample := func(c *client) error {
		rep, err := e.helper.call("bare %d %d", c.exe, e.jitter().Microseconds())
		if err != nil {
			return err
		}
		t0 := rep.u64("t0")
		c.reap = append(c.reap, float64(rep.u64("reaped")-t0))
		c.bare = append(c.bare, float64(rep.u64("t2")-t0))
		return nil
	}
	hbSample := func(c *client) error {
		t := c.t
		pid, err := t.ready(e)
		if err != nil {
			return err
		}
		gen0 := t.h.table.Snapshot(t.idx).Generation
		t.kills++
		t.last = pid
		rep, err := e.helper.call("respawn %d %d %d", t.h.helperID, t.idx, pid)
		if err != nil {
			t.errs++
			return err
		}
		t0, t1, t2 := rep.u64("t0"), rep.u64("t1"), rep.u64("t2")
		c.hb = append(c.hb, float64(t2-t0))
		if rep.u64("seen") == 0 {
			c.zero = append(c.zero, float64(t1-t0))
		}
		if d := rep.u64("detected"); d >= t0 && d <= t1 {
			c.det = append(c.det, float64(d-t0))
			if sp := rep.u64("spawned"); sp >= d && sp <= t2 {
				c.spawn = append(c.spawn, float64(sp-d))
				c.seen = append(c.seen, float64(t2-sp))
			}
		}
		if g := rep.u64("gen"); g != gen0+1 {
			c.gens++
		}
		if rep.u64("newpid") == uint64(pid) {
			return fmt.Errorf("slot %d: the new PID is the killed one (%d)", t.idx, pid)
		}
		return nil
	}
	type step struct {
		name string
		fn   func() error
	}
	var steps []step
	for _, c := range clients {
		steps = append(steps, step{"bare " + c.label, func() error { return bareSample(c) }},
			step{"hb " + c.label, func() error { return hbSample(c) }})
	}
	var firstErr error
	fails := 0
	for i := range e.opts.kills {
		for k := range steps {
			s := steps[(i+k)%len(steps)]
			if err := s.fn(); err != nil {
				fails++
				if firstErr == nil {
					firstErr = fmt.Errorf("%s: %w", s.name, err)
				}
				logf("respawn: %s: %v", s.name, err)
				if fails > 10 {
					return fmt.Errorf("too many failed samples, first: %w", firstErr)
				}
			}
		}
	}
	for _, c := range clients {
		baseName := "bare supervisor thread (waitpid, vfork+exec), " + c.label + ": kill→reader sees new PID"
		r.addSeries(test, baseName, "ms", c.bare).Note = "baseline"
		reapName := "bare supervisor thread, " + c.label + ": kill→waitpid returns"
		r.addSeries(test, reapName, "ms", c.reap).Note = "breakdown"
		res := r.addSeries(test, "hb detector="+det+", "+c.label+": kill→new PID in slot", "ms", c.hb)
		r.against(res, baseName)
		if c.svc == svcC {
			res.Target = "≤1.5× bare supervisor p50; below runit (3.0 ms)"
			if res.Baseline != "" {
				meets(res, res.RatioP50 <= 1.5 && res.P50 < 3.0)
			}
		}
		r.addSeries(test, "hb, "+c.label+": kill→slot 0", "ms", c.zero).Note = "breakdown"
		d := r.addSeries(test, "hb, "+c.label+": kill→plugin detects", "ms", c.det)
		d.Note = "breakdown"
		r.against(d, reapName)
		r.addSeries(test, "hb, "+c.label+": plugin detects→Spawned record (wait for the zombie, reap, fork/exec; hbd hears of it after)", "ms", c.spawn).Note = "breakdown"
		r.addSeries(test, "hb, "+c.label+": Spawned record→reader sees new PID", "ms", c.seen).Note = "breakdown"
		c.t.verify(e, r, test, "hb "+c.label)
		r.check(test, "hb "+c.label+": generation +1 at every respawn", c.gens == 0, "%d respawns did not add exactly one", c.gens)
	}
	r.note("respawn, hb detector=%s: exits by detector (hbd log, death and respawn together): %s", det, formatSources(h.exitSources()))
	return firstErr
}
