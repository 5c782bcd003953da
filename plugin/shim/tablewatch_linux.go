package shim

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// tableWatch tells the shim when someone else may have changed its table:
// the table's name in its directory created, removed or renamed, or the
// table file truncated (IN_MODIFY; the writer's own stores go through its
// mapping and make no event). Each such change makes the shim run Check at
// once, where a timer would look once a second whether anything happened.
type tableWatch struct {
	f       *os.File
	name    string
	changed chan struct{} // buffered(1): Check is due
	done    chan struct{} // closed when the reader has returned
	// lost: the reader stopped on an error; the chores timer checks the
	// table every beat from then on.
	lost atomic.Bool
}

// tableDirEvents are the events of the table's directory that concern its
// name.
const tableDirEvents = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO

// tableFileEvents are the events of a table file that Check must look at: a
// truncation (IN_MODIFY) or a change of owner or mode (IN_ATTRIB).
const tableFileEvents = unix.IN_MODIFY | unix.IN_ATTRIB

func newTableWatch(path string) (*tableWatch, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify_init1: %w", err)
	}
	tw := &tableWatch{
		f:       os.NewFile(uintptr(fd), "inotify:"+path),
		name:    filepath.Base(path),
		changed: make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	if _, err := unix.InotifyAddWatch(fd, filepath.Dir(path), tableDirEvents|unix.IN_ONLYDIR); err != nil {
		tw.f.Close()
		return nil, fmt.Errorf("inotify_add_watch %s: %w", filepath.Dir(path), err)
	}
	if err := tw.watchFile(path); err != nil {
		tw.f.Close()
		return nil, err
	}
	go tw.read()
	return tw, nil
}

// watchFile watches the file path names now (after Check published a new
// one, the new one). Files watched before stay watched: readers that mapped
// them still get every update, so their truncation matters too. IN_DONT_FOLLOW:
// a symlink put in the table's place is Check's to report, not to watch.
func (tw *tableWatch) watchFile(path string) error {
	fd := int(tw.f.Fd())
	if _, err := unix.InotifyAddWatch(fd, path, tableFileEvents|unix.IN_DONT_FOLLOW); err != nil {
		return fmt.Errorf("inotify_add_watch %s: %w", path, err)
	}
	return nil
}

func (tw *tableWatch) read() {
	defer close(tw.done)
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := tw.f.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				tw.lost.Store(true)
				tw.kick() // let Check look, and the chores timer from now on
			}
			return
		}
		due := false
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			off += unix.SizeofInotifyEvent + int(ev.Len)
			switch {
			case ev.Mask&unix.IN_Q_OVERFLOW != 0:
				due = true // events were lost
			case ev.Len == 0:
				due = due || ev.Mask&tableFileEvents != 0 // a table file
			case string(bytes.TrimRight(name, "\x00")) == tw.name:
				due = true
			}
		}
		if due {
			tw.kick()
		}
	}
}

func (tw *tableWatch) kick() {
	select {
	case tw.changed <- struct{}{}:
	default:
	}
}

// close stops the reader and waits for it.
func (tw *tableWatch) close() {
	tw.f.Close()
	<-tw.done
}
