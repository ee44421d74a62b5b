package storage

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"errors"
	"io/fs"
)

// The state store's checkpoints sync Badger's files by name.
//
// The state store writes with SyncWrites off (unclean.go), and a checkpoint
// (checkpoint.go) must make every write so far durable. Badger's own Sync
// covers only the active memtable's write-ahead log and the value log: a
// full memtable waiting for its flush has a <fid>.mem file of its own that
// Badger never syncs with SyncWrites off, and a value log file that filled
// up is not synced either. So a checkpoint syncs every memtable file and
// the value log files from the newest one the last checkpoint covered.
//
// This depends on Badger's file names: openWALSyncer fails when the
// database has no memtable file, and TestKVCheckpointSyncsBadgersFiles
// fails if a Badger upgrade lays files out differently. Only on Linux
// (ownSync), where fdatasync of a file flushes what was written to it
// through a memory map; elsewhere a checkpoint calls Badger's Sync.

const (
	memFileExt  = ".mem"
	vlogFileExt = ".vlog"
)

// syncFile makes f's data durable. A variable so tests can watch it.
var syncFile = fdatasync

// walSyncer syncs the files of the Badger database in dir.
type walSyncer struct {
	dir string

	mu sync.Mutex
	// vlogFid is the newest value log file the last syncAll covered; the
	// next starts from it (it may have grown since).
	vlogFid int
	closed  bool
}

// openWALSyncer finds the write-ahead log of the Badger database open in
// dir. It fails when there is none: then this Badger lays out its files in
// a way walSyncer does not know, and syncing nothing would lose writes.
func openWALSyncer(dir string) (*walSyncer, error) {
	w := &walSyncer{dir: dir, vlogFid: -1}
	mems, vlogs, err := w.list()
	if err != nil {
		return nil, err
	}
	if len(mems) == 0 {
		return nil, fmt.Errorf("no Badger write-ahead log (*%s) in %s: unknown Badger file layout", memFileExt, dir)
	}
	if len(vlogs) > 0 {
		w.vlogFid = vlogs[0].fid
	}
	return w, nil
}

// syncAll makes every write so far durable: the value log files from the
// newest one the last syncAll covered, and every memtable file. One
// already flushed and deleted is in a synced table.
func (w *walSyncer) syncAll() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return fmt.Errorf("sync %s: closed", w.dir)
	}
	mems, vlogs, err := w.list()
	if err != nil {
		return err
	}
	newest := w.vlogFid
	for _, v := range vlogs { // newest first
		if v.fid < w.vlogFid {
			break
		}
		// One that is gone was collected by GC: its entries were moved.
		if ok, err := w.syncNamedLocked(v.name); err != nil {
			return err
		} else if ok {
			newest = max(newest, v.fid)
		}
	}
	w.vlogFid = newest
	for _, m := range mems {
		if _, err := w.syncNamedLocked(m.name); err != nil {
			return err
		}
	}
	// The directory entries of files created since the last look: Badger
	// does not sync the directory when it creates one.
	if err := SyncDir(w.dir); err != nil {
		return fmt.Errorf("sync %s: directory: %w", w.dir, err)
	}
	return nil
}

// valueLogDropped tells w that Badger's DropAll deleted every value log
// file: their numbering starts again from 1, below what w last synced.
func (w *walSyncer) valueLogDropped() {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.vlogFid = -1
}

// syncNamedLocked syncs the file name in w.dir; false when it is gone (a
// memtable flushed to a synced table, a value log file collected).
func (w *walSyncer) syncNamedLocked(name string) (bool, error) {
	f, err := os.Open(filepath.Join(w.dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("sync %s: %w", w.dir, err)
	}
	defer f.Close()
	if err := syncFile(f); err != nil {
		return false, fmt.Errorf("sync %s: %w", f.Name(), err)
	}
	return true, nil
}

type badgerFile struct {
	name string
	fid  int
}

// list returns the memtable files in ascending order of id and the value
// log files in descending order.
func (w *walSyncer) list() (mems, vlogs []badgerFile, err error) {
	entries, err := os.ReadDir(w.dir)
	if err != nil {
		return nil, nil, fmt.Errorf("sync %s: %w", w.dir, err)
	}
	for _, e := range entries {
		if fid, ok := fileID(e.Name(), memFileExt); ok {
			mems = append(mems, badgerFile{e.Name(), fid})
		} else if fid, ok := fileID(e.Name(), vlogFileExt); ok {
			vlogs = append(vlogs, badgerFile{e.Name(), fid})
		}
	}
	slices.SortFunc(mems, func(a, b badgerFile) int { return cmp.Compare(a.fid, b.fid) })
	slices.SortFunc(vlogs, func(a, b badgerFile) int { return cmp.Compare(b.fid, a.fid) })
	return mems, vlogs, nil
}

// close makes later syncs fail.
func (w *walSyncer) close() error {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	return nil
}

func fileID(name, ext string) (int, bool) {
	digits, ok := strings.CutSuffix(name, ext)
	if !ok || digits == "" {
		return 0, false
	}
	fid, err := strconv.Atoi(digits)
	return fid, err == nil && fid >= 0
}
