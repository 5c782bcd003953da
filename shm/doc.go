// Package shm is hb's shared-memory liveness table: a POSIX shared-memory
// file (/dev/shm/<name>, default "hb") holding one fixed-size slot per
// service, whose first word is the PID of the service's running process or 0.
// Any process on the machine can map it read-only and tell whether a service
// is alive with one atomic load, with no socket, no system call and no
// heartbeat message.
//
// The package depends only on the standard library and golang.org/x/sys/unix,
// so peers written in Go can import it alone. It works on Linux only.
//
// # ABI v1
//
// The layout (header, slots, flag bits, states, write order) is shared with
// readers in other languages (contrib/c/hb_shm.h) and is described once, in
// docs/abi.md; testdata/table-v1.golden pins it byte for byte. The contracts
// this package keeps:
//
//   - An exit stores pid = 0 first (ClearPID, a compare-and-swap, so the exit
//     of an old incarnation never clears a newer one), before the exit is
//     reported or the process reaped, so a non-zero pid never names a
//     recycled process; the other fields follow under the seqlock.
//   - A spawn fills the fields under the seqlock and stores the pid last.
//   - A slot keeps its index while its service exists, and a name freed and
//     allocated again gets its old index back: look a name up once
//     (Lookup, after reading LayoutSeq), then read PID(i); LayoutChanged
//     (one load) says when slots were assigned or released and the name
//     must be looked up again.
//   - writer_alive is a robust futex the kernel marks when the writer dies
//     (MarkAlive): WriterAlive is one load; Alive(i) is PID(i) != 0 and
//     WriterAlive.
//   - After every store to a pid word the writer wakes the futex waiters on
//     it and increments and wakes the changes word: Wait, WaitAny and
//     WaitChanges sleep in the kernel on the read-only mapping.
//
// # Concurrency
//
// One Writer per table, the plugin: Create takes an exclusive flock(2) on the
// file and a second writer gets ErrBusy. A Writer started after the previous
// one died adopts the table, keeping every slot and index. Writer methods are
// safe for concurrent use by the writer's goroutines (seqlock updates are
// serialised by a mutex; ClearPID needs no lock). Any number of readers, in any
// number of processes, use Open and the Table methods, which are safe for
// concurrent use and never block the writer. Every access to the mapping is a
// sync/atomic 32- or 64-bit operation (names are copied as 4-byte words), and
// multi-word copies are validated by the seqlock, so a Snapshot is never torn.
//
// # Safety checks
//
// Tables are opened with O_NOFOLLOW|O_CLOEXEC. Readers refuse symlinks
// (ErrSymlink), non-regular files (ErrNotRegular), files writable by group or
// others (ErrMode), bad headers (ErrBadMagic, ErrVersion, ErrLayout) and files
// owned by anyone but root and the user hb runs as (ErrOwner): /dev/shm is
// writable by every local user, who could create the table's name before hb
// does and forge its slots. Open and OpenPath accept root and the caller's
// effective user; OpenOwned and OpenPathOwned name the writer's user. The
// writer refuses a file owned by another user (ErrOwner), naming the file,
// its owner and mode and how to remove it. New tables are created with mode
// 0644 regardless of the umask, their pages allocated (a full file system
// fails Create with ErrNoSpace) and appear under their name only once their
// header is complete.
//
// # Repairs
//
// The Writer keeps the table in private memory (its Table) and stores every
// update there first, then into each mapped file. A file truncated under the
// writer makes a store fault; the fault is caught (debug.SetPanicOnFault) and
// the store skipped, and Check, which the writer calls with its beat, gives
// the file back its size, pages and contents. If the table's name was removed,
// Check publishes a new file with the contents under it; the removed file
// keeps receiving every update for the readers that still map it.
//
// # Debugging
//
// contrib/c/hbpeek prints a table (hbpeek [-p PATH] [NAME]); `od -A d -t x4
// /dev/shm/hb` shows the raw words.
package shm
