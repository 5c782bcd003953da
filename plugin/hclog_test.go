package plugin

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	hclog "github.com/hashicorp/go-hclog"
)

// go-plugin's lines come out as the slog handler writes them: one JSON
// format, one "logger" key however often the logger is named, hclog's
// levels mapped and filtered.
func TestHCLoggerWritesThroughSlog(t *testing.T) {
	var buf bytes.Buffer
	base := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})).With("plugin_pid", 7)
	l := HCLogger(base, hclog.Trace).Named("go-plugin").With("plugin", "shim").Named("grpc")
	l.Trace("dropped: below the handler's level")
	l.Debug("debug line", "pid", 42)
	l.Warn("warn line")
	l.SetLevel(hclog.Error)
	l.Warn("dropped: below the logger's level")
	if l.IsWarn() || !l.IsError() {
		t.Errorf("after SetLevel(Error): IsWarn %v IsError %v", l.IsWarn(), l.IsError())
	}
	l.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Error}).Print("std line")

	var got []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if strings.Count(line, `"logger"`) != 1 || strings.Count(line, `"pid"`) > 1 {
			t.Errorf("line with a repeated key: %s", line)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not one JSON object: %q: %v", line, err)
		}
		got = append(got, m)
	}
	want := []struct{ level, msg string }{{"DEBUG", "debug line"}, {"WARN", "warn line"}, {"ERROR", "std line"}}
	if len(got) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(got), len(want), buf.String())
	}
	for i, w := range want {
		m := got[i]
		if m["level"] != w.level || m["msg"] != w.msg || m["logger"] != "go-plugin.grpc" || m["plugin"] != "shim" || m["plugin_pid"] != float64(7) {
			t.Errorf("line %d = %v, want level %s msg %q logger go-plugin.grpc plugin shim plugin_pid 7", i, m, w.level, w.msg)
		}
	}
	if got[0]["pid"] != float64(42) {
		t.Errorf("line 0 pid = %v, want 42", got[0]["pid"])
	}
}
