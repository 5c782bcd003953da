package ctl

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/hbshim/hb/host/api"
)

func logsFlags(fs *flag.FlagSet, o *opts) {
	fs.BoolVar(&o.stderr, "stderr", false, "the service's stderr log")
	fs.BoolVar(&o.follow, "f", false, "follow")
	fs.BoolVar(&o.follow, "follow", false, "follow")
	fs.IntVar(&o.lines, "n", 10, "lines")
	fs.IntVar(&o.lines, "lines", 10, "lines")
}

// followInterval is how often logs -f looks at the file for more.
const followInterval = 100 * time.Millisecond

func runLogs(ctx context.Context, c *cli, args []string) int {
	if len(args) != 1 {
		return c.usageErr(c.cmd, "name one service")
	}
	if c.o.lines < 0 {
		return c.usageErr(c.cmd, "-n wants a count of lines, 0 or more")
	}
	st, err := c.client.Get(ctx, args[0])
	if errors.Is(err, api.ErrNotFound) {
		fmt.Fprintf(c.Stderr, "hbctl: logs: no service %q\n", args[0])
		return ExitFailed
	}
	if err != nil {
		return c.fail(err)
	}
	stream, path := "stdout", st.Stdout
	if c.o.stderr {
		stream, path = "stderr", st.Stderr
	}
	if !filepath.IsAbs(path) {
		switch path {
		case "inherit":
			fmt.Fprintf(c.Stderr, "hbctl: logs: service %q has %s = \"inherit\": its output goes to hbd's own %s (under systemd: journalctl -u hbd)\n", st.Name, stream, stream)
		case "null":
			fmt.Fprintf(c.Stderr, "hbctl: logs: service %q has %s = \"null\": its output is discarded\n", st.Name, stream)
		default:
			fmt.Fprintf(c.Stderr, "hbctl: logs: hbd does not say where service %q's %s goes (an older hbd?)\n", st.Name, stream)
		}
		return ExitFailed
	}
	lines, cur, off, err := lastLines(path, c.o.lines, c.o.follow)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(c.Stderr, "hbctl: logs: %v\n", err)
		return ExitFailed
	}
	for _, l := range lines {
		c.Stdout.Write(l)
	}
	if !c.o.follow {
		return ExitOK
	}
	if err := follow(ctx, path, cur, off, c.Stdout, c.Stderr); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(c.Stderr, "hbctl: logs: %v\n", err)
		return ExitFailed
	}
	return ExitOK
}

// openLog opens a log file for reading: never through a symlink (log_dir
// itself is vetted by hbd), and only a regular file.
func openLog(path string) (*os.File, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		if err == nil {
			err = fmt.Errorf("%s: not a regular file", path)
		}
		return nil, err
	}
	return f, nil
}

// lastLines returns the last n lines of the log at path, reaching into
// its rotated files (path.1, path.2, …) when path has fewer; each line ends
// with \n (a last line without one gets it). With keep, the current file
// stays open and is returned with the offset just past its last complete
// line (an incomplete last line is left out, for follow to print whole),
// even when n is 0; a missing current file is nil.
func lastLines(path string, n int, keep bool) (out [][]byte, cur *os.File, off int64, err error) {
	var firstErr error
	for k := 0; k == 0 || len(out) < n; k++ {
		name := path
		if k > 0 {
			name = path + "." + strconv.Itoa(k)
		}
		f, err := openLog(name)
		if err != nil {
			if k == 0 {
				firstErr = err
				continue // the current file may be missing while .1 exists
			}
			break
		}
		got, end, err := tailFile(f, n-len(out), keep && k == 0)
		if keep && k == 0 {
			cur, off = f, end
		} else {
			f.Close()
		}
		if err != nil {
			return nil, cur, off, err
		}
		out = append(got, out...)
	}
	if len(out) == 0 && cur == nil {
		return nil, nil, 0, firstErr
	}
	return out, cur, off, nil
}

// tailFile returns the last n lines of f, reading backwards in chunks, and
// the offset after the last of them. With whole, an incomplete last line
// is left out (and the offset is before it); else it is given a \n.
func tailFile(f *os.File, n int, whole bool) ([][]byte, int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	const chunk = 64 << 10
	end := fi.Size()
	var data []byte
	var pos int64
	for pos = end; pos > 0 && bytes.Count(data, []byte{'\n'}) <= n; {
		from := max(0, pos-chunk)
		buf := make([]byte, pos-from)
		if _, err := f.ReadAt(buf, from); err != nil && err != io.EOF {
			return nil, 0, err
		}
		data = append(buf, data...)
		pos = from
	}
	if whole {
		i := bytes.LastIndexByte(data, '\n')
		end -= int64(len(data) - (i + 1))
		data = data[:i+1]
	}
	if n <= 0 {
		return nil, end, nil
	}
	var lines [][]byte
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			lines = append(lines, append(data, '\n'))
			break
		}
		lines = append(lines, data[:i+1])
		data = data[i+1:]
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines, end, nil
}

// follow prints what is appended to the log at path from offset off of
// the open file cur on (cur nil: from the start of the file once it is
// there), until ctx ends, following the name across rotations: a file
// renamed away (a rotation at a spawn) is read to its end, then any file
// rotated after it before follow looked again (path.2 … path.1), then the
// new file under the name from its start; a file that shrinks in place
// (trimmed) is read again from its start.
func follow(ctx context.Context, path string, cur *os.File, off int64, out, errw io.Writer) error {
	fl := &follower{path: path, f: cur, off: off, out: out, errw: errw}
	defer fl.close()
	t := time.NewTicker(followInterval)
	defer t.Stop()
	for {
		if err := fl.step(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// follower is the state of one follow.
type follower struct {
	path      string
	f         *os.File // the file being read; nil until there is one
	off       int64    // where the next read starts in f
	partial   []byte   // an incomplete last line, printed once it is whole
	out, errw io.Writer
}

func (fl *follower) close() {
	if fl.f != nil {
		fl.f.Close()
		fl.f = nil
	}
}

// open makes the file now under the name the one read, from its start.
func (fl *follower) open() {
	if f, err := openLog(fl.path); err == nil {
		fl.f, fl.off, fl.partial = f, 0, nil
	} // not there (yet): looked for again at the next step
}

// drain prints f's complete lines from off to its end; with final, the
// rest too (a file that will not grow any more).
func (fl *follower) drain(final bool) error {
	buf := make([]byte, 64<<10)
	for {
		m, err := fl.f.ReadAt(buf, fl.off)
		if m > 0 {
			fl.off += int64(m)
			data := append(fl.partial, buf[:m]...)
			if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
				if _, err := fl.out.Write(data[:i+1]); err != nil {
					return err
				}
				data = data[i+1:]
			}
			fl.partial = append([]byte(nil), data...)
		}
		if err == io.EOF || m == 0 {
			break
		}
		if err != nil {
			return err
		}
	}
	if final && len(fl.partial) > 0 {
		if _, err := fl.out.Write(append(fl.partial, '\n')); err != nil {
			return err
		}
		fl.partial = nil
	}
	return nil
}

// step prints what was written since the last step, following rotations.
func (fl *follower) step() error {
	for range 2 { // once more after a rotation or a trim
		if fl.f == nil {
			fl.open()
			if fl.f == nil {
				return nil
			}
		}
		if err := fl.drain(false); err != nil {
			return err
		}
		var cur, named syscall.Stat_t
		if err := syscall.Fstat(int(fl.f.Fd()), &cur); err != nil {
			return err
		}
		nerr := syscall.Lstat(fl.path, &named)
		switch {
		case nerr == nil && (named.Ino != cur.Ino || named.Dev != cur.Dev):
			// Rotated: the old file's last lines, the files rotated
			// after it, then the new one.
			if err := fl.drain(true); err != nil {
				return err
			}
			fl.close()
			if err := fl.between(cur.Dev, cur.Ino); err != nil {
				return err
			}
			fl.open()
		case cur.Size < fl.off:
			fmt.Fprintf(fl.errw, "hbctl: logs: %s: trimmed in place; reading it from its start\n", fl.path)
			fl.off, fl.partial = 0, nil
		default:
			return nil
		}
	}
	return nil
}

// maxBackups bounds the search for the rotated files of one step.
const maxBackups = 100

// between prints, oldest first, the files rotated after the one with
// (dev, ino), which is now path.j: path.(j-1) … path.1, whole. When that
// file is not among the backups (removed already, or no backups kept),
// nothing is printed.
func (fl *follower) between(dev uint64, ino uint64) error {
	found := 0
	for j := 1; j <= maxBackups; j++ {
		var st syscall.Stat_t
		if err := syscall.Lstat(fl.path+"."+strconv.Itoa(j), &st); err != nil {
			break
		}
		if st.Dev == dev && st.Ino == ino {
			found = j
			break
		}
	}
	for k := found - 1; k >= 1; k-- {
		f, err := openLog(fl.path + "." + strconv.Itoa(k))
		if err != nil {
			continue // rotated away meanwhile
		}
		fl.f, fl.off, fl.partial = f, 0, nil
		err = fl.drain(true)
		fl.close()
		if err != nil {
			return err
		}
	}
	return nil
}

// statusStderrLines is how many of a failing service's last stderr lines
// hbctl status NAME shows.
const statusStderrLines = 5

// failing: the service's last run ended badly and it is not running now.
func failing(st api.ServiceStatus) bool {
	switch st.State {
	case "fatal", "backoff":
		return true
	case "exited":
		return st.Exits > 0 && st.LastStatus != 0
	}
	return false
}

// writeLogDetails is what hbctl status NAME adds below the table, for each
// named service: where its output goes and, when it is failing, the last
// lines of its stderr log, as systemctl status shows a unit's journal.
func writeLogDetails(w io.Writer, sts []api.ServiceStatus) {
	for _, st := range sts {
		if st.Stdout == "" && st.Stderr == "" {
			continue // an hbd that does not say
		}
		fmt.Fprintf(w, "\n%s:\n  stdout: %s\n  stderr: %s\n", st.Name, st.Stdout, st.Stderr)
		if !failing(st) || !filepath.IsAbs(st.Stderr) {
			continue
		}
		lines, _, _, err := lastLines(st.Stderr, statusStderrLines, false)
		switch {
		case err != nil && !errors.Is(err, os.ErrNotExist):
			fmt.Fprintf(w, "  (cannot read the stderr log: %v)\n", err)
		case len(lines) == 0:
			fmt.Fprintf(w, "  (nothing on stderr)\n")
		default:
			fmt.Fprintf(w, "  last stderr lines (hbctl logs --stderr %s):\n", st.Name)
			for _, l := range lines {
				fmt.Fprintf(w, "    %s", l)
			}
		}
	}
}
