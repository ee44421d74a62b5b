package storage

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/hashicorp/raft"
)

// BenchmarkRaftStoreCompact is raft's steady state: append a snapshot's worth
// of entries, then delete the log up to the trailing entries kept, as raft
// does after each snapshot. The tombstones of earlier deletes pile up in
// Badger until its compactions drop them. One op is one append-and-delete
// cycle of 8,192 entries of 300 bytes.
func BenchmarkRaftStoreCompact(b *testing.B) {
	const (
		perSnapshot = 8192
		trailing    = 10240
		batch       = 64
	)
	s, err := OpenRaftStore(b.TempDir(), slog.New(slog.DiscardHandler), Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	data := bytes.Repeat([]byte{'x'}, 300)
	next := uint64(1)
	appendN := func(n int) {
		logs := make([]*raft.Log, 0, batch)
		for range n / batch {
			logs = logs[:0]
			for range batch {
				logs = append(logs, &raft.Log{Index: next, Term: 1, Type: raft.LogCommand, Data: data})
				next++
			}
			if err := s.StoreLogs(logs); err != nil {
				b.Fatal(err)
			}
		}
	}
	appendN(trailing)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		appendN(perSnapshot)
		b.StartTimer()
		first, _ := s.FirstIndex()
		if err := s.DeleteRange(first, next-1-trailing); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRaftStoreGetLog reads 20,000 entries of 300 bytes, none of them
// in the cache of recent logs (the store was reopened), as raft reads them
// when a node restarts or a follower lags: in index order, where the store
// reads ahead, and backwards, where every read is a point lookup. One op is
// one entry read.
func BenchmarkRaftStoreGetLog(b *testing.B) {
	const n = 20000
	dir := b.TempDir()
	s, err := OpenRaftStore(dir, slog.New(slog.DiscardHandler), Options{})
	if err != nil {
		b.Fatal(err)
	}
	data := bytes.Repeat([]byte{'x'}, 300)
	for from := uint64(1); from <= n; from += 100 {
		logs := make([]*raft.Log, 0, 100)
		for i := from; i < from+100; i++ {
			logs = append(logs, &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: data})
		}
		if err := s.StoreLogs(logs); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	if s, err = OpenRaftStore(dir, slog.New(slog.DiscardHandler), Options{}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	for _, order := range []string{"in-order", "backwards"} {
		b.Run(order, func(b *testing.B) {
			var l raft.Log
			i := 0
			for b.Loop() {
				index := uint64(i%n) + 1
				if order == "backwards" {
					index = n - uint64(i%n)
				}
				if err := s.GetLog(index, &l); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}
