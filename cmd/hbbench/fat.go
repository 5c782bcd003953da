package main

import (
	_ "embed"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hbshim/hb/shm"
)

//go:embed csrc/fat.c
var fatSource []byte

// runFat: a stage holding --fat-mib of touched memory. kill -9 → slot 0,
// beside a raw pidfd waiter on the same kill (the kernel makes a pidfd
// readable only after it has torn the memory down; the exit tracepoint fires
// before), interleaved with the same figure for a tiny stage in the same
// hbd; and kill → the replacement's PID in the slot.
func runFat(e *env, r *Report) error {
	const test = "fat"
	bin := filepath.Join(e.dir, "fat")
	cc := exec.Command(e.cc, "-O2", "-o", bin, "-x", "c", "-")
	cc.Stdin = strings.NewReader(string(fatSource))
	if out, err := cc.CombinedOutput(); err != nil {
		return fmt.Errorf("compile the fat stage: %v\n%s", err, out)
	}
	det := e.bestDetector()
	mib := e.opts.fatMiB
	h, err := e.startHBD(hbdConfig{label: "fat", detector: det, slots: 16, services: []svc{
		{name: "fat", command: []string{bin, strconv.Itoa(mib)}},
		{name: "tiny", command: []string{e.hbclient}},
	}})
	if err != nil {
		return err
	}
	defer h.stop()
	if _, err := h.waitUp(2, 60*time.Second); err != nil {
		return err
	}
	targets := map[string]*hbTarget{}
	for _, name := range []string{"fat", "tiny"} {
		if targets[name], err = newTarget(h, name); err != nil {
			return err
		}
	}
	// The fat stage is up once its memory is touched and it sleeps in
	// pause(). RSS alone is not enough: it passes 95 % while MAP_POPULATE
	// and the touching loop still run, and a kill then lands on a stage
	// that holds its CPU in the kernel (this kernel preempts none), so the
	// reader woken on that CPU waits for the stage's next preemption point.
	fatUp := func(pid uint32) error {
		deadline := time.Now().Add(60 * time.Second)
		for {
			rss, err := rssMiB(int(pid))
			st, serr := shm.ReadStat(int(pid))
			if err == nil && serr == nil && fatIdle(rss, st.State, mib) {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("fat stage pid %d never reached %d MiB", pid, mib)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	hbZero := map[string][]float64{}
	raw := map[string][]float64{}
	var back []float64
	for i := range e.opts.fatKills {
		for _, name := range []string{"fat", "tiny"} {
			if i%2 == 1 {
				name = map[string]string{"fat": "tiny", "tiny": "fat"}[name]
			}
			t := targets[name]
			pid, err := t.ready(e)
			if err != nil {
				return err
			}
			if name == "fat" {
				if err := fatUp(pid); err != nil {
					return err
				}
			}
			t.kills++
			t.last = pid
			t0 := time.Now()
			rep, err := e.helper.call("kill0 %d %d %d %d", h.helperID, t.idx, pid, 0)
			if err != nil {
				t.errs++
				return err
			}
			hbZero[name] = append(hbZero[name], float64(rep.u64("t1")-rep.u64("t0")))
			raw[name] = append(raw[name], float64(rep.u64("raw")-rep.u64("t0")))
			if name == "fat" {
				deadline := time.Now().Add(60 * time.Second)
				for p := h.table.PID(t.idx); p == 0 || p == pid; p = h.table.PID(t.idx) {
					if time.Now().After(deadline) {
						return fmt.Errorf("fat stage not respawned 60 s after the kill of pid %d", pid)
					}
					time.Sleep(100 * time.Microsecond)
				}
				back = append(back, float64(time.Since(t0).Nanoseconds()))
			}
		}
	}
	label := fmt.Sprintf("%d MiB stage", mib)
	for _, name := range []string{"fat", "tiny"} {
		what := label
		if name == "tiny" {
			what = "tiny stage (hbclient)"
		}
		base := fmt.Sprintf("raw pidfd waiter on the same kill, %s: kill→reader sees 0", what)
		r.addSeries(test, base, "us", raw[name]).Note = "baseline"
		res := r.addSeries(test, fmt.Sprintf("hb detector=%s, %s: kill→slot 0", det, what), "us", hbZero[name])
		r.against(res, base)
	}
	if tiny := summarize(hbZero["tiny"]); tiny.P50 > 0 {
		fat := summarize(hbZero["fat"])
		res := r.addValue(test, fmt.Sprintf("hb kill→slot 0: %s ÷ tiny stage (p50)", label), "ratio", fat.P50/tiny.P50)
		res.Target = "≤ 2"
		meets(res, fat.P50/tiny.P50 <= 2)
	}
	r.addSeries(test, fmt.Sprintf("hb, %s: kill→replacement's PID in the slot", label), "ms", back).Note =
		"the kernel frees the old memory before the exit is reaped"
	for _, name := range []string{"fat", "tiny"} {
		targets[name].verify(e, r, test, "hb "+name)
	}
	return nil
}

// fatIdle: the fat stage holds (nearly) all of its memory and is asleep.
func fatIdle(rssMiB float64, state byte, mib int) bool {
	return rssMiB >= float64(mib)*0.95 && state == 'S'
}
