// Package storage keeps a node's data in Badger: the raft log and stable
// store (RaftStore) and the key-value state (KV).
//
// Durability and crash rules live beside the code they govern: the raft
// log's syncs in walsync.go, deferredsync.go and journal.go, the state's
// checkpoints and unclean stops in checkpoint.go and unclean.go.
//
// # Damaged files
//
// What must hold: a store whose files are damaged is never served from.
//
//   - Open checks before it serves (verify.go): the manifest and every
//     block of every table, read on the opening goroutine, before Badger
//     opens them; the newest value log file against what Badger cut off
//     it; the state against its checkpoint; the raft log entry by entry
//     (RaftStore.verifyLog) and against its journal. Damage fails the open
//     with a CorruptError naming the file.
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
