// Package api is hbd's control API: HTTP/1.1 with JSON bodies over a unix
// socket (default /run/hb/hbd.sock). The server side (Listen) serves a
// Backend, which the manager implements; the client side (Client) is what
// hbctl uses. Any HTTP client that can dial a unix socket works too:
//
//	curl --unix-socket /run/hb/hbd.sock http://hb/v1/services
//	curl --unix-socket /run/hb/hbd.sock -X POST http://hb/v1/services/rx/restart
//	curl --unix-socket /run/hb/hbd.sock -d '{"signal":"HUP"}' http://hb/v1/services/rx/signal
//	curl --unix-socket /run/hb/hbd.sock -d '{"all":true}' http://hb/v1/stop
//	curl --unix-socket /run/hb/hbd.sock -N http://hb/v1/events
//
// # Routes
//
//	GET  /v1/services                 [ServiceStatus...] in config order
//	GET  /v1/services/{name}          ServiceStatus
//	POST /v1/services/{name}/start    ServiceStatus afterwards (any body is ignored)
//	POST /v1/services/{name}/stop     ServiceStatus afterwards, once the process has exited
//	POST /v1/services/{name}/restart  ServiceStatus afterwards
//	POST /v1/services/{name}/signal   body {"signal":"HUP"} ("SIGHUP", "hup", 1 or "1", nothing around it); ServiceStatus
//	POST /v1/start                    body {"names":["a","b"]} or {"all":true}; [ServiceStatus...]
//	POST /v1/stop                     same; {"all":true} stops in reverse config order
//	POST /v1/restart                  same
//	POST /v1/reload                   ReloadResult {"added":[],"removed":[],"changed":[]}
//	GET  /v1/events                   stream of Event, one JSON object per line (application/x-ndjson),
//	                                  each flushed as it happens, until the client goes away
//	GET  /v1/health                   Health {"ok":true,"pid":N,"version":"…","plugin":{…}}; 503 when not ok (also while hbd attaches to its plugin)
//
// Every error answer is JSON, Error {"error":"…","details":["…"]}: 400 bad
// request or malformed JSON (unknown fields are rejected), 403 peer not
// allowed, 404 no such service or route, 405 wrong method (with Allow), 409
// the service's state forbids it (e.g. signal a stopped service), 413 body
// over 64 KiB, 422 reload rejected (details: one line per configuration
// error), 500 anything else, 503 an event stream over the limits
// (MaxEventStreams open in all, MaxEventStreamsPerUID per peer uid). Backend errors are mapped with errors.Is on
// ErrNotFound, ErrBadRequest, ErrConflict and ErrInvalidConfig; the Client's
// *APIError matches the same sentinels.
//
// # Access
//
// The socket file is mode 0660, group-owned by the configured socket group.
// Each connection's peer is identified with SO_PEERCRED when it is accepted
// (supplementary groups with SO_PEERGROUPS, or /proc/PID/status on kernels
// before 4.13); requests are served only for root, hbd's own effective uid,
// or a member of the socket group, and answered 403 otherwise. Listen refuses
// a socket path that is a symlink, whose directory is a symlink, or that is
// not a socket, and one where a server already answers (ErrSocketInUse); a
// stale socket (connection refused) is replaced.
//
// # Concurrency
//
// A Server serves each connection on its own goroutine, so Backend methods
// are called concurrently. Events reach each subscriber in the order the
// Backend sends them; a Backend may drop a subscriber that does not keep up
// by closing its channel, which ends that client's stream. Close ends every
// event stream, waits up to 5 s for requests in flight and removes the
// socket file if it is still the one Listen created. A Client is safe for
// concurrent use.
//
// # Debugging
//
// The server logs refused peers at Warn, mutating requests at Info and every
// other request at Debug, on the logger given to Listen.
package api
