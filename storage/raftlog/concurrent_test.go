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
