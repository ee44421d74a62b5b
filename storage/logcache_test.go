package storage

import (
	"testing"

	"github.com/hashicorp/raft"
)

func cachedRange(c *logCache) (first, last uint64) {
	if len(c.logs) == 0 {
		return 0, 0
	}
	return c.first, c.first + uint64(len(c.logs)) - 1
}

func TestLogCacheBounds(t *testing.T) {
	c := newLogCache(4, 1<<20)
	c.add(mkLogs(1, 6))
	if f, l := cachedRange(c); f != 3 || l != 6 {
		t.Fatalf("count bound: cached %d-%d, want 3-6", f, l)
	}
	if _, ok := c.get(2); ok {
		t.Fatal("evicted log 2 still served")
	}
	if l, ok := c.get(5); !ok || string(l.Data) != "data-5" {
		t.Fatalf("get(5) = %v, %v", l, ok)
	}

	// Bytes: each log counts its data and a fixed overhead.
	big := func(i uint64) *raft.Log { return &raft.Log{Index: i, Data: make([]byte, 1000)} }
	c = newLogCache(100, 2*logSize(big(0)))
	c.add([]*raft.Log{big(1), big(2), big(3)})
	if f, l := cachedRange(c); f != 2 || l != 3 {
		t.Fatalf("byte bound: cached %d-%d, want 2-3", f, l)
	}
	// A log larger than the whole budget is not kept, nor does it keep
	// anything else.
	c.add([]*raft.Log{{Index: 4, Data: make([]byte, 10_000)}})
	if f, l := cachedRange(c); f != 0 || l != 0 || c.bytes != 0 {
		t.Fatalf("oversized log: cached %d-%d, %d bytes", f, l, c.bytes)
	}
}

func TestLogCacheRewritesAndDeletes(t *testing.T) {
	c := newLogCache(100, 1<<20)
	c.add(mkLogs(1, 10))

	// raft rewrites a conflicting suffix from 8.
	rewritten := &raft.Log{Index: 8, Term: 9, Data: []byte("new-8")}
	c.add([]*raft.Log{rewritten})
	if f, l := cachedRange(c); f != 1 || l != 8 {
		t.Fatalf("after rewrite: cached %d-%d, want 1-8", f, l)
	}
	if got, _ := c.get(8); got != rewritten {
		t.Fatalf("get(8) = %+v, want the rewritten log", got)
	}
	if _, ok := c.get(9); ok {
		t.Fatal("log 9 of the old suffix still served")
	}

	// A gap (after a snapshot install) starts over.
	c.add(mkLogs(20, 21))
	if f, l := cachedRange(c); f != 20 || l != 21 {
		t.Fatalf("after gap: cached %d-%d, want 20-21", f, l)
	}

	// Compaction from the front, then a suffix delete.
	c.add(mkLogs(22, 30))
	c.remove(1, 24)
	if f, l := cachedRange(c); f != 25 || l != 30 {
		t.Fatalf("after front delete: cached %d-%d, want 25-30", f, l)
	}
	c.remove(28, 30)
	if f, l := cachedRange(c); f != 25 || l != 27 {
		t.Fatalf("after suffix delete: cached %d-%d, want 25-27", f, l)
	}
	c.remove(1, 100)
	if f, l := cachedRange(c); f != 0 || l != 0 || c.bytes != 0 {
		t.Fatalf("after deleting all: cached %d-%d, %d bytes", f, l, c.bytes)
	}
}

// The store answers the same from its cache as from Badger, including after
// a suffix is rewritten and after deletes.
func TestRaftStoreCacheMatchesDisk(t *testing.T) {
	s := newTestStore(t)
	if err := s.StoreLogs(mkLogs(1, 50)); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(41, 50); err != nil {
		t.Fatal(err)
	}
	rewritten := mkLogs(41, 45)
	for _, l := range rewritten {
		l.Term = 99
	}
	if err := s.StoreLogs(rewritten); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(1, 10); err != nil {
		t.Fatal(err)
	}
	read := func() map[uint64]raft.Log {
		got := map[uint64]raft.Log{}
		for i := uint64(1); i <= 50; i++ {
			var l raft.Log
			switch err := s.GetLog(i, &l); err {
			case nil:
				got[i] = l
			case raft.ErrLogNotFound:
			default:
				t.Fatalf("GetLog(%d): %v", i, err)
			}
		}
		return got
	}
	cached := read()
	if len(s.recent.logs) == 0 {
		t.Fatal("nothing cached")
	}
	s.recent.clear()
	disk := read()
	if len(cached) != 35 || len(disk) != 35 {
		t.Fatalf("found %d logs cached, %d on disk; want 35 (11-45)", len(cached), len(disk))
	}
	for i, want := range disk {
		got := cached[i]
		assertLogEqual(t, &got, &want)
		if i > 40 && got.Term != 99 {
			t.Fatalf("log %d has term %d, want the rewritten 99", i, got.Term)
		}
	}
}
