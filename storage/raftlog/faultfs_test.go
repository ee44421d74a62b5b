package raftlog

import (
	"sync"
)

// faultFS is the fault-injecting twin of an FS: it fails the n-th call of
// one operation (counted from 1) with err, and counts every operation.
type faultFS struct {
	FS
	mu    sync.Mutex
	op    string // "create", "write", "sync", "allocate", "truncate", "rename", "remove", "syncdir"
	n     int
	err   error
	half  bool // a failing write writes half of its bytes first
	count map[string]int
	fired bool
}

func newFaultFS(op string, n int, err error) *faultFS {
	return &faultFS{FS: OS, op: op, n: n, err: err, count: map[string]int{}}
}

// hit counts a call of op and returns the error to fail it with, if any.
func (f *faultFS) hit(op string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.count[op]++
	if op == f.op && f.count[op] == f.n {
		f.fired = true
		return f.err
	}
	return nil
}

func (f *faultFS) Create(path string) (File, error) {
	if err := f.hit("create"); err != nil {
		return nil, err
	}
	file, err := f.FS.Create(path)
	if err != nil {
		return nil, err
	}
	return &faultFile{File: file, fs: f}, nil
}

func (f *faultFS) Open(path string) (File, error) {
	file, err := f.FS.Open(path)
	if err != nil {
		return nil, err
	}
	return &faultFile{File: file, fs: f}, nil
}

func (f *faultFS) Remove(path string) error {
	if err := f.hit("remove"); err != nil {
		return err
	}
	return f.FS.Remove(path)
}

func (f *faultFS) Rename(from, to string) error {
	if err := f.hit("rename"); err != nil {
		return err
	}
	return f.FS.Rename(from, to)
}

func (f *faultFS) SyncDir(dir string) error {
	if err := f.hit("syncdir"); err != nil {
		return err
	}
	return f.FS.SyncDir(dir)
}

type faultFile struct {
	File
	fs *faultFS
}

func (f *faultFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.fs.hit("write"); err != nil {
		if f.fs.half {
			n, _ := f.File.WriteAt(p[:len(p)/2], off)
			return n, err
		}
		return 0, err
	}
	return f.File.WriteAt(p, off)
}

func (f *faultFile) Sync() error {
	if err := f.fs.hit("sync"); err != nil {
		return err
	}
	return f.File.Sync()
}

func (f *faultFile) Allocate(off, n int64) error {
	if err := f.fs.hit("allocate"); err != nil {
		return err
	}
	return f.File.Allocate(off, n)
}

func (f *faultFile) Truncate(size int64) error {
	if err := f.fs.hit("truncate"); err != nil {
		return err
	}
	return f.File.Truncate(size)
}
