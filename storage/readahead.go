package storage

import (
	"bytes"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/raft"
)

// Bounds of one read-ahead run of a RaftStore.
//
// raft reads older entries one index at a time, in order: on start it scans
// every entry after the last snapshot for configuration changes and then
// hands them all to the state machine again (which skips what it had
// applied), and a leader reads a lagging or new follower's entries one by
// one to send them. Each such read was a Badger point lookup (memtables,
// then every level's bloom filter and block index): on a node restarted
// with 113,000 entries in its log, those lookups were 0.8 s of the 2.2 s
// before it served a read. Once reads come in order, one iterator reads
// the next run of entries instead.
const (
	readAheadEntries = 256
	readAheadBytes   = 8 << 20
)

// readAhead holds the run of entries last read ahead, and notices reads in
// index order. gen counts writes that may change entries: a run read from
// Badger before such a write is not kept.
type readAhead struct {
	mu   sync.Mutex
	run  []*raft.Log // run[i].Index == run[0].Index+i
	next uint64      // the index after the last one read from Badger or the run
	gen  uint64
	// reads counts runs read from Badger; diagnostics and tests.
	reads atomic.Uint64
}

// get returns the entry at index from the run, and whether the caller
// should read ahead from index (the read follows the previous one) and at
// which generation.
func (a *readAhead) get(index uint64) (l *raft.Log, ahead bool, gen uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if n := len(a.run); n > 0 && index >= a.run[0].Index && index < a.run[0].Index+uint64(n) {
		a.next = index + 1
		return a.run[index-a.run[0].Index], false, a.gen
	}
	ahead = index == a.next
	a.next = index + 1
	if ahead {
		a.run = nil // read to its end: do not hold it (up to 8 MiB) any longer
	}
	return nil, ahead, a.gen
}

// keep makes run the current run unless a write came after gen.
func (a *readAhead) keep(gen uint64, run []*raft.Log) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if gen == a.gen {
		a.run = run
	}
}

// invalidate forgets the run. Writers call it after their write is
// visible in Badger, so that a reader that read before it cannot keep
// what it read.
func (a *readAhead) invalidate() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.gen++
	a.run = nil
}

// readRun reads the entries from index on, up to the read-ahead bounds or
// the first missing index, with one iterator. It returns no entries when
// index is not in the log.
func (s *RaftStore) readRun(index uint64) ([]*raft.Log, error) {
	s.ahead.reads.Add(1)
	var run []*raft.Log
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{logPrefix}})
		defer it.Close()
		size := 0
		for it.Seek(logKey(index)); it.Valid() && len(run) < readAheadEntries && size < readAheadBytes; it.Next() {
			want := index + uint64(len(run))
			item := it.Item()
			if !bytes.Equal(item.Key(), logKey(want)) {
				break // a gap, or past the last entry
			}
			l := new(raft.Log)
			// decodeLog copies out of v, which is only valid inside Value.
			if err := item.Value(func(v []byte) error { return decodeLog(v, l) }); err != nil {
				return err
			}
			if l.Index != want {
				return fmt.Errorf("corrupt entry: stored under index %d but encodes index %d", want, l.Index)
			}
			run = append(run, l)
			size += logSize(l)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("raft log: read ahead from %d: %w", index, err)
	}
	return run, nil
}
