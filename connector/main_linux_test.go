package connector

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// childEnv selects a child mode when the test binary runs as a supervised
// child (see runChild).
const childEnv = "HB_CONNECTOR_CHILD"

func init() {
	if os.Getenv(childEnv) != "" {
		// Keep the main goroutine on the main thread, so that no locked
		// goroutine of a child mode lands there: the runtime never ends the
		// main thread, and those goroutines exist to end theirs.
		runtime.LockOSThread()
	}
}

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(runChild(mode))
	}
	os.Exit(m.Run())
}

// runChild is the body of the test binary started as a child:
//
//	sleep      block until killed
//	wait-exit  read stdin to EOF, then exit HB_EXIT_CODE (default 3)
//	exit3      exit 3 at once
//	threads    start HB_THREADS (4) extra OS threads, print "ready"; on a
//	           line on stdin end those threads (the process lives on); on
//	           EOF exit 3
//	flood      start HB_THREADS (64) extra OS threads, then exit 0: a burst of
//	           exit events at once
func runChild(mode string) int {
	switch mode {
	case "sleep":
		for {
			time.Sleep(time.Hour)
		}
	case "wait-exit":
		_, _ = io.Copy(io.Discard, os.Stdin)
		return envInt("HB_EXIT_CODE", 3)
	case "exit3":
		return 3
	case "threads":
		stop, tids := lockedThreads(envInt("HB_THREADS", 4))
		fmt.Println("ready")
		in := bufio.NewReader(os.Stdin)
		if _, err := in.ReadString('\n'); err != nil {
			return 1
		}
		close(stop) // locked goroutines return: their threads end
		for _, tid := range tids {
			for {
				if _, err := os.Stat("/proc/self/task/" + strconv.Itoa(tid)); err != nil {
					break
				}
				time.Sleep(time.Millisecond)
			}
		}
		fmt.Println("stopped")
		_, _ = io.Copy(io.Discard, in)
		return 3
	case "flood":
		lockedThreads(envInt("HB_THREADS", 64))
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown %s=%q\n", childEnv, mode)
	return 2
}

// lockedThreads starts n goroutines, each locked to its own OS thread, that
// return (ending their thread) when stop is closed. It returns once all run,
// with their thread ids.
func lockedThreads(n int) (stop chan struct{}, tids []int) {
	stop = make(chan struct{})
	c := make(chan int)
	for range n {
		go func() {
			runtime.LockOSThread()
			c <- syscall.Gettid()
			<-stop
		}()
	}
	for range n {
		tids = append(tids, <-c)
	}
	return stop, tids
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}
