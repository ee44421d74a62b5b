//go:build !linux

package raftlog

import "os"

// Elsewhere than Linux the store runs, for development, without the
// guarantees that need fdatasync, fallocate and flock.

func fdatasync(f *os.File) error { return f.Sync() }

func fallocate(f *os.File, off, n int64) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() >= off+n {
		return nil
	}
	return f.Truncate(off + n)
}

func lockFile(*os.File) error { return nil }
