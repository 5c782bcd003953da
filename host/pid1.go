package host

import "os"

// isInit reports whether hbd is PID 1 of its PID namespace (a container's
// init, or `unshare --pid --fork`): every orphan of the namespace is then its
// child, and its exit kills every process of the namespace.
func isInit() bool { return os.Getpid() == 1 }
