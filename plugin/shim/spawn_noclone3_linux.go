//go:build !(cgo && amd64)

package shim

import (
	"sync/atomic"
	"time"

	"github.com/hbshim/hb/plugin"
)

// Without cgo on linux/amd64 there is no clone3 spawner: spawnProc uses
// syscall.ForkExec.

func clone3Usable() bool { return false }

func spawnClone3(*procAttr) (pid, pidfd int, err error, ok bool) { return 0, -1, nil, false }

func reapRespawnClone3(int, time.Duration, *procAttr, plugin.Respawn, *atomic.Bool) (r reaped, ok bool) {
	return r, false
}
