package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/hbshim/hb/host/policy"
)

// cmpService compares the exported fields of Services.
var cmpService = cmpopts.IgnoreUnexported(Service{})

func mustParse(t *testing.T, name, doc string) *Config {
	t.Helper()
	cfg, err := Parse(name, []byte(doc))
	if err != nil {
		t.Fatalf("Parse(%s):\n%v", name, err)
	}
	return cfg
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestDefaults(t *testing.T) {
	cfg := mustParse(t, "/etc/hb/hb.toml", "[service.rx]\ncommand = [\"/usr/bin/rx\"]\n")
	wantHBD := HBD{
		Shm:      "hb",
		Socket:   "/run/hb/hbd.sock",
		StateDir: "/run/hb",
		LogDir:   "/run/hb/log",
		Slots:    1024,
		Detector: "auto",

		DetectorPriority: 1,
		HeadlessRespawns: 100,
	}
	if diff := cmp.Diff(wantHBD, cfg.HBD); diff != "" {
		t.Errorf("HBD (-want +got):\n%s", diff)
	}
	want := &Service{
		Name:         "rx",
		File:         "/etc/hb/hb.toml",
		Line:         1,
		Command:      []string{"/usr/bin/rx"},
		Environment:  nil, // none set
		Restart:      policy.RestartAlways,
		RestartDelay: 0,
		StartWindow:  time.Second,
		StartRetries: 0,
		BackoffMax:   30 * time.Second,
		ExitCodes:    []int{0},
		StopSignal:   syscall.SIGTERM,
		StopTimeout:  10 * time.Second,
		Autostart:    true,
		Stdout:       "file",
		Stderr:       "file",
		LogMaxBytes:  10 << 20,
		LogBackups:   3,

		WatchdogSignal: syscall.SIGABRT,
		WatchdogGrace:  5 * time.Second,
		Ready:          "spawn",
		ReadyTimeout:   90 * time.Second,
		KillMode:       "cgroup",
		Type:           "simple",
	}
	if diff := cmp.Diff(want, cfg.Services["rx"], cmpService); diff != "" {
		t.Errorf("service (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"rx"}, cfg.Order); diff != "" {
		t.Errorf("Order (-want +got):\n%s", diff)
	}
	if got := cfg.Services["rx"].Policy(); !reflect.DeepEqual(got, policy.DefaultPolicy()) {
		t.Errorf("Policy() = %+v, want policy.DefaultPolicy() %+v", got, policy.DefaultPolicy())
	}
}

func TestEveryKey(t *testing.T) {
	const doc = `
[hbd]
shm = "hb-test"
socket = "ctl/hbd.sock"
state_dir = "state"
log_dir = "/var/log/hb"
slots = 64
detector = "pidfd"
detector_priority = 0
socket_group = 27

[service.rx]
command = "rx --name 'rx 0' \"a\\\"b\" c\\ d"
directory = "work"
environment = { RX_QUEUE = "4", EMPTY = "" }
user = "nobody"
group = 65534
restart = "on-failure"
restart_delay = "250ms"
start_secs = "0s"
start_retries = 0
backoff_max = "1m"
exit_codes = [0, 2, 143]
stop_signal = "int"
stop_timeout = "3s"
autostart = false
stdout = "inherit"
stderr = "null"
log_max_bytes = "512KiB"
log_backups = 0
watchdog = "20ms"
watchdog_signal = "QUIT"
watchdog_grace = "2s"
ready = "notify"
ready_timeout = "3s"
kill_mode = "process"

[service.tx]
command = ["tx", ""]
stop_signal = 10
log_max_bytes = 4096
user = "1000"
`
	cfg := mustParse(t, "/srv/hb/hb.toml", doc)
	wantHBD := HBD{
		Shm:         "hb-test",
		Socket:      "/srv/hb/ctl/hbd.sock",
		StateDir:    "/srv/hb/state",
		LogDir:      "/var/log/hb",
		Slots:       64,
		Detector:    "pidfd",
		SocketGroup: "27",

		DetectorPriority: 0,
		HeadlessRespawns: 100,
	}
	if diff := cmp.Diff(wantHBD, cfg.HBD); diff != "" {
		t.Errorf("HBD (-want +got):\n%s", diff)
	}
	rx := &Service{
		Name:         "rx",
		File:         "/srv/hb/hb.toml",
		Line:         11,
		Command:      []string{"rx", "--name", "rx 0", `a"b`, "c d"},
		Directory:    "/srv/hb/work",
		Environment:  map[string]string{"RX_QUEUE": "4", "EMPTY": ""},
		User:         "nobody",
		Group:        "65534",
		Restart:      policy.RestartOnFailure,
		RestartDelay: 250 * time.Millisecond,
		StartWindow:  0,
		StartRetries: 0,
		BackoffMax:   time.Minute,
		ExitCodes:    []int{0, 2, 143},
		StopSignal:   syscall.SIGINT,
		StopTimeout:  3 * time.Second,
		Autostart:    false,
		Stdout:       "inherit",
		Stderr:       "null",
		LogMaxBytes:  512 << 10,
		LogBackups:   0,

		Watchdog:       20 * time.Millisecond,
		WatchdogSignal: syscall.SIGQUIT,
		WatchdogGrace:  2 * time.Second,
		Ready:          "notify",
		ReadyTimeout:   3 * time.Second,
		KillMode:       "process",
		Type:           "simple",
	}
	if diff := cmp.Diff(rx, cfg.Services["rx"], cmpService); diff != "" {
		t.Errorf("rx (-want +got):\n%s", diff)
	}
	tx := cfg.Services["tx"]
	if !slices.Equal(tx.Command, []string{"tx", ""}) || tx.StopSignal != syscall.SIGUSR1 || tx.LogMaxBytes != 4096 || tx.User != "1000" {
		t.Errorf("tx = %+v", tx)
	}
	if diff := cmp.Diff([]string{"rx", "tx"}, cfg.Order); diff != "" {
		t.Errorf("Order (-want +got):\n%s", diff)
	}
	for key, want := range map[string]int{"command": 13, "environment.EMPTY": 15, "log_backups": 30, "nope": 12} {
		if got := cfg.Services["rx"].KeyLine(key); got != want {
			t.Errorf("KeyLine(%q) = %d, want %d", key, got, want)
		}
	}
}

func TestLogDirFollowsStateDir(t *testing.T) {
	cfg := mustParse(t, "/opt/demo/hb.toml", "[hbd]\nstate_dir = \"../../run\"\n")
	if cfg.HBD.StateDir != "/run" || cfg.HBD.LogDir != "/run/log" {
		t.Errorf("state_dir, log_dir = %q, %q; want /run, /run/log", cfg.HBD.StateDir, cfg.HBD.LogDir)
	}
}

func TestRelativePathsFromRelativeName(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	cfg := mustParse(t, "examples/hb.toml", "[hbd]\nstate_dir = \"run\"\n")
	if want := filepath.Join(wd, "examples", "run"); cfg.HBD.StateDir != want {
		t.Errorf("state_dir = %q, want %q (absolute, next to the file)", cfg.HBD.StateDir, want)
	}
}

func TestSignals(t *testing.T) {
	tests := []struct {
		in   string
		want syscall.Signal
	}{
		{"TERM", syscall.SIGTERM},
		{"SIGTERM", syscall.SIGTERM},
		{"term", syscall.SIGTERM},
		{"SIGKILL", syscall.SIGKILL},
		{"HUP", syscall.SIGHUP},
		{"QUIT", syscall.SIGQUIT},
		{"USR2", syscall.SIGUSR2},
		{"15", syscall.SIGTERM},
		{"34", syscall.Signal(34)},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSignal(tt.in)
			if err != nil || got != tt.want {
				t.Errorf("ParseSignal(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
	for _, bad := range []string{"", "SIG", "TREM", "0", "65", "-1", "SIGRTMIN+1"} {
		t.Run("bad "+bad, func(t *testing.T) {
			if got, err := ParseSignal(bad); err == nil {
				t.Errorf("ParseSignal(%q) = %v, want an error", bad, got)
			}
		})
	}
}

func TestSizes(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"4096", 4096, true},
		{"100B", 100, true},
		{"10MiB", 10 << 20, true},
		{"10 MiB", 10 << 20, true},
		{"512k", 512 << 10, true},
		{"512KB", 512 << 10, true},
		{"2GiB", 2 << 30, true},
		{"1g", 1 << 30, true},
		{"", 0, false},
		{"MiB", 0, false},
		{"1.5MiB", 0, false},
		{"-1", 0, false},
		{"10TiB", 0, false},
		{"9999999999999GiB", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSize(tt.in)
			if (err == nil) != tt.ok || got != tt.want {
				t.Errorf("ParseSize(%q) = %d, %v; want %d, ok=%v", tt.in, got, err, tt.want, tt.ok)
			}
		})
	}
}

func TestIncludes(t *testing.T) {
	dir := t.TempDir()
	main := filepath.Join(dir, "hb.toml")
	writeFile(t, main, `include = ["services.d/*.toml", "extra.toml", "none.d/*.toml", "hb.toml", "services.d/b.toml"]

[service.main]
command = "main"
`)
	writeFile(t, filepath.Join(dir, "services.d", "b.toml"), "[service.b2]\ncommand = \"b\"\n[service.b1]\ncommand = \"b\"\ndirectory = \"data\"\n")
	writeFile(t, filepath.Join(dir, "services.d", "a.toml"), "[service.a]\ncommand = \"a\"\n")
	writeFile(t, filepath.Join(dir, "services.d", "notes.txt"), "not toml")
	if err := os.Mkdir(filepath.Join(dir, "services.d", "dir.toml"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "extra.toml"), "# extra\n[service.x]\ncommand = \"x\"\n")

	cfg, err := Load(main)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if diff := cmp.Diff([]string{"main", "a", "b2", "b1", "x"}, cfg.Order); diff != "" {
		t.Errorf("Order (-want +got):\n%s", diff)
	}
	wantFiles := []string{
		main,
		filepath.Join(dir, "services.d", "a.toml"),
		filepath.Join(dir, "services.d", "b.toml"),
		filepath.Join(dir, "extra.toml"),
	}
	if diff := cmp.Diff(wantFiles, cfg.Files); diff != "" {
		t.Errorf("Files (-want +got):\n%s", diff)
	}
	x := cfg.Services["x"]
	if x.File != filepath.Join(dir, "extra.toml") || x.Line != 2 {
		t.Errorf("x defined at %s:%d, want extra.toml:2", x.File, x.Line)
	}
	if got, want := cfg.Services["b1"].Directory, filepath.Join(dir, "services.d", "data"); got != want {
		t.Errorf("b1 directory = %q, want %q (relative to the including file)", got, want)
	}
}

func TestIncludeErrors(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string // besides hb.toml
		main  string
		want  []string // one per error, in order
		err   error
	}{
		{
			name:  "duplicate service across files",
			main:  "include = [\"d/*.toml\"]\n\n[service.rx]\ncommand = \"rx\"\n",
			files: map[string]string{"d/rx.toml": "# again\n\n[service.rx]\ncommand = \"rx2\"\n"},
			want:  []string{`d/rx.toml:3: service "rx": defined twice: here and at `},
			err:   ErrDuplicate,
		},
		{
			name: "duplicate service in two includes",
			main: "include = [\"d/*.toml\"]\n",
			files: map[string]string{
				"d/a.toml": "[service.rx]\ncommand = \"rx\"\n",
				"d/b.toml": "\n[service.rx]\ncommand = \"rx\"\n",
			},
			want: []string{`d/b.toml:2: service "rx": defined twice: here and at `},
			err:  ErrDuplicate,
		},
		{
			name:  "hbd in an included file",
			main:  "include = [\"d/*.toml\"]\n",
			files: map[string]string{"d/a.toml": "[hbd]\nslots = 3\n"},
			want:  []string{`d/a.toml:1: unknown key "hbd" (an included file holds [service.NAME] tables only)`},
			err:   ErrUnknownKey,
		},
		{
			name:  "nested include",
			main:  "include = [\"d/*.toml\"]\n",
			files: map[string]string{"d/a.toml": "include = [\"more/*.toml\"]\n"},
			want:  []string{`d/a.toml:1: unknown key "include"`},
			err:   ErrUnknownKey,
		},
		{
			name:  "errors inside an included file",
			main:  "include = [\"d/*.toml\"]\n\n[service.m]\ncommand = \"m\"\nstdout = 1\n",
			files: map[string]string{"d/a.toml": "[service.a]\ncommand = \"a\"\nrestart = \"no\"\n"},
			want: []string{
				`hb.toml:5: service "m": key "stdout": want a string, got integer 1`,
				`d/a.toml:3: service "a": key "restart": want "always", "on-failure" or "never", got "no"`,
			},
		},
		{
			name:  "syntax error in an included file",
			main:  "include = \"d/*.toml\"\n",
			files: map[string]string{"d/a.toml": "[service.a]\ncommand = [\n"},
			want:  []string{`d/a.toml:`},
			err:   ErrSyntax,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, filepath.Join(dir, "hb.toml"), tt.main)
			for name, data := range tt.files {
				writeFile(t, filepath.Join(dir, name), data)
			}
			_, err := Load(filepath.Join(dir, "hb.toml"))
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Load = %v, want Errors", err)
			}
			if len(errs) != len(tt.want) {
				t.Fatalf("got %d errors, want %d:\n%v", len(errs), len(tt.want), err)
			}
			for i, w := range tt.want {
				if got := strings.TrimPrefix(errs[i].Error(), dir+"/"); !strings.HasPrefix(got, w) {
					t.Errorf("error %d:\n got %s\nwant %s...", i, got, w)
				}
			}
			if tt.err != nil && !errors.Is(err, tt.err) {
				t.Errorf("errors.Is(err, %v) = false", tt.err)
			}
			if errors.Is(err, ErrDuplicate) && !strings.Contains(err.Error(), ".toml:") {
				t.Errorf("duplicate error does not name the first place: %v", err)
			}
		})
	}
}

func TestIncludeReadError(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads files regardless of their mode")
	}
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "hb.toml"), "include = [\"d/*.toml\"]\n")
	writeFile(t, filepath.Join(dir, "d", "a.toml"), "[service.a]\ncommand = \"a\"\n")
	if err := os.Chmod(filepath.Join(dir, "d", "a.toml"), 0); err != nil {
		t.Fatal(err)
	}
	_, err := Load(filepath.Join(dir, "hb.toml"))
	if !errors.Is(err, ErrInclude) || !strings.Contains(err.Error(), "hb.toml:1: key \"include\"") {
		t.Fatalf("Load = %v, want an include error at hb.toml:1", err)
	}
}

func TestSplitCommand(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"rx", []string{"rx"}},
		{"  rx   -a\tb\n c ", []string{"rx", "-a", "b", "c"}},
		{"", nil},
		{"rx 'a b' c", []string{"rx", "a b", "c"}},
		{`rx "a b" c`, []string{"rx", "a b", "c"}},
		{`rx ''`, []string{"rx", ""}},
		{`rx ""`, []string{"rx", ""}},
		{`rx a'b'"c"d`, []string{"rx", "abcd"}},
		{`rx a\ b`, []string{"rx", "a b"}},
		{`rx \'a\'`, []string{"rx", "'a'"}},
		{`rx \$HOME \| \> \;`, []string{"rx", "$HOME", "|", ">", ";"}},
		{`rx '$HOME | > ; & ( ) ` + "`x`" + `'`, []string{"rx", "$HOME | > ; & ( ) `x`"}},
		{`rx "a\"b" "c\\d" "\$x" "\q"`, []string{"rx", `a"b`, `c\d`, "$x", `\q`}},
		{`rx "it's"`, []string{"rx", "it's"}},
		{`rx 'say "hi"'`, []string{"rx", `say "hi"`}},
		{"rx a\\\nb", []string{"rx", "ab"}},
		{"rx \"a\\\nb\"", []string{"rx", "ab"}},
		{`rx *.pcap ~ {a,b} #x`, []string{"rx", "*.pcap", "~", "{a,b}", "#x"}},
		{`rx --opt=värde`, []string{"rx", "--opt=värde"}},
		{`rx \ä`, []string{"rx", "ä"}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := splitCommand(tt.in)
			if err != nil {
				t.Fatalf("splitCommand(%q): %v", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("splitCommand(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestSplitCommandErrors(t *testing.T) {
	tests := []struct {
		in, msg string
	}{
		{`rx 'a`, "unterminated ' opened at column 4"},
		{`rx "a`, `unterminated " opened at column 4`},
		{`rx \`, "ends with a backslash"},
		{`rx | grep x`, `"|" at column 4 needs a shell`},
		{`rx && ry`, `"&" at column 4`},
		{`rx; ry`, `";" at column 3`},
		{`rx < in`, `"<"`},
		{`rx >out`, `">"`},
		{`rx $(date)`, `"$"`},
		{`rx $PORT`, `"$" at column 4`},
		{`rx "$PORT"`, `"$" at column 5`},
		{"rx `date`", "\"`\""},
		{`(rx)`, `"("`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := splitCommand(tt.in)
			if err == nil {
				t.Fatalf("splitCommand(%q) = %q, want an error", tt.in, got)
			}
			if !errors.Is(err, ErrValue) || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("splitCommand(%q) = %v, want an ErrValue containing %q", tt.in, err, tt.msg)
			}
		})
	}
}

func TestQuoteCommandRoundTrip(t *testing.T) {
	for _, argv := range [][]string{
		{"rx"},
		{"rx", "a b", "", "it's", `"q"`, `\`, "$x", "a|b", "\n"},
	} {
		line := quoteCommand(argv)
		got, err := splitCommand(line)
		if err != nil || !slices.Equal(got, argv) {
			t.Errorf("splitCommand(quoteCommand(%q) = %q) = %q, %v", argv, line, got, err)
		}
	}
}

func TestDiff(t *testing.T) {
	prev := mustParse(t, "/a/hb.toml", `
[service.same]
command = "same"
[service.moved]
command = "moved"
[service.gone]
command = "gone"
[service.cmd]
command = "cmd --old"
[service.env]
command = "env"
environment = { A = "1" }
[service.delay]
command = "delay"
`)
	next := mustParse(t, "/b/hb.toml", `
[service.new]
command = "new"
[service.delay]
command = "delay"
restart_delay = "1s"
[service.env]
command = "env"
environment = { A = "2" }
[service.cmd]
command = "cmd --new"

[service.same]
command = "same"

[service.moved]
command = ["moved"]
[service.new2]
command = "new2"
`)
	added, removed, changed := Diff(prev, next)
	if diff := cmp.Diff([]string{"new", "new2"}, added); diff != "" {
		t.Errorf("added (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"gone"}, removed); diff != "" {
		t.Errorf("removed (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"delay", "env", "cmd"}, changed); diff != "" {
		t.Errorf("changed (-want +got):\n%s", diff)
	}

	added, removed, changed = Diff(nil, next)
	if len(added) != len(next.Order) || removed != nil || changed != nil {
		t.Errorf("Diff(nil, next) = %v, %v, %v; want everything added", added, removed, changed)
	}
	added, removed, changed = Diff(next, next)
	if added != nil || removed != nil || changed != nil {
		t.Errorf("Diff(next, next) = %v, %v, %v; want nothing", added, removed, changed)
	}
}

// Every exported field but File and Line takes part in Equal, so that a
// reload notices any change.
func TestEqualCoversEveryField(t *testing.T) {
	base := DefaultService("rx")
	base.Command = []string{"rx"}
	typ := reflect.TypeOf(*base)
	for i := range typ.NumField() {
		f := typ.Field(i)
		if !f.IsExported() {
			continue
		}
		t.Run(f.Name, func(t *testing.T) {
			other := DefaultService("rx")
			other.Command = []string{"rx"}
			v := reflect.ValueOf(other).Elem().Field(i)
			switch v.Kind() {
			case reflect.String:
				v.SetString(v.String() + "x")
			case reflect.Int, reflect.Int64:
				v.SetInt(v.Int() + 1)
			case reflect.Uint8:
				v.SetUint(v.Uint() + 1)
			case reflect.Bool:
				v.SetBool(!v.Bool())
			case reflect.Slice:
				v.Set(reflect.Append(v, reflect.Zero(v.Type().Elem())))
			case reflect.Map:
				v.SetMapIndex(reflect.ValueOf("X"), reflect.ValueOf("1"))
			default:
				t.Fatalf("field %s of kind %s: teach this test to change it", f.Name, v.Kind())
			}
			eq := base.Equal(other)
			if f.Name == "File" || f.Name == "Line" {
				if !eq {
					t.Errorf("changing %s made the services differ; location is not configuration", f.Name)
				}
				return
			}
			if eq {
				t.Errorf("changing %s left the services Equal", f.Name)
			}
		})
	}
}

func TestEnv(t *testing.T) {
	s := DefaultService("rx")
	s.Environment = map[string]string{"PATH": "/opt/bin", "Z": "z", "A": "a"}
	got := s.Env([]string{"HOME=/root", "PATH=/usr/bin", "TERM=xterm", "PATH=/dup"})
	want := []string{"HOME=/root", "PATH=/opt/bin", "TERM=xterm", "A=a", "Z=z"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Env (-want +got):\n%s", diff)
	}
}

func TestValidateBuiltInCode(t *testing.T) {
	s := DefaultService("rx")
	s.Command = []string{"rx"}
	cfg := &Config{
		Path:     "code",
		HBD:      DefaultHBD(),
		Services: map[string]*Service{"rx": s},
		Order:    []string{"rx"},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate of a valid Config: %v", err)
	}

	s.StopSignal = 0
	s.Stdout = "tty"
	s.ExitCodes = []int{-1}
	s.Restart = policy.Restart(9)
	cfg.HBD.Slots = 0
	cfg.Services["ghost"] = DefaultService("ghost")
	err := cfg.Validate()
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Validate = %v, want Errors", err)
	}
	for _, want := range []string{
		`key "hbd.slots"`, `key "stop_signal"`, `key "stdout"`, `key "exit_codes"`, `key "restart"`,
		`service "ghost": listed 0 times in Order`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error does not mention %s:\n%v", want, err)
		}
	}
}

func TestIncludeOfTheMainFileByAbsolutePath(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "hb.toml"), "include = [\""+dir+"/*.toml\"]\n[service.a]\ncommand = \"a\"\n")
	wd, _ := os.Getwd()
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	defer os.Chdir(wd)
	cfg, err := Load("hb.toml")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if len(cfg.Files) != 1 || len(cfg.Order) != 1 {
		t.Errorf("Files %v, Order %v: the main file was read twice", cfg.Files, cfg.Order)
	}
}

// BenchmarkParse1000 loads one file of 1000 services (docs/benchmark.md: 1000
// services must start in under 2 s).
func BenchmarkParse1000(b *testing.B) {
	var doc strings.Builder
	for i := range 1000 {
		doc.WriteString("[service.s" + strconv.Itoa(i) + "]\n")
		doc.WriteString("command = [\"/usr/bin/worker\", \"--id\", \"" + strconv.Itoa(i) + "\"]\n")
		doc.WriteString("restart = \"on-failure\"\nstart_secs = \"2s\"\nenvironment = { QUEUE = \"4\", MODE = \"fast\" }\n\n")
	}
	data := []byte(doc.String())
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Parse("/etc/hb/hb.toml", data); err != nil {
			b.Fatal(err)
		}
	}
}

func TestLimits(t *testing.T) {
	dir := t.TempDir()
	deep := "[service.x]\ncommand = [\"true\"]\nenvironment = " + strings.Repeat("{a=", MaxNesting+1) + "\"v\"" + strings.Repeat("}", MaxNesting+1) + "\n"
	if _, err := Parse(filepath.Join(dir, "deep.toml"), []byte(deep)); err == nil || !strings.Contains(err.Error(), "deep.toml:3: nested more than") {
		t.Errorf("deep nesting: got %v; want an error at deep.toml:3", err)
	}
	dotted := "[service.x]\ncommand = [\"true\"]\n[" + strings.Repeat("a.", MaxNesting+1) + "b]\n"
	if _, err := Parse(filepath.Join(dir, "dotted.toml"), []byte(dotted)); err == nil || !strings.Contains(err.Error(), "dotted.toml:3:") {
		t.Errorf("dotted keys: got %v; want an error at dotted.toml:3", err)
	}
	// Strings and comments do not count.
	ok := "# [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ ......................................\n" +
		"[service.x]\ncommand = [\"echo\", \"" + strings.Repeat("[{.", 40) + "\", '''\n" + strings.Repeat("[", 40) + "''']\n"
	if _, err := Parse(filepath.Join(dir, "ok.toml"), []byte(ok)); err != nil {
		t.Errorf("strings and comments: %v", err)
	}
	// An include that is not a regular file is refused without reading it.
	main := filepath.Join(dir, "main.toml")
	writeFile(t, main, "include = [\"/dev/zero\"]\n")
	if _, err := Load(main); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("include /dev/zero: got %v", err)
	}
	big := filepath.Join(dir, "big.toml")
	writeFile(t, big, "# "+strings.Repeat("x", MaxFileSize)+"\n")
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("big file: got %v", err)
	}
}
