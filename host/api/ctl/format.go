package ctl

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/hbshim/hb/host/api"
)

func writeJSON(w io.Writer, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		panic(fmt.Sprintf("hbctl: encoding %T: %v", v, err)) // only our own plain types are encoded
	}
	w.Write(append(b, '\n'))
}

func writeJSONLine(w io.Writer, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("hbctl: encoding %T: %v", v, err))
	}
	w.Write(append(b, '\n'))
}

// table is a tabwriter whose lines lose the padding of empty last cells.
type table struct {
	w   io.Writer
	buf bytes.Buffer
	*tabwriter.Writer
}

func newTable(w io.Writer) *table {
	t := &table{w: w}
	t.Writer = tabwriter.NewWriter(&t.buf, 0, 8, 2, ' ', 0)
	return t
}

// Flush writes the aligned table.
func (t *table) Flush() {
	t.Writer.Flush()
	for l := range strings.Lines(t.buf.String()) {
		io.WriteString(t.w, strings.TrimRight(l, " \n")+"\n")
	}
	t.buf.Reset()
}

// writeStatusTable prints the `status` table.
func writeStatusTable(w io.Writer, sts []api.ServiceStatus, now time.Time) {
	tw := newTable(w)
	fmt.Fprintln(tw, "NAME\tSTATE\tPID\tGEN\tEXITS\tLAST\tUPTIME/SINCE\tREASON")
	for _, st := range sts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n",
			st.Name, st.State, pidString(st.PID), st.Generation, st.Exits,
			lastStatus(st.Exits, st.LastStatus), uptimeOrSince(st, now), reason(st, now))
	}
	tw.Flush()
}

func pidString(pid int) string {
	if pid == 0 {
		return "-"
	}
	return fmt.Sprint(pid)
}

// lastStatus shows an exit status: "-" before the first exit, "?" when
// unknown, "137(KILL)" for 128+signal.
func lastStatus(exits uint64, status int) string {
	switch {
	case exits == 0:
		return "-"
	case status < 0:
		return "?"
	case status > 128 && status <= 128+64:
		return fmt.Sprintf("%d(%s)", status, api.SignalName(syscall.Signal(status-128)))
	}
	return fmt.Sprint(status)
}

func uptimeOrSince(st api.ServiceStatus, now time.Time) string {
	switch st.State {
	case "starting", "running", "stopping":
		if st.Uptime != "" {
			return st.Uptime
		}
		if !st.Since.IsZero() {
			return now.Sub(st.Since).Round(time.Second).String()
		}
	}
	if st.Since.IsZero() {
		return "-"
	}
	return "since " + clock(st.Since, now)
}

// clock is "15:04:05" today, else "2006-01-02 15:04".
func clock(t, now time.Time) string {
	t, now = t.Local(), now.Local()
	ty, tm, td := t.Date()
	ny, nm, nd := now.Date()
	if ty == ny && tm == nm && td == nd {
		return t.Format("15:04:05")
	}
	return t.Format("2006-01-02 15:04")
}

func reason(st api.ServiceStatus, now time.Time) string {
	var parts []string
	if st.Adopted {
		parts = append(parts, "adopted")
	}
	if st.Reason != "" {
		r := st.Reason
		if !st.ReasonAt.IsZero() {
			r += " (" + clock(st.ReasonAt, now) + ")"
		}
		parts = append(parts, r)
	}
	if st.LogError != "" {
		parts = append(parts, st.LogError)
	}
	if st.StatusText != "" {
		parts = append(parts, "status: "+st.StatusText)
	}
	if !st.NextStart.IsZero() {
		if d := st.NextStart.Sub(now); d > 0 {
			parts = append(parts, "next start in "+roundDuration(d).String())
		} else {
			parts = append(parts, "start due")
		}
	}
	return strings.Join(parts, "; ")
}

func roundDuration(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(100 * time.Millisecond)
}

// eventLine formats an event for `watch`:
//
//	19:36:02.123456 exit    rx  pid 1234 gen 3 status 137(KILL) via connector
func eventLine(ev api.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %-6s", ev.Time.Local().Format("15:04:05.000000"), ev.Kind)
	if ev.Name != "" {
		fmt.Fprintf(&b, " %s", ev.Name)
	}
	switch ev.Kind {
	case api.EventSpawn, api.EventAdopt, api.EventHung:
		fmt.Fprintf(&b, " pid %d gen %d", ev.PID, ev.Generation)
	case api.EventExit:
		fmt.Fprintf(&b, " pid %d gen %d status %s", ev.PID, ev.Generation, lastStatus(1, ev.Status))
		if ev.Source != "" {
			fmt.Fprintf(&b, " via %s", ev.Source)
		}
	}
	if ev.State != "" {
		fmt.Fprintf(&b, " -> %s", ev.State)
	}
	if ev.Reason != "" {
		fmt.Fprintf(&b, ": %s", ev.Reason)
	}
	return b.String()
}
