package storage

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// ownSync: checkpoints sync Badger's files by name (checkpointsync.go).
const ownSync = true

// fdatasync syncs f's data, and its size when that changed.
func fdatasync(f *os.File) error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if err != syscall.EINTR {
			return err
		}
	}
}
