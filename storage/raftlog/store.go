package raftlog

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/raft"
)

// DefaultSegmentSize is the size segments are preallocated to.
const DefaultSegmentSize = 64 << 20

// maxSegmentSize keeps record offsets within 32 bits.
const maxSegmentSize = 1<<32 - 1

const lockName = "LOCK"

// ErrClosed is returned by every call on a closed Store.
var ErrClosed = errors.New("raftlog: store is closed")

// Options configure a Store. The zero value is the default.
type Options struct {
	// FS is the file system; nil means OS.
	FS FS
	// SegmentSize is the size of a new segment; 0 means
	// DefaultSegmentSize. A batch larger than it gets a segment of its own
	// size.
	SegmentSize int64
	// Logger receives the repairs Open makes, gap restarts and write
	// failures; nil means slog.Default().
	Logger *slog.Logger
	// OnFail, if set, hears of the failure that stops the store taking
	// writes (doc.go: failures), once. It runs under the store's write
	// lock: it must neither block nor call the store.
	OnFail func(error)
}

// Store is a raft log and stable store in segment files (doc.go). It is
// safe for concurrent use.
type Store struct {
	dir     string
	fs      FS
	segSize int64
	logger  *slog.Logger

	// writeMu serialises the calls that write (StoreLogs, DeleteRange,
	// Set); they do their I/O under it, and take mu only to publish.
	writeMu sync.Mutex
	// failed, once set, fails every later write (doc.go: failures).
	failed error
	onFail func(error)
	wbuf   []byte

	// mu guards what readers see: the segments and their indexes, the
	// bounds, the meta state, closed. Readers hold it shared while they
	// read a segment file, so no segment is closed under them.
	mu          sync.RWMutex
	segs        []*segment
	first, last uint64 // 0, 0 when empty
	meta        *metaFile
	lock        File
	closed      bool
}

var (
	_ raft.LogStore    = (*Store)(nil)
	_ raft.StableStore = (*Store)(nil)
)

// Open opens the store in dir, creating it if needed, and recovers what a
// crash left (doc.go: opening). It fails on corruption rather than
// dropping acknowledged entries.
func Open(dir string, opts Options) (*Store, error) {
	s := &Store{dir: dir, fs: opts.FS, segSize: opts.SegmentSize, logger: opts.Logger, onFail: opts.OnFail}
	if s.fs == nil {
		s.fs = OS
	}
	if s.segSize <= 0 {
		s.segSize = DefaultSegmentSize
	}
	s.segSize = min(max(s.segSize, segHeaderLen+1), maxSegmentSize)
	if s.logger == nil {
		s.logger = slog.Default()
	}
	s.logger = s.logger.With("component", "raftlog", "dir", dir)
	if err := s.open(); err != nil {
		s.closeFiles()
		return nil, fmt.Errorf("raftlog: open %s: %w", dir, err)
	}
	return s, nil
}

func (s *Store) open() error {
	if err := s.fs.MkdirAll(s.dir); err != nil {
		return err
	}
	// The directory may be new: its entry in its parent must last as long
	// as the files synced in it.
	if err := s.fs.SyncDir(filepath.Dir(filepath.Clean(s.dir))); err != nil {
		return err
	}
	lock, err := s.fs.Open(filepath.Join(s.dir, lockName))
	if isNotExist(err) {
		lock, err = s.fs.Create(filepath.Join(s.dir, lockName))
	}
	if err != nil {
		return err
	}
	s.lock = lock
	if err := lock.Lock(); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	names, err := s.fs.ReadDir(s.dir)
	if err != nil {
		return err
	}
	var bases []uint64
	removed := false
	for _, name := range names {
		if strings.HasSuffix(name, ".tmp") {
			// A segment or meta file whose creation did not finish.
			if err := s.fs.Remove(filepath.Join(s.dir, name)); err != nil {
				return err
			}
			removed = true
		} else if base, ok := parseSegName(name); ok {
			bases = append(bases, base)
		}
	}
	if removed {
		if err := s.fs.SyncDir(s.dir); err != nil {
			return err
		}
	}
	slices.Sort(bases)
	// Losing the meta file would lose raft's term and vote: with segments
	// present, it must be there.
	if s.meta, err = openMeta(s.fs, s.dir, len(bases) == 0); err != nil {
		if isNotExist(err) {
			return fmt.Errorf("%s is missing but log segments are present", metaName)
		}
		return err
	}
	for i, base := range bases {
		g, err := loadSegment(s.fs, s.logger, s.dir, base, i == len(bases)-1)
		if err != nil {
			return err
		}
		if len(s.segs) > 0 {
			prev := s.segs[len(s.segs)-1]
			if len(prev.offs) == 0 || g.base != prev.next() {
				s.segs = append(s.segs, g)
				return fmt.Errorf("%w: %s follows %s, which ends before index %d", ErrCorrupt, g.path, prev.path, g.base-1)
			}
		}
		s.segs = append(s.segs, g)
	}
	// Finish a prefix delete that a crash interrupted: drop the segments
	// wholly below the recorded first index.
	drop := 0
	for drop < len(s.segs) && s.segs[drop].next() <= s.meta.state.first {
		drop++
	}
	if drop > 0 {
		if err := s.removeSegments(slices.Clone(s.segs[:drop])); err != nil {
			return err
		}
		s.segs = s.segs[drop:]
	}
	s.first, s.last = 0, 0
	if n := len(s.segs); n > 0 && s.segs[n-1].next() > s.segs[0].base {
		s.first = max(s.segs[0].base, s.meta.state.first)
		s.last = s.segs[n-1].next() - 1
	}
	return nil
}

// FirstIndex returns the first index in the log, 0 when it is empty.
func (s *Store) FirstIndex() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return 0, ErrClosed
	}
	return s.first, nil
}

// LastIndex returns the last index in the log, 0 when it is empty.
func (s *Store) LastIndex() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return 0, ErrClosed
	}
	return s.last, nil
}

// GetLog reads the entry at index into log. An index outside the log
// returns raft.ErrLogNotFound itself, unwrapped: raft compares with ==.
func (s *Store) GetLog(index uint64, log *raft.Log) error {
	buf, g, from, err := s.readRecord(index)
	if err != nil {
		return err
	}
	if err := decodeRecord(buf, g.seed, log); err != nil {
		return fmt.Errorf("raftlog: get %d: %s offset %d: %w", index, g.path, from, err)
	}
	if log.Index != index {
		return fmt.Errorf("raftlog: get %d: %s offset %d: %w: holds index %d", index, g.path, from, ErrCorrupt, log.Index)
	}
	return nil
}

// readRecord reads the bytes of the record of index.
func (s *Store) readRecord(index uint64) ([]byte, *segment, int64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, nil, 0, ErrClosed
	}
	if s.last == 0 || index < s.first || index > s.last {
		return nil, nil, 0, raft.ErrLogNotFound
	}
	k, _ := slices.BinarySearchFunc(s.segs, index, func(g *segment, i uint64) int {
		if g.next() <= i {
			return -1
		}
		if g.base > i {
			return 1
		}
		return 0
	})
	g := s.segs[k]
	from, to := g.span(index)
	buf := make([]byte, to-from)
	if _, err := g.f.ReadAt(buf, from); err != nil {
		return nil, nil, 0, fmt.Errorf("raftlog: get %d: %s offset %d: %w", index, g.path, from, err)
	}
	return buf, g, from, nil
}

// StoreLog stores one entry.
func (s *Store) StoreLog(log *raft.Log) error { return s.StoreLogs([]*raft.Log{log}) }

// StoreLogs appends logs, which must follow the last index, with one
// write and one sync. When it returns nil they are durable. A first index
// past the next one (a gap) starts the log over there: raft appends past a
// gap only when a snapshot covers everything before it (doc.go: gaps).
func (s *Store) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	for i, l := range logs {
		if l == nil {
			return fmt.Errorf("raftlog: store: log %d of %d is nil", i, len(logs))
		}
		if l.Index == 0 || l.Index != logs[0].Index+uint64(i) {
			return fmt.Errorf("raftlog: store: log %d of %d has index %d after %d", i, len(logs), l.Index, logs[0].Index)
		}
	}
	first, last := logs[0].Index, logs[len(logs)-1].Index
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if err := s.writable(); err != nil {
		return err
	}
	if err := s.storeLocked(logs); err != nil {
		return fmt.Errorf("raftlog: store %d-%d: %w", first, last, err)
	}
	return nil
}

func (s *Store) storeLocked(logs []*raft.Log) error {
	first := logs[0].Index
	if s.last != 0 && first <= s.last {
		return fmt.Errorf("the log holds up to %d already: delete the suffix first", s.last)
	}
	gap := s.last != 0 && first > s.last+1

	buf := s.wbuf[:0]
	rel := make([]int, len(logs))
	for i, l := range logs {
		rel[i] = len(buf)
		var err error
		if buf, err = appendRecord(buf, l, i == 0); err != nil {
			return err
		}
	}
	s.wbuf = buf
	if cap(s.wbuf) > 16<<20 {
		s.wbuf = nil // keep no large buffer after a large batch
	}

	// Whatever may fail for want of space comes first, before anything
	// changes: a new segment is prepared under a temporary name.
	g := s.tail()
	var fresh *newSegment
	if g == nil || gap || (s.last == 0 && g.base != first) || g.end+int64(len(buf)) > g.capacity {
		size := max(s.segSize, segHeaderLen+int64(len(buf)))
		if size > maxSegmentSize {
			return fmt.Errorf("batch of %d bytes exceeds the largest segment", len(buf))
		}
		var err error
		if fresh, err = prepareSegment(s.fs, s.dir, first, size); err != nil {
			return err
		}
		defer fresh.abort(s.fs)
	}
	if gap {
		s.logger.Warn("append after a gap: dropping the log before it", "first_index", s.first, "last_index", s.last, "append_index", first)
		if err := s.removeAllLocked(); err != nil {
			return err
		}
	}
	if s.last == 0 && first < s.meta.state.first {
		// Lower the recorded first index, or opening would hide the
		// entries below it.
		next := s.meta.state.clone()
		next.first = first
		if err := s.writeMetaLocked(next); err != nil {
			return err
		}
	}
	if fresh != nil {
		if g := s.tail(); g != nil && len(g.offs) == 0 {
			// Only the tail may be empty.
			s.mu.Lock()
			s.segs = s.segs[:len(s.segs)-1]
			s.mu.Unlock()
			if err := s.removeSegments([]*segment{g}); err != nil {
				return s.failLocked(err, nil)
			}
		}
		var err error
		if g, err = s.commitSegment(fresh); err != nil {
			return err
		}
	}

	for _, r := range rel {
		sealRecord(buf[r:], g.seed)
	}
	if _, err := g.f.WriteAt(buf, g.end); err != nil {
		return s.failLocked(fmt.Errorf("write %s: %w", g.path, err), g)
	}
	if err := g.f.Sync(); err != nil {
		return s.failLocked(fmt.Errorf("sync %s: %w", g.path, err), g)
	}
	s.mu.Lock()
	for _, r := range rel {
		g.offs = append(g.offs, uint32(g.end+int64(r)))
	}
	g.end += int64(len(buf))
	if s.last == 0 {
		s.first = first
	}
	s.last = logs[len(logs)-1].Index
	s.mu.Unlock()
	return nil
}

// tail returns the last segment, or nil.
func (s *Store) tail() *segment {
	if len(s.segs) == 0 {
		return nil
	}
	return s.segs[len(s.segs)-1]
}

// commitSegment renames a prepared segment into place, syncs the
// directory and makes it the tail.
func (s *Store) commitSegment(n *newSegment) (*segment, error) {
	g := n.g
	if err := s.fs.Rename(n.tmp, g.path); err != nil {
		return nil, s.failLocked(fmt.Errorf("new segment %s: %w", g.path, err), nil)
	}
	n.g = nil // renamed: abort leaves it
	if err := s.fs.SyncDir(s.dir); err != nil {
		g.f.Close()
		return nil, s.failLocked(fmt.Errorf("new segment %s: %w", g.path, err), nil)
	}
	s.mu.Lock()
	s.segs = append(s.segs, g)
	s.mu.Unlock()
	return g, nil
}

// DeleteRange deletes the entries [min, max], which must be a prefix or a
// suffix of the log (or all of it): raft deletes nothing else.
func (s *Store) DeleteRange(min, max uint64) error {
	if min > max {
		return nil
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if err := s.writable(); err != nil {
		return err
	}
	if err := s.deleteLocked(min, max); err != nil {
		return fmt.Errorf("raftlog: delete %d-%d: %w", min, max, err)
	}
	return nil
}

func (s *Store) deleteLocked(min, max uint64) error {
	if s.last == 0 || max < s.first || min > s.last {
		return nil
	}
	switch {
	case min <= s.first && max >= s.last:
		return s.deletePrefixLocked(s.last)
	case min <= s.first:
		return s.deletePrefixLocked(max)
	case max >= s.last:
		return s.deleteSuffixLocked(min)
	default:
		return fmt.Errorf("the range is inside the log [%d, %d]: only a prefix or a suffix can be deleted", s.first, s.last)
	}
}

// deletePrefixLocked deletes the entries up to max: the meta file records
// the new first index, then the segments wholly below it go.
func (s *Store) deletePrefixLocked(max uint64) error {
	if max+1 > s.meta.state.first {
		next := s.meta.state.clone()
		next.first = max + 1
		if err := s.writeMetaLocked(next); err != nil {
			return err
		}
	}
	drop := 0
	for drop < len(s.segs) && s.segs[drop].next() <= max+1 {
		drop++
	}
	gone := slices.Clone(s.segs[:drop])
	s.mu.Lock()
	s.segs = slices.Delete(s.segs, 0, drop)
	if max >= s.last {
		s.first, s.last = 0, 0
	} else {
		s.first = max + 1
	}
	s.mu.Unlock()
	if err := s.removeSegments(gone); err != nil {
		return s.failLocked(err, nil)
	}
	return nil
}

// deleteSuffixLocked deletes the entries from min (> first) on: the
// segments that start at min or later are removed, newest first, and the
// one holding min-1 is cut after it.
func (s *Store) deleteSuffixLocked(min uint64) error {
	keep := len(s.segs)
	for keep > 0 && s.segs[keep-1].base >= min {
		keep--
	}
	gone := slices.Clone(s.segs[keep:])
	slices.Reverse(gone)
	g := s.segs[keep-1]
	s.mu.Lock()
	s.segs = s.segs[:keep]
	if n := min - g.base; n < uint64(len(g.offs)) {
		g.end = int64(g.offs[n])
		g.offs = g.offs[:n]
	}
	s.last = min - 1
	s.mu.Unlock()
	if err := s.removeSegments(gone); err != nil {
		return s.failLocked(err, nil)
	}
	if err := cutTail(g); err != nil {
		return s.failLocked(fmt.Errorf("cut %s: %w", g.path, err), nil)
	}
	return nil
}

// removeAllLocked drops every segment, oldest first.
func (s *Store) removeAllLocked() error {
	gone := slices.Clone(s.segs)
	s.mu.Lock()
	s.segs = nil
	s.first, s.last = 0, 0
	s.mu.Unlock()
	if err := s.removeSegments(gone); err != nil {
		return s.failLocked(err, nil)
	}
	return nil
}

// removeSegments closes and deletes segments in the order given, then
// syncs the directory. They are no longer in s.segs.
func (s *Store) removeSegments(gone []*segment) error {
	if len(gone) == 0 {
		return nil
	}
	for _, g := range gone {
		g.f.Close()
		if err := s.fs.Remove(g.path); err != nil {
			return fmt.Errorf("remove %s: %w", g.path, err)
		}
	}
	if err := s.fs.SyncDir(s.dir); err != nil {
		return fmt.Errorf("sync %s: %w", s.dir, err)
	}
	return nil
}

// failLocked makes every later write fail with err, and returns err. With
// g, the tail whose write or sync failed, it first tries to cut the file
// back to what was synced, so that pages the kernel kept but the disk
// may not have are not read back by a reopen (doc.go: failures).
func (s *Store) failLocked(err error, g *segment) error {
	s.failed = err
	if g != nil {
		if cerr := cutTail(g); cerr != nil {
			s.logger.Error("cut back a failed write", "file", g.path, "error", cerr)
		}
	}
	s.logger.Error("the raft log can no longer be written; reopen it", "error", err)
	if s.onFail != nil {
		s.onFail(err)
	}
	return err
}

// writable returns why writes fail, or nil. Caller holds writeMu.
func (s *Store) writable() error {
	if s.failed != nil {
		return fmt.Errorf("raftlog: an earlier write failed, reopen the store: %w", s.failed)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	return nil
}

// Close closes the files. Later calls return ErrClosed.
func (s *Store) Close() error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return s.closeFiles()
}

func (s *Store) closeFiles() error {
	var errs []error
	for _, g := range s.segs {
		errs = append(errs, g.f.Close())
	}
	if s.meta != nil {
		errs = append(errs, s.meta.f.Close())
	}
	if s.lock != nil {
		errs = append(errs, s.lock.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("raftlog: close: %w", err)
	}
	return nil
}
