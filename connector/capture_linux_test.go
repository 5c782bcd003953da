package connector

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var capture = flag.Bool("capture", false, "capture testdata/*.bin frames from the running kernel (TestCaptureFrames)")

// procEventAll subscribes to every event type; such a socket also receives
// ACKs, among them the one for its own LISTEN.
const procEventAll = 0xFFFFFFFF

// TestCaptureFrames rewrites the frames in testdata/ from the live kernel:
//
//	go test ./connector -run TestCaptureFrames -capture
func TestCaptureFrames(t *testing.T) {
	if !*capture {
		t.Skip("run with -capture to rewrite testdata/*.bin")
	}
	requireConnector(t)
	s, err := dialProc(0, procEventAll)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if err := s.conn.SetReadDeadline(time.Now().Add(waitLimit)); err != nil {
		t.Fatal(err)
	}
	ne := func(b []byte, off int) uint32 {
		return uint32(b[off]) | uint32(b[off+1])<<8 | uint32(b[off+2])<<16 | uint32(b[off+3])<<24
	}
	frames := map[string][]byte{}
	// next receives until keep accepts a datagram and stores it under name.
	next := func(name string, keep func(b []byte) bool) {
		t.Helper()
		for {
			b, err := s.recv()
			if err != nil {
				t.Fatalf("capturing %s: %v", name, err)
			}
			if keep(b) {
				frames[name] = append([]byte(nil), b...)
				return
			}
		}
	}
	// The ACK of our own LISTEN comes first among ACKs.
	next("ack.bin", func(b []byte) bool { return len(b) >= FrameLen && ne(b, offWhat) == procEventNone })

	sh := startCmd(t, false, "/bin/sh", "-c", "exit 3")
	next("fork.bin", func(b []byte) bool {
		// The fork event of the shell: child_tgid at offset 60.
		return len(b) >= FrameLen && ne(b, offWhat) == procEventFork && ne(b, 60) == uint32(sh.pid)
	})
	next("exit3.bin", func(b []byte) bool {
		ev, ok := DecodeFrame(b)
		return ok && ev.PID == uint32(sh.pid)
	})
	sh.reap()

	sl := startCmd(t, false, "/bin/sleep", "100")
	sl.kill(unix.SIGKILL)
	next("sigkill.bin", func(b []byte) bool {
		ev, ok := DecodeFrame(b)
		return ok && ev.PID == uint32(sl.pid)
	})
	sl.reap()

	tid, err := exitOneThread()
	if err != nil {
		t.Fatal(err)
	}
	next("thread.bin", func(b []byte) bool {
		ev, ok := DecodeFrame(b)
		return ok && ev.PID == uint32(tid)
	})

	for name, b := range frames {
		if err := os.WriteFile(filepath.Join("testdata", name), b, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: % x", name, b)
	}
}
