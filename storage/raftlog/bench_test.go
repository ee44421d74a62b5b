package raftlog_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/kvstore/kvstore/storage/raftlog"
)

// The benchmarks run each case on this package's Store, alone and behind
// its Cache. Every StoreLogs is synced (fdatasync), on the disk of the
// test's temporary directory. (The A/B against the Badger store it
// replaced is in the commit that wired it and bench/RESULTS.md.)

type logStore interface {
	raft.LogStore
	Close() error
}

var stores = []struct {
	name string
	open func(b *testing.B, dir string) logStore
}{
	{"raftlog", func(b *testing.B, dir string) logStore {
		s, err := raftlog.Open(dir, raftlog.Options{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		return s
	}},
	{"cached", func(b *testing.B, dir string) logStore {
		s, err := raftlog.Open(dir, raftlog.Options{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		return cached{raftlog.NewCache(s, 16<<20), s}
	}},
}

// cached is a Cache that closes its store.
type cached struct {
	*raftlog.Cache
	s *raftlog.Store
}

func (c cached) Close() error { return c.s.Close() }

func batchOf(next uint64, n int, data []byte) []*raft.Log {
	logs := make([]*raft.Log, n)
	for i := range logs {
		logs[i] = &raft.Log{Index: next + uint64(i), Term: 1, Type: raft.LogCommand, Data: data}
	}
	return logs
}

// BenchmarkStoreLogs appends batches of 1, 16 and 256 entries of 300 B
// (a put) and 4 KiB. One op is one batch.
func BenchmarkStoreLogs(b *testing.B) {
	for _, st := range stores {
		for _, size := range []int{300, 4096} {
			for _, n := range []int{1, 16, 256} {
				b.Run(fmt.Sprintf("%s/%dB/batch=%d", st.name, size, n), func(b *testing.B) {
					s := st.open(b, b.TempDir())
					defer s.Close()
					data := bytes.Repeat([]byte{'x'}, size)
					next := uint64(1)
					b.SetBytes(int64(size * n))
					for b.Loop() {
						if err := s.StoreLogs(batchOf(next, n, data)); err != nil {
							b.Fatal(err)
						}
						next += uint64(n)
					}
				})
			}
		}
	}
}

// BenchmarkGetLog reads 20,000 entries of 300 B from a reopened store
// (nothing cached), in index order and at random. One op is one entry.
func BenchmarkGetLog(b *testing.B) {
	const n = 20000
	for _, st := range stores {
		dir := b.TempDir()
		s := st.open(b, dir)
		data := bytes.Repeat([]byte{'x'}, 300)
		for i := uint64(1); i <= n; i += 100 {
			if err := s.StoreLogs(batchOf(i, 100, data)); err != nil {
				b.Fatal(err)
			}
		}
		s.Close()
		s = st.open(b, dir)
		for _, order := range []string{"in-order", "random"} {
			b.Run(st.name+"/"+order, func(b *testing.B) {
				var l raft.Log
				rng := rand.New(rand.NewPCG(1, 2))
				i := uint64(0)
				for b.Loop() {
					index := i%n + 1
					if order == "random" {
						index = rng.Uint64N(n) + 1
					}
					if err := s.GetLog(index, &l); err != nil {
						b.Fatal(err)
					}
					i++
				}
			})
		}
		s.Close()
	}
}

// BenchmarkDeletePrefix is raft's compaction after a snapshot: append
// 8,192 entries of 300 B (not timed), then delete the log up to the
// 10,240 entries kept. One op is one delete.
func BenchmarkDeletePrefix(b *testing.B) {
	const perSnapshot, trailing, batch = 8192, 10240, 1024
	for _, st := range stores {
		b.Run(st.name, func(b *testing.B) {
			s := st.open(b, b.TempDir())
			defer s.Close()
			data := bytes.Repeat([]byte{'x'}, 300)
			next := uint64(1)
			appendN := func(n int) {
				for range n / batch {
					if err := s.StoreLogs(batchOf(next, batch, data)); err != nil {
						b.Fatal(err)
					}
					next += batch
				}
			}
			appendN(trailing)
			for b.Loop() {
				b.StopTimer()
				appendN(perSnapshot)
				b.StartTimer()
				first, _ := s.FirstIndex()
				if err := s.DeleteRange(first, next-1-trailing); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOpen opens a store holding 200,000 entries of 300 B (about
// 64 MiB, what raft keeps between snapshots and more), as a restart does.
// One op is one Open and Close.
func BenchmarkOpen(b *testing.B) {
	const n, batch = 200000, 256
	for _, st := range stores {
		b.Run(st.name, func(b *testing.B) {
			dir := b.TempDir()
			s := st.open(b, dir)
			data := bytes.Repeat([]byte{'x'}, 300)
			for i := uint64(1); i <= n; i += batch {
				if err := s.StoreLogs(batchOf(i, batch, data)); err != nil {
					b.Fatal(err)
				}
			}
			s.Close()
			for b.Loop() {
				s := st.open(b, dir)
				if last, err := s.LastIndex(); err != nil || last < n {
					b.Fatalf("LastIndex = %d, %v", last, err)
				}
				s.Close()
			}
		})
	}
}
