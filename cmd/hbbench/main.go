// Command hbbench is hb's benchmark: it runs hbd as a real subprocess on
// temporary configurations and measures, each against a baseline taken in
// the same run with samples interleaved,
//
//   - death: kill -9 of a service until its slot's PID reads 0, seen by a
//     C reader spinning on hb_pid(), for detector "tracepoint" (where it
//     loads), "connector" and "pidfd", against a raw pidfd poll or a raw
//     proc connector listener woken by the same kill, each a thread that
//     stores 0 in a word the same reader waits on in the same loop (and,
//     as a reference, against the same waiters on the helper's own
//     children);
//   - respawn: kill -9 until the replacement's PID is in the slot, for a C
//     client and a Go client, against a bare fork/exec+wait supervisor
//     thread that publishes the new PID the same way;
//   - peer: the cost of one liveness check (Table.PID, hb_pid) against
//     kill(pid, 0) and reading a small status file;
//   - scale: N services in one hbd: start, kill all at once, RSS, idle CPU;
//   - flood: an exit flood of unrelated processes while services are killed
//     at random: missed exits, plugin CPU, resyncs.
//   - table: kill -9 → a peer blocked in hb_wait (futex) wakes, beside the
//     spinning reader and a raw pidfd waiter on the same kill; plugin kill -9
//     → a reader sees writer_alive dead, beside a raw pidfd waiter on the
//     plugin; the cost of one FUTEX_WAKE (the plugin makes two per pid
//     store) beside an atomic store.
//
// It prints a markdown report (or JSON with --json) and exits 1 if any exit
// was missed or any slot was left wrong; timings never fail it.
//
//	hbbench [--quick|--long] [--only death,respawn,peer,scale,flood,table] [--json]
//	        [--kills N] [--services N] [--flood-secs N] [--hbd PATH] ...
//
// The timed parts run in a small C helper (csrc/helper.c) that hbbench
// compiles at start with $CC against contrib/c/hb_shm.h. hbd and hbclient
// are looked for next to hbbench's own executable (make build puts all three
// in bin/). Everything hbbench starts is stopped, and every table it made is
// removed, when it ends, also on SIGINT/SIGTERM.
package main

import (
	"os"
)

func main() {
	os.Exit(run(os.Args[1:]))
}
