package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hbshim/hb/host/api"
)

// nsProc is a process of a PID namespace, by its PID there and on the host.
type nsProc struct{ host, ns int }

// nsProcs lists the processes in the PID namespace of host PID init, with
// their PIDs inside it (NSpid's last field).
func nsProcs(init int) map[int]nsProc {
	want, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", init))
	out := map[int]nsProc{}
	if err != nil {
		return out
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid)); err != nil || ns != want {
			continue
		}
		f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "NSpid:"); ok {
				fs := strings.Fields(rest)
				if n, err := strconv.Atoi(fs[len(fs)-1]); err == nil {
					out[n] = nsProc{host: pid, ns: n}
				}
			}
		}
		f.Close()
	}
	return out
}

// TestPID1: hbd as PID 1 of a PID namespace (unshare --pid --fork
// --mount-proc, as in a container) runs its services, says the proc
// connector is unusable there, reaps every orphan (the services of a dead
// plugin are its children then: one killed never lingers as a zombie),
// and stops everything on SIGTERM.
func TestPID1(t *testing.T) {
	t.Parallel()
	RequireRoot(t, "unshare --pid needs root")
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("unshare not installed")
	}
	h := NewHarness(t, Options{})
	h.WriteConfig(`
[service.a]
command    = "sleep infinity"
start_secs = "100ms"

[service.b]
command    = "sleep infinity"
start_secs = "100ms"
`)
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "--kill-child", h.HBD, "-c", h.Config)
	cmd.Env = append(os.Environ(), "HB_SHM="+h.Shm)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			cmd.Process.Kill() // --kill-child: the namespace goes with it
			<-done
		}
		if t.Failed() {
			t.Logf("hbd (PID 1) output:\n%s", out.String())
		}
	})

	ctx := context.Background()
	var hl api.Health
	h.Eventually("hbd as PID 1 to answer", func() (bool, string) {
		c, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		var err error
		hl, err = h.Client().Health(c)
		return err == nil && hl.Plugin != nil && hl.PID == 1, fmt.Sprintf("%+v %v", hl, err)
	})
	if hl.Plugin.Connector || !strings.Contains(hl.Plugin.ConnectorNote, "unusable") {
		t.Errorf("health: connector %v, note %q; want it said unusable", hl.Plugin.Connector, hl.Plugin.ConnectorNote)
	}
	if r := h.Ctl("health"); !strings.Contains(r.Stdout, "proc connector is unusable here") {
		t.Errorf("hbctl health does not say the connector is unusable:\n%s", r.Stdout)
	}
	running := func() map[string]api.ServiceStatus {
		m := map[string]api.ServiceStatus{}
		h.Eventually("a and b running", func() (bool, string) {
			sts, err := h.Client().List(ctx)
			if err != nil {
				return false, err.Error()
			}
			for _, st := range sts {
				m[st.Name] = st
			}
			return IsRunning(m["a"]) && IsRunning(m["b"]), fmt.Sprintf("%+v", sts)
		})
		return m
	}
	before := running()
	hbd := 0
	// hbd's host PID: the child of unshare.
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid)); err == nil {
		hbd, _ = strconv.Atoi(strings.Fields(string(b))[0])
	}
	if hbd == 0 {
		t.Fatal("hbd's host PID not found")
	}
	procs := nsProcs(hbd)
	plugin, a := procs[hl.Plugin.PID].host, procs[before["a"].PID].host
	if plugin == 0 || a == 0 {
		t.Fatalf("host PIDs not found: plugin %d (ns %d), a %d (ns %d)", plugin, hl.Plugin.PID, a, before["a"].PID)
	}

	// The plugin dies: its services are re-parented to PID 1 (hbd), and a
	// new plugin adopts them. When a dies, hbd must reap it.
	syscall.Kill(plugin, syscall.SIGKILL)
	h.Eventually("a new plugin", func() (bool, string) {
		c, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		h2, err := h.Client().Health(c)
		return err == nil && h2.Plugin != nil && h2.Plugin.PID != hl.Plugin.PID, fmt.Sprint(err)
	})
	if st, err := readStat(a); err != nil || st.PPID != hbd {
		t.Fatalf("a (host pid %d) after the plugin's death: ppid %d, %v; want hbd %d", a, st.PPID, err, hbd)
	}
	syscall.Kill(a, syscall.SIGKILL)
	h.Eventually("a (an orphan of PID 1) to be reaped, not left a zombie", func() (bool, string) {
		st, err := readStat(a)
		return err != nil || st.PPID != hbd, fmt.Sprintf("state %c", st.State)
	})
	h.Eventually("a respawned", func() (bool, string) {
		st, err := h.Client().Get(ctx, "a")
		return err == nil && IsRunning(st) && st.Generation > before["a"].Generation, fmt.Sprintf("%+v %v", st, err)
	})

	// SIGTERM to PID 1 stops every service, then hbd exits.
	syscall.Kill(hbd, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("hbd as PID 1 did not exit after SIGTERM")
	}
	if !strings.Contains(out.String(), "stopping every service") {
		t.Errorf("hbd did not stop the services on SIGTERM:\n%s", out.String())
	}
	if hdr := h.Table().Header(); hdr.WriterPID != 0 {
		t.Errorf("writer_pid %d after SIGTERM, want 0 (a clean stop)", hdr.WriterPID)
	}
}
