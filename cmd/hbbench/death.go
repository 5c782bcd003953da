package main

import (
	"fmt"
	"time"
)

// Service names in the shared hbds.
const (
	svcC  = "c"  // bin/hbclient
	svcGo = "go" // the Go client
)

// sharedHBD returns the shared hbd with detector det ("connector" or
// "pidfd"), starting it on first use with the C client and, when built, the
// Go client.
func (e *env) sharedHBD(det string) (*hbdProc, error) {
	if h := e.shared[det]; h != nil {
		return h, nil
	}
	services := []svc{{name: svcC, command: []string{e.hbclient}}}
	if e.goClient != "" {
		services = append(services, svc{name: svcGo, command: []string{e.goClient}})
	}
	h, err := e.startHBD(hbdConfig{label: det, detector: det, slots: 16, services: services})
	if err != nil {
		return nil, err
	}
	if e.shared == nil {
		e.shared = map[string]*hbdProc{}
	}
	e.shared[det] = h
	if _, err := h.waitUp(len(services), 30*time.Second); err != nil {
		return nil, err
	}
	hl, err := h.health()
	if err != nil {
		return nil, fmt.Errorf("hbd %s: health: %w", det, err)
	}
	if hl.Plugin == nil || hl.Plugin.Connector != (det == "connector") {
		return nil, fmt.Errorf("hbd %s: plugin runs connector=%v, want %v", det, hl.Plugin != nil && hl.Plugin.Connector, det == "connector")
	}
	if hl.Plugin.Tracepoint != (det == "tracepoint") {
		return nil, fmt.Errorf("hbd %s: plugin runs tracepoint=%v, want %v", det, hl.Plugin.Tracepoint, det == "tracepoint")
	}
	return h, nil
}

// bestDetector is the fastest detector that works here: what hbd's "auto"
// puts first.
func (e *env) bestDetector() string {
	switch {
	case e.trErr == nil:
		return "tracepoint"
	case e.cnErr == nil:
		return "connector"
	}
	return "pidfd"
}

// stopShared stops the shared hbds.
func (e *env) stopShared() {
	for det, h := range e.shared {
		h.stop()
		delete(e.shared, det)
	}
}

// hbTarget is one service of an hbd that a test kills again and again.
type hbTarget struct {
	h      *hbdProc
	name   string
	idx    int
	last   uint32 // the PID killed last
	kills  int
	exits0 uint64 // slot exits counter before the first kill
	api0   uint64 // hbd's exits count before the first kill
	errs   int    // kills whose slot never changed, or never came back
}

func newTarget(h *hbdProc, name string) (*hbTarget, error) {
	idx, err := h.slot(name)
	if err != nil {
		return nil, err
	}
	t := &hbTarget{h: h, name: name, idx: idx}
	t.exits0 = h.table.Snapshot(idx).Exits
	if t.api0, err = h.apiExits(name); err != nil {
		return nil, fmt.Errorf("hbd %s: status of %s: %w", h.cfg.label, name, err)
	}
	return t, nil
}

// ready waits for a running incarnation other than the one killed last and
// lets it (and hbd) settle; it returns its PID.
func (t *hbTarget) ready(e *env) (uint32, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		p := t.h.table.PID(t.idx)
		if p != 0 && p != t.last {
			time.Sleep(e.jitter())
			if q := t.h.table.PID(t.idx); q != p {
				continue // died meanwhile
			}
			return p, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("hbd %s: service %s not running again 10 s after the kill of pid %d (slot pid %d)",
				t.h.cfg.label, t.name, t.last, p)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// audit is the state of t after its kills: whether the service runs again,
// and how many exits the slot and hbd counted since newTarget.
type audit struct {
	backErr   error
	slotExits uint64
	apiExits  uint64
	apiErr    error
}

// ok reports whether every kill was counted once, in the slot and by hbd,
// and the service runs again.
func (a audit) ok(t *hbTarget) bool {
	return a.backErr == nil && a.apiErr == nil && t.errs == 0 &&
		a.slotExits == uint64(t.kills) && a.apiExits == uint64(t.kills)
}

func (t *hbTarget) audit(e *env) audit {
	var a audit
	_, a.backErr = t.ready(e)
	deadline := time.Now().Add(5 * time.Second)
	for {
		a.slotExits = t.h.table.Snapshot(t.idx).Exits - t.exits0
		if a.slotExits >= uint64(t.kills) || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	// hbd learns of an exit after the slot records it (the plugin records,
	// respawns, then reports), so its count may lag for a moment.
	for {
		var n uint64
		n, a.apiErr = t.h.apiExits(t.name)
		a.apiExits = n - t.api0
		if a.apiErr != nil || a.apiExits >= uint64(t.kills) || time.Now().After(deadline) {
			return a
		}
		time.Sleep(time.Millisecond)
	}
}

// verify checks that every kill was counted as one exit, in the slot and by
// hbd, and that the service runs again.
func (t *hbTarget) verify(e *env, r *Report, test, label string) {
	a := t.audit(e)
	if a.backErr != nil {
		r.check(test, label+": service back after the last kill", false, "%v", a.backErr)
	} else {
		r.check(test, label+": service back after the last kill", true, "pid %d", t.h.table.PID(t.idx))
	}
	r.check(test, label+": every kill recorded in the slot", a.slotExits == uint64(t.kills) && t.errs == 0,
		"%d kills, slot exits +%d, %d kills not seen in the slot", t.kills, a.slotExits, t.errs)
	if a.apiErr != nil {
		r.check(test, label+": every kill seen by hbd", false, "%v", a.apiErr)
	} else {
		r.check(test, label+": every kill seen by hbd", a.apiExits == uint64(t.kills),
			"%d kills, hbd exits +%d", t.kills, a.apiExits)
	}
}

// runDeath: kill -9 → slot PID 0, for hb with each detector. The baseline
// of each detector is a raw waiter of the same kind (a thread of the helper
// blocked on a pidfd, or on a proc connector socket) watching the same
// process and woken by the same kill; the reader waits for both words in
// one loop. As a reference the raw waiters also watch kills of the helper's
// own children, where nothing else wakes up at the death. The kinds run
// interleaved round-robin.
func runDeath(e *env, r *Report) error {
	const test = "death"
	type kind struct {
		name   string
		sample func() error
	}
	// rawKind is the helper's waiter index (helper.c: WAIT_PIDFD, WAIT_CN).
	// The tracepoint has no raw listener to compare with: it is measured
	// against the pidfd, the kernel's own exit notification.
	rawKind := map[string]int{"pidfd": 0, "connector": 1, "tracepoint": 0}
	var (
		kinds      []kind
		own        = map[string][]float64{} // raw waiter, own child: kill→reader sees 0
		ownWoke    = map[string][]float64{}
		same       = map[string][]float64{} // raw waiter, same kill as hb
		hbKill0    = map[string][]float64{}
		hbDetect   = map[string][]float64{}
		hbSeen     = map[string][]float64{}
		hbLead     = map[string][]float64{} // hb's reader time minus the raw waiter's, same kill
		hbFirst    = map[string]int{}
		targets    = map[string]*hbTarget{}
		settleUs   = func() int64 { return e.jitter().Microseconds() }
		rawErrs    int
		missedZero = map[string]int{}
		detectors  = []string{"connector", "pidfd"}
		hbName     = func(det string) string { return "hb detector=" + det + ": kill→slot 0" }
		rawName    = map[string]string{"pidfd": "raw pidfd waiter", "connector": "raw proc connector waiter", "tracepoint": "raw pidfd waiter"}
	)
	if e.cnErr != nil {
		r.Skipped = append(r.Skipped, fmt.Sprintf("death: raw connector baseline and hb detector=connector: %v", e.cnErr))
		detectors = []string{"pidfd"}
	}
	if e.trErr != nil {
		r.Skipped = append(r.Skipped, fmt.Sprintf("death: hb detector=tracepoint: %v", e.trErr))
	} else {
		detectors = append([]string{"tracepoint"}, detectors...)
	}
	for _, det := range detectors {
		if det == "tracepoint" {
			continue // same own-child reference as pidfd
		}
		kinds = append(kinds, kind{rawName[det] + ", own child", func() error {
			rep, err := e.helper.call("raw%s %d %d", map[string]string{"pidfd": "pidfd", "connector": "cn"}[det], e.exeC, settleUs())
			if err != nil {
				rawErrs++
				return err
			}
			own[det] = append(own[det], float64(rep.u64("t1")-rep.u64("t0")))
			ownWoke[det] = append(ownWoke[det], float64(rep.u64("woke")-rep.u64("t0")))
			return nil
		}})
	}
	for _, det := range detectors {
		h, err := e.sharedHBD(det)
		if err != nil {
			return err
		}
		t, err := newTarget(h, svcC)
		if err != nil {
			return err
		}
		targets[det] = t
		kinds = append(kinds, kind{"hb " + det, func() error {
			pid, err := t.ready(e)
			if err != nil {
				return err
			}
			t.kills++
			t.last = pid
			rep, err := e.helper.call("kill0 %d %d %d %d", h.helperID, t.idx, pid, rawKind[det])
			if err != nil {
				t.errs++
				return err
			}
			t0, t1, det0, raw := rep.u64("t0"), rep.u64("t1"), rep.u64("detected"), rep.u64("raw")
			if rep.u64("seen") != 0 {
				missedZero[det]++ // the reader saw the next PID, not 0: cannot happen with a live reader
			}
			hbKill0[det] = append(hbKill0[det], float64(t1-t0))
			same[det] = append(same[det], float64(raw-t0))
			hbLead[det] = append(hbLead[det], float64(int64(t1-t0)-int64(raw-t0)))
			if t1 < raw {
				hbFirst[det]++
			}
			if det0 >= t0 && det0 <= t1 {
				hbDetect[det] = append(hbDetect[det], float64(det0-t0))
				hbSeen[det] = append(hbSeen[det], float64(t1-det0))
			}
			return nil
		}})
	}
	var firstErr error
	fails := 0
	for i := range e.opts.kills {
		for k := range kinds {
			kd := kinds[(i+k)%len(kinds)]
			if err := kd.sample(); err != nil {
				fails++
				if firstErr == nil {
					firstErr = fmt.Errorf("%s: %w", kd.name, err)
				}
				logf("death: %s: %v", kd.name, err)
				if fails > 10 {
					return fmt.Errorf("too many failed samples, first: %w", firstErr)
				}
			}
		}
	}

	// A raw waiter stores 0 in a word, which the killing thread reads with
	// the loop it uses on an hb slot (see helper.c); the waiter's own
	// wake-up is the kernel's part alone.
	ownName := func(det string) string {
		if det == "tracepoint" {
			det = "pidfd"
		}
		return rawName[det] + " on its own child: kill→reader sees 0"
	}
	for _, det := range detectors {
		if det == "tracepoint" {
			continue
		}
		r.addSeries(test, ownName(det), "us", own[det]).Note = "reference: nothing else wakes at the death"
		r.addSeries(test, rawName[det]+" on its own child: kill→waiter wakes", "us", ownWoke[det]).Note = "breakdown"
	}
	for _, det := range detectors {
		sameName := rawName[det] + " on the same kill as hb detector=" + det + ": kill→reader sees 0"
		r.addSeries(test, sameName, "us", same[det]).Note = "baseline"
		res := r.addSeries(test, hbName(det), "us", hbKill0[det])
		r.against(res, sameName)
		res.Target = "≤1.25× raw p50, ≤2× raw p99"
		meetsRatio(res, 1.25, 2)
		lead := r.addSeries(test, "hb detector="+det+": hb's kill→slot 0 minus the raw waiter's, same kill", "us", hbLead[det])
		lead.Note = fmt.Sprintf("paired; hb first in %d of %d kills", hbFirst[det], len(hbLead[det]))
		// Where the time goes: detected is the plugin's own clock at the
		// moment its detecting goroutine learnt of the exit (slot
		// last_exit_ns), just before the slot store.
		r.addSeries(test, "hb detector="+det+": kill→plugin detects", "us", hbDetect[det]).Note = "breakdown: ≈ the slot store, before any reader"
		r.addSeries(test, "hb detector="+det+": plugin detects→reader sees 0", "us", hbSeen[det]).Note = "breakdown"
		ref := r.addSeries(test, hbName(det)+", against the waiter's own child", "us", hbKill0[det])
		r.against(ref, ownName(det))
		ref.Note = "reference"
	}
	for _, det := range detectors {
		t := targets[det]
		t.verify(e, r, test, "hb "+det)
		// Timing, not correctness: a reader descheduled for longer than a
		// respawn sees the next PID without seeing 0 (the slot exits count
		// above proves the 0 was stored).
		res := r.addValue(test, "hb detector="+det+": kills where the reader saw the next PID, not 0", "kills", float64(missedZero[det]))
		res.Note = fmt.Sprintf("of %d; reader descheduled longer than a respawn", t.kills)
		r.note("death, hb detector=%s: exits by detector (hbd log): %s", det, formatSources(t.h.exitSources()))
	}
	r.check(test, "baselines ran", rawErrs == 0, "%d raw waiter samples on own children failed", rawErrs)
	if firstErr != nil {
		return firstErr
	}
	return nil
}
