package raftlog

import (
	"errors"
	"testing"

	"github.com/hashicorp/raft"
)

// countingStore counts the GetLog calls that reach it.
type countingStore struct {
	raft.LogStore
	gets    int
	failing error
}

func (c *countingStore) GetLog(i uint64, l *raft.Log) error {
	c.gets++
	return c.LogStore.GetLog(i, l)
}

func (c *countingStore) StoreLogs(logs []*raft.Log) error {
	if c.failing != nil {
		return c.failing
	}
	return c.LogStore.StoreLogs(logs)
}

func TestCacheBoundedByBytes(t *testing.T) {
	under := &countingStore{LogStore: raft.NewInmemStore()}
	logs := entries(1, 100, 1)
	size := 0
	for _, l := range logs[90:] {
		size += cachedSize(l)
	}
	c := NewCache(under, size) // room for the last ten
	if err := c.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	var l raft.Log
	for i := uint64(91); i <= 100; i++ {
		if err := c.GetLog(i, &l); err != nil || !sameEntry(&l, logs[i-1]) {
			t.Fatalf("GetLog(%d): %v", i, err)
		}
	}
	if under.gets != 0 {
		t.Fatalf("%d reads of cached entries reached the store", under.gets)
	}
	if err := c.GetLog(90, &l); err != nil || under.gets != 1 {
		t.Fatalf("GetLog(90) past the cache: %v, %d store reads", err, under.gets)
	}
}

func TestCacheDropsDeleted(t *testing.T) {
	c := NewCache(raft.NewInmemStore(), 1<<20)
	if err := c.StoreLogs(entries(1, 20, 1)); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteRange(15, 20); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteRange(1, 5); err != nil {
		t.Fatal(err)
	}
	var l raft.Log
	for _, i := range []uint64{1, 5, 15, 20} {
		if err := c.GetLog(i, &l); err != raft.ErrLogNotFound {
			t.Fatalf("GetLog(%d) after its delete: %v", i, err)
		}
	}
	// The suffix written again is what is served.
	if err := c.StoreLogs(entries(15, 16, 2)); err != nil {
		t.Fatal(err)
	}
	if err := c.GetLog(15, &l); err != nil || !sameEntry(&l, entry(15, 2)) {
		t.Fatalf("GetLog(15) = %+v, %v", l, err)
	}
}

func TestCacheClearedOnStoreError(t *testing.T) {
	under := &countingStore{LogStore: raft.NewInmemStore()}
	c := NewCache(under, 1<<20)
	if err := c.StoreLogs(entries(1, 5, 1)); err != nil {
		t.Fatal(err)
	}
	under.failing = errors.New("disk on fire")
	if err := c.StoreLogs(entries(6, 6, 1)); err == nil {
		t.Fatal("no error")
	}
	var l raft.Log
	if err := c.GetLog(3, &l); err != nil || under.gets != 1 {
		t.Fatalf("GetLog after a failed store: %v, %d store reads; want one", err, under.gets)
	}
}

// TestNotMonotonic: raft must not take the log for a
// raft.MonotonicLogStore (doc.go: gaps).
func TestNotMonotonic(t *testing.T) {
	s := openStore(t, t.TempDir(), quietOptions(nil))
	for _, l := range []raft.LogStore{s, NewCache(s, 10)} {
		if _, ok := l.(raft.MonotonicLogStore); ok {
			t.Errorf("%T is a raft.MonotonicLogStore", l)
		}
	}
}

// hookStore runs after once, right after a StoreLogs has reached the
// store and before the Cache gets it back.
type hookStore struct {
	raft.LogStore
	after func()
}

func (h *hookStore) StoreLogs(logs []*raft.Log) error {
	err := h.LogStore.StoreLogs(logs)
	if f := h.after; f != nil {
		h.after = nil
		f()
	}
	return err
}

// TestCacheDeleteDuringStore: a delete that runs while a store is under
// way leaves none of the deleted entries cached.
func TestCacheDeleteDuringStore(t *testing.T) {
	hs := &hookStore{LogStore: raft.NewInmemStore()}
	c := NewCache(hs, 1<<20)
	hs.after = func() {
		if err := c.DeleteRange(1, 10); err != nil {
			t.Error(err)
		}
	}
	if err := c.StoreLogs(entries(1, 10, 1)); err != nil {
		t.Fatal(err)
	}
	var l raft.Log
	if err := c.GetLog(5, &l); err != raft.ErrLogNotFound {
		t.Fatalf("GetLog(5), deleted during its store: %+v, %v", l, err)
	}
}
