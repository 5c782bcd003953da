package shm

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestWriterAliveKill: a writer process killed with SIGKILL leaves
// writer_alive with FUTEX_OWNER_DIED set, by the kernel alone (the writer
// runs no code after the signal); a reader needs one load to see it.
func TestWriterAliveKill(t *testing.T) {
	if dir := os.Getenv("HB_TEST_ALIVE_DIR"); dir != "" {
		w, err := Create("hb", Options{Slots: 4, Dir: dir})
		if err != nil {
			os.Stdout.WriteString("error: " + err.Error() + "\n")
			os.Exit(3)
		}
		if err := w.MarkAlive(); err != nil {
			os.Stdout.WriteString("error: " + err.Error() + "\n")
			os.Exit(3)
		}
		os.Stdout.WriteString("ready\n")
		// A line on stdin: the table's name is removed and published
		// again (a second file, a second entry in the robust list).
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err == nil {
			os.Remove(dir + "/hb")
			if _, err := w.Check(); err != nil {
				os.Stdout.WriteString("error: " + err.Error() + "\n")
				os.Exit(3)
			}
			os.Stdout.WriteString("relinked\n")
		}
		select {} // until killed
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestWriterAliveKill$")
	cmd.Env = append(os.Environ(), "HB_TEST_ALIVE_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	rd := bufio.NewReader(out)
	if line, _ := rd.ReadString('\n'); strings.TrimSpace(line) != "ready" {
		t.Fatalf("writer process said %q", line)
	}
	old, err := OpenPath(dir + "/hb") // the first file
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	in.Write([]byte("relink\n"))
	if line, _ := rd.ReadString('\n'); strings.TrimSpace(line) != "relinked" {
		t.Fatalf("writer process said %q", line)
	}
	r, err := OpenPath(dir + "/hb") // the second file
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	h := r.Header()
	if old.Header().WriterAlive != h.WriterAlive || !old.WriterAlive() {
		t.Fatalf("writer_alive %#x in the first file, %#x in the second", old.Header().WriterAlive, h.WriterAlive)
	}
	if !r.WriterAlive() {
		t.Fatalf("writer_alive %#x while the writer lives", h.WriterAlive)
	}
	if err := syscall.Kill(cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if r.WriterAlive() {
		t.Fatalf("writer_alive %#x after the writer was killed", r.Header().WriterAlive)
	}
	// handle_futex_death stores FUTEX_OWNER_DIED (and FUTEX_WAITERS, which
	// nobody sets here) in place of the TID.
	for k, tab := range []*Table{old, r} {
		if v := tab.Header().WriterAlive; v != WriterOwnerDied {
			t.Errorf("file %d: writer_alive %#x after SIGKILL (it was %#x), want %#x", k+1, v, h.WriterAlive, WriterOwnerDied)
		}
	}

	// The next writer adopts the table: the word says "dead" until it has
	// validated the slots and marks itself alive.
	w, err := Create("hb", Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if r.WriterAlive() {
		t.Error("writer_alive says alive before the new writer called MarkAlive")
	}
	if err := w.MarkAlive(); err != nil {
		t.Fatal(err)
	}
	if !r.WriterAlive() {
		t.Errorf("writer_alive %#x after MarkAlive", r.Header().WriterAlive)
	}
	w.Close(true)
	if v := r.Header().WriterAlive; v != 0 {
		t.Errorf("writer_alive %#x after a clean close, want 0", v)
	}
}

// TestWriterAliveClose: a close that is not a clean shutdown marks the
// writer dead itself; a clean one stores 0.
func TestWriterAliveClose(t *testing.T) {
	dir := t.TempDir()
	w, err := Create("hb", Options{Slots: 2, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	r := openReader(t, w)
	if r.WriterAlive() {
		t.Error("alive before MarkAlive")
	}
	if err := w.MarkAlive(); err != nil {
		t.Fatal(err)
	}
	if !r.WriterAlive() || !w.WriterAlive() {
		t.Fatal("not alive after MarkAlive")
	}
	w.Close(false)
	if v := r.Header().WriterAlive; v&WriterOwnerDied == 0 {
		t.Errorf("writer_alive %#x after Close(false), want FUTEX_OWNER_DIED", v)
	}
}

// TestStableSlots: a freed name allocated again gets its old index, even
// after other names came and went; every assignment and release moves
// layout_seq, nothing else does.
func TestStableSlots(t *testing.T) {
	w := newWriter(t, 6)
	r := openReader(t, w)
	names := []string{"a", "b", "c"}
	idx := map[string]int{}
	for _, n := range names {
		idx[n] = mustAlloc(t, w, n)
	}
	seq := r.LayoutSeq()
	if seq != 3 {
		t.Errorf("layout_seq %d after three allocations, want 3", seq)
	}
	w.Spawned(idx["a"], 100, 1, 1, StateRunning, 0)
	w.ClearPID(idx["a"], 100)
	if r.LayoutChanged(&seq) {
		t.Error("a spawn and an exit changed layout_seq")
	}
	// A full stop frees every slot; a start allocates in another order.
	for _, n := range names {
		if err := w.Free(idx[n]); err != nil {
			t.Fatal(err)
		}
	}
	if !r.LayoutChanged(&seq) || seq != 6 {
		t.Errorf("layout_seq %d after three releases, want 6", seq)
	}
	for _, n := range []string{"c", "new", "a", "b"} {
		i := mustAlloc(t, w, n)
		if old, ok := idx[n]; ok && i != old {
			t.Errorf("%s: slot %d, it had %d", n, i, old)
		}
		if n == "new" && i < 3 {
			t.Errorf("new name got the released slot %d while never used ones are left", i)
		}
	}
	if !r.LayoutChanged(&seq) || seq != 10 {
		t.Errorf("layout_seq %d, want 10", seq)
	}
}

// TestWaits: a read-only reader blocked in Wait, WaitAny and WaitChanges is
// woken by the writer's store; a wait whose value already differs returns
// at once; a done context ends it.
func TestWaits(t *testing.T) {
	w := newWriter(t, 4)
	r := openReader(t, w)
	a, b := mustAlloc(t, w, "a"), mustAlloc(t, w, "b")
	w.Spawned(a, 4242, 1, 1, StateRunning, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	if v, err := r.Wait(ctx, a, 0); err != nil || v != 4242 {
		t.Errorf("Wait(seen 0) = %d, %v; want 4242 at once", v, err)
	}
	changes := r.Changes()
	type res struct {
		v   uint32
		err error
	}
	one, many, all := make(chan res, 1), make(chan res, 1), make(chan res, 1)
	go func() { v, err := r.Wait(ctx, a, 4242); one <- res{v, err} }()
	go func() {
		k, err := r.WaitAny(ctx, []Watch{{Slot: b, PID: 0}, {Slot: a, PID: 4242}})
		many <- res{uint32(k), err}
	}()
	go func() { v, err := r.WaitChanges(ctx, changes); all <- res{v, err} }()
	time.Sleep(50 * time.Millisecond) // let them sleep in the kernel (the test passes either way)
	select {
	case x := <-one:
		t.Fatalf("Wait returned %+v before any change", x)
	default:
	}
	if !w.ClearPID(a, 4242) {
		t.Fatal("ClearPID")
	}
	if x := <-one; x.err != nil || x.v != 0 {
		t.Errorf("Wait = %+v, want 0", x)
	}
	if x := <-many; x.err != nil || x.v != 1 {
		t.Errorf("WaitAny = %+v, want position 1", x)
	}
	if x := <-all; x.err != nil || x.v == changes {
		t.Errorf("WaitChanges = %+v, want a value other than %d", x, changes)
	}

	short, cancel2 := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel2()
	if _, err := r.Wait(short, b, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait past its deadline = %v, want DeadlineExceeded", err)
	}
	if _, err := r.Wait(ctx, 99, 0); !errors.Is(err, ErrIndex) {
		t.Errorf("Wait(99) = %v, want ErrIndex", err)
	}
	if _, err := r.WaitAny(ctx, make([]Watch, 129)); err == nil {
		t.Error("WaitAny with 129 slots: no error")
	}

	// The writer goes away; a waiter woken by someone who saw it (hbd:
	// Table.Wake) learns that nobody will store the word.
	w.Spawned(b, 77, 1, 1, StateRunning, 0)
	if err := w.MarkAlive(); err != nil {
		t.Fatal(err)
	}
	dead := make(chan error, 1)
	go func() { _, err := r.Wait(ctx, b, 77); dead <- err }()
	time.Sleep(50 * time.Millisecond)
	w.Close(false)
	for {
		r.Wake()
		select {
		case err := <-dead:
			if !errors.Is(err, ErrWriterDead) {
				t.Errorf("Wait woken after the writer closed: %v, want ErrWriterDead", err)
			}
			return
		case <-time.After(10 * time.Millisecond): // the waiter may not sleep yet
		}
	}
}
