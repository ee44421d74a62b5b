package storage

import (
	"bytes"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// The state's logical size, for the space quota: the bytes of every record
// the state keeps (keys with their Badger version, values, and
// versionOverhead each), counting of each record's history only what
// reads need once it is compacted: the versions above the compacted
// revision and the newest one at or below it, unless that is a deletion
// (as etcd's compaction keeps; Badger keeps one version more for a while,
// for watchers that ask for the value a change replaced). Unlike the size of
// Badger's files, it falls as soon as a compaction is applied; the files
// shrink later, as Badger flushes, compacts and collects its value log,
// and the disk guard (diskspace) watches them.
//
// Commits add what they write (never less than they keep); a recount, a
// scan of every record's key and size (no value is read), sets it exactly
// after each compaction, at open and after a restore. A recount takes
// about a second of CPU per million records.

// versionOverhead stands for what Badger keeps per record besides its key
// and value: its version, meta bytes, the table index entry or the value
// pointer.
const versionOverhead = 24

func versionBytes(key, value int) int64 { return int64(key + 8 + value + versionOverhead) }

func (s *KV) addUsage(n int64) {
	s.usageAdded.Add(n)
	s.usage.Add(n)
}

// LogicalBytes is the state's logical size (see above).
func (s *KV) LogicalBytes() int64 { return s.usage.Load() }

// recountInBackground recounts the logical size on a goroutine of its own.
func (s *KV) recountInBackground() {
	if s.closing.Load() {
		return
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		if err := s.recountUsage(); err != nil && !s.closing.Load() {
			s.logger.Warn("count the state's size for the space quota", "error", err)
		}
	}()
}

// RecountLogicalBytes counts the logical size afresh, now, and returns
// it: for a caller that must not act on a count a compaction applied
// moments ago has not reached yet.
func (s *KV) RecountLogicalBytes() (int64, error) {
	err := s.recountUsage()
	return s.usage.Load(), err
}

// recountUsage scans every record and sets the logical size. A panic of
// the storage engine is returned, not reported as damage: the count runs
// in the background, where the store may be closed under it (a test's
// crash), and reads find real damage themselves.
func (s *KV) recountUsage() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("count the state's size: the storage engine panicked: %v", r)
		}
	}()
	s.restoring.RLock()
	defer s.restoring.RUnlock()
	if s.db.IsClosed() {
		return nil
	}
	// Commits during the scan: what they add is added again below (the
	// scan's read timestamp is taken after this).
	added := s.usageAdded.Load()
	rev := s.applied.Load()
	if rev == 0 {
		s.usage.Store(s.usageAdded.Load() - added)
		return nil
	}
	compacted := s.compacted.Load()
	txn := s.db.NewTransactionAt(rev, false)
	defer txn.Discard()
	it := txn.NewIterator(badger.IteratorOptions{AllVersions: true})
	defer it.Close()
	var total int64
	var last []byte
	below := false // a version at or below the compacted revision was seen for last
	n := 0
	for it.Rewind(); it.Valid(); it.Next() {
		if n++; n%65536 == 0 && s.closing.Load() {
			return nil
		}
		item := it.Item()
		k := item.Key()
		if !bytes.Equal(k, last) {
			last = append(last[:0], k...)
			below = false
		}
		if below {
			continue // hidden below the version a compaction keeps
		}
		if compacted > 0 && item.Version() <= compacted {
			below = true
			if item.IsDeletedOrExpired() {
				continue
			}
		}
		total += versionBytes(len(k), int(item.ValueSize()))
	}
	s.usage.Store(total + s.usageAdded.Load() - added)
	return nil
}
