package config

import (
	"slices"
	"strings"
	"testing"
)

func TestInstances(t *testing.T) {
	cfg, err := Parse("/etc/hb/hb.toml", []byte(`
[service.pre]
command = "sleep 1"

[service.work]
command        = ["/bin/worker", "--queue", "q{instance}"]
directory      = "/srv/work/{instance}"
environment    = { PORT = "90{instance}" }
instances      = 3
instance_start = 1

[service.post]
command = "sleep 1"
after   = ["work"]
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"pre", "work-1", "work-2", "work-3", "post"}
	if !slices.Equal(cfg.Order, want) {
		t.Fatalf("order %q, want %q", cfg.Order, want)
	}
	if g := cfg.InstanceGroups["work"]; !slices.Equal(g, want[1:4]) {
		t.Errorf("group work = %q", g)
	}
	s := cfg.Services["work-2"]
	if s.InstanceOf != "work" || s.Instance != 2 || !slices.Equal(s.Command, []string{"/bin/worker", "--queue", "q2"}) ||
		s.Directory != "/srv/work/2" || s.Environment["PORT"] != "902" || s.Environment[InstanceVar] != "2" {
		t.Errorf("work-2: %+v", s)
	}
	if got := cfg.Services["post"].After; !slices.Equal(got, want[1:4]) {
		t.Errorf("post after %q, want every instance", got)
	}
	if cfg.Services["work-1"].Equal(cfg.Services["work-2"]) {
		t.Error("two instances are Equal")
	}

	// A changed count leaves the other instances Equal: a reload restarts none.
	cfg2, err := Parse("/etc/hb/hb.toml", []byte("[service.work]\ncommand = \"w {instance}\"\ninstances = 2\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg3, err := Parse("/etc/hb/hb.toml", []byte("[service.work]\ncommand = \"w {instance}\"\ninstances = 3\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg2.Services["work-1"].Equal(cfg3.Services["work-1"]) {
		t.Error("work-1 changed with the instance count")
	}
}

func TestInstancesErrors(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"[service.w]\ncommand = \"x\"\ninstances = 0\n", `hb.toml:3: service "w": key "instances": 0 is out of range 1..4096`},
		{"[service.w]\ncommand = \"x\"\ninstances = \"2\"\n", `hb.toml:3: service "w": key "instances"`},
		{"[service.w]\ncommand = \"x\"\ninstance_start = 2\n", `hb.toml:3: service "w": key "instance_start": instance_start without instances`},
		{"[service.w-1]\ncommand = \"x\"\n[service.w]\ncommand = \"x\"\ninstances = 2\n", `instance "w-1" is also defined at hb.toml:1`},
	} {
		_, err := Parse("hb.toml", []byte(tc.text))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.text, err, tc.want)
		}
	}
}
