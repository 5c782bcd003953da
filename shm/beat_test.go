package shm

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestBeatAreaSealed: a service cannot resize its beat area (a shrunk
// mapping would fault in the plugin), and the plugin's mapping sees its
// stores.
func TestBeatAreaSealed(t *testing.T) {
	a, err := NewBeatArea("t")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for _, size := range []int64{0, BeatSize * 2} {
		if err := unix.Ftruncate(a.FD(), size); !errors.Is(err, unix.EPERM) {
			t.Errorf("ftruncate(%d) = %v, want EPERM (sealed)", size, err)
		}
	}
	if _, err := unix.FcntlInt(uintptr(a.FD()), unix.F_ADD_SEALS, unix.F_SEAL_WRITE); !errors.Is(err, unix.EPERM) {
		t.Errorf("F_ADD_SEALS after F_SEAL_SEAL = %v, want EPERM", err)
	}
	rw, err := unix.Mmap(a.FD(), 0, BeatSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(rw)
	if a.Count() != 0 {
		t.Fatalf("new area counts %d", a.Count())
	}
	rw[0] = 7
	if a.Count() != 7 {
		t.Errorf("Count = %d after a store of 7", a.Count())
	}
}

// TestBeatGo runs the Go client in a child process: with HB_BEAT_FD it
// counts every beat, without it Beat does nothing.
func TestBeatGo(t *testing.T) {
	if n := os.Getenv("HB_TEST_BEATS"); n != "" {
		beats, _ := strconv.Atoi(n)
		for range beats {
			Beat()
		}
		if err := BeatInit(); err != nil {
			os.Stdout.WriteString("error: " + err.Error() + "\n")
			os.Exit(3)
		}
		os.Stdout.WriteString("beating=" + strconv.FormatBool(Beating()) + "\n")
		os.Exit(0)
	}
	run := func(t *testing.T, withFD bool) (string, uint64) {
		a, err := NewBeatArea("go")
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		cmd := exec.Command(os.Args[0], "-test.run=^TestBeatGo$")
		cmd.Env = append(os.Environ(), "HB_TEST_BEATS=1000")
		if withFD {
			cmd.ExtraFiles = []*os.File{beatFile(t, a)}
			cmd.Env = append(cmd.Env, BeatFDEnv+"=3")
		}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("child: %v: %s", err, out)
		}
		return strings.TrimSpace(string(out)), a.Count()
	}
	if out, n := run(t, true); out != "beating=true" || n != 1000 {
		t.Errorf("with %s: child said %q, counter %d; want beating=true, 1000", BeatFDEnv, out, n)
	}
	if out, n := run(t, false); out != "beating=false" || n != 0 {
		t.Errorf("without %s: child said %q, counter %d; want beating=false, 0", BeatFDEnv, out, n)
	}
}

// TestBeatC: the C client (hb_beat in hb_shm.h) against the same area.
func TestBeatC(t *testing.T) {
	bin := buildC(t, "testdata/beatcheck.c")
	for _, tt := range []struct {
		env    string
		withFD bool
		out    string
		count  uint64
	}{
		{BeatFDEnv + "=3", true, "init=1", 1000},
		{"", false, "init=0", 0},
		{BeatFDEnv + "=x", false, "init=-22", 0},
	} {
		a, err := NewBeatArea("c")
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "1000")
		cmd.Env = []string{tt.env}
		if tt.withFD {
			cmd.ExtraFiles = []*os.File{beatFile(t, a)}
		}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v", bin, err)
		}
		if got := strings.TrimSpace(string(out)); got != tt.out || a.Count() != tt.count {
			t.Errorf("env %q: printed %q, counter %d; want %q, %d", tt.env, got, a.Count(), tt.out, tt.count)
		}
		a.Close()
	}
}

// BenchmarkBeat is the cost of one Go beat (docs/watchdog.md).
func BenchmarkBeat(b *testing.B) {
	a, err := NewBeatArea("bench")
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	mem, err := unix.Mmap(a.FD(), 0, BeatSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Munmap(mem)
	old := beatWord.Swap((*uint64)(unsafe.Pointer(&mem[0])))
	defer beatWord.Store(old)
	for b.Loop() {
		Beat()
	}
}

// BenchmarkBeatC is the cost of one C beat (hb_beat), timed inside the C
// program over 10^8 beats.
func BenchmarkBeatC(b *testing.B) {
	bin := buildC(b, "testdata/beatcheck.c")
	for b.Loop() {
		a, err := NewBeatArea("bench")
		if err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command(bin, "100000000", "time")
		cmd.Env = []string{BeatFDEnv + "=3"}
		cmd.ExtraFiles = []*os.File{beatFile(b, a)}
		out, err := cmd.Output()
		a.Close()
		if err != nil {
			b.Fatal(err)
		}
		v, ok := strings.CutPrefix(strings.Fields(string(out))[0], "ns_per_beat=")
		f, err := strconv.ParseFloat(v, 64)
		if !ok || err != nil {
			b.Fatalf("beatcheck printed %q", out)
		}
		b.ReportMetric(f, "ns/beat")
	}
}

// BenchmarkNotifyDatagram is what a beat costs the sd_notify way, for
// comparison with BenchmarkBeat: one "WATCHDOG=1" datagram on a connected
// unix socket (the receiver drains it on another goroutine).
func BenchmarkNotifyDatagram(b *testing.B) {
	path := filepath.Join(b.TempDir(), "notify")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		buf := make([]byte, 64)
		for {
			if _, err := l.Read(buf); err != nil {
				return
			}
		}
	}()
	c, err := net.Dial("unixgram", path)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	msg := []byte("WATCHDOG=1")
	for b.Loop() {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// beatFile is a's descriptor for a child's ExtraFiles: a duplicate owned by
// the returned file and closed with it at the end of the test. Wrapping a's
// own descriptor would close it twice (a.Close, then the file's finalizer,
// which then closes whatever descriptor has that number by then).
func beatFile(t testing.TB, a *BeatArea) *os.File {
	t.Helper()
	fd, err := unix.FcntlInt(uintptr(a.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "beat")
	t.Cleanup(func() { f.Close() })
	return f
}
