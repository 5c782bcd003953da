package shim

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// service returns the service called name: known to this shim, or found in
// the table (left by a previous plugin), or — with create — given a slot now.
func (s *Shim) service(name string, create bool) (*service, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if svc := s.svcs[name]; svc != nil {
		return svc, nil
	}
	idx, err := s.w.Lookup(name)
	if err != nil {
		if !errors.Is(err, shm.ErrNotFound) {
			return nil, fmt.Errorf("service %q: %w", name, err)
		}
		if !create {
			return nil, fmt.Errorf("service %q: %w", name, plugin.ErrNotFound)
		}
		if idx, err = s.w.Alloc(name); err != nil {
			if errors.Is(err, shm.ErrFull) {
				return nil, fmt.Errorf("service %q: %w: %w", name, plugin.ErrFull, err)
			}
			if errors.Is(err, shm.ErrBadName) {
				return nil, &specError{msg: err.Error(), err: err}
			}
			return nil, fmt.Errorf("service %q: %w", name, err)
		}
	}
	svc := &service{name: name, idx: idx}
	s.svcs[name] = svc
	return svc, nil
}

// lockService returns the service called name with its op lock held,
// retrying if it was freed while the lock was awaited.
func (s *Shim) lockService(name string, create bool) (*service, error) {
	for {
		svc, err := s.service(name, create)
		if err != nil {
			return nil, err
		}
		svc.op.Lock()
		if !svc.freed {
			return svc, nil
		}
		svc.op.Unlock()
	}
}

// current is svc's incarnation if it has not exited (its exit not yet
// recorded), else nil.
func (s *Shim) current(svc *service) *incarnation {
	s.mu.Lock()
	inc := svc.cur
	s.mu.Unlock()
	if inc == nil || inc.exited() {
		return nil
	}
	return inc
}

// Stop implements plugin.Shim. It marks the slot stopping, sends sig to the
// process group, waits up to timeout for the exit to be recorded, then
// SIGKILLs the group and waits again (bounded by ctx). Members of the group
// that outlive the main process are SIGKILLed before it is reaped, so
// nothing is left behind. The slot ends stopped. Stopping a service that is
// not running only records the stopped state.
func (s *Shim) Stop(ctx context.Context, name string, sig syscall.Signal, timeout time.Duration) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	svc, err := s.lockService(name, false)
	if err != nil {
		return err
	}
	defer svc.op.Unlock()
	if svc.bridged != "" {
		return badSpec(errors.New("a bridged program is stopped through its manager"), "stop %q (%s)", name, svc.bridged)
	}
	inc := s.current(svc)
	if inc == nil {
		s.w.SetState(svc.idx, shm.StateStopped)
		return nil
	}
	inc.stopping.Store(true)
	s.w.SetState(svc.idx, shm.StateStopping)
	if sig != 0 {
		if err := inc.stopSignal(sig); err != nil {
			s.log.Warn("stop: signal", "service", name, "pid", inc.mainPID(), "signal", sig, "err", err)
		}
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-inc.done:
	case <-t.C:
		s.log.Info("stop: timed out; killing what is left of the service", "service", name, "pid", inc.mainPID(), "timeout", timeout)
		if err := inc.stopKill(); err != nil {
			return fmt.Errorf("stop %q: kill pid %d: %w", name, inc.mainPID(), err)
		}
		select {
		case <-inc.done:
		case <-ctx.Done():
			return fmt.Errorf("stop %q: pid %d killed, exit not yet seen: %w", name, inc.mainPID(), ctx.Err())
		case <-s.quit:
			return errClosed
		}
	case <-ctx.Done():
		return fmt.Errorf("stop %q: waiting for pid %d: %w", name, inc.mainPID(), ctx.Err())
	case <-s.quit:
		return errClosed
	}
	if err := inc.awaitCgroupEmpty(ctx); err != nil {
		return fmt.Errorf("stop %q: %w", name, err)
	}
	s.w.SetState(svc.idx, shm.StateStopped)
	return nil
}

// Signal implements plugin.Shim: sig goes to the main process only (through
// its pidfd, so never to a recycled PID).
func (s *Shim) Signal(ctx context.Context, name string, sig syscall.Signal) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	svc, err := s.service(name, false)
	if err != nil {
		return err
	}
	inc := s.current(svc)
	if inc == nil {
		return fmt.Errorf("signal %q: %w", name, plugin.ErrNotRunning)
	}
	if err := inc.signal(sig, false); err != nil {
		return fmt.Errorf("signal %q: pid %d: %w", name, inc.mainPID(), err)
	}
	return nil
}

// SetState implements plugin.Shim.
func (s *Shim) SetState(ctx context.Context, name string, st shm.State, gen uint64) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	if !st.Valid() || st == shm.StateFree || st == shm.StateHung { // hung: the watchdog's alone
		return fmt.Errorf("set state %q: %w: state %d", name, plugin.ErrBadSpec, uint32(st))
	}
	// Under mu, which Free also holds while it releases the slot.
	s.mu.Lock()
	defer s.mu.Unlock()
	idx, err := s.w.Lookup(name)
	if err != nil {
		return fmt.Errorf("set state %q: %w", name, plugin.ErrNotFound)
	}
	if !s.w.SetStateOf(idx, st, gen) {
		return fmt.Errorf("set state %q to %s (generation %d): %w", name, st, gen, plugin.ErrStale)
	}
	if st == shm.StateStopping {
		// The host is about to stop it (e.g. hbd is shutting down and
		// stops services one by one): an exit from now on is not
		// respawned by the plugin.
		if svc := s.svcs[name]; svc != nil && svc.cur != nil {
			svc.cur.stopping.Store(true)
		}
	}
	return nil
}

// Free implements plugin.Shim: the slot is zeroed and may be given to
// another service. A running service is refused with plugin.ErrRunning.
func (s *Shim) Free(ctx context.Context, name string) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	svc, err := s.lockService(name, false)
	if err != nil {
		return err
	}
	defer svc.op.Unlock()
	if inc := s.current(svc); inc != nil {
		return fmt.Errorf("free %q: %w (pid %d)", name, plugin.ErrRunning, inc.mainPID())
	}
	if pid := s.w.PID(svc.idx); pid != 0 {
		return fmt.Errorf("free %q: %w (pid %d)", name, plugin.ErrRunning, pid)
	}
	s.mu.Lock()
	if err := s.w.Free(svc.idx); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("free %q: %w", name, err)
	}
	svc.freed = true
	svc.closeNotify()
	if s.svcs[name] == svc {
		delete(s.svcs, name)
	}
	delete(s.logged, svc)
	s.mu.Unlock()
	s.freeCgroup(svc)
	for _, l := range svc.logFiles() {
		l.closePipe(s.pipes)
		l.close()
	}
	return nil
}

// List implements plugin.Shim: a consistent copy of every used slot.
func (s *Shim) List(ctx context.Context) ([]shm.Slot, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	var out []shm.Slot
	for sl := range s.w.Used() {
		out = append(out, sl)
	}
	return out, nil
}
