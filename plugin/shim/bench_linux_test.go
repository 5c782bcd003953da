package shim

import (
	"context"
	"os"
	"sort"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/plugin"
)

// BenchmarkKillToSlotZero measures kill -9 of a /bin/sleep service until the
// exit fast path has stored 0 in its slot (timestamped in the fast-path test
// hook, so the benchmark does not compete for a CPU by spinning). Informal:
// the project's benchmark (hbbench) is the reference. Compare with
// BenchmarkRawPidfd, run alongside.
func BenchmarkKillToSlotZero(b *testing.B) {
	for _, det := range []connector.Detector{connector.DetectPidfd, connector.DetectAuto} {
		b.Run(det.String(), func(b *testing.B) {
			var cleared atomic.Int64
			opts := Options{ShmName: "t", ShmDir: b.TempDir(), Slots: 4, Detector: det}
			opts.onCleared = func(idx, pid int, ok bool) { cleared.Store(time.Now().UnixNano()) }
			s, err := New(opts)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			spec := plugin.Spec{Name: "sleeper", Command: []string{"/bin/sleep", "1000"}, UID: -1, GID: -1,
				Env: []string{"PATH=/usr/bin:/bin"}, Stdout: "null", Stderr: "null"}
			lat := make([]time.Duration, 0, b.N)
			for range b.N {
				res, err := s.Spawn(ctx, spec)
				if err != nil {
					b.Fatal(err)
				}
				time.Sleep(2 * time.Millisecond) // let it exec
				s.mu.Lock()
				inc := s.svcs["sleeper"].cur
				s.mu.Unlock()
				t0 := time.Now()
				unix.Kill(res.PID, unix.SIGKILL)
				<-inc.done
				lat = append(lat, time.Duration(cleared.Load()-t0.UnixNano()))
			}
			reportLatency(b, lat)
		})
	}
}

// BenchmarkRawPidfd: kill -9 of /bin/sleep until a blocking poll on its
// pidfd returns, with no shim: the floor for BenchmarkKillToSlotZero.
func BenchmarkRawPidfd(b *testing.B) {
	lat := make([]time.Duration, 0, b.N)
	for range b.N {
		pidfd := -1
		beginSpawn()
		pid, err := syscall.ForkExec("/bin/sleep", []string{"sleep", "1000"}, &syscall.ProcAttr{Sys: &syscall.SysProcAttr{PidFD: &pidfd}})
		endSpawn()
		if err != nil {
			b.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
		t0 := time.Now()
		unix.Kill(pid, unix.SIGKILL)
		unix.Poll([]unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}, -1)
		lat = append(lat, time.Since(t0))
		var ci childInfo
		waitid(unix.P_PIDFD, pidfd, &ci, unix.WEXITED)
		unix.Close(pidfd)
	}
	reportLatency(b, lat)
}

func reportLatency(b *testing.B, lat []time.Duration) {
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkSpawnProc: one spawnProc of /bin/sleep (until the spawner
// returns), per spawner; the kill and reap are not timed.
func BenchmarkSpawnProc(b *testing.B) { benchSpawnProc(b) }

// BenchmarkSpawnProcManyFds is BenchmarkSpawnProc with 7000 descriptors
// open in the process, as the plugin has with 1000 services (a pidfd, two
// log files and their directory, a cgroup and its cgroup.events each): a
// child that copied the descriptor table and closed it again would pay for
// every one of them at each spawn.
func BenchmarkSpawnProcManyFds(b *testing.B) {
	var open []*os.File
	defer func() {
		for _, f := range open {
			f.Close()
		}
	}()
	for range 7000 {
		f, err := os.Open(os.DevNull)
		if err != nil {
			b.Skipf("cannot open 7000 descriptors: %v", err)
		}
		open = append(open, f)
	}
	benchSpawnProc(b)
}

func benchSpawnProc(b *testing.B) {
	null, err := os.Open(os.DevNull)
	if err != nil {
		b.Fatal(err)
	}
	defer null.Close()
	devnull := int(null.Fd())
	for name, spawn := range map[string]func(*procAttr) (int, int, error){
		"forkexec": spawnForkExec,
		"clone3": func(a *procAttr) (int, int, error) {
			pid, pidfd, err, ok := spawnClone3(a)
			if !ok {
				b.Skip("clone3 is not usable here")
			}
			return pid, pidfd, err
		},
	} {
		b.Run(name, func(b *testing.B) {
			a := &procAttr{path: "/bin/sleep", argv: []string{"sleep", "1000"},
				env: []string{"PATH=/usr/bin:/bin"}, files: [3]int{devnull, devnull, devnull}}
			for range b.N {
				beginSpawn()
				pid, pidfd, err := spawn(a)
				endSpawn()
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				unix.Kill(pid, unix.SIGKILL)
				var ci childInfo
				waitid(unix.P_PIDFD, pidfd, &ci, unix.WEXITED)
				unix.Close(pidfd)
				b.StartTimer()
			}
		})
	}
}
