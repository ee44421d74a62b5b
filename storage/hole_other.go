//go:build !linux

package storage

import "os"

// firstHole returns the size of f: holes are not looked for here.
func firstHole(f *os.File) int64 {
	fi, err := f.Stat()
	if err != nil {
		return 0
	}
	return fi.Size()
}
