package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/hbshim/hb/host/api"
)

func runStatus(ctx context.Context, c *cli, args []string) int {
	var sts []api.ServiceStatus
	rc := ExitOK
	if len(args) == 0 {
		var err error
		if sts, err = c.client.List(ctx); err != nil {
			return c.statusFail(err)
		}
	}
	var all []api.ServiceStatus // for names that stand for instances
	for _, name := range args {
		st, err := c.client.Get(ctx, name)
		if errors.Is(err, api.ErrNotFound) {
			if all == nil {
				if all, err = c.client.List(ctx); err != nil {
					return c.statusFail(err)
				}
			}
			n := len(sts)
			for _, st := range all {
				if st.InstanceOf == name {
					sts = append(sts, st)
				}
			}
			if len(sts) > n {
				continue
			}
			if !c.o.quiet {
				fmt.Fprintf(c.Stderr, "hbctl: status: no service %q\n", name)
			}
			rc = ExitFailed
			continue
		}
		if err != nil {
			return c.statusFail(err)
		}
		sts = append(sts, st)
	}
	if sts == nil {
		sts = []api.ServiceStatus{}
	}
	switch {
	case c.o.quiet:
	case c.o.json:
		writeJSON(c.Stdout, sts)
	default:
		writeStatusTable(c.Stdout, sts, time.Now())
		if len(args) > 0 {
			writeLogDetails(c.Stdout, sts)
		}
	}
	if rc == ExitOK {
		for _, st := range sts {
			if !st.OK {
				rc = ExitNotWanted
			}
		}
	}
	return rc
}

// statusFail is fail for status: hbd unreachable means the state is
// unknown (4, as LSB's status), not "not running" (3).
func (c *cli) statusFail(err error) int {
	if c.o.quiet {
		c.Stderr = io.Discard
	}
	rc := c.fail(err)
	if rc == ExitUnreachable {
		return ExitUnknown
	}
	return rc
}

func runAction(ctx context.Context, c *cli, args []string) int {
	switch {
	case c.o.all && len(args) > 0:
		return c.usageErr(c.cmd, "give service names or --all, not both")
	case !c.o.all && len(args) == 0:
		return c.usageErr(c.cmd, "no service named (give NAME... or --all)")
	}
	var do func(context.Context, ...string) ([]api.ServiceStatus, error)
	var all func(context.Context) ([]api.ServiceStatus, error)
	switch c.cmd.name {
	case "start":
		do, all = c.client.Start, c.client.StartAll
	case "stop":
		do, all = c.client.Stop, c.client.StopAll
	default:
		do, all = c.client.Restart, c.client.RestartAll
	}
	var sts []api.ServiceStatus
	var err error
	if c.o.all {
		sts, err = all(ctx)
	} else {
		sts, err = do(ctx, args...)
	}
	var ae *api.APIError
	if errors.As(err, &ae) && len(ae.Services) > 0 {
		// Failed for some: one line per service, the failed ones on stderr.
		if c.o.json {
			writeJSON(c.Stdout, ae.Services)
			return ExitFailed
		}
		for _, st := range ae.Services {
			if st.Error != "" {
				fmt.Fprintf(c.Stderr, "hbctl: %s: %s: %s\n", c.cmd.name, st.Name, st.Error)
			} else {
				fmt.Fprintln(c.Stdout, oneLine(st))
			}
		}
		return ExitFailed
	}
	if err != nil {
		return c.fail(err)
	}
	if c.o.json {
		writeJSON(c.Stdout, sts)
		return ExitOK
	}
	for _, st := range sts {
		fmt.Fprintln(c.Stdout, oneLine(st))
	}
	return ExitOK
}

// oneLine is "rx: running, pid 1234, generation 3".
func oneLine(st api.ServiceStatus) string {
	s := st.Name + ": " + st.State
	if st.PID != 0 {
		s += fmt.Sprintf(", pid %d", st.PID)
	}
	if st.Generation != 0 {
		s += fmt.Sprintf(", generation %d", st.Generation)
	}
	if st.Reason != "" {
		s += " (" + st.Reason + ")"
	}
	return s
}

func runSignal(ctx context.Context, c *cli, args []string) int {
	if len(args) != 2 {
		return c.usageErr(c.cmd, "want a signal and a service name")
	}
	sig, err := api.ParseSignal(strings.TrimPrefix(args[0], "-"))
	if err != nil {
		return c.usageErr(c.cmd, fmt.Sprintf("unknown signal %q", args[0]))
	}
	st, err := c.client.Signal(ctx, args[1], sig)
	if err != nil {
		return c.fail(err)
	}
	if c.o.json {
		writeJSON(c.Stdout, st)
		return ExitOK
	}
	fmt.Fprintf(c.Stdout, "%s: sent SIG%s to pid %d\n", st.Name, api.SignalName(sig), st.PID)
	return ExitOK
}

func runReload(ctx context.Context, c *cli, args []string) int {
	if len(args) > 0 {
		return c.usageErr(c.cmd, "no arguments expected")
	}
	res, err := c.client.Reload(ctx)
	if err != nil {
		return c.fail(err)
	}
	if c.o.json {
		writeJSON(c.Stdout, res)
		return ExitOK
	}
	var parts []string
	for _, p := range []struct {
		what  string
		names []string
	}{{"added", res.Added}, {"removed", res.Removed}, {"changed", res.Changed}} {
		if len(p.names) > 0 {
			parts = append(parts, fmt.Sprintf("%d %s (%s)", len(p.names), p.what, strings.Join(p.names, ", ")))
		}
	}
	if len(parts) == 0 {
		parts = []string{"no changes"}
	}
	fmt.Fprintf(c.Stdout, "reloaded: %s\n", strings.Join(parts, "; "))
	return ExitOK
}

func runWatch(ctx context.Context, c *cli, args []string) int {
	evs, err := c.client.Events(ctx)
	if err != nil {
		return c.fail(err)
	}
	want := map[string]bool{}
	for _, a := range args {
		want[a] = true
	}
	for ev := range evs {
		if len(want) > 0 && !want[ev.Name] && ev.Kind != api.EventReload {
			continue
		}
		if c.o.json {
			writeJSONLine(c.Stdout, ev)
		} else {
			fmt.Fprintln(c.Stdout, eventLine(ev))
		}
	}
	if ctx.Err() != nil {
		return ExitOK // interrupted: the normal way to end watch
	}
	fmt.Fprintf(c.Stderr, "hbctl: watch: the event stream from %s ended: hbd stopped?\n", c.o.socket)
	return ExitUnreachable
}

func runWait(ctx context.Context, c *cli, args []string) int {
	switch {
	case len(args) == 0:
		return c.usageErr(c.cmd, "no service named")
	case c.o.up == c.o.down:
		return c.usageErr(c.cmd, "give exactly one of --up and --down")
	case c.o.timeout < 0:
		return c.usageErr(c.cmd, "negative --timeout")
	}
	want := "down"
	if c.o.up {
		want = "up"
	}
	if c.o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.o.timeout)
		defer cancel()
	}
	for _, name := range args {
		st, err := c.client.Wait(ctx, name, c.o.up)
		if errors.Is(err, context.DeadlineExceeded) {
			fmt.Fprintf(c.Stderr, "hbctl: wait: timed out after %s: %s is not %s (%s)\n", c.o.timeout, name, want, describe(st))
			return ExitTimeout
		}
		if err != nil {
			return c.fail(err)
		}
		fmt.Fprintf(c.Stdout, "%s: %s (%s)\n", name, want, describe(st))
	}
	return ExitOK
}

// describe is "running, pid 1234" or "backoff".
func describe(st api.ServiceStatus) string {
	if st.State == "" {
		return "state unknown"
	}
	if st.PID != 0 {
		return fmt.Sprintf("%s, pid %d", st.State, st.PID)
	}
	return st.State
}

func runReexec(ctx context.Context, c *cli, args []string) int {
	if len(args) > 0 {
		return c.usageErr(c.cmd, "no arguments expected")
	}
	before, err := c.client.Reexec(ctx)
	if err != nil {
		return c.fail(err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.o.timeout)
	defer cancel()
	for {
		h, err := c.client.Health(ctx)
		if err == nil || h.PID != 0 {
			if !h.Started.Equal(before.Started) && h.Plugin != nil {
				fmt.Fprintf(c.Stdout, "hbd re-executed (pid %d, %s); plugin pid %d kept, services kept\n", h.PID, h.Version, h.Plugin.PID)
				return ExitOK
			}
		}
		select {
		case <-ctx.Done():
			fmt.Fprintf(c.Stderr, "hbctl: reexec: hbd (pid %d) did not answer again within %s: see its log\n", before.PID, c.o.timeout)
			return ExitFailed
		case <-time.After(50 * time.Millisecond):
		}
	}
}
