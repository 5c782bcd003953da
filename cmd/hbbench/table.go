package main

import (
	"fmt"
	"time"
)

// runTable times the table's promises to peers, each beside a baseline in
// the same run:
//
//   - kill -9 of a service → a peer blocked in hb_wait (futex) wakes,
//     beside the C reader spinning on hb_pid and a raw pidfd waiter thread
//     on the same kill;
//   - kill -9 of the plugin → a reader sees the writer dead through
//     writer_alive (one load; the kernel marks the robust futex during the
//     exit), beside a raw pidfd waiter on the plugin; hbd starts a new
//     plugin after each;
//   - what the wakes cost the exit path: one shared FUTEX_WAKE with nobody
//     waiting, beside an atomic store (the plugin makes two per pid store
//     and table file, after the store).
func runTable(e *env, r *Report) error {
	const test = "table"
	h, err := e.startHBD(hbdConfig{label: "table", detector: e.bestDetector(), slots: 16,
		services: []svc{{name: svcC, command: []string{e.hbclient}}}})
	if err != nil {
		return err
	}
	defer h.stop()
	if _, err := h.waitUp(1, 30*time.Second); err != nil {
		return err
	}
	t, err := newTarget(h, svcC)
	if err != nil {
		return err
	}
	var spin, futex, raw, lead []float64
	for range e.opts.kills {
		pid, err := t.ready(e)
		if err != nil {
			return err
		}
		t.kills++
		t.last = pid
		rep, err := e.helper.call("futex %d %d %d %d", h.helperID, t.idx, pid, max(e.jitter().Microseconds(), 1000))
		if err != nil {
			t.errs++
			return err
		}
		t0 := rep.u64("t0")
		spin = append(spin, float64(rep.u64("t1")-t0))
		futex = append(futex, float64(rep.u64("futex")-t0))
		raw = append(raw, float64(rep.u64("woke")-t0))
		lead = append(lead, float64(int64(rep.u64("futex"))-int64(rep.u64("t1"))))
	}
	const rawName = "kill -9 → raw pidfd waiter thread wakes"
	r.addSeries(test, rawName, "us", raw).Note = "baseline: the kernel's own exit notification, same kills"
	sp := r.addSeries(test, "kill -9 → reader spinning on hb_pid sees 0", "us", spin)
	r.against(sp, rawName)
	fw := r.addSeries(test, "kill -9 → peer blocked in hb_wait (futex) wakes", "us", futex)
	fw.Note = "woken by the plugin's FUTEX_WAKE after its store"
	r.against(fw, rawName)
	ld := r.addSeries(test, "futex waiter's wake minus the spinning reader's 0, same kill", "us", lead)
	ld.Target = "p50 ≤ 50 µs"
	meets(ld, ld.P50 <= 50)
	t.verify(e, r, test, "hb")

	var dead, rawDead []float64
	for range e.opts.fatKills {
		plugin, err := waitWriter(h)
		if err != nil {
			return err
		}
		time.Sleep(e.jitter())
		rep, err := e.helper.call("wdead %d %d", h.helperID, plugin)
		if err != nil {
			return err
		}
		t0 := rep.u64("t0")
		dead = append(dead, float64(rep.u64("dead")-t0))
		rawDead = append(rawDead, float64(rep.u64("woke")-t0))
	}
	const rawDeadName = "plugin kill -9 → raw pidfd waiter on the plugin wakes"
	r.addSeries(test, rawDeadName, "us", rawDead).Note = "baseline, same kills"
	wd := r.addSeries(test, "plugin kill -9 → reader sees writer_alive dead (one load)", "us", dead)
	wd.Note = "the kernel sets FUTEX_OWNER_DIED during the exit; no clock, no system call"
	r.against(wd, rawDeadName)
	if _, err := waitWriter(h); err != nil {
		return err
	}
	if _, err := t.ready(e); err != nil {
		return err
	}

	rep, err := e.helper.call("wake %d %d", h.helperID, 200000)
	if err != nil {
		return err
	}
	r.addValue(test, "one atomic store", "ns", float64(rep.u64("store_ps"))/1000).Note = "baseline"
	wake := r.addValue(test, "one shared FUTEX_WAKE, nobody waiting: the plugin adds 2 after each pid store", "ns",
		float64(rep.u64("wake_ps"))/1000)
	wake.Note = "in the helper, on the same table"
	r.against(wake, "one atomic store")
	return nil
}

// waitWriter waits until h's table says its writer lives (a new plugin has
// adopted the services) and hbd is connected to that plugin, and returns
// the writer's PID.
func waitWriter(h *hbdProc) (int, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		if pid := h.pluginPID(); pid != 0 && h.table.WriterAlive() {
			if hl, err := h.health(); err == nil && hl.Plugin != nil && hl.Plugin.PID == pid {
				return pid, nil
			}
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("hbd %s: no live writer hbd is connected to 30 s on (writer_alive %#x)", h.cfg.label, h.table.Header().WriterAlive)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
