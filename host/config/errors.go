package config

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors, matched with errors.Is against an [*Error] or [Errors].
var (
	ErrSyntax      = errors.New("TOML syntax error")
	ErrUnknownKey  = errors.New("unknown key")
	ErrType        = errors.New("wrong type")
	ErrValue       = errors.New("invalid value")
	ErrMissing     = errors.New("missing required key")
	ErrDuplicate   = errors.New("service defined twice")
	ErrInclude     = errors.New("include failed")
	ErrNoUser      = errors.New("no such user")
	ErrNoGroup     = errors.New("no such group")
	ErrNoExec      = errors.New("command not found or not executable")
	ErrNoDirectory = errors.New("no such directory")
)

// Error is one problem in a configuration, located at a file and line.
type Error struct {
	File    string // file as named in Config.Files; "" when not from a file
	Line    int    // 1-based; 0 when unknown
	Service string // service name, when the problem is inside [service.NAME]
	// Key is the key's dotted path, relative to [service.NAME] when Service
	// is set ("command", "environment.PATH"), else from the top ("hbd.slots").
	Key string
	Msg string // what is wrong with it
	Err error  // one of the sentinels above, or an underlying error
}

// Error formats the problem as `hb.toml:12: service "rx": key "slots": msg`,
// or `hb.toml:12: service "rx": unknown key "comand"`.
func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
		b.WriteString(": ")
	}
	if e.Service != "" {
		fmt.Fprintf(&b, "service %q: ", e.Service)
	}
	msg := e.Msg
	if msg == "" && e.Err != nil {
		msg = e.Err.Error()
	}
	switch {
	case e.Key != "" && errors.Is(e.Err, ErrUnknownKey):
		fmt.Fprintf(&b, "unknown key %q", e.Key)
		if e.Msg != "" {
			b.WriteString(" (" + e.Msg + ")")
		}
	case e.Key != "":
		fmt.Fprintf(&b, "key %q: %s", e.Key, msg)
	default:
		b.WriteString(msg)
	}
	return b.String()
}

// Unwrap returns the sentinel or underlying error.
func (e *Error) Unwrap() error { return e.Err }

// Errors is every problem found, in file and line order. Load, Parse,
// Validate, Check and Resolve return it (never an empty one) as their error.
type Errors []*Error

// Error lists the problems one per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap gives errors.Is and errors.As every problem.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// orNil returns es as an error, or nil when it is empty.
func (es Errors) orNil() error {
	if len(es) == 0 {
		return nil
	}
	return es
}

// fieldError is a decoding problem with one value, located by the caller.
type fieldError struct {
	err error
	msg string
}

func (e *fieldError) Error() string { return e.msg }
func (e *fieldError) Unwrap() error { return e.err }

func typeErr(want string, v any) error {
	return &fieldError{ErrType, "want " + want + ", got " + describe(v)}
}

func valueErr(format string, args ...any) error {
	return &fieldError{ErrValue, fmt.Sprintf(format, args...)}
}

// describe names a decoded TOML value's type, with the value when short.
func describe(v any) string {
	switch v := v.(type) {
	case string:
		if len(v) > 40 {
			v = v[:37] + "..."
		}
		return fmt.Sprintf("string %q", v)
	case int64:
		return fmt.Sprintf("integer %d", v)
	case float64:
		return fmt.Sprintf("float %v", v)
	case bool:
		return fmt.Sprintf("boolean %v", v)
	case []any, []map[string]any:
		return "array"
	case map[string]any:
		return "table"
	case nil:
		return "nothing"
	}
	return "datetime"
}

// suggest returns ` did you mean "x"?` for the known key closest to key, or "".
func suggest(key string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if d := editDistance(strings.ToLower(key), k); d < bestD {
			best, bestD = k, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf("did you mean %q?", best)
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 1 << 30
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
