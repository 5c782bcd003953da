package bridge

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Supervisor is a client of supervisord's XML-RPC interface (/RPC2), over
// its unix socket ("unix:///run/supervisor.sock") or HTTP
// ("http://127.0.0.1:9001"), as supervisorctl's serverurl.
type Supervisor struct {
	URL string
	// Socket is the unix socket path when URL is unix://, else "".
	Socket string
	hc     *http.Client
	rpcURL string
}

// NewSupervisor makes a client for serverURL. A unix socket is vetted with
// CheckTrusted on every call (a root process never talks to a socket
// someone else could have put there).
func NewSupervisor(serverURL string) (*Supervisor, error) {
	s := &Supervisor{URL: serverURL}
	switch {
	case strings.HasPrefix(serverURL, "unix://"):
		s.Socket = strings.TrimPrefix(serverURL, "unix://")
		if !strings.HasPrefix(s.Socket, "/") {
			return nil, fmt.Errorf("server_url %q: the socket path must be absolute (unix:///path)", serverURL)
		}
		sock := s.Socket
		s.hc = &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				if err := CheckTrusted(sock); err != nil {
					return nil, err
				}
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			},
			DisableKeepAlives: true,
		}}
		s.rpcURL = "http://localhost/RPC2"
	case strings.HasPrefix(serverURL, "http://"):
		u, err := url.Parse(serverURL)
		if err != nil || u.Port() == "" {
			return nil, fmt.Errorf("server_url %q: want http://HOST:PORT", serverURL)
		}
		port, err := strconv.Atoi(u.Port())
		if err != nil {
			return nil, fmt.Errorf("server_url %q: port: %w", serverURL, err)
		}
		if h := u.Hostname(); h != "localhost" && h != "::1" && !strings.HasPrefix(h, "127.") {
			return nil, fmt.Errorf("server_url %q: only this machine's supervisord can be bridged (localhost, 127.x, ::1)", serverURL)
		}
		s.hc = &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				if err := CheckTCPListener(port); err != nil {
					return nil, err
				}
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			},
			DisableKeepAlives: true,
		}}
		s.rpcURL = strings.TrimSuffix(serverURL, "/") + "/RPC2"
	default:
		return nil, fmt.Errorf("server_url %q: want unix:///PATH or http://HOST:PORT", serverURL)
	}
	return s, nil
}

// Fault is an XML-RPC fault supervisord answered with (e.g. 10
// BAD_NAME, 60 ALREADY_STARTED, 70 NOT_RUNNING).
type Fault struct {
	Code   int
	String string
}

func (f *Fault) Error() string { return fmt.Sprintf("supervisord fault %d: %s", f.Code, f.String) }

// Supervisord fault codes hb acts on.
const (
	FaultBadName        = 10
	FaultAlreadyStarted = 60
	FaultNotRunning     = 70
)

// ProcessInfo is what getProcessInfo returns, the fields hb uses.
type ProcessInfo struct {
	Name, Group string
	State       int // 0 STOPPED, 10 STARTING, 20 RUNNING, 30 BACKOFF, 40 STOPPING, 100 EXITED, 200 FATAL, 1000 UNKNOWN
	StateName   string
	PID         int
	ExitStatus  int
	Description string
}

// FullName is "group:name", as supervisorctl names a process.
func (p ProcessInfo) FullName() string { return p.Group + ":" + p.Name }

// Call calls method with string arguments and returns the decoded value:
// string, int, bool, []any or map[string]any.
func (s *Supervisor) Call(ctx context.Context, method string, args ...any) (any, error) {
	var body bytes.Buffer
	body.WriteString(`<?xml version="1.0"?><methodCall><methodName>`)
	_ = xml.EscapeText(&body, []byte(method))
	body.WriteString(`</methodName><params>`)
	for _, a := range args {
		body.WriteString(`<param><value>`)
		switch v := a.(type) {
		case string:
			body.WriteString(`<string>`)
			_ = xml.EscapeText(&body, []byte(v))
			body.WriteString(`</string>`)
		case bool:
			b := 0
			if v {
				b = 1
			}
			fmt.Fprintf(&body, `<boolean>%d</boolean>`, b)
		case int:
			fmt.Fprintf(&body, `<int>%d</int>`, v)
		default:
			return nil, fmt.Errorf("xml-rpc %s: argument of type %T", method, a)
		}
		body.WriteString(`</value></param>`)
	}
	body.WriteString(`</params></methodCall>`)
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.rpcURL, &body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "text/xml")
	resp, err := s.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("supervisord %s: %w", s.URL, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("supervisord %s: %w", s.URL, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("supervisord %s: %s: HTTP %s", s.URL, method, resp.Status)
	}
	v, err := DecodeResponse(data)
	if err != nil {
		return nil, fmt.Errorf("supervisord %s: %s: %w", s.URL, method, err)
	}
	return v, nil
}

// ProcessInfo calls supervisor.getProcessInfo(name).
func (s *Supervisor) ProcessInfo(ctx context.Context, name string) (ProcessInfo, error) {
	v, err := s.Call(ctx, "supervisor.getProcessInfo", name)
	if err != nil {
		return ProcessInfo{}, err
	}
	m, ok := v.(map[string]any)
	if !ok {
		return ProcessInfo{}, fmt.Errorf("getProcessInfo(%s): not a struct", name)
	}
	return processInfo(m), nil
}

// AllProcessInfo calls supervisor.getAllProcessInfo().
func (s *Supervisor) AllProcessInfo(ctx context.Context) ([]ProcessInfo, error) {
	v, err := s.Call(ctx, "supervisor.getAllProcessInfo")
	if err != nil {
		return nil, err
	}
	list, ok := v.([]any)
	if !ok {
		return nil, errors.New("getAllProcessInfo: not an array")
	}
	var out []ProcessInfo
	for _, e := range list {
		if m, ok := e.(map[string]any); ok {
			out = append(out, processInfo(m))
		}
	}
	return out, nil
}

// ConfigInfo is what getAllConfigInfo returns of one process, the fields
// hb uses.
type ConfigInfo struct {
	Name, Group, Command string
}

// FullName is "group:name".
func (c ConfigInfo) FullName() string { return c.Group + ":" + c.Name }

// AllConfigInfo calls supervisor.getAllConfigInfo(): every process
// configured, event listeners included.
func (s *Supervisor) AllConfigInfo(ctx context.Context) ([]ConfigInfo, error) {
	v, err := s.Call(ctx, "supervisor.getAllConfigInfo")
	if err != nil {
		return nil, err
	}
	list, ok := v.([]any)
	if !ok {
		return nil, errors.New("getAllConfigInfo: not an array")
	}
	var out []ConfigInfo
	for _, e := range list {
		if m, ok := e.(map[string]any); ok {
			str := func(k string) string { s, _ := m[k].(string); return s }
			out = append(out, ConfigInfo{Name: str("name"), Group: str("group"), Command: str("command")})
		}
	}
	return out, nil
}

// ListenerCommand is the word in a command line that makes it hb's event
// listener (`hbd supervisord-listener`), which is never bridged.
const ListenerCommand = "supervisord-listener"

// IsListenerCommand reports whether command (getAllConfigInfo's) runs hb's
// event listener.
func IsListenerCommand(command string) bool {
	for _, w := range strings.Fields(command) {
		if w == ListenerCommand {
			return true
		}
	}
	return false
}

// PID calls supervisor.getPID(): supervisord's own PID.
func (s *Supervisor) PID(ctx context.Context) (int, error) {
	v, err := s.Call(ctx, "supervisor.getPID")
	if err != nil {
		return 0, err
	}
	n, ok := v.(int)
	if !ok || n <= 0 {
		return 0, fmt.Errorf("getPID: %v is not a PID", v)
	}
	return n, nil
}

func processInfo(m map[string]any) ProcessInfo {
	str := func(k string) string { s, _ := m[k].(string); return s }
	num := func(k string) int { n, _ := m[k].(int); return n }
	return ProcessInfo{
		Name: str("name"), Group: str("group"), State: num("state"), StateName: str("statename"),
		PID: num("pid"), ExitStatus: num("exitstatus"), Description: str("description"),
	}
}

// DecodeResponse decodes an XML-RPC methodResponse: its one value, or a
// *Fault.
func DecodeResponse(data []byte) (any, error) {
	d := xml.NewDecoder(bytes.NewReader(data))
	fault := false
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, fmt.Errorf("xml-rpc response: %w", err)
		}
		se, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		switch se.Name.Local {
		case "fault":
			fault = true
		case "value":
			v, err := decodeValue(d)
			if err != nil {
				return nil, fmt.Errorf("xml-rpc response: %w", err)
			}
			if fault {
				m, _ := v.(map[string]any)
				f := &Fault{}
				f.Code, _ = m["faultCode"].(int)
				f.String, _ = m["faultString"].(string)
				return nil, f
			}
			return v, nil
		}
	}
}

// decodeValue decodes the inside of a <value> whose start was read, up to
// and including its end.
func decodeValue(d *xml.Decoder) (any, error) {
	var text strings.Builder
	var v any
	typed := false
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.CharData:
			text.Write(t)
		case xml.EndElement: // </value>
			if !typed {
				return text.String(), nil // untyped: a string
			}
			return v, nil
		case xml.StartElement:
			typed = true
			if v, err = decodeTyped(d, t.Name.Local); err != nil {
				return nil, err
			}
		}
	}
}

func decodeTyped(d *xml.Decoder, kind string) (any, error) {
	switch kind {
	case "struct":
		m := map[string]any{}
		for {
			tok, err := d.Token()
			if err != nil {
				return nil, err
			}
			switch t := tok.(type) {
			case xml.EndElement:
				if t.Name.Local == "struct" {
					return m, nil
				}
			case xml.StartElement:
				if t.Name.Local != "member" {
					continue
				}
				name, val, err := decodeMember(d)
				if err != nil {
					return nil, err
				}
				m[name] = val
			}
		}
	case "array":
		var list []any
		for {
			tok, err := d.Token()
			if err != nil {
				return nil, err
			}
			switch t := tok.(type) {
			case xml.EndElement:
				if t.Name.Local == "array" {
					return list, nil
				}
			case xml.StartElement:
				if t.Name.Local == "value" {
					v, err := decodeValue(d)
					if err != nil {
						return nil, err
					}
					list = append(list, v)
				}
			}
		}
	}
	var s string
	if err := d.DecodeElement(&s, &xml.StartElement{Name: xml.Name{Local: kind}}); err != nil {
		return nil, err
	}
	switch kind {
	case "int", "i4", "i8":
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("<%s>%s</%s>: %w", kind, s, kind, err)
		}
		return n, nil
	case "boolean":
		return strings.TrimSpace(s) == "1", nil
	case "double":
		return strconv.ParseFloat(strings.TrimSpace(s), 64)
	}
	return s, nil // string, dateTime.iso8601, base64: as text
}

func decodeMember(d *xml.Decoder) (string, any, error) {
	var name string
	var val any
	for {
		tok, err := d.Token()
		if err != nil {
			return "", nil, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			switch t.Name.Local {
			case "name":
				if err := d.DecodeElement(&name, &t); err != nil {
					return "", nil, err
				}
			case "value":
				if val, err = decodeValue(d); err != nil {
					return "", nil, err
				}
			}
		case xml.EndElement:
			if t.Name.Local == "member" {
				return name, val, nil
			}
		}
	}
}
