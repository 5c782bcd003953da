package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// probeLines finds the line of every key of doc with the decoder itself
// (the slow, exact way), by walking the document's Primitives.
func probeLines(t testing.TB, doc string) (toml.MetaData, map[string]int) {
	var raw map[string]toml.Primitive
	md, err := toml.Decode(doc, &raw)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	src := &source{md: md}
	out := map[string]int{}
	var walk func(path toml.Key, p toml.Primitive)
	walk = func(path toml.Key, p toml.Primitive) {
		var pe toml.ParseError
		if err := md.PrimitiveDecode(p, linePin{}); errors.As(err, &pe) {
			out[path.String()] = pe.Position.Line
		}
		var sub map[string]toml.Primitive
		if md.PrimitiveDecode(p, &sub) == nil {
			for k, c := range sub {
				walk(append(append(toml.Key{}, path...), k), c)
			}
		}
	}
	for k, p := range raw {
		walk(toml.Key{k}, p)
	}
	_ = src
	return md, out
}

// checkScan asserts that the scanner understood doc and agrees with the
// decoder on the line of every key the decoder can place.
func checkScan(t testing.TB, doc string, mustAgree bool) {
	md, want := probeLines(t, doc)
	idx := newKeyLines(doc, md)
	if idx == nil {
		if mustAgree {
			keys, _, ok := scanKeys(doc)
			t.Fatalf("scanner disagrees with the decoder (ok=%v)\n scan: %v\n  toml: %v", ok, keys, md.Keys())
		}
		return
	}
	count := map[string]int{}
	for _, k := range md.Keys() {
		count[k.String()]++
	}
	for _, k := range md.Keys() {
		ks := k.String()
		w := want[ks]
		switch {
		case w == 0 || idx[ks] == w:
		case count[ks] > 1:
			// [[array]] tables: the decoder keeps the last header, the
			// scanner the first.
		case md.Type(k...) == "String" && idx[ks] < w:
			// The decoder places a multi-line string at its last line,
			// the scanner at its key.
		default:
			t.Errorf("key %s: scanner line %d, decoder line %d", ks, idx[ks], w)
		}
	}
}

func TestScanKeys(t *testing.T) {
	tests := []struct {
		name string
		doc  string
	}{
		{"plain", "a = 1\n[t]\nb = \"x\"\n"},
		{"comments and blanks", "# c\n\n  a = 1 # c\n\t[t] # c\n\n b=2"},
		{"dotted and quoted keys", "a.b.c = 1\n\"q k\".'l k' = 2\n[ x . \"y\" . 'z' ]\nw = 3\n"},
		{"escaped quoted keys", "\"a\\\"b\" = 1\n\"\\u00e9\\t\" = 2\n\"\\U0001F600\" = 3\n"},
		{"multi-line basic string hiding a header", "s = \"\"\"\n[fake]\nk = 1\n\"\"\"\n[real]\nk = 2\n"},
		{"multi-line string with escaped quotes", "s = \"\"\"a\\\"\"\"b\"\"\"\"\nk = 1\n"},
		{"multi-line string ending in quotes", "s = \"\"\"a\"\"\"\"\"\nk = 1\n"},
		{"multi-line literal", "s = '''\n[fake]\n'''\nk = 1\n"},
		{"line-ending backslash", "s = \"\"\"a \\\n   b\"\"\"\nk = 1\n"},
		{"multi-line array with comments", "a = [\n  1, # one ]\n  \"]\", # two\n  [3, 4],\n]\nk = 1\n"},
		{"inline tables", "e = { A = \"1\", B.C = 2, D = { E = 3 } }\nk = 1\n"},
		{"inline tables in an array", "a = [ { x = 1 }, { y = \"}\" } ]\nk = 1\n"},
		{"array of tables", "[[a]]\nx = 1\n[[a]]\nx = 2\n[b]\n"},
		{"dates and numbers", "d = 1979-05-27 07:32:00Z\nt = 07:32:00\nf = -1.5e3\nn = 0x1F\ni = inf\nb = true\nk = 1\n"},
		{"CRLF", "a = 1\r\n[t]\r\nb = 2\r\n"},
		{"UTF-8 byte order mark", "\xef\xbb\xbfa = 1\n[t]\nb = 2\n"},
		{"sub-table before its parent", "[a.b]\nx = 1\n[a]\ny = 2\n"},
		{"hb config", `include = ["services.d/*.toml"]

[hbd]
state_dir = "run"

[service.rx]
command = "rx --a 'b c'"
environment = { A = "1" }

[service.rx.limits]
x = 1
`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkScan(t, tt.doc, true)
		})
	}
}

func TestScanKeysLinesOfImpliedTables(t *testing.T) {
	doc := "# c\nservice.z.command = \"z\"\n[service.rx.environment]\nA = \"1\"\n[service.rx]\ncommand = \"rx\"\n"
	var raw map[string]toml.Primitive
	md, err := toml.Decode(doc, &raw)
	if err != nil {
		t.Fatal(err)
	}
	idx := newKeyLines(doc, md)
	for key, want := range map[string]int{"service": 2, "service.z": 2, "service.rx": 5, "service.rx.environment.A": 4} {
		if idx[key] != want {
			t.Errorf("line of %s = %d, want %d", key, idx[key], want)
		}
	}
}

// The scanner is only an accelerator: where it gives up, lines still come
// from the decoder.
func TestLinesWithoutScanner(t *testing.T) {
	doc := "[service.rx]\ncommand = \"rx\"\n\ncomand = 1\n"
	cfgErr := func() string {
		_, err := Parse("hb.toml", []byte(doc))
		return fmt.Sprint(err)
	}
	want := cfgErr()
	var raw map[string]toml.Primitive
	md, _ := toml.Decode(doc, &raw)
	src := &source{md: md}
	var svc map[string]toml.Primitive
	if err := md.PrimitiveDecode(raw["service"], &svc); err != nil {
		t.Fatal(err)
	}
	var keys map[string]toml.Primitive
	if err := md.PrimitiveDecode(svc["rx"], &keys); err != nil {
		t.Fatal(err)
	}
	if got := src.line(keyRef{p: keys["comand"], path: toml.Key{"service", "rx", "comand"}}); got != 4 {
		t.Errorf("probe line of comand = %d, want 4", got)
	}
	if !strings.HasPrefix(want, "hb.toml:4: ") {
		t.Errorf("Parse error = %q, want line 4", want)
	}
}

// Line lookups may run from several goroutines, also on the decoder
// fallback (which writes the decoder's state under a lock).
func TestConcurrentLineLookups(t *testing.T) {
	const doc = "[hbd]\nslots = 8\n\n[service.a]\ncommand = \"a\"\nuser = \"x\"\n[service.b]\ncommand = \"b\"\n"
	for _, fallback := range []bool{false, true} {
		cfg := mustParse(t, "hb.toml", doc)
		if fallback {
			var err error
			if cfg, err = decode("hb.toml", []byte(doc), osFS{}); err != nil {
				t.Fatal(err)
			}
			cfg.hbdKeys.src.lines = nil
			cfg.Services["a"].keys.src.lines = nil
		}
		done := make(chan struct{})
		for range 4 {
			go func() {
				defer func() { done <- struct{}{} }()
				for range 50 {
					if l := cfg.Services["a"].KeyLine("user"); l != 6 {
						t.Errorf("KeyLine(user) = %d, want 6 (fallback %v)", l, fallback)
						return
					}
					if err := cfg.Validate(); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		for range 4 {
			<-done
		}
	}
}

// A loaded Config keeps line numbers, not the decoder's state, when the
// scanner indexed the file; with the decoder alone (the scanner gave up) it
// keeps the decoder and answers the same.
func TestSettledLines(t *testing.T) {
	const doc = "[hbd]\nshm = \"x\"\nslots = 8\n\n[service.a]\ncommand = \"a\"\n" +
		"environment = { PATH = \"/bin\", B = \"2\" }\nuser = \"x\"\n\n[service.b]\ncommand = \"b\"\n"
	settled := mustParse(t, "hb.toml", doc)
	lazy, err := decode("hb.toml", []byte(doc), osFS{})
	if err != nil {
		t.Fatal(err)
	}
	lazy.hbdKeys.src.lines = nil
	for _, s := range lazy.Services {
		s.keys.src.lines = nil
	}
	if settled.hbdKeys.src != nil || settled.Services["a"].keys.src != nil {
		t.Fatal("Parse kept the decoder's state of a file the scanner indexed")
	}
	for _, key := range []string{"shm", "slots", "socket"} {
		if got, want := settled.hbdKeyLine(key), lazy.hbdKeyLine(key); got != want {
			t.Errorf("hbd key %s: line %d, want %d", key, got, want)
		}
	}
	tests := []struct {
		svc, key string
		line     int
		written  bool
	}{
		{"a", "command", 6, true},
		{"a", "environment", 7, true},
		{"a", "environment.PATH", 7, true},
		{"a", "environment.B", 7, true},
		{"a", "user", 8, true},
		{"a", "group", 5, false},
		{"b", "command", 11, true},
		{"b", "user", 10, false},
	}
	for _, tt := range tests {
		for name, cfg := range map[string]*Config{"settled": settled, "decoder": lazy} {
			s := cfg.Services[tt.svc]
			if got := s.KeyLine(tt.key); got != tt.line {
				t.Errorf("%s: service %s: KeyLine(%q) = %d, want %d", name, tt.svc, tt.key, got, tt.line)
			}
			if got := s.keys.has(tt.key); got != tt.written {
				t.Errorf("%s: service %s: key %q written = %v, want %v", name, tt.svc, tt.key, got, tt.written)
			}
		}
	}
}
