package connector

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// frameArgs describes a synthetic connector datagram; zero fields take the
// values a kernel exit event has.
type frameArgs struct {
	nlLen, cnLen     int    // 0: consistent lengths
	nlType           uint16 // 0: NLMSG_DONE
	idx, val         uint32 // 0: CN_IDX_PROC / CN_VAL_PROC
	what             uint32 // 0: PROC_EVENT_EXIT
	zeroWhat         bool   // what = PROC_EVENT_NONE (an ACK)
	pid, tgid, ws    uint32
	exitSignal       uint32
	ppid, ptgid, cpu uint32
	ts               uint64
	size             int // buffer size; 0: FrameLen
}

func testFrame(a frameArgs) []byte {
	size := a.size
	if size == 0 {
		size = FrameLen
	}
	b := make([]byte, size)
	ne := binary.NativeEndian
	put32 := func(off int, v uint32) {
		if off+4 <= len(b) {
			ne.PutUint32(b[off:], v)
		}
	}
	nlLen := uint32(FrameLen)
	if a.nlLen != 0 {
		nlLen = uint32(a.nlLen)
	}
	put32(offNlLen, nlLen)
	if len(b) >= 6 {
		t := a.nlType
		if t == 0 {
			t = nlmsgDone
		}
		ne.PutUint16(b[offNlType:], t)
	}
	idx, val, what := a.idx, a.val, a.what
	if idx == 0 {
		idx = cnIdxProc
	}
	if val == 0 {
		val = cnValProc
	}
	if what == 0 && !a.zeroWhat {
		what = procEventExit
	}
	put32(offCnIdx, idx)
	put32(offCnVal, val)
	if len(b) >= offCnLen+2 {
		cl := a.cnLen
		if cl == 0 {
			cl = procEventLen
		}
		ne.PutUint16(b[offCnLen:], uint16(cl))
	}
	put32(offWhat, what)
	put32(offCPU, a.cpu)
	if len(b) >= offTime+8 {
		ne.PutUint64(b[offTime:], a.ts)
	}
	put32(offExitPID, a.pid)
	put32(offExitTG, a.tgid)
	put32(offExitWS, a.ws)
	put32(offExitSig, a.exitSignal)
	put32(offExitPP, a.ppid)
	put32(offExitPT, a.ptgid)
	return b
}

func TestDecodeFrame(t *testing.T) {
	full := frameArgs{pid: 101, tgid: 100, ws: 0x300, exitSignal: 17, ppid: 7, ptgid: 6, cpu: 1, ts: 123456789012}
	fullEvent := Event{PID: 101, TGID: 100, WaitStatus: 0x300, ExitSignal: 17, ParentPID: 7, ParentTGID: 6, CPU: 1, TimestampNs: 123456789012}
	with := func(f func(*frameArgs)) frameArgs { a := full; f(&a); return a }
	for _, tc := range []struct {
		name string
		b    []byte
		ok   bool
		want Event
	}{
		{"exit", testFrame(full), true, fullEvent},
		{"killed", testFrame(frameArgs{pid: 5, tgid: 5, ws: 9}), true, Event{PID: 5, TGID: 5, WaitStatus: 9}},
		{"trailing bytes ignored", testFrame(with(func(a *frameArgs) { a.size = FrameLen + 40 })), true, fullEvent},
		{"longer connector payload", testFrame(with(func(a *frameArgs) { a.size, a.nlLen, a.cnLen = 100, 100, 64 })), true, fullEvent},
		{"ack", testFrame(frameArgs{zeroWhat: true}), false, Event{}},
		{"fork", testFrame(frameArgs{what: procEventFork}), false, Event{}},
		{"exit bit with others", testFrame(frameArgs{what: procEventExit | procEventFork}), false, Event{}},
		{"nil", nil, false, Event{}},
		{"header only", testFrame(frameArgs{size: nlmsgHdrLen}), false, Event{}},
		{"one byte short", testFrame(with(func(a *frameArgs) { a.size = FrameLen - 1 })), false, Event{}},
		{"nlmsg_len beyond buffer", testFrame(with(func(a *frameArgs) { a.nlLen = FrameLen + 4 })), false, Event{}},
		{"nlmsg_len too small for the event", testFrame(with(func(a *frameArgs) { a.nlLen = FrameLen - 4 })), false, Event{}},
		{"nlmsg_len below header", testFrame(with(func(a *frameArgs) { a.nlLen = 8 })), false, Event{}},
		{"NLMSG_ERROR", testFrame(with(func(a *frameArgs) { a.nlType = 2 })), false, Event{}},
		{"other connector idx", testFrame(with(func(a *frameArgs) { a.idx = 2 })), false, Event{}},
		{"other connector val", testFrame(with(func(a *frameArgs) { a.val = 2 })), false, Event{}},
		{"connector len too small", testFrame(with(func(a *frameArgs) { a.cnLen = procEventLen - 1 })), false, Event{}},
		{"connector len beyond message", testFrame(with(func(a *frameArgs) { a.cnLen = procEventLen + 4 })), false, Event{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := DecodeFrame(tc.b)
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v", ok, tc.ok)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("event (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeFrames(t *testing.T) {
	var buf []byte
	buf = append(buf, testFrame(frameArgs{pid: 1, tgid: 1, ws: 0x100})...)
	buf = append(buf, testFrame(frameArgs{zeroWhat: true})...)                                           // ACK: skipped
	buf = append(buf, testFrame(frameArgs{size: FrameLen + 2, nlLen: FrameLen + 2, pid: 2, tgid: 2})...) // unaligned length
	buf = append(buf, 0, 0)                                                                              // its padding
	buf = append(buf, testFrame(frameArgs{pid: 3, tgid: 2, ws: 9})...)
	var pids []uint32
	for ev := range DecodeFrames(buf) {
		pids = append(pids, ev.PID)
	}
	if want := []uint32{1, 2, 3}; !slices.Equal(pids, want) {
		t.Errorf("pids %v, want %v", pids, want)
	}

	// A broken header stops the walk; earlier events are kept.
	broken := append(testFrame(frameArgs{pid: 1, tgid: 1}), testFrame(frameArgs{nlLen: 1000})...)
	pids = pids[:0]
	for ev := range DecodeFrames(broken) {
		pids = append(pids, ev.PID)
	}
	if want := []uint32{1}; !slices.Equal(pids, want) {
		t.Errorf("pids %v, want %v", pids, want)
	}

	// Stopping early is honoured.
	n := 0
	for range DecodeFrames(buf) {
		n++
		break
	}
	if n != 1 {
		t.Errorf("loop ran %d times after break", n)
	}
}

func TestExitStatus(t *testing.T) {
	for _, tc := range []struct {
		ws   uint32
		want int
	}{
		{0, 0},
		{3 << 8, 3},
		{255 << 8, 255},
		{9, 137},        // SIGKILL
		{15, 143},       // SIGTERM
		{6 | 0x80, 134}, // SIGABRT, core dumped
		{0xffff0000 | 1<<8, 1},
	} {
		if got := ExitStatus(tc.ws); got != tc.want {
			t.Errorf("ExitStatus(%#x) = %d, want %d", tc.ws, got, tc.want)
		}
	}
}

// captured describes one frame in testdata/, captured from a real kernel (see
// TestCaptureFrames). PIDs differ per capture; relations are checked.
var captured = []struct {
	file       string
	ok         bool
	status     int
	thread     bool // a non-leader thread: pid != tgid, exit_signal -1
	waitStatus uint32
}{
	{"exit3.bin", true, 3, false, 3 << 8},
	{"sigkill.bin", true, 137, false, 9},
	{"thread.bin", true, 0, true, 0},
	{"ack.bin", false, 0, false, 0},
	{"fork.bin", false, 0, false, 0},
}

func nativeLittle() bool {
	return binary.NativeEndian.Uint16([]byte{1, 0}) == 1
}

func TestDecodeCaptured(t *testing.T) {
	if !nativeLittle() {
		t.Skip("testdata frames were captured on a little-endian machine")
	}
	for _, tc := range captured {
		t.Run(tc.file, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if len(b) != FrameLen {
				t.Errorf("datagram is %d bytes, want %d", len(b), FrameLen)
			}
			ev, ok := DecodeFrame(b)
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v (event %+v)", ok, tc.ok, ev)
			}
			if !ok {
				return
			}
			if ev.Status() != tc.status || ev.WaitStatus != tc.waitStatus {
				t.Errorf("status %d (ws %#x), want %d (ws %#x)", ev.Status(), ev.WaitStatus, tc.status, tc.waitStatus)
			}
			if ev.Thread() != tc.thread || (ev.PID != ev.TGID) != tc.thread {
				t.Errorf("event %+v: thread = %v, want %v", ev, ev.Thread(), tc.thread)
			}
			if !tc.thread && ev.ExitSignal != 17 {
				t.Errorf("exit signal %d, want SIGCHLD", ev.ExitSignal)
			}
			if ev.PID == 0 || ev.TimestampNs == 0 {
				t.Errorf("event %+v: zero pid or timestamp", ev)
			}
			// A thread is released before its event is built: no parent.
			if (ev.ParentTGID == 0) != tc.thread {
				t.Errorf("event %+v: parent tgid %d", ev, ev.ParentTGID)
			}
		})
	}
}

func TestDecodeFrameAllocs(t *testing.T) {
	b := testFrame(frameArgs{pid: 1, tgid: 1})
	if n := testing.AllocsPerRun(100, func() { DecodeFrame(b) }); n != 0 {
		t.Errorf("%v allocs", n)
	}
}

func FuzzDecodeFrame(f *testing.F) {
	for _, tc := range captured {
		if b, err := os.ReadFile(filepath.Join("testdata", tc.file)); err == nil {
			f.Add(b)
		}
	}
	f.Add(testFrame(frameArgs{pid: 1, tgid: 1, ws: 0x300}))
	f.Add(testFrame(frameArgs{zeroWhat: true}))
	f.Add(append(testFrame(frameArgs{pid: 1, tgid: 1}), testFrame(frameArgs{pid: 2, tgid: 1})...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		ne := binary.NativeEndian
		ev, ok := DecodeFrame(b)
		if ok {
			nl := ne.Uint32(b[offNlLen:])
			if len(b) < FrameLen || nl < FrameLen || int(nl) > len(b) {
				t.Fatalf("accepted a frame of %d bytes with nlmsg_len %d", len(b), nl)
			}
			if ne.Uint32(b[offWhat:]) != procEventExit || ne.Uint16(b[offNlType:]) != nlmsgDone ||
				ne.Uint32(b[offCnIdx:]) != cnIdxProc || ne.Uint32(b[offCnVal:]) != cnValProc {
				t.Fatalf("accepted a frame that is not a proc connector exit event: % x", b[:FrameLen])
			}
			want := Event{
				PID: ne.Uint32(b[offExitPID:]), TGID: ne.Uint32(b[offExitTG:]),
				WaitStatus: ne.Uint32(b[offExitWS:]), ExitSignal: ne.Uint32(b[offExitSig:]),
				ParentPID: ne.Uint32(b[offExitPP:]), ParentTGID: ne.Uint32(b[offExitPT:]),
				CPU: ne.Uint32(b[offCPU:]), TimestampNs: ne.Uint64(b[offTime:]),
			}
			if ev != want {
				t.Fatalf("decoded %+v, bytes say %+v", ev, want)
			}
		} else if ev != (Event{}) {
			t.Fatalf("rejected frame returned %+v", ev)
		}
		if s := ev.Status(); s < 0 || s > 255 {
			t.Fatalf("status %d out of range", s)
		}
		n := 0
		for e := range DecodeFrames(b) {
			n++
			if n == 1 && ok && e != ev {
				t.Fatalf("DecodeFrames first event %+v, DecodeFrame %+v", e, ev)
			}
		}
		if ok && n == 0 {
			t.Fatal("DecodeFrames yielded nothing for an accepted frame")
		}
		if n > len(b)/FrameLen {
			t.Fatalf("%d events from %d bytes", n, len(b))
		}
	})
}

// sink keeps the benchmark's result alive.
var sink Event

func BenchmarkDecodeFrame(b *testing.B) {
	frame := testFrame(frameArgs{pid: 101, tgid: 100, ws: 9, exitSignal: 17})
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	for b.Loop() {
		ev, ok := DecodeFrame(frame)
		if !ok {
			b.Fatal("not decoded")
		}
		sink = ev
	}
}
