package plugin

import (
	"context"
	"io"
	"log"
	"log/slog"
	"sync/atomic"

	hclog "github.com/hashicorp/go-hclog"
)

// LevelTrace is hclog's Trace level in slog's scale.
const LevelTrace = slog.LevelDebug - 4

// HCLogger returns an hclog.Logger for go-plugin that writes through l, so
// that go-plugin's and gRPC's lines come out in the same format and with the
// same keys as the rest of hb's log. Its own level (SetLevel, initially
// min) is applied on top of l's handler's. The logger name becomes a
// "logger" attribute.
func HCLogger(l *slog.Logger, min hclog.Level) hclog.Logger {
	a := &hcAdapter{base: l, l: l, level: new(atomic.Int32)}
	a.level.Store(int32(min))
	return a
}

type hcAdapter struct {
	base    *slog.Logger // as HCLogger was given it
	l       *slog.Logger // base with the name and the implied arguments
	name    string
	implied []any
	level   *atomic.Int32 // an hclog.Level, shared by the loggers With and Named make
	// demote, while true, logs every line at debug: go-plugin's words on a
	// plugin that did not start (architectures, handshakes) would bury the
	// reason, which the launch's error gives.
	demote *atomic.Bool
}

// demoteWhileLaunching returns l, if HCLogger made it, as a logger that
// logs at debug until the returned function is called; other loggers are
// returned as they are.
func demoteWhileLaunching(l hclog.Logger) (hclog.Logger, func()) {
	a, ok := l.(*hcAdapter)
	if !ok {
		return l, func() {}
	}
	b := *a
	b.demote = new(atomic.Bool)
	b.demote.Store(true)
	return &b, func() { b.demote.Store(false) }
}

func slogLevel(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace:
		return LevelTrace
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Info, hclog.NoLevel:
		return slog.LevelInfo
	case hclog.Warn:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

func (a *hcAdapter) enabled(l hclog.Level) bool {
	min := hclog.Level(a.level.Load())
	if min == hclog.Off || (min != hclog.NoLevel && l < min) {
		return false
	}
	return a.l.Enabled(context.Background(), slogLevel(l))
}

func (a *hcAdapter) Log(level hclog.Level, msg string, args ...any) {
	if a.demote != nil && a.demote.Load() && level != hclog.Off {
		a.l.Log(context.Background(), slog.LevelDebug, msg, args...)
		return
	}
	if level == hclog.Off || !a.enabled(level) {
		return
	}
	a.l.Log(context.Background(), slogLevel(level), msg, args...)
}

func (a *hcAdapter) Trace(msg string, args ...any) { a.Log(hclog.Trace, msg, args...) }
func (a *hcAdapter) Debug(msg string, args ...any) { a.Log(hclog.Debug, msg, args...) }
func (a *hcAdapter) Info(msg string, args ...any)  { a.Log(hclog.Info, msg, args...) }
func (a *hcAdapter) Warn(msg string, args ...any)  { a.Log(hclog.Warn, msg, args...) }
func (a *hcAdapter) Error(msg string, args ...any) { a.Log(hclog.Error, msg, args...) }

func (a *hcAdapter) IsTrace() bool { return a.enabled(hclog.Trace) }
func (a *hcAdapter) IsDebug() bool { return a.enabled(hclog.Debug) }
func (a *hcAdapter) IsInfo() bool  { return a.enabled(hclog.Info) }
func (a *hcAdapter) IsWarn() bool  { return a.enabled(hclog.Warn) }
func (a *hcAdapter) IsError() bool { return a.enabled(hclog.Error) }

func (a *hcAdapter) ImpliedArgs() []any { return a.implied }

func (a *hcAdapter) With(args ...any) hclog.Logger {
	b := *a
	b.l = a.l.With(args...)
	b.implied = append(append([]any(nil), a.implied...), args...)
	return &b
}

func (a *hcAdapter) Name() string { return a.name }

func (a *hcAdapter) Named(name string) hclog.Logger {
	if a.name != "" {
		name = a.name + "." + name
	}
	return a.ResetNamed(name)
}

// ResetNamed names the logger name. The "logger" attribute is added to the
// logger HCLogger was given, so a line never carries two.
func (a *hcAdapter) ResetNamed(name string) hclog.Logger {
	b := *a
	b.name = name
	b.l = a.base.With(append([]any{"logger", name}, a.implied...)...)
	return &b
}

func (a *hcAdapter) SetLevel(level hclog.Level) { a.level.Store(int32(level)) }
func (a *hcAdapter) GetLevel() hclog.Level      { return hclog.Level(a.level.Load()) }

func (a *hcAdapter) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(a.StandardWriter(opts), "", 0)
}

func (a *hcAdapter) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	level := hclog.Info
	if opts != nil && opts.ForceLevel != hclog.NoLevel {
		level = opts.ForceLevel
	}
	return hcWriter{a: a, level: level}
}

// hcWriter logs each Write as one line at its level.
type hcWriter struct {
	a     *hcAdapter
	level hclog.Level
}

func (w hcWriter) Write(p []byte) (int, error) {
	msg := string(p)
	for len(msg) > 0 && (msg[len(msg)-1] == '\n' || msg[len(msg)-1] == '\r') {
		msg = msg[:len(msg)-1]
	}
	w.a.Log(w.level, msg)
	return len(p), nil
}
