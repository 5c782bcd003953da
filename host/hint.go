package host

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/host/config"
	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// ErrSlots: the table exists with another capacity than [hbd] slots asks.
var ErrSlots = errors.New("the table has another number of slots than the configuration")

// slotsError is the error for a table of have slots where cfg asks for want.
func slotsError(h config.HBD, cfgPath string, have, want int) error {
	return &slotsErr{path: tablePath(h), cfg: cfgPath, have: have, want: want}
}

type slotsErr struct {
	path, cfg  string
	have, want int
}

func (e *slotsErr) Error() string {
	return fmt.Sprintf("%s has %d slots, %s asks for slots = %d (a table keeps its size while it exists)", e.path, e.have, e.cfg, e.want)
}

func (e *slotsErr) Is(target error) bool { return target == ErrSlots }

// tablePath is the table's file.
func tablePath(h config.HBD) string { return filepath.Join(shm.DefaultDir, h.Shm) }

// checkSlots compares the capacity of an existing table with [hbd] slots
// before a new plugin would adopt it (and silently keep its size). A table
// that cannot be read is left to the plugin, which says why.
func checkSlots(h config.HBD, cfgPath string) error {
	t, err := shm.Open(h.Shm)
	if err != nil {
		return nil
	}
	defer t.Close()
	if have := int(t.Header().SlotCount); have != h.Slots {
		return slotsError(h, cfgPath, have, h.Slots)
	}
	return nil
}

// StartFailure is the last line hbd prints when it cannot start: what is
// wrong, the file it is about, and how to fix it. go-plugin's own words
// (architectures, handshakes) are never part of it.
func StartFailure(err error, cfg *config.Config) string {
	h := cfg.HBD
	msg := err.Error()
	// The plugin's own words, without the launch's wrapping.
	if _, why, ok := strings.Cut(msg, "the plugin exited before serving: "); ok {
		msg = "the plugin could not start: " + why
	}
	table := tablePath(h)
	has := func(e error) bool { return errors.Is(err, e) || strings.Contains(msg, e.Error()) }
	var fix string
	var se *slotsErr
	switch {
	case errors.As(err, &se):
		fix = fmt.Sprintf("to resize, stop hbd and every service (systemctl stop hbd, or SIGTERM to hbd), "+
			"remove the table (rm %s) and start hbd; or set slots = %d in %s", table, se.have, cfg.Path)
	case errors.Is(err, plugin.ErrHostConnected):
		fix = fmt.Sprintf("another hbd is connected to the plugin of %s: stop it first, or give this hbd its own state_dir in %s", h.StateDir, cfg.Path)
	case has(shm.ErrBusy):
		fix = fmt.Sprintf("another hb plugin writes %s: stop the hbd that uses it, or give this one its own shm and state_dir in %s", table, cfg.Path)
	case has(shm.ErrNoSpace) || strings.Contains(msg, "no space left"):
		fix = fmt.Sprintf("free space in %s (df -h %s) or lower slots in %s", shm.DefaultDir, shm.DefaultDir, cfg.Path)
	case has(shm.ErrOwner) || has(shm.ErrMode) || has(shm.ErrSymlink) || has(shm.ErrNotRegular) || has(shm.ErrBadMagic) ||
		has(shm.ErrVersion) || has(shm.ErrLayout):
		fix = fmt.Sprintf("if no hb uses it, remove it (rm %s) and start hbd again; or set another shm in %s", table, cfg.Path)
	case strings.Contains(msg, "tracepoint"):
		fix = fmt.Sprintf(`detector = "tracepoint" needs root (CAP_BPF and CAP_PERFMON) and Linux 6.16 or later: run hbd as root, or set detector = "auto" in %s`, cfg.Path)
	case strings.Contains(msg, "connector"):
		fix = fmt.Sprintf(`detector = "connector" needs the initial namespaces (and root before Linux 6.6): set detector = "auto" in %s`, cfg.Path)
	case errors.Is(err, api.ErrSocketInUse):
		fix = fmt.Sprintf("stop the other hbd, or give this one another socket and state_dir in %s", cfg.Path)
	case strings.Contains(msg, "state_dir") || strings.Contains(msg, "log_dir") || strings.Contains(msg, "socket"):
		fix = fmt.Sprintf("correct the path named above, or choose another in %s", cfg.Path)
	default:
		fix = fmt.Sprintf("see %s and run hbd with --log-level debug", filepath.Join(h.StateDir, "plugin.log"))
	}
	return "hbd: cannot start: " + msg + "; to fix: " + fix
}
