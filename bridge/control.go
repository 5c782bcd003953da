package bridge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Program is one program hb bridges: its manager and where that manager
// keeps it.
type Program struct {
	Name    string // hb's slot name
	Manager string // Runit, S6 or Supervisord
	// Dir is the service directory (runit, s6): Dir/supervise/status is
	// the record hb watches.
	Dir string
	// URL is supervisord's server_url; Process is the program's
	// "group:name" there.
	URL, Process string
}

// Actions hbctl asks a manager for.
const (
	ActionStart   = "start"
	ActionStop    = "stop"
	ActionRestart = "restart"
)

// ControlWait bounds how long Control waits for the manager to carry an
// action out.
const ControlWait = 10 * time.Second

// toolDirs are where Control looks for sv and s6-svc: never hbd's PATH.
var toolDirs = []string{"/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin"}

func tool(name string) (string, error) {
	for _, d := range toolDirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			if err := CheckTrusted(p); err != nil {
				return "", err
			}
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in %s", name, strings.Join(toolDirs, ":"))
}

// Control asks p's manager to start, stop or restart it and returns what
// the manager answered (sv's line, s6-svstat's after s6-svc, supervisord's
// state). The manager does the work; hb only learns the new PID from the
// manager's status, as for any other start.
func Control(ctx context.Context, p Program, action string) (string, error) {
	if action != ActionStart && action != ActionStop && action != ActionRestart {
		return "", fmt.Errorf("%s: unknown action %q", p.Name, action)
	}
	ctx, cancel := context.WithTimeout(ctx, ControlWait+5*time.Second)
	defer cancel()
	switch p.Manager {
	case Runit:
		return runTool(ctx, "sv", "-w", fmt.Sprint(int(ControlWait/time.Second)), action, p.Dir)
	case S6:
		flag := map[string][]string{
			ActionStart:   {"-wu", "-u"},
			ActionStop:    {"-wd", "-d"},
			ActionRestart: {"-wr", "-r"}, // -r: signal it (SIGTERM); -wr: until s6-supervise has started it again
		}[action]
		args := append([]string{flag[0], "-T", fmt.Sprint(ControlWait.Milliseconds())}, flag[1], p.Dir)
		if _, err := runTool(ctx, "s6-svc", args...); err != nil {
			return "", err
		}
		return runTool(ctx, "s6-svstat", p.Dir)
	case Supervisord:
		return controlSupervisord(ctx, p, action)
	}
	return "", fmt.Errorf("%s: unknown manager %q", p.Name, p.Manager)
}

func runTool(ctx context.Context, name string, args ...string) (string, error) {
	path, err := tool(name)
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = []string{"PATH=" + strings.Join(toolDirs, ":")}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	text := strings.TrimSpace(out.String())
	if err != nil {
		if text == "" {
			text = err.Error()
		}
		return text, fmt.Errorf("%s %s: %s", name, strings.Join(args, " "), text)
	}
	return text, nil
}

func controlSupervisord(ctx context.Context, p Program, action string) (string, error) {
	s, err := NewSupervisor(p.URL)
	if err != nil {
		return "", err
	}
	var f *Fault
	if action == ActionStop || action == ActionRestart {
		if _, err := s.Call(ctx, "supervisor.stopProcess", p.Process, true); err != nil &&
			!(errors.As(err, &f) && f.Code == FaultNotRunning) {
			return "", err
		}
	}
	if action == ActionStart || action == ActionRestart {
		if _, err := s.Call(ctx, "supervisor.startProcess", p.Process, true); err != nil &&
			!(errors.As(err, &f) && f.Code == FaultAlreadyStarted) {
			return "", err
		}
	}
	info, err := s.ProcessInfo(ctx, p.Process)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s %s %s", info.FullName(), info.StateName, info.Description), nil
}
