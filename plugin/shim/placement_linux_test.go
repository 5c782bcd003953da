package shim

import (
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/plugin"
)

// TestPlacement: with either spawner, the child starts with the Spec's CPU
// affinity, nice value, scheduling policy, resource limits and umask, as
// it reads them itself (/proc/self/status, /proc/self/stat,
// /proc/self/limits of the exec'd program).
func TestPlacement(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: raising limits and a real-time policy")
	}
	cpu := runtime.NumCPU() - 1
	// "unlimited" locked memory needs CAP_SYS_RESOURCE when the hard limit
	// is lower (some containers drop it): then a lower limit is set.
	var ml unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &ml); err != nil {
		t.Fatal(err)
	}
	memlock, memlockText := uint64(unix.RLIM_INFINITY), "unlimited"
	if ml.Max != unix.RLIM_INFINITY && !hasCap(unix.CAP_SYS_RESOURCE) {
		memlock, memlockText = 1<<20, "1048576"
		t.Logf("no CAP_SYS_RESOURCE here: memlock %s, not unlimited", memlockText)
	}
	out := filepath.Join(t.TempDir(), "probe")
	spec := plugin.Spec{
		CPUs: []int{cpu}, SetNice: true, Nice: 7, SetSched: true, SchedPolicy: unix.SCHED_RR, SchedPriority: 5,
		Rlimits: []plugin.Rlimit{
			{Resource: unix.RLIMIT_NOFILE, Cur: 4242, Max: 4343},
			{Resource: unix.RLIMIT_MEMLOCK, Cur: memlock, Max: memlock},
			{Resource: unix.RLIMIT_CORE, Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY},
			{Resource: unix.RLIMIT_NPROC, Cur: 4096, Max: 4096},
		},
		SetUmask: true, Umask: 0o027,
	}
	for name, spawn := range spawners(t) {
		t.Run(name, func(t *testing.T) {
			os.Remove(out)
			st := spawnWait(t, spawn, &procAttr{
				path: "/bin/sh", argv: []string{"sh", "-c", "exec cat /proc/self/status /proc/self/stat /proc/self/limits > " + out},
				files: [3]int{2, 2, 2}, place: specPlacement(spec),
			})
			if st != 0 {
				t.Fatalf("status %d", st)
			}
			probe := readFile(t, out)
			for _, want := range []string{
				`(?m)^Cpus_allowed_list:\s+` + regexp.QuoteMeta(itoa(cpu)) + `$`,
				`(?m)^Umask:\s+0027$`,
				`(?m)^Max open files\s+4242\s+4343\s`,
				`(?m)^Max locked memory\s+` + memlockText + `\s+` + memlockText + `\s`,
				`(?m)^Max core file size\s+unlimited\s+unlimited\s`,
				`(?m)^Max processes\s+4096\s+4096\s`,
			} {
				if !regexp.MustCompile(want).MatchString(probe) {
					t.Errorf("the child's view lacks %s:\n%s", want, probe)
				}
			}
			fields := statFields(t, probe)
			if fields[16] != "7" {
				t.Errorf("nice %s; want 7", fields[16])
			}
			if fields[38] != itoa(unix.SCHED_RR) || fields[37] != "5" {
				t.Errorf("policy %s rt priority %s; want %d and 5", fields[38], fields[37], unix.SCHED_RR)
			}
		})
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// hasCap reports whether the process has capability c in its effective set.
func hasCap(c int) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[c/32].Effective&(1<<(c%32)) != 0
}

// statFields are the fields of the /proc/PID/stat line in probe after the
// command name: fields[0] is field 3 (state).
func statFields(t *testing.T, probe string) []string {
	t.Helper()
	for _, line := range strings.Split(probe, "\n") {
		if i := strings.LastIndex(line, ") "); i > 0 && strings.Contains(line, " (cat) ") {
			return strings.Fields(line[i+2:])
		}
	}
	t.Fatalf("no stat line in:\n%s", probe)
	return nil
}
