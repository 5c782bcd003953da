package host

import (
	"bytes"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// isInit reports whether hbd is PID 1 of its PID namespace (a container's
// init, or `unshare --pid --fork`): every orphan of the namespace is then its
// child, and its exit kills every process of the namespace.
func isInit() bool { return os.Getpid() == 1 }

// reapOrphans, for hbd as PID 1, reaps every child that exits, except its
// plugin (go-plugin waits for that one): orphans re-parented to PID 1 never
// linger as zombies. It runs for the life of the process.
func reapOrphans(log *slog.Logger) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGCHLD)
	go func() {
		for {
			reapOnce(log)
			<-sigs
		}
	}()
}

// reapOnce reaps the exited children that are not a plugin.
func reapOnce(log *slog.Logger) {
	tasks, _ := filepath.Glob("/proc/self/task/*/children")
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, field := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(field)
			if err != nil || isPlugin(pid) {
				continue
			}
			var ws unix.WaitStatus
			if got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); err == nil && got == pid {
				log.Debug("reaped an orphan", "pid", pid, "status", ws.ExitStatus(), "signal", ws.Signal())
			}
		}
	}
}

// isPlugin reports whether pid is one of hbd's plugins (`hbd plugin`, the
// same program, which go-plugin reaps): its command name is hbd's own. It
// reads /proc/PID/stat, which a zombie still has (its cmdline is empty).
func isPlugin(pid int) bool {
	return comm(strconv.Itoa(pid)) == comm("self")
}

// comm is the command name of /proc/WHO/stat, "" if unreadable.
func comm(who string) string {
	b, err := os.ReadFile("/proc/" + who + "/stat")
	if err != nil {
		return ""
	}
	i, j := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if i < 0 || j < i {
		return ""
	}
	return string(b[i+1 : j])
}

// Inode numbers of the initial user and PID namespaces (fixed by the kernel).
const (
	initUserNS = 0xEFFFFFFD
	initPidNS  = 0xEFFFFFFC
)

// connectorNote says why the proc connector cannot work here, or "" when
// nothing shows that it cannot: outside the initial user or PID namespace
// the kernel sends it no events.
func connectorNote() string {
	for _, ns := range []struct {
		name string
		ino  uint64
	}{{"user", initUserNS}, {"pid", initPidNS}} {
		var st unix.Stat_t
		if err := unix.Stat("/proc/self/ns/"+ns.name, &st); err == nil && st.Ino != ns.ino {
			return "the proc connector is unusable here: not in the initial " + ns.name +
				" namespace (a container); exits are detected by pidfds" +
				" (and the exit tracepoint where it loads)"
		}
	}
	return ""
}
