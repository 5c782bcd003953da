package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBridgeTables(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"a", "b", ".s6-svscan", "norun"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
		if d != "norun" {
			os.WriteFile(filepath.Join(dir, d, "run"), []byte("#!/bin/sh\n"), 0o755)
		}
	}
	c := mustParse(t, "hb.toml", `
[bridge.runit]
dir = "`+dir+`"

[bridge.s6]
dir = "/run/service"
programs = ["rx"]

[bridge.supervisord]
server_url = "unix:///run/supervisor.sock"
programs = ["pool:w1", "web"]
`)
	got := []string{}
	for _, n := range c.BridgedOrder {
		b := c.Bridged[n]
		got = append(got, n+"="+b.Manager+":"+b.Dir+b.URL+"|"+b.Process)
	}
	want := []string{
		"rx=s6:/run/service/rx|",
		"w1=supervisord:unix:///run/supervisor.sock|pool:w1", "web=supervisord:unix:///run/supervisor.sock|web:web",
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("bridged\n %v\nwant\n %v", got, want)
	}
	// Without programs: the directory is watched, not listed once.
	if len(c.BridgeSources) != 1 || *c.BridgeSources[0] != (BridgeSource{Manager: "runit", Dir: dir, File: "hb.toml", Line: 2}) {
		t.Fatalf("sources %+v", c.BridgeSources)
	}
}

// A [bridge.MANAGER] without programs is a source: every program of the
// manager, found by the plugin. --check says what is in a scan directory
// now and which names the explicit ones win.
func TestBridgeSources(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"web", "rx", "tx", "norun"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
		if d != "norun" {
			os.WriteFile(filepath.Join(dir, d, "run"), []byte("#!/bin/sh\n"), 0o755)
		}
	}
	c := mustParse(t, "hb.toml", `[service.web]
command = ["/bin/true"]

[bridge.s6]
dir = "`+dir+`"

[bridge.runit]
dir = "/etc/service"
programs = ["rx"]

[bridge.supervisord]
server_url = "unix:///run/supervisor.sock"
`)
	var got []string
	for _, s := range c.BridgeSources {
		got = append(got, s.Manager+" "+s.Where())
	}
	if want := "s6 " + dir + ",supervisord unix:///run/supervisor.sock"; strings.Join(got, ",") != want {
		t.Fatalf("sources %q, want %q", got, want)
	}
	if len(c.BridgedOrder) != 1 || c.BridgedOrder[0] != "rx" {
		t.Fatalf("listed %v", c.BridgedOrder)
	}
	notes := strings.Join(c.BridgeNotes(), "\n")
	for _, want := range []string{
		"hb.toml:4: [bridge.s6] watches " + dir + ": 3 service directories there now",
		"[bridge.s6] " + dir + "/web is not bridged: [service.web] (hb.toml:1) has the name and wins",
		`[bridge.s6] ` + dir + `/rx is not bridged: [bridge.runit] lists "rx" (hb.toml:9) and wins`,
		"hb.toml:11: [bridge.supervisord] watches every program of unix:///run/supervisor.sock",
	} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
	}
	if strings.Contains(notes, "tx is not") {
		t.Errorf("notes:\n%s", notes)
	}

	// --check vets the scan directory as the plugin will.
	if os.Geteuid() == 0 {
		os.Chmod(dir, 0o777)
		err := c.Check()
		if err == nil || !strings.Contains(err.Error(), `hb.toml:4: key "bridge.s6.dir": `+dir+": mode 0777 is writable by group or others") {
			t.Errorf("Check of a scan directory anyone can write: %v", err)
		}
	}
}

func TestBridgeErrors(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"[service.rx]\ncommand = [\"/bin/true\"]\n[bridge.s6]\ndir = \"/run/service\"\nprograms = [\"rx\"]\n",
			`hb.toml:5: key "bridge.s6.programs": "rx" is also [service.rx] (hb.toml:1)`},
		{"[bridge.s6]\nprograms = [\"rx\"]\n", `hb.toml:1: key "bridge.s6.dir": missing`},
		{"[bridge.supervisord]\nprograms = [\"rx\"]\n", `hb.toml:1: key "bridge.supervisord.server_url": missing`},
		{"[bridge.supervisord]\nserver_url = \"tcp://x\"\nprograms = [\"rx\"]\n", `hb.toml:2: key "bridge.supervisord.server_url": "tcp://x": want unix:///PATH`},
		{"[bridge.supervisord]\nserver_url = \"unix:///s\"\nprograms = []\n", `hb.toml:3: key "bridge.supervisord.programs": empty`},
		{"[bridge.runit]\ndir = \"/tmp\"\n[bridge.s6]\ndir = \"/tmp\"\n", `hb.toml:3: key "bridge.s6.dir": /tmp is also [bridge.runit]'s dir (hb.toml:1)`},
		{"[bridge.runit]\ndir = \"/x\"\nprograms = [\"a/b\"]\n", `hb.toml:3: key "bridge.runit.programs": "a/b" is not a service directory's name`},
		{"[bridge.runit]\ndir = \"/x\"\nprograms = [1]\n", `hb.toml:3: key "bridge.runit.programs": element 0`},
		{"[bridge.runit]\ndir = \"/x\"\nserver_url = \"unix:///s\"\n", `hb.toml:3: unknown key "bridge.runit.server_url"`},
		{"[bridge.runit]\ndir = \"/x\"\nprograms = [\"a\"]\n[bridge.s6]\ndir = \"/y\"\nprograms = [\"a\"]\n",
			`hb.toml:6: key "bridge.s6.programs": "a" is bridged twice (also from [bridge.runit] at hb.toml:3)`},
		{"[bridge.upstart]\n", `hb.toml:1: unknown key "bridge.upstart"`},
		{"[bridge.supervisord]\nserver_url = \"http://10.0.0.5:9001\"\nprograms = [\"a\"]\n", `hb.toml:2: key "bridge.supervisord.server_url": server_url "http://10.0.0.5:9001": only this machine's supervisord`},
		{"[bridge.supervisord]\nserver_url = \"http://127.0.0.1\"\nprograms = [\"a\"]\n", `want http://HOST:PORT`},
		{"[bridge.runit]\ndir = \"/nonexistent-hb-dir\"\n", `hb.toml:1: key "bridge.runit.dir": open /nonexistent-hb-dir`},
	} {
		_, err := Parse("hb.toml", []byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q:\n got %v\nwant %s", tc.doc, err, tc.want)
		}
	}
}
