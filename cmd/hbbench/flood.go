package main

import (
	"bufio"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// runFlood: a flood of short-lived unrelated processes (the C helper's
// vfork+_exit loops) while watched services are killed at random, one at a
// time: every kill must be followed by slot 0 and a respawn.
func runFlood(e *env, r *Report) error {
	const test = "flood"
	o := e.opts
	services := make([]svc, o.floodServices)
	for i := range services {
		services[i] = svc{name: fmt.Sprintf("f%02d", i), command: []string{e.hbclient}}
	}
	h, err := e.startHBD(hbdConfig{label: "flood", detector: "auto", slots: 64, services: services})
	if err != nil {
		return err
	}
	defer h.stop()
	if _, err := h.waitUp(len(services), 30*time.Second); err != nil {
		return err
	}
	hl, err := h.health()
	if err != nil || hl.Plugin == nil {
		return fmt.Errorf("hbd flood: health: %v", err)
	}
	targets := make([]*hbTarget, len(services))
	for i, s := range services {
		if targets[i], err = newTarget(h, s.name); err != nil {
			return err
		}
	}
	time.Sleep(500 * time.Millisecond)
	resync0 := h.countPluginLog("resync", "events lost", "rescanned")

	gen := exec.Command(e.helperBin, "flood", strconv.FormatFloat(o.floodSecs, 'f', 3, 64), strconv.Itoa(o.floodProcs))
	gen.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := gen.StdoutPipe()
	if err != nil {
		return err
	}
	cpu := startCPU(h.pid(), h.pluginPID())
	if err := gen.Start(); err != nil {
		return fmt.Errorf("start the flood generator: %w", err)
	}
	atExit(func() { _ = gen.Process.Kill() })
	genDone := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		_ = gen.Wait()
		genDone <- strings.TrimSpace(line)
	}()

	var zero, back, det []float64
	kills, late, lateSeen, failed := 0, 0, 0, 0
	lateNs := o.lateMs * 1e6
	var genLine string
loop:
	for {
		select {
		case genLine = <-genDone:
			break loop
		default:
		}
		t := targets[e.rng.IntN(len(targets))]
		pid, err := t.ready(e)
		if err != nil {
			failed++
			logf("flood: %v", err)
			if failed > 10 {
				break loop
			}
			continue
		}
		t.kills++
		kills++
		t.last = pid
		rep, err := e.helper.call("respawn %d %d %d", h.helperID, t.idx, pid)
		if err != nil {
			t.errs++
			failed++
			logf("flood: kill of %s pid %d: %v", t.name, pid, err)
			continue
		}
		t0, t1, t2 := rep.u64("t0"), rep.u64("t1"), rep.u64("t2")
		zero = append(zero, float64(t1-t0))
		back = append(back, float64(t2-t0))
		if float64(t1-t0) > lateNs {
			lateSeen++
		}
		// When the plugin stored the 0: it stamps the detection (the
		// slot's last_exit_ns) just before the store. The reader itself
		// competes with the flood for a CPU and may see it later.
		d := t1 - t0
		if dn := rep.u64("detected"); dn >= t0 && dn <= t1 {
			d = dn - t0
		}
		det = append(det, float64(d))
		if float64(d) > lateNs {
			late++
			stamp := "the plugin's detection stamp"
			if d == t1-t0 {
				stamp = "no detection stamp between the kill and the reader's 0: the reader's time"
			}
			r.note("flood: a late exit: %s pid %d, kill → the plugin's stamp %.1f ms, kill → the reader saw %d %.1f ms (%s)",
				t.name, pid, float64(rep.u64("detected")-t0)/1e6, rep.u64("seen"), float64(t1-t0)/1e6, stamp)
		}
	}
	if genLine == "" {
		genLine = <-genDone
	}
	pct, ms := cpu.percent()
	wall := time.Since(cpu.t0).Seconds()

	var exits, genNs float64
	for _, f := range strings.Fields(genLine) {
		if v, ok := strings.CutPrefix(f, "exits="); ok {
			exits, _ = strconv.ParseFloat(v, 64)
		}
		if v, ok := strings.CutPrefix(f, "ns="); ok {
			genNs, _ = strconv.ParseFloat(v, 64)
		}
	}
	if genNs > 0 {
		res := r.addValue(test, fmt.Sprintf("unrelated exits per second (%d vfork+_exit loops)", o.floodProcs), "exits/s", exits/(genNs/1e9))
		res.Target = "≥ 10000/s"
		meets(res, exits/(genNs/1e9) >= 10000)
	} else {
		r.check(test, "flood generator ran", false, "output %q", genLine)
	}
	r.addSeries(test, "kill→slot 0 during the flood (the plugin's store: its detection stamp)", "ms", det)
	r.addSeries(test, "kill→slot 0 during the flood, as the reader saw it", "ms", zero).Note = "breakdown"
	r.addSeries(test, "kill→new PID in slot during the flood", "ms", back)
	res := r.addValue(test, "plugin CPU during the flood", "% of a core", pct[1])
	res.Note = fmt.Sprintf("%.0f ms CPU in %.1f s", ms[1], wall)
	res.Target = "< 10%"
	meets(res, pct[1] < 10)
	if len(zero) > 0 {
		// The kills pace themselves on the respawns, so a faster hb is
		// killed more often: CPU per kill compares runs.
		r.addValue(test, "plugin CPU per kill during the flood (kill, detect, reap, respawn)", "ms", ms[1]/float64(len(zero))).Note =
			fmt.Sprintf("%d kills", len(zero))
	}
	res = r.addValue(test, "hbd CPU during the flood", "% of a core", pct[0])
	res.Note = fmt.Sprintf("%.0f ms CPU in %.1f s", ms[0], wall)

	// Let the last respawn finish, then count.
	wrong := 0
	var details []string
	for _, t := range targets {
		a := t.audit(e)
		if !a.ok(t) {
			wrong++
			details = append(details, fmt.Sprintf("%s: %d kills, slot exits +%d, hbd exits +%d, back: %v",
				t.name, t.kills, a.slotExits, a.apiExits, a.backErr))
		}
	}
	resyncs := h.countPluginLog("resync", "events lost", "rescanned") - resync0
	src := h.exitSources()
	r.addValue(test, "plugin resync log lines (ENOBUFS episodes)", "lines", float64(resyncs))
	r.check(test, "no missed exit: every kill → slot 0 → respawn, counted once by slot and hbd", wrong == 0 && failed == 0,
		"%d kills of %d services; %d failed kill/respawn waits; %d services with a wrong count %s",
		kills, len(targets), failed, wrong, strings.Join(details, "; "))
	res = r.addValue(test, fmt.Sprintf("late exits (kill→the plugin's store of 0 > %g ms)", o.lateMs), "kills", float64(late))
	res.Note = fmt.Sprintf("of %d", kills)
	res.Target = "0"
	meets(res, late == 0)
	r.addValue(test, fmt.Sprintf("kills whose 0 the reader saw > %g ms after the kill", o.lateMs), "kills", float64(lateSeen)).Note =
		fmt.Sprintf("of %d; breakdown", kills)
	r.note("flood: %d kills; exits by detector (hbd log): %s; resync log lines %d", kills, formatSources(src), resyncs)
	return nil
}
