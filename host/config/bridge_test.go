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
		"a=runit:" + dir + "/a|", "b=runit:" + dir + "/b|",
		"rx=s6:/run/service/rx|",
		"w1=supervisord:unix:///run/supervisor.sock|pool:w1", "web=supervisord:unix:///run/supervisor.sock|web:web",
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("bridged\n %v\nwant\n %v", got, want)
	}
}

func TestBridgeErrors(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"[service.rx]\ncommand = [\"/bin/true\"]\n[bridge.s6]\ndir = \"/run/service\"\nprograms = [\"rx\"]\n",
			`hb.toml:5: key "bridge.s6.programs": "rx" is also [service.rx] (hb.toml:1)`},
		{"[bridge.s6]\nprograms = [\"rx\"]\n", `hb.toml:1: key "bridge.s6.dir": missing`},
		{"[bridge.supervisord]\nprograms = [\"rx\"]\n", `hb.toml:1: key "bridge.supervisord.server_url": missing`},
		{"[bridge.supervisord]\nserver_url = \"tcp://x\"\nprograms = [\"rx\"]\n", `hb.toml:2: key "bridge.supervisord.server_url": "tcp://x": want unix:///PATH`},
		{"[bridge.supervisord]\nserver_url = \"unix:///s\"\n", `key "bridge.supervisord.programs": missing`},
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
