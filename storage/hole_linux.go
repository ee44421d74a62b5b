package storage

import (
	"os"

	"golang.org/x/sys/unix"
)

// firstHole returns the offset of the first hole in f, or its size when
// the file system does not say.
func firstHole(f *os.File) int64 {
	off, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_HOLE)
	if err != nil {
		if fi, serr := f.Stat(); serr == nil {
			return fi.Size()
		}
		return 0
	}
	return off
}
