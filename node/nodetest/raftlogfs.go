package nodetest

import (
	"sync/atomic"

	"github.com/kvstore/kvstore/storage/raftlog"
)

// raftLogFS is a test node's raft log file system: the configured one (the
// OS's by default) with fsyncs that fail while a fault is set
// (Node.FailRaftLogSync).
type raftLogFS struct {
	raftlog.FS
	syncErr atomic.Pointer[error]
}

func (f *raftLogFS) fault() error {
	if p := f.syncErr.Load(); p != nil {
		return *p
	}
	return nil
}

func (f *raftLogFS) Create(path string) (raftlog.File, error) {
	file, err := f.FS.Create(path)
	if err != nil {
		return nil, err
	}
	return syncFaultFile{File: file, fs: f}, nil
}

func (f *raftLogFS) Open(path string) (raftlog.File, error) {
	file, err := f.FS.Open(path)
	if err != nil {
		return nil, err
	}
	return syncFaultFile{File: file, fs: f}, nil
}

func (f *raftLogFS) SyncDir(dir string) error {
	if err := f.fault(); err != nil {
		return err
	}
	return f.FS.SyncDir(dir)
}

type syncFaultFile struct {
	raftlog.File
	fs *raftLogFS
}

func (f syncFaultFile) Sync() error {
	if err := f.fs.fault(); err != nil {
		return err
	}
	return f.File.Sync()
}

// FailRaftLogSync makes every later fsync of the node's raft log fail with
// err, as a failing disk's do; nil ends the fault. The node refuses writes
// from its first failed fsync until it is restarted.
func (nd *Node) FailRaftLogSync(err error) {
	if err == nil {
		nd.raftFS.syncErr.Store(nil)
		return
	}
	nd.raftFS.syncErr.Store(&err)
}
