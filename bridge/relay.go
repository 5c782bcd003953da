package bridge

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"
)

// relayTimeout bounds how long the listener waits for the plugin's answer
// to one event before it acknowledges the event to supervisord anyway.
const relayTimeout = 5 * time.Second

// RunListener is `hbd supervisord-listener`: supervisord's event listener
// (events = PROCESS_STATE,PROCESS_GROUP) that relays each PROCESS_STATE_*,
// PROCESS_GROUP_ADDED and PROCESS_GROUP_REMOVED event (the last two tell a
// plugin that bridges every program of supervisord of programs added and
// removed) to the hb plugin over the unix socket at socket
// (state_dir/supervisord.sock), waits for the plugin's "ok", then answers
// supervisord RESULT 2 OK. It first says
// "hello $SUPERVISOR_SERVER_URL self=GROUP:NAME" (its own name in
// supervisord, which is not to be bridged), which makes the plugin re-sync
// from supervisord. Without the plugin it still acknowledges every event
// (so supervisord's queue never fills) and tries the socket again at the
// next one. It returns when supervisord closes its stdin.
func RunListener(socket string, in io.Reader, out, errw io.Writer) error {
	r := &relay{socket: socket, url: os.Getenv("SUPERVISOR_SERVER_URL"), errw: errw}
	if g, n := os.Getenv("SUPERVISOR_GROUP_NAME"), os.Getenv("SUPERVISOR_PROCESS_NAME"); g != "" && n != "" {
		r.self = g + ":" + n
	}
	r.connect()
	defer r.close()
	return Listen(in, out, func(ev ListenerEvent) error {
		if !Relayed(ev.Name) {
			return nil
		}
		first, _, _ := strings.Cut(ev.Raw, "\n")
		if r.c == nil {
			r.connect()
		}
		if r.c != nil {
			if err := r.send(ev.Name + " " + first); err != nil {
				fmt.Fprintf(errw, "hb listener: %s: %v\n", socket, err)
				r.close()
			}
		}
		return nil
	})
}

// Relayed reports whether the listener relays events named eventname to
// the plugin: PROCESS_STATE_* and PROCESS_GROUP_ADDED/REMOVED.
func Relayed(eventname string) bool {
	return strings.HasPrefix(eventname, "PROCESS_STATE_") ||
		eventname == "PROCESS_GROUP_ADDED" || eventname == "PROCESS_GROUP_REMOVED"
}

type relay struct {
	socket, url string
	self        string // group:name of this listener in supervisord
	errw        io.Writer
	c           net.Conn
	br          *bufio.Reader
}

func (r *relay) connect() {
	if err := CheckTrusted(r.socket); err != nil {
		fmt.Fprintf(r.errw, "hb listener: %v\n", err)
		return
	}
	c, err := net.DialTimeout("unix", r.socket, relayTimeout)
	if err != nil {
		fmt.Fprintf(r.errw, "hb listener: %v\n", err)
		return
	}
	r.c, r.br = c, bufio.NewReader(c)
	hello := "hello " + r.url
	if r.self != "" {
		hello += " self=" + r.self
	}
	if err := r.send(hello); err != nil {
		fmt.Fprintf(r.errw, "hb listener: %s: %v\n", r.socket, err)
		r.close()
	}
}

func (r *relay) send(line string) error {
	_ = r.c.SetDeadline(time.Now().Add(relayTimeout))
	if _, err := io.WriteString(r.c, strings.ReplaceAll(line, "\n", " ")+"\n"); err != nil {
		return err
	}
	ans, err := r.br.ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(ans) != "ok" {
		return fmt.Errorf("plugin answered %q", ans)
	}
	return nil
}

func (r *relay) close() {
	if r.c != nil {
		r.c.Close()
		r.c = nil
	}
}
