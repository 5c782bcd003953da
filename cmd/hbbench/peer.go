package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/shm"
)

// Iterations per timed batch of each peer-check series (a batch lasts
// roughly a millisecond).
const (
	peerHBIters   = 1_000_000
	peerKillIters = 2_000
	peerFileIters = 200
)

// runPeer: the cost of one liveness check by a peer: Table.PID (Go) and
// hb_pid (C), against kill(pid, 0) and reading a small status file the way
// runit's `sv status` reads supervise/stat, in interleaved batches.
func runPeer(e *env, r *Report) error {
	const test = "peer"
	det := "pidfd"
	if h := e.shared["connector"]; h != nil {
		det = "connector"
	}
	h, err := e.sharedHBD(det)
	if err != nil {
		return err
	}
	idx, err := h.slot(svcC)
	if err != nil {
		return err
	}
	pid := int(h.table.PID(idx))
	if pid == 0 {
		return fmt.Errorf("service %s is not running", svcC)
	}
	statFile := filepath.Join(e.dir, "stat")
	if err := os.WriteFile(statFile, []byte("run\n"), 0o644); err != nil {
		return err
	}
	// A reader's own mapping, as a peer process would have.
	tbl, err := shm.Open(h.shmName)
	if err != nil {
		return err
	}
	defer tbl.Close()

	n := e.opts.peerBatches
	goPID := make([]float64, 0, n)
	goKill := make([]float64, 0, n)
	goFile := make([]float64, 0, n)
	var sink uint32
	buf := make([]byte, 64)
	for range n {
		t0 := time.Now()
		for range peerHBIters {
			sink += tbl.PID(idx)
		}
		goPID = append(goPID, float64(time.Since(t0).Nanoseconds())/peerHBIters)

		t0 = time.Now()
		for range peerKillIters {
			if unix.Kill(pid, 0) != nil {
				sink++
			}
		}
		goKill = append(goKill, float64(time.Since(t0).Nanoseconds())/peerKillIters)

		t0 = time.Now()
		for range peerFileIters {
			fd, err := unix.Open(statFile, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err == nil {
				if k, _ := unix.Read(fd, buf); k > 0 {
					sink += uint32(buf[0])
				}
				unix.Close(fd)
			}
		}
		goFile = append(goFile, float64(time.Since(t0).Nanoseconds())/peerFileIters)
	}
	if sink == 0 {
		return fmt.Errorf("Table.PID read 0")
	}
	rep, err := e.helper.call("peer %d %d %d %s %d %d %d %d", h.helperID, idx, pid, statFile, n,
		peerHBIters, peerKillIters, peerFileIters)
	if err != nil {
		return err
	}

	r.addSeries(test, "Go kill(pid, 0)", "ns", goKill).Note = "baseline"
	r.addSeries(test, "Go open+read+close of a status file", "ns", goFile).Note = "baseline, like runit supervise/stat"
	res := r.addSeries(test, "Go Table.PID", "ns", goPID)
	r.against(res, "Go kill(pid, 0)")
	res.Target = "one load, < 5 ns"
	meets(res, res.P50 < 5)
	r.addSeries(test, "C kill(pid, 0)", "ns", rep.floats("kill")).Note = "baseline"
	r.addSeries(test, "C open+read+close of a status file", "ns", rep.floats("file")).Note = "baseline"
	res = r.addSeries(test, "C hb_pid()", "ns", rep.floats("hb"))
	r.against(res, "C kill(pid, 0)")
	res.Target = "one load, < 5 ns"
	meets(res, res.P50 < 5)
	return nil
}
