package raftlog

import (
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/raft"
)

// TestConcurrentReadsDuringWrites: readers of the whole log, while one
// writer appends and another compacts prefixes (as raft's main loop and
// snapshot goroutine do), get each entry right or raft.ErrLogNotFound
// for one deleted under them, never another error (a file closed under a
// read, say). Run with -race.
func TestConcurrentReadsDuringWrites(t *testing.T) {
	s := openStore(t, t.TempDir(), quietOptions(nil))
	const total = 1500
	var done atomic.Bool
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		defer done.Store(true)
		for i := uint64(1); i <= total; i += 10 {
			if err := s.StoreLogs(entries(i, i+9, 1)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for !done.Load() {
			first, _ := s.FirstIndex()
			last, _ := s.LastIndex()
			if last > first+100 {
				if err := s.DeleteRange(first, last-100); err != nil {
					t.Error(err)
					return
				}
			}
		}
	}()
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var l raft.Log
			for !done.Load() {
				first, _ := s.FirstIndex()
				last, _ := s.LastIndex()
				for i := first; i <= last && last != 0; i++ {
					err := s.GetLog(i, &l)
					if err == raft.ErrLogNotFound {
						continue
					}
					if err != nil {
						t.Errorf("GetLog(%d): %v", i, err)
						return
					}
					if !sameEntry(&l, entry(i, 1)) {
						t.Errorf("GetLog(%d) = %d/%q", i, l.Index, l.Data)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
}

// TestCacheFindsWhatRaftApplies: through a Cache over a Store, every
// index between the last applied one and the commit index is found while
// a writer appends and cuts uncommitted suffixes (a follower taking a new
// leader's entries), a compactor deletes prefixes below the applied index
// (raft's snapshot goroutine) and a replicator reads the whole log (a
// leader's replication goroutines). raft panics when it misses one of
// those. Run with -race.
func TestCacheFindsWhatRaftApplies(t *testing.T) {
	s := openStore(t, t.TempDir(), quietOptions(nil))
	// Small enough that most reads miss the cache and go to the store.
	c := NewCache(s, 4<<10)
	const total = 3000
	var commit, applied atomic.Uint64
	// gens[i] is the generation of the entry of index i the writer stored
	// last; it is final once i is committed.
	gens := make([]int, total+20)
	var done atomic.Bool
	var wg sync.WaitGroup
	run := func(f func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f()
		}()
	}
	run(func() { // writer
		defer done.Store(true)
		next, gen := uint64(1), 1
		for next <= total {
			if err := c.StoreLogs(entries(next, next+9, gen)); err != nil {
				t.Error(err)
				return
			}
			for i := next; i <= next+9; i++ {
				gens[i] = gen
			}
			next += 10
			if next%70 == 1 {
				// A new leader's entries replace the last few, which
				// were never committed.
				gen++
				next -= 5
				if err := c.DeleteRange(next, next+4); err != nil {
					t.Error(err)
					return
				}
				continue
			}
			commit.Store(next - 6)
		}
		commit.Store(next - 1)
	})
	run(func() { // applier
		var l raft.Log
		for {
			stop := done.Load()
			to := commit.Load()
			for i := applied.Load() + 1; i <= to; i++ {
				if err := c.GetLog(i, &l); err != nil || !sameEntry(&l, entry(i, gens[i])) {
					first, _ := c.FirstIndex()
					last, _ := c.LastIndex()
					t.Errorf("GetLog(%d), applied %d, committed %d, log [%d, %d]: index %d term %d, %v; want term %d", i, applied.Load(), to, first, last, l.Index, l.Term, err, gens[i])
					return
				}
				applied.Store(i)
			}
			if stop {
				return
			}
		}
	})
	run(func() { // compactor
		for !done.Load() {
			first, _ := c.FirstIndex()
			if a := applied.Load(); a > first+60 {
				if err := c.DeleteRange(first, a-30); err != nil {
					t.Error(err)
					return
				}
			}
		}
	})
	run(func() { // replicator
		var l raft.Log
		for !done.Load() {
			first, _ := c.FirstIndex()
			last, _ := c.LastIndex()
			for i := first; i <= last && last != 0; i++ {
				err := c.GetLog(i, &l)
				if err == raft.ErrLogNotFound {
					continue // compacted or cut under us
				}
				if err != nil || l.Index != i {
					t.Errorf("GetLog(%d): index %d, %v", i, l.Index, err)
					return
				}
			}
		}
	})
	wg.Wait()
	if a, c := applied.Load(), commit.Load(); (a != c || c < total) && !t.Failed() {
		t.Fatalf("applied up to %d, committed %d, want at least %d", a, c, total)
	}
}
