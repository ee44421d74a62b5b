package storage

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Why the raft log syncs its own files.
//
// With SyncWrites on, Badger (v4.9.6) syncs two files after every write:
// the memtable's write-ahead log, which holds the entries, and the current
// value log file, whether or not the write put anything there. Raft
// entries under the value threshold never go to the value log, so one of
// the two syncs had nothing to write. On ext4 a sync with nothing to write
// still flushes the device's cache: under a put load it took a third of
// every raft append's time (strace: ~1 ms of ~3 ms), on the leader before
// it replicates and on every follower before it answers.
//
// So the raft log opens Badger with SyncWrites off and, after each commit,
// syncs the files that commit wrote, itself:
//   - always the memtable's write-ahead log, the newest <fid>.mem file in
//     the directory (Badger writes it through a memory map; fdatasync on
//     another descriptor of the same file flushes those pages, as msync
//     does: on Linux msync(MS_SYNC) is an fdatasync of the range);
//   - the value log files (<fid>.vlog) only when an entry was large enough
//     to go there, or after value log GC moved entries into them.
//
// This depends on Badger's file names and on which memtable a write lands
// in. walSyncer checks what it can (a write-ahead log must exist at open,
// and a memtable file that Badger deleted sends it back to the directory
// listing), and TestRaftStoreSyncsBadgersFiles fails if a Badger upgrade
// lays files out differently.
//
// Only on Linux (ownSync), where it was measured and where msync is known
// to be an fdatasync. Elsewhere the raft log keeps Badger's SyncWrites, and
// a nil *walSyncer syncs nothing.

const (
	memFileExt  = ".mem"
	vlogFileExt = ".vlog"
)

// syncFile makes f's data durable. A variable so tests can watch it.
var syncFile = fdatasync

// walSyncer syncs the Badger files in dir that a commit wrote.
type walSyncer struct {
	dir string

	mu sync.Mutex
	// mem is open on the newest memtable write-ahead log, memFid.
	mem    *os.File
	memFid int
	// vlogFid is the newest value log file a full sync covered; a later
	// full sync starts from it (it may have grown since).
	vlogFid int
}

// openWALSyncer finds the write-ahead log of the Badger database open in
// dir. It fails when there is none: then this Badger lays out its files in
// a way walSyncer does not know, and syncing nothing would lose writes.
func openWALSyncer(dir string) (*walSyncer, error) {
	w := &walSyncer{dir: dir, memFid: -1, vlogFid: -1}
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
	if err := w.moveTo(mems[len(mems)-1].fid); err != nil {
		return nil, err
	}
	return w, nil
}

// sync makes every commit that returned before it durable. full also
// syncs the value log: needed when a commit put entries there.
func (w *walSyncer) sync(full bool) error {
	if w == nil {
		return nil // Badger syncs (SyncWrites)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.mem == nil {
		return fmt.Errorf("sync %s: closed", w.dir)
	}
	if full {
		if err := w.syncValueLogLocked(); err != nil {
			return err
		}
	}
	if err := w.followMemtablesLocked(); err != nil {
		return err
	}
	return w.syncLocked(w.mem)
}

// syncValueLog syncs the value log files written since the last full
// sync. The raft log's journal holds its entries, not the value log that
// Badger's memtable points into.
func (w *walSyncer) syncValueLog() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.mem == nil {
		return fmt.Errorf("sync %s: closed", w.dir)
	}
	return w.syncValueLogLocked()
}

// syncAll makes every write so far durable, as a checkpoint of the state
// store needs (checkpoint.go): the value log files from the newest one the
// last full sync covered, and every memtable file, not only the newest. A
// full memtable waits for its flush in a file of its own, which Badger does
// not sync with SyncWrites off; one already flushed and deleted is in a
// synced table.
func (w *walSyncer) syncAll() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.mem == nil {
		return fmt.Errorf("sync %s: closed", w.dir)
	}
	if err := w.syncValueLogLocked(); err != nil {
		return err
	}
	mems, _, err := w.list()
	if err != nil {
		return err
	}
	for _, m := range mems {
		if _, err := w.syncNamedLocked(m.name); err != nil {
			return err
		}
	}
	// The directory entries of memtable files created since the last look.
	if err := syncDir(w.dir); err != nil {
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

// followMemtablesLocked moves w.mem to the newest memtable file. A full
// memtable is replaced by a new one (and file) before a write goes on, so
// the commit being synced may be in a newer file than the last sync saw.
func (w *walSyncer) followMemtablesLocked() error {
	for {
		next := filepath.Join(w.dir, memFileName(w.memFid+1))
		if _, err := os.Stat(next); errors.Is(err, fs.ErrNotExist) {
			break
		} else if err != nil {
			return fmt.Errorf("sync %s: %w", w.dir, err)
		}
		if err := w.moveTo(w.memFid + 1); err != nil {
			return err
		}
	}
	// Badger deletes a memtable's file once it is flushed to a synced
	// table. If ours is gone, memtables turned over more than once since
	// the last look (the next file, too, may be gone): list the directory.
	if _, err := os.Stat(w.mem.Name()); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("sync %s: %w", w.dir, err)
	}
	mems, _, err := w.list()
	if err != nil {
		return err
	}
	for _, m := range mems {
		if m.fid > w.memFid {
			if err := w.moveTo(m.fid); err != nil {
				return err
			}
		}
	}
	return nil
}

// moveTo makes memtable file fid the one synced. The file it replaces is
// synced once more first: writes that sync nothing themselves (value log
// GC's) may have gone there after the last sync.
func (w *walSyncer) moveTo(fid int) error {
	f, err := os.Open(filepath.Join(w.dir, memFileName(fid)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil // flushed and deleted already: a synced table holds it
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", w.dir, err)
	}
	if w.mem != nil {
		err := w.syncLocked(w.mem)
		w.mem.Close()
		if err != nil {
			f.Close()
			w.mem = nil
			return err
		}
	}
	w.mem, w.memFid = f, fid
	// The new file's directory entry: Badger does not sync the directory
	// when it creates a memtable file.
	if err := syncDir(w.dir); err != nil {
		return fmt.Errorf("sync %s: directory: %w", w.dir, err)
	}
	return nil
}

// syncValueLogLocked syncs every value log file from the newest one the
// last full sync covered: a write that fills a file goes on in a new one,
// and Badger does not sync the full one with SyncWrites off.
func (w *walSyncer) syncValueLogLocked() error {
	_, vlogs, err := w.list()
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
	if newest > w.vlogFid {
		w.vlogFid = newest
		if err := syncDir(w.dir); err != nil {
			return fmt.Errorf("sync %s: directory: %w", w.dir, err)
		}
	}
	return nil
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
	err = w.syncLocked(f)
	f.Close()
	return err == nil, err
}

func (w *walSyncer) syncLocked(f *os.File) error {
	if err := syncFile(f); err != nil {
		return fmt.Errorf("sync %s: %w", f.Name(), err)
	}
	return nil
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

// close closes the open file; later syncs fail.
func (w *walSyncer) close() error {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.mem == nil {
		return nil
	}
	err := w.mem.Close()
	w.mem = nil
	return err
}

// memFileName is Badger's name for memtable file fid.
func memFileName(fid int) string { return fmt.Sprintf("%05d%s", fid, memFileExt) }

func fileID(name, ext string) (int, bool) {
	digits, ok := strings.CutSuffix(name, ext)
	if !ok || digits == "" {
		return 0, false
	}
	fid, err := strconv.Atoi(digits)
	return fid, err == nil && fid >= 0
}
