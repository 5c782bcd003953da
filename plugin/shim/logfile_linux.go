package shim

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/plugin/logdir"
)

// Defaults for plugin.Spec's log settings.
const (
	defaultLogMaxBytes = 10 << 20
	defaultLogBackups  = 3
)

// logFile is one service stream's log (NAME.out.log or NAME.err.log in
// log_dir). The child writes straight into it through an O_APPEND
// descriptor; the shim keeps its own descriptor on the same open file to
// measure it and hands a copy to each incarnation. See doc.go for the
// rotation scheme and package logdir for how the directory and its files are
// opened: every name is resolved relative to dirfd, no symlink is followed,
// no open blocks, and only regular files are written.
type logFile struct {
	mu      sync.Mutex
	dir     string   // log_dir; guarded by mu
	name    string   // NAME.out.log or NAME.err.log; guarded by mu
	max     int64    // rotate once the file is larger; guarded by mu
	backups int      // rotated files kept; guarded by mu
	dirfd   int      // log_dir (O_PATH) that f was opened in; -1 with f nil; guarded by mu
	f       *os.File // nil until first use; guarded by mu
	// noCollapse: the filesystem cannot collapse ranges (tmpfs, btrfs, …),
	// so the beat trims by copy and truncate; guarded by mu.
	noCollapse bool
	// noSpace: the last trim failed with ENOSPC; guarded by mu.
	noSpace bool
	// wasFull is full's last answer; dirName is dir. Both are read
	// without mu.
	wasFull atomic.Bool
	dirName atomic.Pointer[string]

	// Pipe mode (Spec.LogDirect false, logpipe_linux.go): the service
	// writes into pipe and the plugin writes f. size is f's size as the
	// plugin wrote it. All
	// guarded by mu.
	pipe    *logPipe
	size    int64
	lineEnd bool // the file ends with a newline (or is empty)
	// direct: the service writes f itself (Spec.LogDirect); stamps: lines
	// get a time (Spec.LogTimestamps). Guarded by mu.
	direct, stamps bool
	// directMode is direct, for the beat to read without mu; failed: a
	// write to the piped file failed since the log pass last found room.
	directMode, failed atomic.Bool
	// kick arms the shim's chores timer (Shim.kickChores) when the log
	// needs the log pass; set once, before the log is used.
	kick func()
}

// fail marks a piped write failed and asks for the log pass.
func (l *logFile) fail() {
	l.failed.Store(true)
	if l.kick != nil {
		l.kick()
	}
}

func newLogFile(dir, name string, max int64, backups int) *logFile {
	l := &logFile{dirfd: -1}
	l.configure(dir, name, max, backups)
	return l
}

// configure applies a (possibly changed) Spec. A new directory or name takes
// effect at the next spawnFD.
func (l *logFile) configure(dir, name string, max int64, backups int) {
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
	if dir != l.dir || name != l.name {
		l.closeLocked()
	}
	l.dir, l.name, l.max, l.backups = dir, name, max, backups
	l.dirName.Store(&dir)
}

// setMode applies Spec.LogTimestamps and Spec.LogDirect.
func (l *logFile) setMode(stamps, direct bool) {
	l.mu.Lock()
	l.stamps, l.direct = stamps, direct
	l.directMode.Store(direct)
	l.mu.Unlock()
}

// stamped reports whether lines get a time; called by the pipe's drain.
func (l *logFile) stamped() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stamps
}

// writeOut appends b to the file, rotating it by rename whenever the next
// line would take it past its limit: a file holds whole lines and stays
// within the limit unless one line alone is longer. A write that fails (the
// file system is full, log_dir was made unsafe) drops what it could not
// write and marks the log failed for the log pass: the service never waits
// for its log. A rotation that fails is not tried again within one call.
func (l *logFile) writeOut(b []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	rotateFailed := false
	for len(b) > 0 {
		if l.f == nil {
			if err := l.openLocked(); err != nil {
				l.fail()
				return
			}
			l.sizeFromFileLocked()
		}
		n := len(b)
		if room := l.max - l.size; int64(n) > room {
			// As much as fits, up to a line's end; else, at a line's
			// end of a file with something in it, rotate first; else
			// the one line (longer than the limit) alone.
			cut := -1
			if room > 0 {
				cut = bytes.LastIndexByte(b[:room], '\n')
			}
			switch {
			case cut >= 0:
				n = cut + 1
			case l.size > 0 && l.lineEnd && !rotateFailed:
				rotateFailed = !l.rotateForPipeLocked()
				continue
			default:
				if i := bytes.IndexByte(b, '\n'); i >= 0 {
					n = i + 1
				}
			}
		}
		if !l.writeLocked(b[:n]) {
			return
		}
		b = b[n:]
		if l.size >= l.max && l.lineEnd && !rotateFailed {
			rotateFailed = !l.rotateForPipeLocked()
		}
	}
}

// writeLocked writes b whole, or counts it lost.
func (l *logFile) writeLocked(b []byte) bool {
	n, err := l.f.Write(b)
	l.size += int64(n)
	if n > 0 {
		l.lineEnd = b[n-1] == '\n'
	}
	if err != nil {
		l.noSpace = errors.Is(err, unix.ENOSPC)
		l.fail()
		return false
	}
	l.noSpace = false
	return true
}

// rotateForPipeLocked rotates by rename. It reports false when that
// failed; then f may be closed (nil), and the next write opens the file
// under its name again.
func (l *logFile) rotateForPipeLocked() bool {
	if err := l.rotateLocked(); err != nil {
		l.fail()
		return false
	}
	l.size, l.lineEnd = 0, true
	return true
}

// sizeFromFileLocked sets size from the open file.
func (l *logFile) sizeFromFileLocked() {
	if n, err := l.sizeLocked(); err == nil {
		l.size = n
		l.lineEnd = true // what an earlier writer left is taken as whole
	}
}

// path is the file's name for messages.
func (l *logFile) path() string { return filepath.Join(l.dir, l.name) }

// spawnFD returns the descriptor a new incarnation writes to, rotating the
// file first (by rename) if it has grown past its limit. The directory is
// walked and vetted again (a log_dir made unsafe since the last spawn is
// refused), and a log file that is no longer under its name is reopened. The
// descriptor stays owned by the logFile. Nothing here blocks: every open is
// O_NONBLOCK and only regular files are accepted.
func (l *logFile) spawnFD() (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.openLocked(); err != nil {
		return -1, err
	}
	if !l.direct {
		l.sizeFromFileLocked()
		return -1, nil // the caller hands out the pipe's write end
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

// openLocked walks to log_dir (creating what is missing) and makes f the
// file under the log's name, keeping the open one when it still is.
func (l *logFile) openLocked() error {
	dfd, err := logdir.Open(l.dir, true)
	if err != nil {
		return err
	}
	if l.f != nil {
		if sameFile(dfd, l.dirfd) && l.underNameLocked() {
			unix.Close(dfd)
			return nil
		}
		l.closeLocked()
	}
	f, err := logdir.OpenFile(dfd, l.dir, l.name)
	if err != nil {
		unix.Close(dfd)
		return err
	}
	l.dirfd, l.f = dfd, f
	return nil
}

// sameFile reports whether descriptors a and b name the same inode.
func sameFile(a, b int) bool {
	var sa, sb unix.Stat_t
	return unix.Fstat(a, &sa) == nil && unix.Fstat(b, &sb) == nil && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// underNameLocked reports whether f is still the file named name in dirfd.
func (l *logFile) underNameLocked() bool {
	var sn, sf unix.Stat_t
	return unix.Fstatat(l.dirfd, l.name, &sn, unix.AT_SYMLINK_NOFOLLOW) == nil &&
		unix.Fstat(int(l.f.Fd()), &sf) == nil && sn.Dev == sf.Dev && sn.Ino == sf.Ino
}

func (l *logFile) sizeLocked() (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(l.f.Fd()), &st); err != nil {
		return 0, fmt.Errorf("log file %s: %w", l.path(), err)
	}
	return st.Size, nil
}

// backupName is name.n (name itself for n == 0).
func (l *logFile) backupName(n int) string {
	if n == 0 {
		return l.name
	}
	return l.name + "." + strconv.Itoa(n)
}

// tmpName is the name the beat's trim copies the head of the file to before
// it becomes name.1.
func (l *logFile) tmpName() string { return l.name + ".rotating" }

// renameLocked renames from to to in log_dir; renameat follows neither.
func (l *logFile) renameLocked(from, to string) error {
	if err := unix.Renameat(l.dirfd, from, l.dirfd, to); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("log rotate %s: rename %s to %s: %w", l.path(), from, to, err)
	}
	return nil
}

// removeLocked removes name from log_dir (a symlink itself, never its target).
func (l *logFile) removeLocked(name string) error {
	if err := unix.Unlinkat(l.dirfd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("log rotate %s: remove %s: %w", l.path(), name, err)
	}
	return nil
}

// shiftLocked renames name.(k) to name.(k+1) for k = backups-1 … 1, the
// oldest being replaced, making room for a new name.1.
func (l *logFile) shiftLocked() error {
	for k := l.backups - 1; k >= 1; k-- {
		if err := l.renameLocked(l.backupName(k), l.backupName(k+1)); err != nil {
			return err
		}
	}
	return nil
}

// rotateLocked moves the current file to name.1 and opens a new, empty one.
// A running incarnation that holds the old file keeps writing to it (now
// name.1); nothing it writes is lost.
//
// The live name never goes missing: the new file is made under the
// temporary name and swapped with the live one in one step (renameat2
// RENAME_EXCHANGE), and only then does the old one become name.1. A tail -F
// that found the name gone would say the log "has become inaccessible",
// and take up whatever file had the name when it looked again: with
// rotations close together, one past the file it missed. Where the file
// system cannot exchange names, the old file is renamed first.
func (l *logFile) rotateLocked() error {
	if err := l.shiftLocked(); err != nil {
		return err
	}
	var err error
	switch {
	case l.backups == 0:
		err = l.removeLocked(l.name)
	case l.exchangeLocked():
		if err = l.renameLocked(l.tmpName(), l.backupName(1)); err != nil {
			// The old file back under its name: a rotation that fails
			// leaves the log whole, unrotated.
			if unix.Renameat2(l.dirfd, l.tmpName(), l.dirfd, l.name, unix.RENAME_EXCHANGE) == nil {
				_ = unix.Unlinkat(l.dirfd, l.tmpName(), 0)
			}
		}
	default:
		err = l.renameLocked(l.name, l.backupName(1))
	}
	if err != nil {
		return err
	}
	l.f.Close()
	l.f = nil
	f, err := logdir.OpenFile(l.dirfd, l.dir, l.name)
	if err != nil {
		unix.Close(l.dirfd)
		l.dirfd = -1
		return err
	}
	l.f = f
	return nil
}

// exchangeLocked puts a new, empty file under the log's name, in one step,
// and the current one under tmpName. It reports false, changing nothing,
// where that cannot be done (no RENAME_EXCHANGE on this file system).
func (l *logFile) exchangeLocked() bool {
	nf, err := logdir.Create(l.dirfd, l.dir, l.tmpName())
	if err != nil {
		return false
	}
	nf.Close()
	if err := unix.Renameat2(l.dirfd, l.tmpName(), l.dirfd, l.name, unix.RENAME_EXCHANGE); err != nil {
		_ = unix.Unlinkat(l.dirfd, l.tmpName(), 0)
		return false
	}
	return true
}

// check runs on the beat, off the beat's own goroutine: when the file a
// running incarnation writes to has grown past its limit, its head is copied
// to name.1 (through the temporary name.rotating, created anew with O_EXCL)
// and then removed from the live file, which keeps its name (tail -F keeps
// working):
//   - with fallocate(FALLOC_FL_COLLAPSE_RANGE) where the filesystem has it
//     (ext4, xfs): the writer's O_APPEND writes land past the cut, so nothing
//     is lost or duplicated. The cut is block-aligned, so a line may straddle
//     name.1 and the live file;
//   - elsewhere (tmpfs, where log_dir is by default, btrfs, …) by copying the
//     whole file and truncating it to 0: the copy runs until it has caught up
//     with the writer, and what the writer adds between the copy's last read
//     and the truncation (microseconds) is lost.
//
// A trim that finds no room for name.1 leaves the live file as it is and
// fails with ENOSPC (see full). A log that a spawn is opening or rotating
// is left for the next beat: the beat's work waits for no spawn.
func (l *logFile) check() error {
	if !l.mu.TryLock() {
		return nil
	}
	defer l.mu.Unlock()
	if l.f == nil || !l.direct {
		return nil // the pipe's writer rotates as it writes
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(l.f.Fd()), &st); err != nil {
		return fmt.Errorf("log file %s: %w", l.path(), err)
	}
	if st.Size <= l.max {
		l.noSpace = false
		return nil
	}
	err := l.trimLocked(&st)
	l.noSpace = errors.Is(err, unix.ENOSPC)
	return err
}

func (l *logFile) trimLocked(st *unix.Stat_t) error {
	tmp := l.tmpName()
	if !l.noCollapse {
		bs := int64(st.Blksize)
		if bs <= 0 {
			bs = 4096
		}
		// The collapsed range must end before EOF.
		n := (st.Size - 1) / bs * bs
		if n <= 0 {
			return nil
		}
		if l.backups > 0 {
			if err := l.copyLocked(st, tmp, n); err != nil {
				_ = l.removeLocked(tmp)
				return fmt.Errorf("log rotate %s: %w", l.path(), err)
			}
		}
		err := unix.Fallocate(int(l.f.Fd()), unix.FALLOC_FL_COLLAPSE_RANGE, 0, n)
		if err == nil {
			return l.finishTrimLocked()
		}
		_ = l.removeLocked(tmp)
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
			return fmt.Errorf("log rotate %s: collapse range: %w", l.path(), err)
		}
		l.noCollapse = true
	}
	if l.backups > 0 {
		if err := l.copyLocked(st, tmp, -1); err != nil {
			_ = l.removeLocked(tmp)
			return fmt.Errorf("log rotate %s: %w", l.path(), err)
		}
	}
	if err := unix.Ftruncate(int(l.f.Fd()), 0); err != nil {
		_ = l.removeLocked(tmp)
		return fmt.Errorf("log rotate %s: truncate: %w", l.path(), err)
	}
	return l.finishTrimLocked()
}

// finishTrimLocked makes the trim's copy name.1.
func (l *logFile) finishTrimLocked() error {
	if l.backups == 0 {
		return nil
	}
	if err := l.shiftLocked(); err != nil {
		_ = l.removeLocked(l.tmpName())
		return err
	}
	return l.renameLocked(l.tmpName(), l.backupName(1))
}

// copyLocked copies the first n bytes of the log file (the file st
// describes, opened again under its name and checked to be it) into dst,
// made anew. With n < 0 it copies to the end, again and again until the
// file has not grown since the last read, so that a truncation right after
// loses as little as possible.
func (l *logFile) copyLocked(st *unix.Stat_t, dst string, n int64) error {
	in, err := logdir.OpenExisting(l.dirfd, l.dir, l.name, st)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := logdir.Create(l.dirfd, l.dir, dst)
	if err != nil {
		return err
	}
	if n >= 0 {
		_, err = io.Copy(out, io.LimitReader(in, n))
	} else {
		var copied, m int64
		for range 16 {
			m, err = io.Copy(out, in)
			copied += m
			if err != nil {
				break
			}
			var now unix.Stat_t
			if err = unix.Fstat(int(l.f.Fd()), &now); err != nil || now.Size <= copied {
				break
			}
		}
	}
	if err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// full reports whether the filesystem the log file is on has no room left
// (no block available, or the last trim failed with ENOSPC): the service's
// writes then fail and its output is lost. It never blocks on anything but
// the filesystem itself; a log busy with a spawn reports what the last look
// found.
func (l *logFile) full() bool {
	if !l.mu.TryLock() {
		return l.wasFull.Load()
	}
	defer l.mu.Unlock()
	full := l.fullLocked()
	l.wasFull.Store(full)
	return full
}

func (l *logFile) fullLocked() bool {
	if l.f == nil {
		return false
	}
	if l.noSpace && l.direct {
		return true // until a trim works again
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(l.f.Fd()), &fs); err != nil {
		return l.noSpace
	}
	if fs.Blocks > 0 && fs.Bavail == 0 {
		return true
	}
	// Through a pipe, a write that failed for want of room is tried again
	// with the next line; room now is room.
	l.noSpace = false
	l.failed.Store(false)
	return false
}

// logDir is log_dir as last configured.
func (l *logFile) logDir() string {
	if p := l.dirName.Load(); p != nil {
		return *p
	}
	return ""
}

// close releases the shim's descriptors; running incarnations keep theirs.
// The pipe stays (closePipe ends it).
func (l *logFile) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closeLocked()
}

// closePipe drains and closes l's pipe (the service is gone from the
// plugin), after p stops reading it.
func (l *logFile) closePipe(p *logPoller) {
	l.mu.Lock()
	lp := l.pipe
	l.pipe = nil
	l.mu.Unlock()
	if lp != nil {
		p.remove(lp)
		lp.close()
	}
}

func (l *logFile) closeLocked() {
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
	if l.dirfd >= 0 {
		unix.Close(l.dirfd)
		l.dirfd = -1
	}
	l.noCollapse, l.noSpace = false, false
}
