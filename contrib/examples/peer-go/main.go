// Command peer-go is a peer of hb in Go: it follows services through the
// table, sleeping in the kernel between changes (the README's Go example;
// `make test` builds and runs it against a live table).
//
// Usage: peer-go SERVICE...   (the table: $HB_SHM, else /dev/shm/hb)
//
// It prints "SERVICE PID" when a service's PID changes (0: not alive) and
// "writer alive" / "writer dead" when the plugin's liveness changes.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/hbshim/hb/shm"
)

func main() {
	name := os.Getenv("HB_SHM")
	if name == "" {
		name = shm.DefaultName
	}
	t, err := shm.Open(name)
	if err != nil || len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: peer-go SERVICE...", err)
		os.Exit(1)
	}
	svcs := os.Args[1:]
	idx := make([]int, len(svcs))
	lookup := func() {
		for k, s := range svcs {
			idx[k], _ = t.Lookup(s) // -1 if absent: reads as PID 0
		}
	}
	seq := t.LayoutSeq() // before the lookups
	lookup()             // once
	seen := make([]uint32, len(svcs))
	changes, writer := t.Changes(), -1
	for {
		alive := t.WriterAlive()
		for k := 0; k < len(svcs); k++ {
			pid := t.PID(idx[k])       // the hot path: one load
			if t.LayoutChanged(&seq) { // slots moved: look again, drop what was read
				lookup()
				k = -1
				continue
			}
			if !alive {
				pid = 0 // a dead writer's PIDs may be recycled ones
			}
			if pid != seen[k] {
				seen[k] = pid
				fmt.Println(svcs[k], pid)
			}
		}
		if a := map[bool]int{false: 0, true: 1}[alive]; a != writer {
			writer = a
			fmt.Println("writer", map[bool]string{false: "dead", true: "alive"}[alive])
		}
		// Sleep until some PID word is stored or the writer's liveness
		// changes (ErrWriterDead: woken, the writer is dead; 1 s bound).
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		changes, _ = t.WaitChanges(ctx, changes)
		cancel()
	}
}
