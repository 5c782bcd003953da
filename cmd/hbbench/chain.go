package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// chainMethods are the ways rx checks its active worker, in the order they
// run: hb's slot word, the heartbeat the field uses, kill(pid, 0).
var chainMethods = []struct{ name, label string }{
	{"hb", "hb slot word (one load per packet)"},
	{"heartbeat", "UDP heartbeat every 10 ms, dead after 3 missed"},
	{"kill0", "kill(pid, 0) every 1 ms"},
}

// chainInitMs is a worker's start-up time (a real stage loads its tables):
// a replacement does not take over its port at once, so rx must route
// around the death rather than wait for the respawn.
const chainInitMs = 100

// chainWatchdogMs is the workers' watchdog in the hung run.
const chainWatchdogMs = 20

// chainStages compiles the example chain's stages (contrib/examples/chain,
// next to the C header's directory) into dir.
func chainStages(cc, include, dir string) (map[string]string, error) {
	src := filepath.Join(include, "..", "examples", "chain")
	bins := map[string]string{}
	for _, s := range []string{"rx", "work", "tx"} {
		out := filepath.Join(dir, "chain-"+s)
		cmd := exec.Command(cc, "-std=gnu11", "-O2", "-Wall", "-Wextra", "-I", include, "-o", out, filepath.Join(src, s+".c"))
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("compile %s with %s: %w\n%s", filepath.Join(src, s+".c"), cc, err, b)
		}
		bins[s] = out
	}
	return bins, nil
}

// freePortBase finds four consecutive free UDP ports on loopback.
func freePortBase(e *env) (int, error) {
	for range 100 {
		base := 20000 + e.rng.IntN(40000)
		ok := true
		var held []net.PacketConn
		for i := range 4 {
			c, err := net.ListenPacket("udp4", fmt.Sprintf("127.0.0.1:%d", base+i))
			if err != nil {
				ok = false
				break
			}
			held = append(held, c)
		}
		for _, c := range held {
			_ = c.Close()
		}
		if ok {
			return base, nil
		}
	}
	return 0, errors.New("no four free consecutive UDP ports on 127.0.0.1")
}

// chainRun is one run of the chain with one method.
type chainRun struct {
	method         string
	kills          int
	sent, received uint64
	switches       uint64
	duplicates     uint64
	secs           float64
}

func (c chainRun) lost() uint64 { return c.sent - c.received }

// readStats reads "key N" lines written by rx or tx.
func readStats(path string, timeout time.Duration) (map[string]uint64, error) {
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			m := map[string]uint64{}
			for _, l := range strings.Split(string(b), "\n") {
				if k, v, ok := strings.Cut(l, " "); ok {
					if n, err := strconv.ParseUint(v, 10, 64); err == nil {
						m[k] = n
					}
				}
			}
			return m, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s not written after %v: %w", path, timeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// runChainOnce runs rx → work0/work1 → tx under one hbd, kills the active
// worker kills times (kill -9, alternating, as rx switches at each death),
// then stops rx and tx and reads what they sent and received.
func runChainOnce(e *env, bins map[string]string, method string, kills int, hung bool) (chainRun, error) {
	run := chainRun{method: method, kills: kills}
	sig, extra := syscall.SIGKILL, ""
	if hung {
		// The worker hangs instead: stopped, it beats no more; hb's
		// watchdog sets its slot to 0 after one period, then kills it.
		sig, extra = syscall.SIGSTOP, fmt.Sprintf("watchdog = \"%dms\"\nwatchdog_grace = \"100ms\"\n", chainWatchdogMs)
	}
	base, err := freePortBase(e)
	if err != nil {
		return run, err
	}
	e.seq++
	dir := filepath.Join(e.dir, fmt.Sprintf("chain-%s-%d", method, e.seq))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return run, err
	}
	rxStats, txStats := filepath.Join(dir, "rx.stats"), filepath.Join(dir, "tx.stats")
	b := strconv.Itoa(base)
	services := []svc{
		{name: "tx", command: []string{bins["tx"], b, txStats}},
		{name: "work0", command: []string{bins["work"], b, "0", strconv.Itoa(chainInitMs)}, extra: extra},
		{name: "work1", command: []string{bins["work"], b, "1", strconv.Itoa(chainInitMs)}, extra: extra},
		{name: "rx", command: []string{bins["rx"], b, method, strconv.Itoa(e.opts.chainRate), rxStats}},
	}
	h, err := e.startHBD(hbdConfig{label: "chain-" + method, detector: "auto", slots: 16, services: services})
	if err != nil {
		return run, err
	}
	defer h.stop()
	if _, err := h.waitUp(len(services), 30*time.Second); err != nil {
		return run, err
	}
	work := [2]int{}
	for i := range work {
		if work[i], err = h.slot(fmt.Sprintf("work%d", i)); err != nil {
			return run, err
		}
	}
	// rx sends once both workers have beaten (past their start-up).
	time.Sleep(2*chainInitMs*time.Millisecond + 100*time.Millisecond)
	t0 := time.Now()
	for k := range kills {
		idx := work[k%2]
		pid := h.table.PID(idx)
		if pid == 0 {
			return run, fmt.Errorf("kill %d: work%d is not running", k+1, k%2)
		}
		if err := syscall.Kill(int(pid), sig); err != nil {
			return run, fmt.Errorf("kill %d: %w", k+1, err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for p := h.table.PID(idx); p == 0 || p == pid; p = h.table.PID(idx) {
			if time.Now().After(deadline) {
				return run, fmt.Errorf("kill %d: work%d not respawned after 10 s", k+1, k%2)
			}
			time.Sleep(200 * time.Microsecond)
		}
		// The replacement is the standby once past its start-up and its
		// first heartbeat (10 ms), before the next kill.
		time.Sleep(chainInitMs*time.Millisecond + 200*time.Millisecond + e.jitter())
	}
	run.secs = time.Since(t0).Seconds()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := h.client.Stop(ctx, "rx"); err != nil {
		return run, fmt.Errorf("stop rx: %w", err)
	}
	rx, err := readStats(rxStats, 10*time.Second)
	if err != nil {
		return run, err
	}
	time.Sleep(50 * time.Millisecond) // the last packets reach tx
	if _, err := h.client.Stop(ctx, "tx"); err != nil {
		return run, fmt.Errorf("stop tx: %w", err)
	}
	tx, err := readStats(txStats, 10*time.Second)
	if err != nil {
		return run, err
	}
	run.sent, run.switches = rx["sent"], rx["switches"]
	run.received, run.duplicates = tx["received"], tx["duplicates"]
	return run, nil
}

// runChain: packets lost per kill of the active worker, for each way of
// telling that it died, plus a run with no kill (the chain's own loss).
func runChain(e *env, r *Report) error {
	const test = "chain"
	bins, err := chainStages(e.cc, e.include, e.dir)
	if err != nil {
		return err
	}
	r.note("chain: rx sends %d packets/s over loopback UDP; the active worker (start-up %d ms) is killed %d times per method, %s apart",
		e.opts.chainRate, chainInitMs, e.opts.chainKills, fmt.Sprintf("≥ %d ms", chainInitMs+200))
	perKill := map[string]float64{}
	for _, m := range append([]struct{ name, label string }{{"hb", "no kill"}}, chainMethods...) {
		kills := e.opts.chainKills
		label := m.label
		if m.label == "no kill" {
			kills = 0
			label = "no kill (the chain's own loss), hb method"
		}
		run, err := runChainOnce(e, bins, m.name, kills, false)
		if err != nil {
			r.check(test, m.name+": ran", false, "%v", err)
			continue
		}
		r.check(test, label+": packets add up", run.received <= run.sent && run.duplicates == 0 && run.sent > 0,
			"sent %d, received %d, duplicates %d", run.sent, run.received, run.duplicates)
		if kills == 0 {
			res := r.addValue(test, "packets lost, "+label, "packets", float64(run.lost()))
			res.Note = fmt.Sprintf("of %d sent", run.sent)
			continue
		}
		if m.name == "hb" {
			r.check(test, "hb: rx switched at every kill", run.switches == uint64(kills), "%d switches for %d kills", run.switches, kills)
		}
		pk := float64(run.lost()) / float64(kills)
		perKill[m.name] = pk
		res := r.addValue(test, "packets lost per kill, "+label, "packets", pk)
		res.N = kills
		res.Note = fmt.Sprintf("%d lost of %d sent, %d switches", run.lost(), run.sent, run.switches)
	}
	// A hung worker (SIGSTOP) instead of a dead one, hb's method, the
	// workers under a watchdog.
	hungLabel := fmt.Sprintf("hb slot word, the worker hung (SIGSTOP) under a %d ms watchdog", chainWatchdogMs)
	if run, err := runChainOnce(e, bins, "hb", e.opts.chainKills, true); err != nil {
		r.check(test, "hung: ran", false, "%v", err)
	} else {
		r.check(test, hungLabel+": packets add up", run.received <= run.sent && run.duplicates == 0 && run.sent > 0,
			"sent %d, received %d, duplicates %d", run.sent, run.received, run.duplicates)
		r.check(test, "hung: rx switched at every hang", run.switches == uint64(run.kills), "%d switches for %d hangs", run.switches, run.kills)
		res := r.addValue(test, "packets lost per kill, "+hungLabel, "packets", float64(run.lost())/float64(run.kills))
		res.N = run.kills
		res.Note = fmt.Sprintf("%d lost of %d sent, %d switches; about %d ms of packets is the watchdog's period", run.lost(), run.sent, run.switches, chainWatchdogMs)
	}
	if hb, ok := perKill["hb"]; ok {
		if hbeat, ok := perKill["heartbeat"]; ok && hbeat > 0 {
			res := r.addValue(test, "hb's loss per kill ÷ the heartbeat's", "ratio", hb/hbeat)
			res.Target = "≤ 0.01"
			meets(res, hb/hbeat <= 0.01)
		}
		if k0, ok := perKill["kill0"]; ok && k0 > 0 {
			r.addValue(test, "hb's loss per kill ÷ kill(pid, 0)'s", "ratio", hb/k0)
		}
	}
	return nil
}
