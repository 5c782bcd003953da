package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/hbshim/hb/bridge"
	"github.com/hbshim/hb/bridge/bridgetest"
)

// runBridge: for a program that runsv, s6-supervise and supervisord each
// run (started here on a scratch directory), kill -9 → its slot reads 0
// through hb, beside the time until the manager itself reports the death
// (runit's and s6's supervise/status, read every 100 µs; supervisord's
// getProcessInfo, asked every millisecond), on the same kills. A manager
// whose binary is missing is skipped with a note.
func runBridge(e *env, r *Report) error {
	if !e.root {
		r.note("bridge: skipped: hb trusts only service directories and sockets root owns; run as root")
		return nil
	}
	for _, kind := range []string{bridge.Runit, bridge.S6, bridge.Supervisord} {
		if err := bridgeOne(e, r, kind); err != nil {
			r.check("bridge", kind+" ran", false, "%v", err)
		}
	}
	return nil
}

// benchTB lets bridgetest's helpers run outside a test: Fatal and Skip
// unwind to bridgeOne, Cleanup runs at its end.
type benchTB struct {
	dir      string
	n        int
	cleanups []func()
	errs     []string
}

type tbAbort struct {
	msg  string
	skip bool
}

func (b *benchTB) Helper()                   {}
func (b *benchTB) Fatal(a ...any)            { panic(tbAbort{msg: fmt.Sprint(a...)}) }
func (b *benchTB) Fatalf(f string, a ...any) { panic(tbAbort{msg: fmt.Sprintf(f, a...)}) }
func (b *benchTB) Errorf(f string, a ...any) { b.errs = append(b.errs, fmt.Sprintf(f, a...)) }
func (b *benchTB) Skip(a ...any)             { panic(tbAbort{msg: fmt.Sprint(a...), skip: true}) }
func (b *benchTB) Skipf(f string, a ...any)  { panic(tbAbort{msg: fmt.Sprintf(f, a...), skip: true}) }
func (b *benchTB) Cleanup(f func())          { b.cleanups = append(b.cleanups, f) }
func (b *benchTB) close() {
	for i := len(b.cleanups) - 1; i >= 0; i-- {
		b.cleanups[i]()
	}
}
func (b *benchTB) TempDir() string {
	b.n++
	d := filepath.Join(b.dir, fmt.Sprint(b.n))
	if err := os.MkdirAll(d, 0o700); err != nil {
		b.Fatal(err)
	}
	return d
}

func bridgeOne(e *env, r *Report, kind string) (err error) {
	const test = "bridge"
	tb := &benchTB{dir: filepath.Join(e.dir, "bridge-"+kind)}
	defer func() {
		tb.close()
		for _, m := range tb.errs {
			r.check(test, kind+": cleanup", false, "%s", m)
		}
	}()
	defer func() {
		if x := recover(); x != nil {
			a, ok := x.(tbAbort)
			if !ok {
				panic(x)
			}
			if a.skip {
				r.note("bridge: %s skipped: %s", kind, a.msg)
				err = nil
				return
			}
			err = errors.New(a.msg)
		}
	}()
	stateDir := filepath.Join(e.dir, "bridge-"+kind+"-state")
	var m *bridgetest.Manager
	var table, how string
	switch kind {
	case bridge.Runit:
		m = bridgetest.Runit(tb, "prog", bridgetest.RunScript("sleep 100000"))
		table = fmt.Sprintf("[bridge.runit]\ndir = %q\nprograms = [\"prog\"]\n", filepath.Dir(m.Dir))
		how = "supervise/status"
	case bridge.S6:
		m = bridgetest.S6(tb, "prog", bridgetest.RunScript("sleep 100000"))
		table = fmt.Sprintf("[bridge.s6]\ndir = %q\nprograms = [\"prog\"]\n", filepath.Dir(m.Dir))
		how = "supervise/status"
	case bridge.Supervisord:
		listener := fmt.Sprintf("%s supervisord-listener --socket %s", e.hbd, filepath.Join(stateDir, "supervisord.sock"))
		m = bridgetest.Supervisord(tb, "prog", "/bin/sleep 100000", listener)
		table = fmt.Sprintf("[bridge.supervisord]\nserver_url = %q\nprograms = [\"prog\"]\n", m.URL)
		how = "getProcessInfo"
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}
	h, err := e.startHBD(hbdConfig{label: "bridge-" + kind, detector: e.bestDetector(), slots: 4, extra: table, stateDir: stateDir})
	if err != nil {
		return err
	}
	defer h.stop()
	if _, err := h.waitUp(1, 30*time.Second); err != nil {
		return err
	}
	idx, err := h.slot("prog")
	if err != nil {
		return err
	}
	var viaHB, viaMgr []float64
	for range e.opts.fatKills {
		// The manager's program, published by hb.
		pid := m.WaitUp()
		deadline := time.Now().Add(15 * time.Second)
		for h.table.PID(idx) != uint32(pid) {
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: slot reads %d, the manager says %d", kind, h.table.PID(idx), pid)
			}
			time.Sleep(time.Millisecond)
		}
		if kind == bridge.Supervisord {
			time.Sleep(100 * time.Millisecond) // past RUNNING's bookkeeping
		}
		mgr := make(chan time.Duration, 1)
		t0 := time.Now()
		go func() { mgr <- managerNotices(m, pid, t0) }()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			return err
		}
		// Spin as a peer would, yielding so as not to starve hb and the
		// manager of a CPU.
		for n := 0; h.table.PID(idx) == uint32(pid); n++ {
			if n%64 == 0 {
				if time.Since(t0) > 10*time.Second {
					return fmt.Errorf("%s: pid %d still in its slot 10 s after kill -9", kind, pid)
				}
				runtime.Gosched()
			}
		}
		viaHB = append(viaHB, float64(time.Since(t0).Nanoseconds()))
		d := <-mgr
		if d < 0 {
			return fmt.Errorf("%s: the manager did not report pid %d dead within 10 s", kind, pid)
		}
		viaMgr = append(viaMgr, float64(d.Nanoseconds()))
	}
	base := kind + ": kill → " + kind + " reports the death (" + how + ")"
	res := r.addSeries(test, base, "ms", viaMgr)
	res.Note = "baseline, the same kills"
	hb := r.addSeries(test, kind+": kill → slot 0 through hb", "ms", viaHB)
	r.against(hb, base)
	hb.Target = "p50 below the manager's"
	meets(hb, hb.RatioP50 < 1)
	hb.Note = "first detector: " + formatSources(h.exitSources())
	return nil
}

// managerNotices is how long after t0 the manager reports that pid is no
// longer its running program; -1 after 10 s.
func managerNotices(m *bridgetest.Manager, pid int, t0 time.Time) time.Duration {
	every := 100 * time.Microsecond
	var sup *bridge.Supervisor
	if m.Kind == bridge.Supervisord {
		every = time.Millisecond
		sup, _ = bridge.NewSupervisor(m.URL)
	}
	for time.Since(t0) < 10*time.Second {
		if sup != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			in, err := sup.ProcessInfo(ctx, m.Process)
			cancel()
			if err == nil && (in.PID != pid || in.State != 20) {
				return time.Since(t0)
			}
		} else if b, err := os.ReadFile(filepath.Join(m.Dir, "supervise", "status")); err == nil {
			if st, err := bridge.Decode(m.Kind, b); err == nil && (!st.Up || st.PID != pid) {
				return time.Since(t0)
			}
		}
		time.Sleep(every)
	}
	return -1
}
