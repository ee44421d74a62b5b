package raftlog

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// FS is the file system the store uses: the operations it needs and no
// more, so that tests can fail any one of them (see the fault-injecting
// twin in the tests). OS is the real one.
type FS interface {
	// MkdirAll creates dir and its parents if they are missing.
	MkdirAll(dir string) error
	// ReadDir lists the names of the entries in dir.
	ReadDir(dir string) ([]string, error)
	// Create creates a new file for reading and writing; it fails if the
	// file exists.
	Create(path string) (File, error)
	// Open opens an existing file for reading and writing.
	Open(path string) (File, error)
	// Remove deletes a file.
	Remove(path string) error
	// Rename renames a file, replacing any file of the new name.
	Rename(from, to string) error
	// SyncDir makes the directory's entries (creations, renames,
	// removals) durable.
	SyncDir(dir string) error
}

// File is an open file of an FS.
type File interface {
	io.ReaderAt
	io.WriterAt
	// Sync makes the file's data durable, and its size when that changed
	// (fdatasync on Linux).
	Sync() error
	// Allocate reserves disk blocks for [off, off+n), growing the file to
	// at least off+n; the new bytes read as zeros. It fails with ENOSPC
	// when the disk is full, rather than leaving a sparse file whose later
	// writes could fail.
	Allocate(off, n int64) error
	// Truncate sets the file's size, dropping the blocks past it.
	Truncate(size int64) error
	// Size returns the file's size.
	Size() (int64, error)
	// Lock takes an exclusive advisory lock on the file, failing at once
	// if another open file description holds it.
	Lock() error
	Close() error
}

// OS is the operating system's file system.
var OS FS = osFS{}

type osFS struct{}

func (osFS) MkdirAll(dir string) error { return os.MkdirAll(dir, 0o750) }

func (osFS) ReadDir(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	return names, nil
}

func (osFS) Create(path string) (File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

func (osFS) Open(path string) (File, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

func (osFS) Remove(path string) error { return os.Remove(path) }

func (osFS) Rename(from, to string) error { return os.Rename(from, to) }

func (osFS) SyncDir(dir string) error {
	d, err := os.Open(filepath.Clean(dir))
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

type osFile struct{ f *os.File }

func (o osFile) ReadAt(p []byte, off int64) (int, error)  { return o.f.ReadAt(p, off) }
func (o osFile) WriteAt(p []byte, off int64) (int, error) { return o.f.WriteAt(p, off) }
func (o osFile) Sync() error                              { return fdatasync(o.f) }
func (o osFile) Allocate(off, n int64) error              { return fallocate(o.f, off, n) }
func (o osFile) Truncate(size int64) error                { return o.f.Truncate(size) }
func (o osFile) Lock() error                              { return lockFile(o.f) }
func (o osFile) Close() error                             { return o.f.Close() }

func (o osFile) Size() (int64, error) {
	fi, err := o.f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func isNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }

// errLocked is returned by Lock when another open store holds the lock.
var errLocked = errors.New("the directory is in use by another open store")
