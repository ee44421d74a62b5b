//go:build !linux

package storage

import "os"

// ownSync: elsewhere than Linux checkpoints call Badger's Sync
// (checkpointsync.go says why Linux differs).
const ownSync = false

// fdatasync is unused without ownSync; it keeps checkpointsync.go building.
func fdatasync(f *os.File) error { return f.Sync() }
