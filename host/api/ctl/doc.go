// Package ctl is hbctl, the command-line client of hbd's control API and
// reader of the shm table. cmd/hbctl is one call into Main.
//
// Every command talks to hbd over its unix socket (-s, $HB_SOCKET, default
// /run/hb/hbd.sock) through host/api's Client, except `shm`, which maps the
// shared-memory table read-only and works with hbd down. Flags may come
// before or after the arguments. Exit status: 0 success, 1 the operation
// failed, 2 usage error, 3 hbd cannot be reached, 4 wait timed out, 130
// interrupted (see Usage).
package ctl
