package host

import (
	"fmt"
	"os"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/host/config"
	"github.com/hbshim/hb/plugin"
)

// Log pipes: a service with a log file writes into a pipe the plugin reads
// (see plugin.LogPipe). hbd holds a copy of both ends of every such pipe, so
// that a plugin that dies does not take the only reader with it (the
// service's next write would raise SIGPIPE): it takes them from the plugin
// with pidfd_getfd as the plugin names them (a spawn's result, Info at
// connect), and hands them to the next plugin it launches. hbd never reads
// or writes them.

// heldPipe is hbd's copy of one service stream's log pipe: raw
// descriptors, never an *os.File, which would put the non-blocking read end
// in hbd's poller (and wake hbd at every write of the service).
type heldPipe struct {
	r, w int
	ino  uint64
}

func (p *heldPipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}

// pipeKey names a service stream's pipe.
func pipeKey(name, stream string) string { return name + "/" + stream }

// holdPipes takes a copy of each pipe in ps that hbd does not hold yet from
// the plugin process. A pipe hbd cannot take is logged: it lives only as
// long as the plugin. Called with mu held.
func (d *Daemon) holdPipes(ps []plugin.LogPipe) {
	if len(ps) == 0 || d.conn == nil {
		return
	}
	if d.pipes == nil {
		d.pipes = map[string]*heldPipe{}
	}
	pidfd := -1
	defer func() {
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
	}()
	for _, p := range ps {
		key := pipeKey(p.Name, p.Stream)
		if h := d.pipes[key]; h != nil && h.ino == p.Ino {
			continue
		}
		if pidfd < 0 {
			var err error
			if pidfd, err = unix.PidfdOpen(d.conn.PID(), 0); err != nil {
				d.log.Warn("cannot hold the services' log pipes: they live only as long as the plugin", "err", err)
				return
			}
		}
		h, err := takePipe(pidfd, p)
		if err != nil {
			d.log.Warn("cannot hold a log pipe: it lives only as long as the plugin (if the plugin dies, the service's next write to it raises SIGPIPE)",
				"service", p.Name, "stream", "std"+p.Stream, "err", err)
			continue
		}
		if old := d.pipes[key]; old != nil {
			old.close()
		}
		d.pipes[key] = h
	}
}

// takePipe duplicates p's two ends out of the process pidfd names and
// checks that they are that pipe.
func takePipe(pidfd int, p plugin.LogPipe) (*heldPipe, error) {
	get := func(fd int) (int, error) {
		nfd, err := unix.PidfdGetfd(pidfd, fd, 0) // close-on-exec
		if err != nil {
			return -1, fmt.Errorf("pidfd_getfd %d: %w", fd, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(nfd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO || st.Ino != p.Ino {
			unix.Close(nfd)
			return -1, fmt.Errorf("descriptor %d of the plugin is not pipe:[%d] any more", fd, p.Ino)
		}
		return nfd, nil
	}
	r, err := get(p.ReadFD)
	if err != nil {
		return nil, err
	}
	w, err := get(p.WriteFD)
	if err != nil {
		unix.Close(r)
		return nil, err
	}
	return &heldPipe{r: r, w: w, ino: p.Ino}, nil
}

// keepPipes drops the held pipes the plugin no longer reads (ps is all of
// them, from Info). Called with mu held.
func (d *Daemon) keepPipes(ps []plugin.LogPipe) {
	live := map[string]uint64{}
	for _, p := range ps {
		live[pipeKey(p.Name, p.Stream)] = p.Ino
	}
	for key, h := range d.pipes {
		if ino, ok := live[key]; !ok || ino != h.ino {
			h.close()
			delete(d.pipes, key)
		}
	}
}

// dropPipes closes hbd's copies of name's log pipes (its slot was freed).
// Called with mu held.
func (d *Daemon) dropPipes(name string) {
	for _, stream := range []string{"out", "err"} {
		key := pipeKey(name, stream)
		if h := d.pipes[key]; h != nil {
			h.close()
			delete(d.pipes, key)
		}
	}
}

// pipesForLaunch is what a new plugin is handed: extra files (the list
// first, then each pipe's two ends) starting at descriptor first, and the
// list's descriptor; no files when hbd holds no pipe of a configured
// service. The files are duplicates of hbd's descriptors, for the caller to
// close once the plugin has started. Called with mu held.
func (d *Daemon) pipesForLaunch(first int) (files []*os.File, listFD int, err error) {
	keys := make([]string, 0, len(d.pipes))
	for key := range d.pipes {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	var list []plugin.InheritedPipe
	var ends []*os.File
	fail := func(err error) ([]*os.File, int, error) {
		for _, f := range ends {
			f.Close()
		}
		return nil, -1, fmt.Errorf("log pipes for the plugin: %w", err)
	}
	for _, key := range keys {
		h := d.pipes[key]
		name, stream := splitPipeKey(key)
		s := d.svcs[name]
		if s == nil {
			continue
		}
		ip := inheritedPipe(d.cfg.HBD, s.cfg, name, stream)
		ip.R, ip.W = first+1+len(ends), first+2+len(ends)
		for _, fd := range []int{h.r, h.w} {
			nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
			if err != nil {
				return fail(err)
			}
			ends = append(ends, os.NewFile(uintptr(nfd), fmt.Sprintf("pipe:[%d]", h.ino)))
		}
		list = append(list, ip)
	}
	if len(list) == 0 {
		return nil, -1, nil
	}
	f, err := plugin.WriteInheritedPipes(list)
	if err != nil {
		return fail(err)
	}
	return append([]*os.File{f}, ends...), first, nil
}

// inheritedPipe is the log settings the plugin needs for c's stream before
// hbd sends c's Spec (the same as serviceSpec's).
func inheritedPipe(h config.HBD, c *config.Service, name, stream string) plugin.InheritedPipe {
	max, backups := logLimits(c)
	return plugin.InheritedPipe{Name: name, Stream: stream, Dir: h.LogDir, MaxBytes: max, Backups: backups,
		Timestamps: c.LogTimestamps}
}

func splitPipeKey(key string) (name, stream string) {
	for i := len(key) - 1; i >= 0; i-- {
		if key[i] == '/' {
			return key[:i], key[i+1:]
		}
	}
	return key, ""
}
