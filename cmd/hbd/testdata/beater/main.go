// Command beater is a Go service for hb's watchdog tests: it beats
// (shm.Beat) every millisecond until SIGUSR1, then hangs without beating.
// Without HB_BEAT_FD it exits 3.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hbshim/hb/shm"
)

func main() {
	if err := shm.BeatInit(); err != nil || !shm.Beating() {
		fmt.Fprintln(os.Stderr, "beater: no beat area:", err)
		os.Exit(3)
	}
	hang := make(chan os.Signal, 1)
	signal.Notify(hang, syscall.SIGUSR1)
	t := time.NewTicker(time.Millisecond)
	for {
		select {
		case <-hang:
			for {
				time.Sleep(time.Hour) // hung: alive, not beating
			}
		case <-t.C:
			shm.Beat()
		}
	}
}
