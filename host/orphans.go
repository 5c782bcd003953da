package host

import (
	"errors"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// hbd is a child subreaper (PR_SET_CHILD_SUBREAPER): when the plugin dies,
// the services it started are re-parented to hbd instead of init. hbd never
// reaps one of them before the plugin reported its exit (so after its slot
// read 0): until the reap, the zombie keeps its PID from being reused, so a
// slot never names a recycled process, adopted or not
// (docs/design.md#invariant-1), and the next plugin reads the exact exit
// status from the zombie (/proc/PID/stat). Processes re-parented to hbd that
// no service owns (a service's own double-forked children) are reaped when
// they exit.

// becomeSubreaper makes hbd the reaper of the plugin's orphans. Without it
// (an error) they go to init as before, and the table's writer_alive word
// still tells peers when the plugin died.
func (d *Daemon) becomeSubreaper() {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		d.log.Warn("not a child subreaper: the services of a dead plugin go to init, which may free their PIDs "+
			"before the next plugin clears their slots", "err", err)
		return
	}
	d.subreaper = true
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGCHLD)
	go func() {
		for range ch {
			d.reapStrays()
		}
	}()
}

// withTools runs f, which starts programs of hbd's own and waits for them,
// with the stray reaper held off: their zombies are f's to reap.
func (d *Daemon) withTools(f func()) {
	d.tools.RLock()
	defer d.tools.RUnlock()
	f()
}

// orphanReapTries bounds how long reapOrphan waits, in 10 ms steps, for a
// process whose exit the plugin reported to become a zombie.
const orphanReapTries = 100

// reapOrphan reaps pid, whose exit the plugin has just reported (its slot
// reads 0), if it is hbd's child: a service a dead plugin left behind.
// Anything else (the plugin's own child, a process init took) answers
// ECHILD at once and is left alone.
func (d *Daemon) reapOrphan(ev plugin.Event) {
	if !d.subreaper || ev.PID <= 0 {
		return
	}
	d.mu.RLock()
	pluginPID := d.info.PID
	d.mu.RUnlock()
	if ev.PID == pluginPID || isPlugin(ev.PID) {
		return
	}
	for range orphanReapTries {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(ev.PID, &ws, unix.WNOHANG, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil: // ECHILD: not ours
			return
		case pid == ev.PID:
			status := ws.ExitStatus()
			if ws.Signaled() {
				status = 128 + int(ws.Signal())
			}
			d.log.Info("reaped a service the previous plugin left", "service", ev.Name, "pid", ev.PID,
				"status", status, "reported", ev.Status)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	d.log.Warn("a service the previous plugin left has not become a zombie after its exit was reported", "service", ev.Name, "pid", ev.PID)
}

// reapStrays reaps hbd's zombie children that no service owns: not the
// plugin, not a PID hbd records for a service (whose exit the plugin has
// yet to report), and not a program hbd runs itself (it waits until
// withTools is done). hbd's children are listed from /proc/self/task/*/children.
func (d *Daemon) reapStrays() {
	d.tools.Lock() // not while hbd waits for a program of its own
	defer d.tools.Unlock()
	kids := children()
	if len(kids) == 0 {
		return
	}
	d.mu.RLock()
	owned := map[int]bool{d.info.PID: true}
	for _, s := range d.svcs {
		if s.pid != 0 {
			owned[s.pid] = true
		}
	}
	d.mu.RUnlock()
	// Every PID a slot holds is a service's, whatever hbd has heard of.
	if t := d.peerTable(); t != nil {
		for sl := range t.Used() {
			if sl.PID != 0 {
				owned[int(sl.PID)] = true
			}
		}
	}
	for _, pid := range kids {
		if owned[pid] || isPlugin(pid) {
			continue
		}
		if st, err := shm.ReadStat(pid); err != nil || st.State != 'Z' {
			continue
		}
		var ws unix.WaitStatus
		if got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); err == nil && got == pid {
			d.log.Debug("reaped a stray process the previous plugin left", "pid", pid)
		}
	}
}

// peerTable maps the table read-only, as a peer does, on first use; nil
// if it cannot (no table yet: the next call tries again).
func (d *Daemon) peerTable() *shm.Table {
	d.tableMu.Lock()
	defer d.tableMu.Unlock()
	if d.table == nil {
		d.mu.RLock()
		name := d.cfg.HBD.Shm
		d.mu.RUnlock()
		d.table, _ = shm.Open(name)
	}
	return d.table
}

// isPlugin reports whether pid runs (or ran: a zombie keeps its name) the
// same executable as hbd: a plugin, whose PID hbd may not know yet (it is
// being launched), and which only its launcher (go-plugin's exec.Cmd) may
// reap. The name is /proc/PID/comm, which a zombie still has.
// isChild reports whether pid is a child of hbd (running or a zombie):
// one waitid that reaps nothing. Only services a dead plugin left are; the
// exits of all others need no goroutine and no reads of /proc.
func isChild(pid int) bool {
	if pid <= 0 {
		return false
	}
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			return err == nil
		}
	}
}

func isPlugin(pid int) bool {
	self, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		return true // cannot tell: leave it alone
	}
	c, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	return err != nil || string(c) == string(self)
}

// children lists hbd's child processes.
func children() []int {
	files, _ := filepath.Glob("/proc/self/task/*/children")
	var out []int
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, w := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(w); err == nil {
				out = append(out, pid)
			}
		}
	}
	return out
}
