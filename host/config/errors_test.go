package config

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"testing"
)

// TestLoadErrors checks that each kind of mistake is reported with the file,
// the line and the key, and matches its sentinel.
func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name    string
		toml    string
		line    int
		service string
		key     string // as printed: key "X" or unknown key "X"
		err     error
		msg     string // also in the message
	}{
		{
			name: "bad kill_mode",
			toml: "[service.rx]\ncommand = \"rx\"\nkill_mode = \"group\"\n",
			line: 3, service: "rx", key: `key "kill_mode"`, err: ErrValue, msg: `want "cgroup", "process-group" or "process", got "group"`,
		},
		{
			name: "forking without pid_file",
			toml: "[service.rx]\ncommand = \"rx\"\ntype = \"forking\"\n",
			line: 3, service: "rx", key: `key "type"`, err: ErrValue, msg: `"forking" needs pid_file`,
		},
		{
			name: "bad type",
			toml: "[service.rx]\ncommand = \"rx\"\ntype = \"oneshot\"\n",
			line: 3, service: "rx", key: `key "type"`, err: ErrValue, msg: `want "simple" or "forking", got "oneshot"`,
		},
		{
			name: "pid_file without forking",
			toml: "[service.rx]\ncommand = \"rx\"\npid_file = \"/run/rx.pid\"\n",
			line: 3, service: "rx", key: `key "pid_file"`, err: ErrValue, msg: `only used with type = "forking"`,
		},
		{
			name: "bad cpus",
			toml: "[service.rx]\ncommand = \"rx\"\ncpus = \"3-2\"\n",
			line: 3, service: "rx", key: `key "cpus"`, err: ErrValue, msg: `"3-2" is not a CPU list`,
		},
		{
			name: "nice out of range",
			toml: "[service.rx]\ncommand = \"rx\"\nnice = 20\n",
			line: 3, service: "rx", key: `key "nice"`, err: ErrValue, msg: `20 is out of range -20..19`,
		},
		{
			name: "bad sched",
			toml: "[service.rx]\ncommand = \"rx\"\nsched = \"fifo\"\n",
			line: 3, service: "rx", key: `key "sched"`, err: ErrValue, msg: `fifo needs a priority 1..99`,
		},
		{
			name: "unknown rlimit",
			toml: "[service.rx]\ncommand = \"rx\"\nrlimits = { nofiles = 10 }\n",
			line: 3, service: "rx", key: `key "rlimits"`, err: ErrValue, msg: `unknown limit "nofiles"`,
		},
		{
			name: "bad rlimit value",
			toml: "[service.rx]\ncommand = \"rx\"\nrlimits = { memlock = \"lots\" }\n",
			line: 3, service: "rx", key: `key "rlimits"`, err: ErrValue, msg: `want a number or "unlimited"`,
		},
		{
			name: "bad umask",
			toml: "[service.rx]\ncommand = \"rx\"\numask = \"0988\"\n",
			line: 3, service: "rx", key: `key "umask"`, err: ErrValue, msg: `not an octal umask`,
		},
		{
			name: "cpu_weight out of range",
			toml: "[service.rx]\ncommand = \"rx\"\ncpu_weight = 0\n",
			line: 3, service: "rx", key: `key "cpu_weight"`, err: ErrValue, msg: `0 is out of range 1..10000`,
		},
		{
			name: "memory_max zero",
			toml: "[service.rx]\ncommand = \"rx\"\nmemory_max = 0\n",
			line: 3, service: "rx", key: `key "memory_max"`, err: ErrValue, msg: `want more than 0, or "max"`,
		},
		{
			name: "bad cgroup_root",
			toml: "[hbd]\ncgroup_root = \"hb/x\"\n",
			line: 2, key: `key "hbd.cgroup_root"`, err: ErrValue, msg: `not a clean absolute path`,
		},
		{
			name: "syntax error",
			toml: "[hbd]\nslots = = 3\n",
			line: 2, err: ErrSyntax,
		},
		{
			name: "unknown top-level key",
			toml: "# top\n\ncomand = 1\n[hbd]\n",
			line: 3, key: `unknown key "comand"`, err: ErrUnknownKey,
		},
		{
			name: "unknown key in hbd",
			toml: "[hbd]\nslot = 3\n",
			line: 2, key: `unknown key "hbd.slot"`, err: ErrUnknownKey, msg: `did you mean "slots"?`,
		},
		{
			name: "unknown key in a service",
			toml: "[service.rx]\ncommand = \"rx\"\ncomand = \"rx\"\n",
			line: 3, service: "rx", key: `unknown key "comand"`, err: ErrUnknownKey, msg: `did you mean "command"?`,
		},
		{
			name: "unknown dotted key in a service",
			toml: "[service.rx]\ncommand = \"rx\"\n\nlimits.cpu = 3\n",
			line: 4, service: "rx", key: `unknown key "limits"`, err: ErrUnknownKey,
		},
		{
			name: "hbd is not a table",
			toml: "hbd = 1\n",
			line: 1, key: `key "hbd"`, err: ErrType, msg: "want a table, got integer 1",
		},
		{
			name: "wrong type in hbd",
			toml: "[hbd]\nslots = \"12\"\n",
			line: 2, key: `key "hbd.slots"`, err: ErrType, msg: `want an integer, got string "12"`,
		},
		{
			name: "wrong type in a service",
			toml: "[service.rx]\ncommand = \"rx\"\nautostart = \"yes\"\n",
			line: 3, service: "rx", key: `key "autostart"`, err: ErrType, msg: "want a boolean",
		},
		{
			name: "command of the wrong type",
			toml: "[service.rx]\ncommand = [\"rx\", 4]\n",
			line: 2, service: "rx", key: `key "command"`, err: ErrType, msg: "element 1",
		},
		{
			name: "service is not a table",
			toml: "[service]\nrx = \"rx\"\n",
			line: 2, service: "rx", err: ErrType, msg: "want a [service.rx] table",
		},
		{
			name: "duration as an integer",
			toml: "[service.rx]\ncommand = \"rx\"\nstart_secs = 1\n",
			line: 3, service: "rx", key: `key "start_secs"`, err: ErrType, msg: `want a duration string such as "1s"`,
		},
		{
			name: "bad duration",
			toml: "[service.rx]\ncommand = \"rx\"\nrestart_delay = \"1 sec\"\n",
			line: 3, service: "rx", key: `key "restart_delay"`, err: ErrValue, msg: `"1 sec" is not a duration`,
		},
		{
			name: "negative duration",
			toml: "[service.rx]\ncommand = \"rx\"\n\nstop_timeout = \"-5s\"\n",
			line: 4, service: "rx", key: `key "stop_timeout"`, err: ErrValue, msg: "negative duration",
		},
		{
			name: "zero stop timeout",
			toml: "[service.rx]\ncommand = \"rx\"\nstop_timeout = \"0s\"\n",
			line: 3, service: "rx", key: `key "stop_timeout"`, err: ErrValue,
		},
		{
			name: "watchdog below a millisecond",
			toml: "[service.rx]\ncommand = \"rx\"\nwatchdog = \"100us\"\n",
			line: 3, service: "rx", key: `key "watchdog"`, err: ErrValue, msg: "shorter than 1ms",
		},
		{
			name: "zero watchdog_grace",
			toml: "[service.rx]\ncommand = \"rx\"\nwatchdog = \"20ms\"\nwatchdog_grace = \"0s\"\n",
			line: 4, service: "rx", key: `key "watchdog_grace"`, err: ErrValue, msg: "more than 0s",
		},
		{
			name: "after an unknown service",
			toml: "[service.rx]\ncommand = \"rx\"\nafter = [\"db\"]\n",
			line: 3, service: "rx", key: `key "after"`, err: ErrValue, msg: `unknown service "db"`,
		},
		{
			name: "after cycle",
			toml: "[service.a]\ncommand = \"a\"\nafter = [\"b\"]\n[service.b]\ncommand = \"b\"\nafter = [\"a\"]\n",
			line: 3, service: "a", key: `key "after"`, err: ErrValue, msg: "cycle: a after b after a",
		},
		{
			name: "after cycle behind a chain",
			toml: "[service.x]\ncommand = \"x\"\nafter = [\"a\"]\n[service.a]\ncommand = \"a\"\nafter = [\"b\"]\n[service.b]\ncommand = \"b\"\nafter = [\"a\"]\n[service.y]\ncommand = \"y\"\nafter = [\"x\"]\n",
			line: 6, service: "a", key: `key "after"`, err: ErrValue, msg: "cycle: a after b after a",
		},
		{
			name: "unknown ready",
			toml: "[service.rx]\ncommand = \"rx\"\nready = \"fd:9\"\n",
			line: 3, service: "rx", key: `key "ready"`, err: ErrValue, msg: `want "spawn", "notify" or "fd:N" with N in 3..7, got "fd:9"`,
		},
		{
			name: "zero ready_timeout",
			toml: "[service.rx]\ncommand = \"rx\"\nready_timeout = \"0s\"\n",
			line: 3, service: "rx", key: `key "ready_timeout"`, err: ErrValue, msg: "more than 0s",
		},
		{
			name: "bad watchdog_signal",
			toml: "[service.rx]\ncommand = \"rx\"\nwatchdog_signal = \"NOPE\"\n",
			line: 3, service: "rx", key: `key "watchdog_signal"`, err: ErrValue,
		},
		{
			name: "negative start_retries",
			toml: "[service.rx]\ncommand = \"rx\"\nstart_retries = -1\n",
			line: 3, service: "rx", key: `key "start_retries"`, err: ErrValue,
		},
		{
			name: "backoff_max below restart_delay",
			toml: "[service.rx]\ncommand = \"rx\"\nrestart_delay = \"1m\"\nbackoff_max = \"10s\"\n",
			line: 4, service: "rx", key: `key "backoff_max"`, err: ErrValue, msg: "less than restart_delay 1m0s",
		},
		{
			name: "bad restart value",
			toml: "[service.rx]\ncommand = \"rx\"\nrestart = \"sometimes\"\n",
			line: 3, service: "rx", key: `key "restart"`, err: ErrValue, msg: `"on-failure"`,
		},
		{
			name: "bad signal name",
			toml: "[service.rx]\ncommand = \"rx\"\nstop_signal = \"TREM\"\n",
			line: 3, service: "rx", key: `key "stop_signal"`, err: ErrValue, msg: `unknown signal "TREM"`,
		},
		{
			name: "signal number out of range",
			toml: "[service.rx]\ncommand = \"rx\"\nstop_signal = 99\n",
			line: 3, service: "rx", key: `key "stop_signal"`, err: ErrValue, msg: "out of range 1..64",
		},
		{
			name: "bad service name",
			toml: "[service.\"rx/0\"]\ncommand = \"rx\"\n",
			line: 1, service: "rx/0", err: ErrValue, msg: "invalid service name",
		},
		{
			name: "service name too long",
			toml: "[service." + strings.Repeat("a", 48) + "]\ncommand = \"rx\"\n",
			line: 1, service: strings.Repeat("a", 48), err: ErrValue, msg: "48 bytes long; the limit is 47",
		},
		{
			name: "empty command array",
			toml: "[service.rx]\nuser = \"nobody\"\ncommand = []\n",
			line: 3, service: "rx", key: `key "command"`, err: ErrValue, msg: "empty command",
		},
		{
			name: "empty command string",
			toml: "[service.rx]\ncommand = \"  \"\n",
			line: 2, service: "rx", key: `key "command"`, err: ErrValue, msg: "empty command",
		},
		{
			name: "empty program",
			toml: "[service.rx]\ncommand = [\"\", \"-x\"]\n",
			line: 2, service: "rx", key: `key "command"`, err: ErrValue, msg: "first word",
		},
		{
			name: "missing command",
			toml: "# rx\n[service.rx]\nuser = \"nobody\"\n",
			line: 2, service: "rx", err: ErrMissing, msg: `missing required key "command"`,
		},
		{
			name: "command needing a shell",
			toml: "[service.rx]\ncommand = \"rx > /tmp/log\"\n",
			line: 2, service: "rx", key: `key "command"`, err: ErrValue, msg: `">" at column 4 needs a shell`,
		},
		{
			name: "unterminated quote",
			toml: "[service.rx]\ncommand = \"rx 'a b\"\n",
			line: 2, service: "rx", key: `key "command"`, err: ErrValue, msg: "unterminated ' opened at column 4",
		},
		{
			name: "bad stdout value",
			toml: "[service.rx]\ncommand = \"rx\"\nstdout = \"syslog\"\n",
			line: 3, service: "rx", key: `key "stdout"`, err: ErrValue, msg: `want "file", "inherit" or "null", got "syslog"`,
		},
		{
			name: "bad stderr value",
			toml: "[service.rx]\ncommand = \"rx\"\nstderr = \"\"\n",
			line: 3, service: "rx", key: `key "stderr"`, err: ErrValue,
		},
		{
			name: "slots zero",
			toml: "[hbd]\nslots = 0\n",
			line: 2, key: `key "hbd.slots"`, err: ErrValue, msg: "0 is out of range 1..65536",
		},
		{
			name: "slots too many",
			toml: "[hbd]\nshm = \"x\"\nslots = 65537\n",
			line: 3, key: `key "hbd.slots"`, err: ErrValue, msg: "65537 is out of range 1..65536",
		},
		{
			name: "detector priority out of range",
			toml: "[hbd]\ndetector_priority = 100\n",
			line: 2, key: `key "hbd.detector_priority"`, err: ErrValue, msg: "100 is out of range 0..99",
		},
		{
			name: "detector priority not a number",
			toml: "[hbd]\ndetector_priority = \"high\"\n",
			line: 2, key: `key "hbd.detector_priority"`, err: ErrType, msg: "want an integer",
		},
		{
			name: "metrics_listen without a port",
			toml: "[hbd]\nmetrics_listen = \"127.0.0.1\"\n",
			line: 2, key: `key "hbd.metrics_listen"`, err: ErrValue, msg: `"127.0.0.1" is not HOST:PORT`,
		},
		{
			name: "metrics_listen with a named port",
			toml: "[hbd]\nmetrics_listen = \"localhost:http\"\n",
			line: 2, key: `key "hbd.metrics_listen"`, err: ErrValue, msg: `port "http" is not a number 0..65535`,
		},
		{
			name: "bad detector",
			toml: "[hbd]\ndetector = \"netlink\"\n",
			line: 2, key: `key "hbd.detector"`, err: ErrValue, msg: `got "netlink"`,
		},
		{
			name: "shm name with a slash",
			toml: "[hbd]\nshm = \"a/b\"\n",
			line: 2, key: `key "hbd.shm"`, err: ErrValue,
		},
		{
			name: "socket path too long",
			toml: "[hbd]\nsocket = \"/" + strings.Repeat("s", 120) + "\"\n",
			line: 2, key: `key "hbd.socket"`, err: ErrValue, msg: "at most 107",
		},
		{
			name: "exit code out of range",
			toml: "[service.rx]\ncommand = \"rx\"\nexit_codes = [0, 256]\n",
			line: 3, service: "rx", key: `key "exit_codes"`, err: ErrValue, msg: "element 1: 256 is out of range 0..255",
		},
		{
			name: "environment value not a string",
			toml: "[service.rx]\ncommand = \"rx\"\n[service.rx.environment]\nA = \"1\"\nB = 2\n",
			line: 5, service: "rx", key: `key "environment.B"`, err: ErrType, msg: "want a string, got integer 2",
		},
		{
			name: "bad size",
			toml: "[service.rx]\ncommand = \"rx\"\nlog_max_bytes = \"10 megs\"\n",
			line: 3, service: "rx", key: `key "log_max_bytes"`, err: ErrValue,
		},
		{
			name: "negative log_backups",
			toml: "[service.rx]\ncommand = \"rx\"\nlog_backups = -2\n",
			line: 3, service: "rx", key: `key "log_backups"`, err: ErrValue,
		},
		{
			name: "negative user id",
			toml: "[service.rx]\ncommand = \"rx\"\nuser = -1\n",
			line: 3, service: "rx", key: `key "user"`, err: ErrValue,
		},
		{
			name: "include of the wrong type",
			toml: "include = 3\n",
			line: 1, key: `key "include"`, err: ErrType,
		},
		{
			name: "bad include glob",
			toml: "include = [\"[\"]\n",
			line: 1, key: `key "include"`, err: ErrInclude,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("hb.toml", []byte(tt.toml))
			if err == nil {
				t.Fatalf("Parse succeeded (%+v), want an error", cfg)
			}
			if cfg != nil {
				t.Errorf("Parse returned a Config with an error")
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error %T is not config.Errors: %v", err, err)
			}
			if len(errs) != 1 {
				t.Fatalf("got %d errors, want 1:\n%v", len(errs), err)
			}
			e := errs[0]
			if !errors.Is(err, tt.err) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.err)
			}
			if e.File != "hb.toml" || e.Line != tt.line || e.Service != tt.service {
				t.Errorf("at %s:%d service %q, want hb.toml:%d service %q", e.File, e.Line, e.Service, tt.line, tt.service)
			}
			s := err.Error()
			want := []string{fmt.Sprintf("hb.toml:%d: ", tt.line), tt.key, tt.msg}
			if tt.service != "" {
				want = append(want, fmt.Sprintf("service %q: ", tt.service))
			}
			for _, w := range want {
				if !strings.Contains(s, w) {
					t.Errorf("error %q does not contain %q", s, w)
				}
			}
		})
	}
}

func TestAllErrorsReportedInOrder(t *testing.T) {
	const doc = `[service.b]
command = "b"
start_secs = "fast"

[hbd]
slots = 0
detector = "x"

[service.a]
comand = "a"
restart_delay = "5s"
backoff_max = "nope"
`
	_, err := Parse("hb.toml", []byte(doc))
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Parse error %v is not Errors", err)
	}
	want := []string{
		`hb.toml:3: service "b": key "start_secs": "fast" is not a duration`,
		`hb.toml:6: key "hbd.slots": 0 is out of range 1..65536`,
		`hb.toml:7: key "hbd.detector": want "auto", "connector", "pidfd" or "tracepoint", got "x"`,
		`hb.toml:9: service "a": missing required key "command"`,
		`hb.toml:10: service "a": unknown key "comand" (did you mean "command"?)`,
		`hb.toml:12: service "a": key "backoff_max": "nope" is not a duration`,
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(lines), len(want), err)
	}
	for i := range want {
		if !strings.HasPrefix(lines[i], want[i]) {
			t.Errorf("error %d:\n got %s\nwant %s...", i, lines[i], want[i])
		}
	}
	// The bad backoff_max is not also reported as less than restart_delay.
	if strings.Contains(err.Error(), "less than") {
		t.Errorf("a key that failed to decode was validated again:\n%v", err)
	}
}

func TestErrorFormat(t *testing.T) {
	tests := []struct {
		name string
		e    *Error
		want string
	}{
		{"full", &Error{File: "hb.toml", Line: 12, Service: "rx", Key: "slots", Msg: "bad", Err: ErrValue}, `hb.toml:12: service "rx": key "slots": bad`},
		{"unknown key", &Error{File: "hb.toml", Line: 12, Service: "rx", Key: "comand", Err: ErrUnknownKey}, `hb.toml:12: service "rx": unknown key "comand"`},
		{"no line", &Error{File: "hb.toml", Key: "hbd.slots", Msg: "bad"}, `hb.toml: key "hbd.slots": bad`},
		{"no file", &Error{Service: "rx", Msg: "bad"}, `service "rx": bad`},
		{"message from Err", &Error{File: "a.toml", Line: 1, Err: ErrMissing}, `a.toml:1: missing required key`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.e.Error(); got != tt.want {
				t.Errorf("Error() = %q, want %q", got, tt.want)
			}
		})
	}
	es := Errors{tests[0].e, tests[1].e}
	if got, want := es.Error(), tests[0].want+"\n"+tests[1].want; got != want {
		t.Errorf("Errors.Error() = %q, want %q", got, want)
	}
	var one *Error
	if !errors.As(error(es), &one) || one != tests[0].e {
		t.Errorf("errors.As(Errors, *Error) did not find the first error")
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(t.TempDir() + "/nope.toml")
	if err == nil || !strings.Contains(err.Error(), "nope.toml") {
		t.Fatalf("Load of a missing file = %v, want an error naming it", err)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("errors.Is(%v, fs.ErrNotExist) = false", err)
	}
}
