package shm_test

import (
	"fmt"
	"log"
	"os"

	"github.com/hbshim/hb/shm"
)

// A peer checks a service's liveness: map the table read-only, look the
// service up once, then poll its PID with one atomic load.
func Example() {
	dir, err := os.MkdirTemp("", "hb-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// The writer (the hb plugin) side, normally in another process.
	w, err := shm.Create("hb", shm.Options{Dir: dir, Slots: 16})
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close(true)
	slot, _ := w.Alloc("rx")
	w.Spawned(slot, 4321, 1, 0, shm.StateRunning, 0)

	// The peer side: shm.Open("hb") in production (/dev/shm/hb).
	t, err := shm.OpenPath(w.Path())
	if err != nil {
		log.Fatal(err)
	}
	defer t.Close()
	rx, err := t.Lookup("rx")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("rx pid:", t.PID(rx))

	// rx is killed: the writer clears the slot before anything else.
	w.ClearPID(slot, 4321)
	fmt.Println("rx alive:", t.PID(rx) != 0)

	w.RecordExit(slot, 4321, 137, shm.MonotonicNs(), shm.StateBackoff)
	s := t.Snapshot(rx)
	fmt.Println(s.Name, s.State, s.LastStatus, s.Exits)
	// Output:
	// rx pid: 4321
	// rx alive: false
	// rx backoff 137 1
}

// Listing every service in the default table, as hbpeek does.
func ExampleTable_Used() {
	t, err := shm.Open(shm.DefaultName)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer t.Close()
	for s := range t.Used() {
		fmt.Println(s.Index, s.Name, s.PID, s.State)
	}
}
