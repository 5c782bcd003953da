package plugin

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hbshim/hb/shm"
)

// Errors a Shim implementation returns (wrapped, with what failed) and the
// host matches with errors.Is. They survive the process boundary: the server
// sends each as a gRPC status code plus an ErrorInfo reason, and the client
// turns it back into an error that keeps the plugin's message and wraps the
// same sentinel.
var (
	// ErrNotFound: no service of that name (gRPC NotFound).
	ErrNotFound = errors.New("unknown service")
	// ErrRunning: the operation needs the service stopped (gRPC FailedPrecondition).
	ErrRunning = errors.New("service is running")
	// ErrNotRunning: the operation needs a running service (gRPC FailedPrecondition).
	ErrNotRunning = errors.New("service is not running")
	// ErrFull: no free slot in the shared-memory table (gRPC ResourceExhausted).
	ErrFull = errors.New("slot table is full")
	// ErrBadSpec: the request is invalid: bad name, empty command, unknown
	// stdout mode, … (gRPC InvalidArgument).
	ErrBadSpec = errors.New("invalid spec")
	// ErrShutdown: the plugin is shutting down and refuses new work (gRPC Unavailable).
	ErrShutdown = errors.New("plugin is shutting down")
	// ErrUnavailable: the plugin could not be reached: its process is gone or
	// the connection broke. The host should check Conn.Exited and relaunch or
	// reattach.
	ErrUnavailable = errors.New("plugin unavailable")
	// ErrHostConnected: the plugin serves one hbd at a time, and another hbd
	// process is connected to it (gRPC FailedPrecondition).
	ErrHostConnected = errors.New("another hbd is connected to the plugin")
	// ErrStale: a state the host sent is about an incarnation that has
	// exited or been replaced since (gRPC Aborted); the slot is unchanged.
	ErrStale = errors.New("state is about an earlier incarnation")
	// ErrNoPlugin: Reattach found no plugin to attach to (no plugin.json, the
	// recorded process is dead, or it is not ours). Launch a new one.
	ErrNoPlugin = errors.New("no plugin to reattach")
)

// errorDomain is the ErrorInfo domain of hb's reasons.
const errorDomain = "hb.v1"

// wireErrors maps each sentinel to its status code and ErrorInfo reason. The
// client maps reasons back; codes alone are the fallback.
var wireErrors = []struct {
	err    error
	code   codes.Code
	reason string
}{
	{ErrNotFound, codes.NotFound, "NOT_FOUND"},
	{ErrRunning, codes.FailedPrecondition, "RUNNING"},
	{ErrNotRunning, codes.FailedPrecondition, "NOT_RUNNING"},
	{ErrFull, codes.ResourceExhausted, "FULL"},
	{ErrBadSpec, codes.InvalidArgument, "BAD_SPEC"},
	{ErrShutdown, codes.Unavailable, "SHUTDOWN"},
	{ErrHostConnected, codes.FailedPrecondition, "HOST_CONNECTED"},
	{ErrStale, codes.Aborted, "STALE"},
	// The table's own errors, when an implementation passes them through.
	{shm.ErrNotFound, codes.NotFound, "NOT_FOUND"},
	{shm.ErrFull, codes.ResourceExhausted, "FULL"},
	{shm.ErrBadName, codes.InvalidArgument, "BAD_SPEC"},
}

// toStatus is the server side: it turns an implementation's error into a
// gRPC status error whose message is err.Error().
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	for _, w := range wireErrors {
		if errors.Is(err, w.err) {
			st, derr := status.New(w.code, err.Error()).WithDetails(&errdetails.ErrorInfo{
				Reason: w.reason,
				Domain: errorDomain,
			})
			if derr != nil {
				return status.Error(w.code, err.Error())
			}
			return st.Err()
		}
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	if st, ok := status.FromError(err); ok {
		return st.Err() // a status from a nested call keeps its code
	}
	return status.Error(codes.Unknown, err.Error())
}

// RemoteError is an error returned by the plugin process, as seen by the
// host. Error() is the plugin's message; errors.Is matches the sentinel the
// plugin wrapped (ErrNotFound, …) when there was one.
type RemoteError struct {
	// Method is the RPC that failed ("Spawn").
	Method string
	// Code is the gRPC status code.
	Code codes.Code
	// Msg is the plugin's error message.
	Msg string
	// Err is the sentinel recovered from the status, or nil.
	Err error
}

// Error returns the plugin's message unchanged.
func (e *RemoteError) Error() string { return e.Msg }

// Unwrap returns the recovered sentinel, if any.
func (e *RemoteError) Unwrap() error { return e.Err }

// fromStatus is the client side: it turns an RPC error back into a Go error.
// Application errors become *RemoteError (wrapping the sentinel); transport
// failures wrap ErrUnavailable; cancellations wrap the context error.
func fromStatus(method string, err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("plugin: %s: %w", method, err)
	}
	var reason string
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == errorDomain {
			reason = info.GetReason()
			break
		}
	}
	if reason != "" {
		for _, w := range wireErrors {
			if w.reason == reason {
				return &RemoteError{Method: method, Code: st.Code(), Msg: st.Message(), Err: w.err}
			}
		}
	}
	switch st.Code() {
	case codes.Canceled:
		return fmt.Errorf("plugin: %s: %w: %s", method, context.Canceled, st.Message())
	case codes.DeadlineExceeded:
		return fmt.Errorf("plugin: %s: %w: %s", method, context.DeadlineExceeded, st.Message())
	case codes.Unavailable:
		return fmt.Errorf("plugin: %s: %w: %s", method, ErrUnavailable, st.Message())
	}
	// An application error without a reason: keep its code's closest sentinel.
	var sentinel error
	switch st.Code() {
	case codes.NotFound:
		sentinel = ErrNotFound
	case codes.ResourceExhausted:
		sentinel = ErrFull
	case codes.InvalidArgument:
		sentinel = ErrBadSpec
	}
	return &RemoteError{Method: method, Code: st.Code(), Msg: st.Message(), Err: sentinel}
}

// outcomeFromError is the server side of one Spawn of a SpawnMany: err as
// toStatus would send it, taken apart into the SpawnOutcome's fields.
func outcomeFromError(err error) (code int32, msg, reason string) {
	st, _ := status.FromError(toStatus(err))
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == errorDomain {
			reason = info.GetReason()
			break
		}
	}
	return int32(st.Code()), st.Message(), reason
}

// errorFromOutcome is the client side: the error fromStatus would have made
// of the same Spawn's status.
func errorFromOutcome(code int32, msg, reason string) error {
	st := status.New(codes.Code(code), msg)
	if reason != "" {
		if withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: errorDomain}); err == nil {
			st = withInfo
		}
	}
	return fromStatus("Spawn", st.Err())
}
