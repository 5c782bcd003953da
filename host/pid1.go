package host

import (
	"os"

	"golang.org/x/sys/unix"
)

// isInit reports whether hbd is PID 1 of its PID namespace (a container's
// init, or `unshare --pid --fork`): every orphan of the namespace is then its
// child, and its exit kills every process of the namespace.
func isInit() bool { return os.Getpid() == 1 }

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
