package shim

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// Defaults for plugin.Spec's log settings.
const (
	defaultLogMaxBytes = 10 << 20
	defaultLogBackups  = 3
)

// logFile is one service stream's log (NAME.out.log or NAME.err.log). The
// child writes straight into it through an O_APPEND descriptor; the shim
// keeps its own descriptor on the same open file to measure it and hands a
// copy to each incarnation. See doc.go for the rotation scheme.
type logFile struct {
	mu       sync.Mutex
	path     string   // guarded by mu
	max      int64    // rotate once the file is larger; guarded by mu
	backups  int      // rotated files kept; guarded by mu
	f        *os.File // nil until first use; guarded by mu
	noShrink bool     // the filesystem cannot collapse ranges: rotate at spawn only; guarded by mu
}

func newLogFile(path string, max int64, backups int) *logFile {
	l := &logFile{}
	l.configure(path, max, backups)
	return l
}

// configure applies a (possibly changed) Spec. A new path takes effect at
// the next fd call.
func (l *logFile) configure(path string, max int64, backups int) {
	switch {
	case max == 0:
		max = defaultLogMaxBytes
	case max < 0:
		max = math.MaxInt64 // never rotate
	}
	if backups == 0 {
		backups = defaultLogBackups
	}
	if backups < 0 {
		backups = 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if path != l.path && l.f != nil {
		l.f.Close()
		l.f = nil
		l.noShrink = false
	}
	l.path, l.max, l.backups = path, max, backups
}

// spawnFD returns the descriptor a new incarnation writes to, rotating the
// file first (by rename) if it has grown past its limit. The descriptor
// stays owned by the logFile.
func (l *logFile) spawnFD() (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		if err := l.openLocked(); err != nil {
			return -1, err
		}
	}
	if size, err := l.sizeLocked(); err != nil {
		return -1, err
	} else if size > l.max {
		if err := l.rotateLocked(); err != nil {
			return -1, err
		}
	}
	return int(l.f.Fd()), nil
}

func (l *logFile) openLocked() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("log file: %w", err)
	}
	l.f = f
	return nil
}

func (l *logFile) sizeLocked() (int64, error) {
	st, err := l.f.Stat()
	if err != nil {
		return 0, fmt.Errorf("log file: %w", err)
	}
	return st.Size(), nil
}

// backupName is path.n (path itself for n == 0).
func (l *logFile) backupName(n int) string {
	if n == 0 {
		return l.path
	}
	return l.path + "." + strconv.Itoa(n)
}

// shiftLocked renames path.(k) to path.(k+1) for k = backups-1 … 1 and drops
// the oldest, making room for a new path.1.
func (l *logFile) shiftLocked() error {
	if l.backups == 0 {
		return nil
	}
	for k := l.backups - 1; k >= 1; k-- {
		err := os.Rename(l.backupName(k), l.backupName(k+1))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("log rotate: %w", err)
		}
	}
	return nil
}

// rotateLocked moves the current file to path.1 and opens a new, empty one.
// A running incarnation that holds the old file keeps writing to it (now
// path.1); nothing it writes is lost.
func (l *logFile) rotateLocked() error {
	if err := l.shiftLocked(); err != nil {
		return err
	}
	var err error
	if l.backups == 0 {
		err = os.Remove(l.path)
	} else {
		err = os.Rename(l.path, l.backupName(1))
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("log rotate: %w", err)
	}
	l.f.Close()
	l.f = nil
	return l.openLocked()
}

// check runs on the beat: when the file a running incarnation writes to has
// grown past its limit, the head of the file is copied to path.1 and then
// cut out of the live file with fallocate(FALLOC_FL_COLLAPSE_RANGE). The
// writer's O_APPEND writes land past the cut, so nothing is lost or
// duplicated, and the file keeps its name (tail -F keeps working). The cut is
// block-aligned, so a line may straddle path.1 and the live file. Filesystems
// without range collapse (tmpfs, btrfs, …) fall back to rotation at the next
// spawn.
func (l *logFile) check() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil || l.noShrink {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(l.f.Fd()), &st); err != nil {
		return fmt.Errorf("log file %s: %w", l.path, err)
	}
	if st.Size <= l.max {
		return nil
	}
	bs := int64(st.Blksize)
	if bs <= 0 {
		bs = 4096
	}
	// The collapsed range must end before EOF.
	n := (st.Size - 1) / bs * bs
	if n <= 0 {
		return nil
	}
	tmp := l.path + ".rotating"
	if err := copyHead(l.path, tmp, n); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("log rotate %s: %w", l.path, err)
	}
	err := unix.Fallocate(int(l.f.Fd()), unix.FALLOC_FL_COLLAPSE_RANGE, 0, n)
	if err != nil {
		os.Remove(tmp)
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
			l.noShrink = true
			return nil
		}
		return fmt.Errorf("log rotate %s: collapse range: %w", l.path, err)
	}
	if err := l.shiftLocked(); err != nil {
		os.Remove(tmp)
		return err
	}
	if l.backups == 0 {
		return os.Remove(tmp)
	}
	if err := os.Rename(tmp, l.backupName(1)); err != nil {
		return fmt.Errorf("log rotate: %w", err)
	}
	return nil
}

// copyHead copies the first n bytes of src into a new file dst.
func copyHead(src, dst string, n int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, io.LimitReader(in, n)); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// close releases the shim's descriptor; running incarnations keep theirs.
func (l *logFile) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
}
