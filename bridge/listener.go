package bridge

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ListenerEvent is one event supervisord sent its event listener: the
// header line's tokens (ver, server, serial, pool, poolserial, eventname,
// len) and the payload's first line, whose key:value tokens
// PROCESS_STATE_* events fill with processname, groupname, from_state and
// (depending on the state) tries, pid or expected.
type ListenerEvent struct {
	Name    string            // eventname, e.g. PROCESS_STATE_STARTING
	Header  map[string]string // every header token
	Payload map[string]string // the payload's key:value tokens (its first line)
	Raw     string            // the payload as sent
}

// ProcessName is "group:name" of a PROCESS_STATE_* event, as
// getProcessInfo takes it.
func (e ListenerEvent) ProcessName() string {
	return e.Payload["groupname"] + ":" + e.Payload["processname"]
}

// State is the state a PROCESS_STATE_* event enters (STARTING, RUNNING,
// EXITED...), "" for other events.
func (e ListenerEvent) State() string {
	s, ok := strings.CutPrefix(e.Name, "PROCESS_STATE_")
	if !ok {
		return ""
	}
	return s
}

// maxEventLen bounds a payload (supervisord's PROCESS_STATE payloads are a
// line; PROCESS_LOG ones can be larger).
const maxEventLen = 1 << 20

func tokens(s string) map[string]string {
	m := map[string]string{}
	for _, t := range strings.Fields(s) {
		if k, v, ok := strings.Cut(t, ":"); ok {
			m[k] = v
		}
	}
	return m
}

// ReadListenerEvent reads one event (header line, then len bytes of
// payload) from supervisord.
func ReadListenerEvent(r *bufio.Reader) (ListenerEvent, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return ListenerEvent{}, err
	}
	h := tokens(line)
	n, err := strconv.Atoi(h["len"])
	if err != nil || n < 0 || n > maxEventLen {
		return ListenerEvent{}, fmt.Errorf("event listener: header %q: bad len", strings.TrimSpace(line))
	}
	if h["eventname"] == "" {
		return ListenerEvent{}, fmt.Errorf("event listener: header %q: no eventname", strings.TrimSpace(line))
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return ListenerEvent{}, fmt.Errorf("event listener: payload of %d bytes: %w", n, err)
	}
	first, _, _ := strings.Cut(string(buf), "\n")
	return ListenerEvent{Name: h["eventname"], Header: h, Payload: tokens(first), Raw: string(buf)}, nil
}

// Listen speaks supervisord's event listener protocol on r (its stdin) and
// w (its stdout): READY, one event, RESULT 2 OK (or RESULT 4 FAIL when
// handle fails, and supervisord sends the event again later), READY... It
// returns when r ends (supervisord stopped the listener) or breaks the
// protocol.
func Listen(r io.Reader, w io.Writer, handle func(ListenerEvent) error) error {
	br := bufio.NewReader(r)
	for {
		if _, err := io.WriteString(w, "READY\n"); err != nil {
			return err
		}
		ev, err := ReadListenerEvent(br)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		res := "RESULT 2\nOK"
		if handle(ev) != nil {
			res = "RESULT 4\nFAIL"
		}
		if _, err := io.WriteString(w, res); err != nil {
			return err
		}
	}
}
