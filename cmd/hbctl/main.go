// Command hbctl controls and inspects hbd, the hb process-liveness shim,
// over hbd's control socket, and reads the shared-memory table directly.
//
//	hbctl [-s SOCKET] COMMAND [ARGS] [FLAGS]
//
//	status [NAME...] [--json]               show services (all, or those named)
//	start|stop|restart NAME... | --all      act on services
//	signal SIG NAME                         signal a service's main process
//	reload                                  make hbd re-read its configuration
//	watch [NAME...] [--json]                print events as they happen
//	wait NAME... --up|--down [--timeout D]  wait for services to be up or down
//	shm [--name TABLE] [--json] [NAME...]   read /dev/shm/TABLE (works without hbd)
//	health, version, help [COMMAND]
//
// SOCKET defaults to $HB_SOCKET, else /run/hb/hbd.sock; TABLE to $HB_SHM,
// else hb. Exit status: 0 success, 1 the operation failed, 2 usage error,
// 3 hbd cannot be reached, 4 wait timed out, 130 interrupted. `hbctl help`
// has the details; the work is done in package host/api/ctl.
package main

import (
	"os"

	"github.com/hbshim/hb/host/api/ctl"
)

func main() {
	os.Exit(ctl.Main(os.Args[1:]))
}
