package config

import (
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// memFS serves includes from memory: the fuzzer must not read the disk.
type memFS map[string]string

func (m memFS) ReadFile(name string) ([]byte, error) {
	if data, ok := m[filepath.Clean(name)]; ok {
		return []byte(data), nil
	}
	return nil, os.ErrNotExist
}

func (m memFS) Glob(pattern string) ([]string, error) {
	if _, err := path.Match(pattern, ""); err != nil {
		return nil, err
	}
	var out []string
	for name := range m {
		if ok, _ := path.Match(pattern, name); ok {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out, nil
}

func FuzzParse(f *testing.F) {
	full, err := os.ReadFile("testdata/full.toml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(full)
	for _, seed := range []string{
		"",
		"[service.rx]\ncommand = \"rx\"\n",
		"include = [\"d/*.toml\"]\n[service.m]\ncommand = [\"m\"]\n",
		"include = \"d/a.toml\"\n[service.a]\ncommand = \"dup\"\n",
		"[hbd]\nslots = 0\ndetector = \"x\"\n[service.\"a b\"]\ncomand = 1\n",
		"service.z.command = 'z \"q\" \\\\'\nservice.z.x.y = 1\n",
		"[service.rx]\ncommand = \"rx $X\"\nrestart_delay = \"1m\"\nbackoff_max = \"1s\"\n",
		"[[service.rx]]\ncommand = \"rx\"\n",
		"[service.rx]\ncommand = \"rx\"\nenvironment = { A = 1, \"\" = \"x\", \"B=C\" = \"d\" }\n",
		"hbd.shm = \"a/b\"\nhbd.socket = \"\"\n[service.r]\ncommand=\"r\"\nstop_signal=\"rtmin\"\nlog_max_bytes=\"9999999999999999999GiB\"\n",
	} {
		f.Add([]byte(seed))
	}
	fsys := memFS{
		"/fuzz/d/a.toml": "[service.a]\ncommand = \"a\"\n",
		"/fuzz/d/b.toml": "[service.b]\ncommand = [\"b\"]\nstart_secs = \"0s\"\n[hbd]\nslots = 3\n",
		"/fuzz/d/c.toml": "[service.c]\ncommand = \"c 'x\"\n",
	}
	f.Add([]byte("s = \"\"\"\n[fake]\n\"\"\"\n[service.a]\ncommand = [\n 'a', # ]\n]\ne = { A = \"1\" }\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		// The line scanner agrees with the decoder wherever it answers.
		var raw map[string]toml.Primitive
		if _, err := toml.Decode(string(data), &raw); err == nil {
			checkScan(t, string(data), false)
		}

		cfg, err := parse("/fuzz/hb.toml", data, fsys)
		if err != nil {
			if cfg != nil {
				t.Fatal("Parse returned a Config and an error")
			}
			errs, ok := err.(Errors)
			if !ok || len(errs) == 0 {
				t.Fatalf("Parse error is %T %v, want a non-empty Errors", err, err)
			}
			for _, e := range errs {
				if e.File == "" || e.Err == nil || strings.Contains(e.Error(), "\x00\x00") {
					t.Fatalf("malformed error %#v", e)
				}
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Parse succeeded but Validate fails:\n%v", err)
		}
		if len(cfg.Order) != len(cfg.Services) {
			t.Fatalf("Order %v does not match Services", cfg.Order)
		}
		for _, name := range cfg.Order {
			s := cfg.Services[name]
			if s.Name != name || len(s.Command) == 0 || s.Command[0] == "" {
				t.Fatalf("service %q = %+v", name, s)
			}
			if s.Line < 1 || s.KeyLine("command") < 1 {
				t.Fatalf("service %q has no line: %d / command %d", name, s.Line, s.KeyLine("command"))
			}
		}
		if a, r, c := Diff(cfg, cfg); a != nil || r != nil || c != nil {
			t.Fatalf("Diff(cfg, cfg) = %v, %v, %v", a, r, c)
		}
	})
}
