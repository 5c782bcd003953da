package shim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/shm"
)

// RecordFile is the name, in Options.StateDir, of the second source of
// adoption: every running incarnation's service name, slot, PID, generation
// and start time, as the table holds them. A plugin that starts with a table
// lacking them (its name was removed and a new, empty one made) restores each
// one whose process still runs with that start time into the table, so it is
// adopted and never started a second time.
const RecordFile = "incarnations.json"

// record is one running incarnation in RecordFile.
type record struct {
	Name       string `json:"name"`
	Slot       int    `json:"slot"`
	PID        uint32 `json:"pid"`
	Generation uint64 `json:"generation"`
	StartTime  uint64 `json:"start_time"`
}

// recordFileMax bounds what readRecords reads (about 100 bytes a record).
const recordFileMax = 64 << 20

// kickRecord asks the record loop to write RecordFile again; it never blocks.
func (s *Shim) kickRecord() {
	if s.recordKick == nil {
		return
	}
	select {
	case s.recordKick <- struct{}{}:
	default:
	}
}

// recordGap is the least time between two writes of RecordFile. A burst of
// spawns or exits (a start of 1000 services, a kill of all) is written a
// few times, not once per service, each time encoding every running one;
// a lone spawn or exit is written at once. The record is the second source
// of adoption, for a table that was removed while the plugin was down: a
// plugin that dies within recordGap of a spawn and whose table is removed
// as well forgets that spawn.
const recordGap = 50 * time.Millisecond

// recordLoop writes RecordFile whenever it is kicked (a spawn, an exit, and
// the beat after a failed write) and the running incarnations in the table
// changed, at most once per recordGap. Kicks coalesce: the exit path never
// waits for the file.
func (s *Shim) recordLoop() {
	defer s.wg.Done()
	var last []byte
	var lastErr string // logged once until it changes
	var wrote time.Time
	for {
		select {
		case <-s.quit:
			return
		case <-s.recordKick:
		}
		if wait := recordGap - time.Since(wrote); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-s.quit:
				t.Stop()
				return
			case <-t.C:
			}
			select { // the kicks of the wait are this write's
			case <-s.recordKick:
			default:
			}
		}
		b := s.recordBytes()
		if bytes.Equal(b, last) {
			continue
		}
		wrote = time.Now()
		if err := writeRecordFile(s.opts.StateDir, b); err != nil {
			s.recordRetry.Store(true)
			s.kickChores()
			if err.Error() != lastErr {
				lastErr = err.Error()
				s.log.Error("cannot write the adoption record; a plugin that starts with an empty table could start services a second time", "err", err)
			}
			continue
		}
		last, lastErr = b, ""
		s.recordRetry.Store(false)
	}
}

// recordBytes encodes the running incarnations of the table.
func (s *Shim) recordBytes() []byte {
	recs := []record{}
	for sl := range s.w.Used() {
		if sl.PID != 0 {
			recs = append(recs, record{Name: sl.Name, Slot: sl.Index, PID: sl.PID, Generation: sl.Generation, StartTime: sl.StartTime})
		}
	}
	b, _ := json.Marshal(recs)
	return append(b, '\n')
}

// checkStateDir opens dir, refusing a symlink and a directory not owned by
// the effective user or writable by group or others (anyone could then plant
// records).
func checkStateDir(dir string) (int, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("state directory %s: %w", dir, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("state directory %s: %w", dir, err)
	}
	if euid := unix.Geteuid(); st.Uid != uint32(euid) || st.Mode&0o022 != 0 {
		unix.Close(fd)
		return -1, fmt.Errorf("state directory %s: owned by uid %d with mode %04o; want uid %d and no write access for group or others",
			dir, st.Uid, st.Mode&0o7777, euid)
	}
	return fd, nil
}

// writeRecordFile replaces dir/RecordFile with b: a new file (O_EXCL,
// O_NOFOLLOW, mode 0600) renamed over it, both relative to the directory's fd.
func writeRecordFile(dir string, b []byte) error {
	dfd, err := checkStateDir(dir)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	tmp := "." + RecordFile + "." + strconv.FormatUint(rand.Uint64(), 36)
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(dir, tmp), err)
	}
	_, err = unix.Write(fd, b)
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(dfd, tmp, dfd, RecordFile)
	}
	if err != nil {
		_ = unix.Unlinkat(dfd, tmp, 0)
		return fmt.Errorf("%s: %w", filepath.Join(dir, RecordFile), err)
	}
	return nil
}

// readRecords reads dir/RecordFile (none: nil). It refuses a file that is
// not a regular file owned by the effective user and writable by it alone.
func readRecords(dir string) ([]record, error) {
	dfd, err := checkStateDir(dir)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)
	path := filepath.Join(dir, RecordFile)
	fd, err := unix.Openat(dfd, RecordFile, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Uid != uint32(unix.Geteuid()) || st.Mode&0o022 != 0 || st.Size > recordFileMax {
		return nil, fmt.Errorf("%s: not a regular file of uid %d, mode 0600, under %d bytes (uid %d, mode %#o, %d bytes): ignored",
			path, unix.Geteuid(), recordFileMax, st.Uid, st.Mode, st.Size)
	}
	b := make([]byte, st.Size)
	n, err := unix.Pread(fd, b, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var recs []record
	if err := json.Unmarshal(b[:n], &recs); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return recs, nil
}

// restoreRecords puts back into the table each recorded incarnation that the
// table has lost (its service has no slot, or a slot without a PID) and whose
// process still runs with the recorded start time, so that adoptAll adopts
// it. It returns how many it restored.
func (s *Shim) restoreRecords() int {
	if s.opts.StateDir == "" {
		return 0
	}
	recs, err := readRecords(s.opts.StateDir)
	if err != nil {
		s.log.Warn("adoption record not used", "err", err)
		return 0
	}
	n := 0
	for _, r := range recs {
		if shm.ValidName(r.Name) != nil || r.PID == 0 {
			continue
		}
		if idx, err := s.w.Lookup(r.Name); err == nil && s.w.PID(idx) != 0 {
			continue // the table knows; it is the first source
		}
		pidfd, _, err := openVerified(int(r.PID), r.StartTime)
		if err != nil {
			continue // gone: nothing to adopt, the host may start it
		}
		unix.Close(pidfd)
		idx, err := s.w.Alloc(r.Name)
		if err != nil {
			s.log.Error("adoption record: no slot for a running incarnation; it will not be watched", "service", r.Name, "pid", r.PID, "err", err)
			continue
		}
		s.w.Spawned(idx, r.PID, r.Generation, r.StartTime, shm.StateRunning, shm.SlotAdopted)
		s.log.Warn("incarnation missing from the table restored from the adoption record", "service", r.Name, "pid", r.PID,
			"generation", r.Generation, "record", filepath.Join(s.opts.StateDir, RecordFile))
		n++
	}
	return n
}
