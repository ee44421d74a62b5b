// Package storage keeps a node's key-value state (KV) in Badger. The raft
// log and stable store are in storage/raftlog (storage/badgerlog reads the
// one that earlier releases kept in Badger, to migrate it).
//
// This file states the package's durability rules and invariants; the
// code refers here.
//
// # Invariants
//
//  1. A revision is the raft index of the entry that made the change, and
//     every version of a record is written at its revision (Badger's
//     managed mode): reads at a past revision see the state as of it, down
//     to the compacted revision. Nothing is written at revision 0.
//  2. The applied index (metaApplied) is written after the data of the
//     entries it covers, in a Badger write of its own, never in the same
//     one: it never runs ahead of the data, and a crash between the two
//     leaves data above it, which replaying those entries overwrites
//     exactly (applying an entry is idempotent).
//  3. A copy of the state (Snapshot) holds every version of every record
//     up to its revision, delete markers included, so a store restored
//     from it answers reads at past revisions as one that applied the log.
//  4. A store found damaged is never served from (below).
//
// # Durability
//
// The state is written without fsync: the raft log (storage/raftlog) is
// the durability point, and a state that lost its tail replays it from
// there. That holds when the process dies; for a power loss, checkpoints
// sync Badger's files (checkpoint.go, checkpointsync.go) and a store left
// open across a reboot rolls back to its last checkpoint (unclean.go).
// Raft drops its log only below a checkpoint. The state's logical size
// (the space quota's measure) is kept in usage.go, and the backup file's
// format is package snapfile.
//
// # Copies of the state
//
// Snapshot writes every version of every record up to a revision, in
// Badger's key order; Restore (any store, through Badger's Load) and
// RestoreSorted (a store nothing else uses, through its StreamWriter, which
// relies on that order) load it. Either leaves the store at the copy's
// revision, checkpointed, or marked damaged if it did not finish.
// CopySpan (copyspan.go) builds a new group's store the same way from the
// history of one key span of a store in use, its revision index entries
// with it.
//
// # Damaged files
//
// What must hold: a store whose files are damaged is never served from.
//
//   - Open checks before it serves (verify.go): the manifest and every
//     block of every table, read on the opening goroutine, before Badger
//     opens them; the newest value log file against what Badger cut off
//     it; the state against its checkpoint. Damage fails the open with a
//     CorruptError naming the file.
//   - After open, Badger checks every table block and every value log
//     entry it reads. It drops the error of a value it cannot read (it
//     logs it and hands over no value), so every read goes through
//     itemValue, which turns that into ErrCorrupt. A table block that
//     fails later only ends an iteration early, without an error: such
//     damage, appearing after open, is left to the cross-member
//     consistency check.
//   - A panic of the storage engine on the caller's goroutine becomes a
//     CorruptError (recoverPanic, KV.guard). One in Badger's own
//     goroutines ends the process; the open marker (openmark.go) makes
//     the next open report the store corrupt instead of dying again.
//   - KV reports damage found while it runs once (OnCorrupt), and marks
//     its directory (CORRUPT) so that no later open serves it. The caller
//     rebuilds: Reset sets the files aside (SetAside) for an empty store,
//     which Restore fills from a healthy copy.
package storage
