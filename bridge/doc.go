// Package bridge is what hb needs to watch programs that another process
// manager starts: supervisord, runit and s6. It decodes the managers'
// status records (runit's and s6's supervise/status), speaks supervisord's
// XML-RPC interface and its event listener protocol, finds a manager's own
// process, vets the paths hb reads, and sends control requests to the
// manager that owns a program (sv, s6-svc, supervisorctl's XML-RPC calls).
//
// It keeps no state and watches nothing itself: the plugin (plugin/shim,
// bridge_linux.go) owns the table and the exit detectors and runs the
// watchers; hbd uses Control. See docs/bridges.md.
package bridge

// Managers hb bridges into.
const (
	Runit       = "runit"
	S6          = "s6"
	Supervisord = "supervisord"
)

// Known reports whether m names a manager hb bridges into.
func Known(m string) bool { return m == Runit || m == S6 || m == Supervisord }
