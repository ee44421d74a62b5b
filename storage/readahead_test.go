package storage

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// storeReopened returns a store holding logs [1, n], reopened so that none
// of them is in its cache of recent logs.
func storeReopened(t *testing.T, n uint64) *RaftStore {
	t.Helper()
	dir := t.TempDir()
	s, err := OpenRaftStore(dir, testLogger(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	for from := uint64(1); from <= n; from += 100 {
		if err := s.StoreLogs(mkLogs(from, min(from+99, n))); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return openTestStore(t, dir)
}

func TestRaftStoreReadsAheadInOrder(t *testing.T) {
	const n = 1000
	s := storeReopened(t, n)
	for i := uint64(1); i <= n; i++ {
		assertPresent(t, s, i)
	}
	assertMissing(t, s, n+1)
	// One point lookup for index 1, then runs of readAheadEntries.
	if got, want := s.ahead.reads.Load(), uint64(n/readAheadEntries+2); got < 2 || got > want {
		t.Fatalf("%d runs read ahead for %d logs in order, want 2 to %d", got, n, want)
	}

	// Reads out of order are point lookups: no run is read for them.
	before := s.ahead.reads.Load()
	for _, i := range []uint64{900, 17, 500, 3, 700} {
		assertPresent(t, s, i)
	}
	if got := s.ahead.reads.Load(); got != before {
		t.Fatalf("%d runs read ahead for reads out of order", got-before)
	}
}

func TestRaftStoreReadAheadSeesWrites(t *testing.T) {
	s := storeReopened(t, 600)
	s.recent = newLogCache(0, 0) // every read goes to Badger or the run
	assertPresent(t, s, 1, 2, 3) // a run from 2 on is now held

	// Appends past the end keep the run: nothing in it changed.
	reads := s.ahead.reads.Load()
	if err := s.StoreLogs(mkLogs(601, 610)); err != nil {
		t.Fatal(err)
	}
	assertPresent(t, s, 4, 5, 6)
	if got := s.ahead.reads.Load(); got != reads {
		t.Fatalf("an append made %d more runs read ahead", got-reads)
	}

	// A follower replaces a suffix after a conflict: the new logs are read,
	// not the ones read ahead.
	if err := s.DeleteRange(100, 610); err != nil {
		t.Fatal(err)
	}
	replaced := mkLogs(100, 120)
	for _, l := range replaced {
		l.Term += 1000
		l.Data = append(l.Data, "-new"...)
	}
	if err := s.StoreLogs(replaced); err != nil {
		t.Fatal(err)
	}
	assertPresent(t, s, 4, 5, 6, 99)
	for _, want := range replaced {
		var got raft.Log
		if err := s.GetLog(want.Index, &got); err != nil {
			t.Fatal(err)
		}
		assertLogEqual(t, &got, want)
	}
	assertMissing(t, s, 121, 300, 605)

	// A prefix deleted after a snapshot is gone, read ahead or not.
	assertPresent(t, s, 10, 11, 12)
	if err := s.DeleteRange(1, 50); err != nil {
		t.Fatal(err)
	}
	assertMissing(t, s, 13, 14, 50)
	assertPresent(t, s, 51, 52, 53)
}

// TestRaftStoreReadAheadRace reads in order while another goroutine keeps
// rewriting the logs: a read must never return logs older than the last
// write that finished before it began, which a run read ahead before that
// write and kept after it would.
func TestRaftStoreReadAheadRace(t *testing.T) {
	const n = 260
	s := storeReopened(t, n)
	s.recent = newLogCache(0, 0) // every read goes to Badger or the run
	var written atomic.Uint64    // the term of the last rewrite finished
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for term := uint64(1001); ; term++ {
			select {
			case <-stop:
				return
			default:
			}
			logs := mkLogs(200, n)
			for _, l := range logs {
				l.Term = term
			}
			if err := s.StoreLogs(logs); err != nil {
				t.Error(err)
				return
			}
			written.Store(term)
		}
	})
	deadline := time.Now().Add(time.Second)
	for pass := 0; pass == 0 || time.Now().Before(deadline); pass++ {
		for i := uint64(180); i <= n; i++ {
			floor := written.Load()
			var l raft.Log
			if err := s.GetLog(i, &l); err != nil {
				t.Fatal(err)
			}
			if i >= 200 && floor > 0 && l.Term < floor {
				t.Fatalf("GetLog(%d) returned term %d after term %d was written", i, l.Term, floor)
			}
		}
	}
	close(stop)
	wg.Wait()
	if s.ahead.reads.Load() == 0 {
		t.Fatal("no run was read ahead: the test did not test read-ahead")
	}
}
