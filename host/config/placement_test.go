package config

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/hbshim/hb/plugin/cgroupfs"
)

func TestPlacementKeys(t *testing.T) {
	cfg := mustParse(t, "/etc/hb/hb.toml", `[service.rx]
command = "/bin/true"
cpus    = "1, 0-1,3"
nice    = -5
sched   = "fifo:10"
rlimits = { nofile = 65536, memlock = "unlimited", core = "unlimited", nproc = 4096 }
umask   = "027"
`)
	s := cfg.Services["rx"]
	if cpus, err := ParseCPUs(s.CPUs); err != nil || !slices.Equal(cpus, []int{0, 1, 3}) {
		t.Errorf("cpus %v, %v", cpus, err)
	}
	if !s.SetNice || s.Nice != -5 || s.Sched != "fifo:10" || s.Umask != "027" {
		t.Errorf("service %+v", s)
	}
	want := []RlimitSetting{{"core", RlimitUnlimited}, {"memlock", RlimitUnlimited}, {"nofile", 65536}, {"nproc", 4096}}
	if !slices.Equal(s.Rlimits, want) {
		t.Errorf("rlimits %v; want %v", s.Rlimits, want)
	}
	if p, prio, err := ParseSched("rr:5"); err != nil || p != schedRR || prio != 5 {
		t.Errorf("rr:5 = %d %d %v", p, prio, err)
	}
}

// TestCheckCPUsOnline: --check names a CPU that is not online, with the
// file and line of cpus.
func TestCheckCPUsOnline(t *testing.T) {
	cfg := mustParse(t, "/etc/hb/hb.toml", "[service.rx]\ncommand = \"/bin/true\"\ncpus = \"0,4000\"\n")
	err := cfg.Check()
	var es Errors
	if !errors.As(err, &es) || len(es) != 1 || es[0].Line != 3 || es[0].Key != "cpus" ||
		!strings.Contains(es[0].Error(), "CPU 4000 is not online here") {
		t.Fatalf("Check: %v", err)
	}
}

// TestCheckControllers: memory_max, pids_max and cpu_weight need their
// controller offered to hb's cgroups; --check says which is missing and
// why, at the key's line. On the development machine (hybrid, only
// hugetlb in v2) all three are errors.
func TestCheckControllers(t *testing.T) {
	cfg := mustParse(t, "/etc/hb/hb.toml", `[service.rx]
command    = "/bin/true"
memory_max = "64MiB"
pids_max   = 100
cpu_weight = 50
`)
	s := cfg.Services["rx"]
	if s.MemoryMax != 64<<20 || s.PidsMax != 100 || s.CPUWeight != 50 {
		t.Fatalf("service %+v", s)
	}
	err := cfg.Check()
	dir, _, werr := cgroupfs.Where("")
	have, _ := cgroupfs.Controllers(dir)
	for i, k := range []struct{ key, ctrl string }{{"memory_max", "memory"}, {"pids_max", "pids"}, {"cpu_weight", "cpu"}} {
		want := ""
		switch {
		case os.Geteuid() != 0:
			want = "which hbd makes only as root"
		case werr != nil:
			want = "needs a cgroup v2 hierarchy"
		case !slices.Contains(have, k.ctrl):
			want = "the " + k.ctrl + " controller is not offered to hb's cgroups"
		}
		got := ""
		var es Errors
		if errors.As(err, &es) {
			for _, e := range es {
				if e.Key == k.key && e.Line == 3+i {
					got = e.Error()
				}
			}
		}
		if want == "" && got != "" || want != "" && !strings.Contains(got, want) {
			t.Errorf("%s: --check said %q; want %q", k.key, got, want)
		}
	}
}

// TestCheckCgroupRoot: as root, --check names a cgroup_root that is not a
// cgroup, at its line.
func TestCheckCgroupRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("cgroup_root is only used as root")
	}
	if _, _, err := cgroupfs.Where(""); err != nil {
		t.Skipf("no cgroup v2 hierarchy: %v", err)
	}
	cfg := mustParse(t, "/etc/hb/hb.toml", "[hbd]\ncgroup_root = \"/hb-no-such-cgroup\"\n")
	err := cfg.Check()
	var es Errors
	if !errors.As(err, &es) || len(es) != 1 || es[0].Line != 2 || !strings.Contains(es[0].Error(), "hb-no-such-cgroup is not a cgroup") {
		t.Fatalf("Check: %v", err)
	}
}
