package main

import (
	_ "embed"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

//go:embed csrc/spin.c
var spinSource []byte

// loadSuffix marks the figures taken under --load ordinary.
const loadSuffix = " (ordinary load)"

// buildSpinner compiles csrc/spin.c into the run's directory.
func buildSpinner(e *env) (string, error) {
	bin := filepath.Join(e.dir, "spin")
	cc := exec.Command(e.cc, "-O2", "-o", bin, "-x", "c", "-")
	cc.Stdin = strings.NewReader(string(spinSource))
	if out, err := cc.CombinedOutput(); err != nil {
		return "", fmt.Errorf("compile the spinner: %v\n%s", err, out)
	}
	return bin, nil
}

// startLoad starts one busy spinner per CPU hbbench may use, each pinned
// to its CPU at nice 0, and returns a stop. Each spinner ends by itself
// after secs (its watchdog) if hbbench does not stop it.
func startLoad(e *env, secs int) (func(), int, error) {
	bin, err := buildSpinner(e)
	if err != nil {
		return nil, 0, err
	}
	var cpus unix.CPUSet
	if err := unix.SchedGetaffinity(0, &cpus); err != nil {
		return nil, 0, err
	}
	var cmds []*exec.Cmd
	stop := func() {
		for _, c := range cmds {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
		cmds = nil
	}
	for cpu := range 1024 {
		if !cpus.IsSet(cpu) {
			continue
		}
		c := exec.Command(bin, strconv.Itoa(cpu), strconv.Itoa(secs))
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := c.Start(); err != nil {
			stop()
			return nil, 0, err
		}
		cmds = append(cmds, c)
	}
	atExit(stop)
	return stop, len(cmds), nil
}

// compareLoad adds, for hb's headline figures taken under load (kill →
// slot 0, kill → new PID, and kill → the plugin detects, which shows how
// much of it is the plugin's), their p50 and p99 against the same figure
// taken idle in this run.
func compareLoad(r *Report) {
	idle := map[string]*Result{}
	for _, res := range r.Results {
		if !strings.HasSuffix(res.Name, loadSuffix) && len(res.Samples) > 0 {
			idle[res.Test+"\x00"+res.Name] = res
		}
	}
	var rows []Result
	for _, res := range r.Results {
		name, ok := strings.CutSuffix(res.Name, loadSuffix)
		if !ok || !strings.HasPrefix(name, "hb ") ||
			!(strings.HasSuffix(name, "kill→slot 0") || strings.HasSuffix(name, "kill→new PID in slot") || strings.HasSuffix(name, "kill→plugin detects")) {
			continue // the headline figures and where the time goes, not every breakdown
		}
		base := idle[res.Test+"\x00"+name]
		if base == nil || base.P50 <= 0 || base.P99 <= 0 {
			continue
		}
		row := Result{Test: res.Test, Name: name + ": ordinary load ÷ idle", Unit: "ratio", N: res.N,
			P50: res.P50 / base.P50, P99: res.P99 / base.P99, Max: res.Max / base.Max, Target: "p99 ≤ 2× idle"}
		ok = row.P99 <= 2
		row.Meets = &ok
		rows = append(rows, row)
	}
	for _, row := range rows {
		r.add(row)
	}
}
