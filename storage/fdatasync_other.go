//go:build !linux

package storage

import "os"

// ownSync: elsewhere than Linux the raft log leaves syncing to Badger
// (SyncWrites), as measured and reasoned only for Linux (walsync.go).
const ownSync = false

// fdatasync is unused without ownSync; it keeps walsync.go building.
func fdatasync(f *os.File) error { return f.Sync() }
