package connector

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/net/bpf"
)

// filterVM checks prog the way the kernel would refuse it (jumps past the
// end, a last instruction that is not a return, undecodable opcodes) and
// returns a VM that runs it.
func filterVM(t testing.TB, prog []bpf.RawInstruction) *bpf.VM {
	t.Helper()
	if len(prog) == 0 || len(prog) > filterMaxInsns {
		t.Fatalf("program of %d instructions", len(prog))
	}
	insns, ok := bpf.Disassemble(prog)
	if !ok {
		t.Fatalf("program holds instructions the bpf package cannot decode")
	}
	vm, err := bpf.NewVM(insns)
	if err != nil {
		t.Fatalf("NewVM: %v", err)
	}
	return vm
}

// passes runs vm on frame: true if the datagram is kept whole, false if it
// is dropped; anything else (a trimmed datagram) fails the test.
func passes(t testing.TB, vm *bpf.VM, frame []byte) bool {
	t.Helper()
	n, err := vm.Run(frame)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	switch {
	case n == 0:
		return false
	case n >= len(frame):
		return true
	}
	t.Fatalf("datagram of %d bytes trimmed to %d", len(frame), n)
	return false
}

// readFrame returns a captured datagram from testdata/.
func readFrame(t testing.TB, name string) []byte {
	t.Helper()
	if !nativeLittle() {
		t.Skip("testdata frames were captured on a little-endian machine")
	}
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// withTGID returns a copy of an exit frame with exit.process_tgid set to tgid
// (and process_pid too, for a leader's exit).
func withTGID(frame []byte, tgid uint32, leader bool) []byte {
	b := slices.Clone(frame)
	binary.NativeEndian.PutUint32(b[offExitTG:], tgid)
	if leader {
		binary.NativeEndian.PutUint32(b[offExitPID:], tgid)
	}
	return b
}

// TestFilterOpcodes: the opcodes written by hand are those the bpf package
// assembles for the same instructions.
func TestFilterOpcodes(t *testing.T) {
	for _, tc := range []struct {
		op  uint16
		ins bpf.Instruction
	}{
		{opLdLen, bpf.LoadExtension{Num: bpf.ExtLen}},
		{opLdAbsW, bpf.LoadAbsolute{Off: offExitTG, Size: 4}},
		{opJeqK, bpf.JumpIf{Cond: bpf.JumpEqual, Val: 1, SkipTrue: 1}},
		{opJgeK, bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: 1, SkipTrue: 1}},
		{opJa, bpf.Jump{Skip: 1}},
		{opRetK, bpf.RetConstant{Val: 1}},
	} {
		raw, err := tc.ins.Assemble()
		if err != nil {
			t.Fatal(err)
		}
		if raw.Op != tc.op {
			t.Errorf("%#v assembles to opcode %#x, the filter uses %#x", tc.ins, raw.Op, tc.op)
		}
	}
}

// filterCase is a set of watched TGIDs, a datagram, and whether the program
// compiled for the set must keep it.
type filterCase struct {
	name  string
	set   []uint32
	frame []byte
	pass  bool
}

// capturedFilterCases are built on datagrams captured from the kernel (see
// TestCaptureFrames) and on variants of them.
func capturedFilterCases(t testing.TB) []filterCase {
	t.Helper()
	exit3 := readFrame(t, "exit3.bin")     // leader exit, pid == tgid
	thread := readFrame(t, "thread.bin")   // non-leader thread exit, pid != tgid
	sigkill := readFrame(t, "sigkill.bin") // leader exit, another process
	ack := readFrame(t, "ack.bin")
	fork := readFrame(t, "fork.bin")
	leader, _ := DecodeFrame(exit3)
	th, _ := DecodeFrame(thread)
	killed, _ := DecodeFrame(sigkill)
	if leader.TGID == th.TGID || leader.TGID == killed.TGID || th.PID == th.TGID {
		t.Fatalf("captured frames do not have the expected pids: %+v %+v %+v", leader, th, killed)
	}
	otherIdx := slices.Clone(exit3)
	binary.NativeEndian.PutUint32(otherIdx[offCnIdx:], 2)
	otherVal := slices.Clone(exit3)
	binary.NativeEndian.PutUint32(otherVal[offCnVal:], 2)
	all := []uint32{leader.TGID, th.TGID, killed.TGID}
	return []filterCase{
		{"watched leader exit", []uint32{leader.TGID}, exit3, true},
		{"watched thread exit", []uint32{th.TGID}, thread, true},
		{"watched among others", all, sigkill, true},
		{"unwatched leader exit", []uint32{th.TGID, killed.TGID}, exit3, false},
		{"unwatched thread exit", []uint32{leader.TGID}, thread, false},
		{"thread id is not a process id", []uint32{th.PID}, thread, false},
		{"empty set: exit dropped", nil, exit3, false},
		{"empty set: thread dropped", nil, thread, false},
		{"empty set: ack passes", nil, ack, true},
		{"empty set: fork event passes", nil, fork, true},
		{"ack passes", []uint32{leader.TGID}, ack, true},
		{"fork event passes", []uint32{leader.TGID}, fork, true},
		{"other connector idx passes", nil, otherIdx, true},
		{"other connector val passes", nil, otherVal, true},
		{"short datagram passes", nil, exit3[:FrameLen-1], true},
		{"header only passes", nil, exit3[:nlmsgHdrLen], true},
		{"longer datagram judged", []uint32{th.TGID}, append(slices.Clone(exit3), make([]byte, 40)...), false},
		{"large set: watched", largeSet(1000, leader.TGID), exit3, true},
		{"large set: unwatched", largeSet(1000, th.TGID), exit3, false},
	}
}

// runCapturedFilterCases compiles the program of each captured-frame case
// and checks what run (a filter engine) makes of the frame.
func runCapturedFilterCases(t *testing.T, run func(t testing.TB, prog []bpf.RawInstruction, frame []byte) bool) {
	for _, tc := range capturedFilterCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			prog, ok := compileExitFilter(tc.set)
			if !ok {
				t.Fatal("not compiled")
			}
			if got := run(t, prog, tc.frame); got != tc.pass {
				t.Errorf("passes = %v, want %v", got, tc.pass)
			}
		})
	}
}

// TestFilterCaptured runs the compiled program in the bpf package's VM.
func TestFilterCaptured(t *testing.T) {
	runCapturedFilterCases(t, func(t testing.TB, prog []bpf.RawInstruction, frame []byte) bool {
		return passes(t, filterVM(t, prog), frame)
	})
	t.Run("empty datagram passes", func(t *testing.T) {
		prog, _ := compileExitFilter(nil)
		if n, err := filterVM(t, prog).Run(nil); err != nil || n == 0 {
			t.Errorf("Run = %d, %v; want the datagram kept", n, err)
		}
	})
}

// largeSet is n TGIDs spread over the pid range, sorted, with gaps between
// them, including values whose byte order differs from their numeric order;
// with extra, that one replaces the middle value.
func largeSet(n int, extra ...uint32) []uint32 {
	set := make([]uint32, n)
	for i := range set {
		set[i] = uint32(300 + 4001*i) // 4001 is odd: low bytes vary
	}
	for _, v := range extra {
		set[n/2] = v
		slices.Sort(set)
	}
	return set
}

// TestFilterLarge: 1000 TGIDs, in shuffled order; hits and misses at both
// ends, in the middle, and next to every member.
func TestFilterLarge(t *testing.T) {
	exit := readFrame(t, "sigkill.bin")
	thread := readFrame(t, "thread.bin")
	set := largeSet(1000)
	shuffled := slices.Clone(set)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	prog, ok := compileExitFilter(shuffled)
	if !ok {
		t.Fatal("1000 TGIDs not compiled")
	}
	t.Logf("1000 TGIDs: %d instructions", len(prog))
	vm := filterVM(t, prog)
	check := func(tgid uint32, want bool) {
		t.Helper()
		if got := passes(t, vm, withTGID(exit, tgid, true)); got != want {
			t.Errorf("leader exit of %d: passes = %v, want %v", tgid, got, want)
		}
		if got := passes(t, vm, withTGID(thread, tgid, false)); got != want {
			t.Errorf("thread exit of %d: passes = %v, want %v", tgid, got, want)
		}
	}
	first, mid, last := set[0], set[len(set)/2], set[len(set)-1]
	for _, tc := range []struct {
		name string
		tgid uint32
		pass bool
	}{
		{"first", first, true},
		{"below first", first - 1, false},
		{"zero", 0, false},
		{"second", set[1], true},
		{"middle", mid, true},
		{"before middle", mid - 1, false},
		{"after middle", mid + 1, false},
		{"last", last, true},
		{"above last", last + 1, false},
		{"max", math.MaxUint32, false},
		{"byte-swapped first", loaded(first), false},
	} {
		t.Run(tc.name, func(t *testing.T) { check(tc.tgid, tc.pass) })
	}
	t.Run("every member and its neighbours", func(t *testing.T) {
		for _, v := range set {
			check(v, true)
			check(v-1, false)
			check(v+1, false)
		}
	})
	// The ACK and fork frames still pass a large set.
	for _, name := range []string{"ack.bin", "fork.bin"} {
		if !passes(t, vm, readFrame(t, name)) {
			t.Errorf("%s dropped", name)
		}
	}
}

// TestFilterRandom compares the program with a map lookup on random sets,
// sizes, and TGIDs (members, neighbours, anything).
func TestFilterRandom(t *testing.T) {
	exit := readFrame(t, "exit3.bin")
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{1, 2, 3, 4, 5, 7, 8, 16, 17, 63, 64, 65, 127, 128, 255, 256, 257, 1000, 2000, 3000} {
		set := make([]uint32, n)
		member := map[uint32]bool{}
		for i := range set {
			// Small values collide often: duplicates must be harmless.
			set[i] = uint32(rng.IntN(4 * n))
			if n > 100 && i%2 == 0 {
				set[i] = rng.Uint32()
			}
			member[set[i]] = true
		}
		prog, ok := compileExitFilter(set)
		if !ok {
			t.Fatalf("%d TGIDs not compiled", n)
		}
		vm := filterVM(t, prog)
		probe := func(v uint32) {
			if got := passes(t, vm, withTGID(exit, v, true)); got != member[v] {
				t.Fatalf("set of %d: tgid %d: passes = %v, want %v", n, v, got, member[v])
			}
		}
		for _, v := range set {
			probe(v)
			probe(v - 1)
			probe(v + 1)
		}
		for range 200 {
			probe(rng.Uint32())
			probe(uint32(rng.IntN(4 * n)))
		}
	}
}

// TestFilterCompileTooBig: a set too large for one program is refused (the caller
// then attaches none), never cut short; the largest accepted one is whole.
func TestFilterCompileTooBig(t *testing.T) {
	exit := readFrame(t, "exit3.bin")
	if _, ok := compileExitFilter(largeSet(filterMaxInsns + 1)); ok {
		t.Errorf("%d TGIDs compiled", filterMaxInsns+1)
	}
	lo := largestFit()
	t.Logf("largest set that fits: %d TGIDs", lo)
	if lo < 3000 {
		t.Errorf("only %d TGIDs fit in one program", lo)
	}
	set := largeSet(lo)
	prog, ok := compileExitFilter(set)
	if !ok {
		t.Fatal("largest set not compiled")
	}
	vm := filterVM(t, prog)
	for _, v := range []uint32{set[0], set[lo/3], set[lo-1]} {
		if !passes(t, vm, withTGID(exit, v, true)) {
			t.Errorf("tgid %d dropped", v)
		}
		if passes(t, vm, withTGID(exit, v+1, true)) {
			t.Errorf("tgid %d passed", v+1)
		}
	}
	if _, ok := compileExitFilter(largeSet(lo + 1)); ok {
		t.Errorf("%d TGIDs compiled", lo+1)
	}
}

// largestFit is the size of the largest largeSet that compileExitFilter
// takes, found by bisection.
func largestFit() int {
	lo, hi := 1, filterMaxInsns+1 // fits, does not fit
	for hi-lo > 1 {
		m := (lo + hi) / 2
		if _, ok := compileExitFilter(largeSet(m)); ok {
			lo = m
		} else {
			hi = m
		}
	}
	return lo
}

// TestFilterInput: the caller's slice is left as it was.
func TestFilterInput(t *testing.T) {
	in := []uint32{5, 3, 9, 3}
	if _, ok := compileExitFilter(in); !ok {
		t.Fatal("not compiled")
	}
	if !slices.Equal(in, []uint32{5, 3, 9, 3}) {
		t.Errorf("input changed to %v", in)
	}
}

func BenchmarkCompileExitFilter(b *testing.B) {
	set := largeSet(1000)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := compileExitFilter(set); !ok {
			b.Fatal("not compiled")
		}
	}
}

// TestFilterParent: with a parent, an exit event passes by its parent's
// TGID whatever its own; other exits still need their TGID in the set.
func TestFilterParent(t *testing.T) {
	frame := readFrame(t, "exit3.bin")
	withParent := func(p uint32) []byte {
		f := slices.Clone(frame)
		binary.NativeEndian.PutUint32(f[offExitPT:], p)
		return f
	}
	tgid := binary.NativeEndian.Uint32(frame[offExitTG:])
	const us, other = 4242, 4343
	cases := []struct {
		name   string
		set    []uint32
		parent uint32
		frame  []byte
		pass   bool
	}{
		{"child of the parent, empty set", nil, us, withParent(us), true},
		{"child of another, empty set", nil, us, withParent(other), false},
		{"child of another, in the set", []uint32{tgid}, us, withParent(other), true},
		{"no parent given: by the set only", nil, 0, withParent(us), false},
		{"child of the parent, large set without it", largeSet(1000), us, withParent(us), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			prog, ok := compileExitFilterFor(tc.set, tc.parent)
			if !ok {
				t.Fatal("not compiled")
			}
			if got := passes(t, filterVM(t, prog), tc.frame); got != tc.pass {
				t.Errorf("passes = %v, want %v", got, tc.pass)
			}
		})
	}
}
