// Package config loads hbd's TOML configuration: the main file, the files
// it includes, defaults, and validation.
//
// Every key, its type and its default are documented for users in
// reference.md next to this file (copied into the README).
//
// Decoding is strict: an unknown key, a value of the wrong type or a bad
// value is an [*Error] naming the file, the line and the key,
//
//	hb.toml:12: service "rx": unknown key "comand" (did you mean "command"?)
//
// and [Load] reports every problem in every file at once as [Errors]
// (errors.As-friendly; each element matches one of the Err* sentinels with
// errors.Is).
//
// Load only reads files. Whether users, groups, directories and executables
// exist on this machine is asked separately by [Resolve] (one service, for
// spawning) and [Config.Check] (all of them, for hbd --check), so that a
// service whose program is missing does not stop the others from running.
//
// [Diff] compares two loaded configurations for a reload.
//
// # Concurrency
//
// A *Config is not changed after Load returns and is safe for concurrent
// reads; Validate, Check, Resolve and Service.KeyLine may be called from
// several goroutines.
package config
