package storage

import (
	"fmt"
	"io"
	"log/slog"
	"testing"
)

// BenchmarkKVSnapshot writes a snapshot of a store that saw 200,000 puts of
// 256 B values over 20,000 keys (ten versions each, all kept: no
// compaction), as raft asks for every snapshot threshold's worth of
// entries. One op is one whole snapshot; the bytes are the snapshot's size.
func BenchmarkKVSnapshot(b *testing.B) {
	const (
		keys     = 20000
		versions = 10
		perBatch = 100
	)
	s, err := OpenKV(b.TempDir(), slog.New(slog.DiscardHandler), Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	value := make([]byte, 256)
	index := uint64(0)
	for i := 0; i < keys*versions; i += perBatch {
		batch := s.NewBatch()
		for j := range perBatch {
			index++
			if err := batch.Begin(index); err != nil {
				b.Fatal(err)
			}
			if _, _, err := batch.Put(fmt.Appendf(nil, "key/%08d", (i+j)%keys), value, 0, false); err != nil {
				b.Fatal(err)
			}
		}
		if err := batch.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	var size countingWriter
	if err := s.Snapshot(&size, index); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Snapshot(io.Discard, index); err != nil {
			b.Fatal(err)
		}
	}
}

// countingWriter counts the bytes written to it.
type countingWriter int64

func (c *countingWriter) Write(p []byte) (int, error) {
	*c += countingWriter(len(p))
	return len(p), nil
}

// BenchmarkKVHash hashes a store of 1,000,000 keys with 256 B values, as
// every member does for the consistency check. One op is one whole hash.
func BenchmarkKVHash(b *testing.B) {
	const (
		keys     = 1_000_000
		perBatch = 1000
	)
	s, err := OpenKV(b.TempDir(), slog.New(slog.DiscardHandler), Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	value := make([]byte, 256)
	index := uint64(0)
	for i := 0; i < keys; i += perBatch {
		batch := s.NewBatch()
		for j := range perBatch {
			index++
			if err := batch.Begin(index); err != nil {
				b.Fatal(err)
			}
			if _, _, err := batch.Put(fmt.Appendf(nil, "key/%08d", i+j), value, 0, false); err != nil {
				b.Fatal(err)
			}
		}
		if err := batch.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		h, err := s.Hash(index)
		if err != nil || h.Keys != keys {
			b.Fatalf("hash: %+v, %v", h, err)
		}
	}
	b.ReportMetric(float64(keys)/(b.Elapsed().Seconds()/float64(b.N)), "keys/s")
}

// BenchmarkKVApplyPuts applies batches of 64 puts of 256 B values over
// 100,000 keys, as a busy group's FSM does, with a node's sizing and with a
// data group's (Sizing.ForDataGroup): smaller memtables flush and value
// log files rotate more often. One op is one batch; ns/put is per put.
func BenchmarkKVApplyPuts(b *testing.B) {
	for _, c := range []struct {
		name string
		size Sizing
	}{{"node", DefaultSizing}, {"group", DefaultSizing.ForDataGroup(1 << 20)}} {
		b.Run(c.name, func(b *testing.B) {
			const perBatch, keys = 64, 100000
			s, err := OpenKV(b.TempDir(), slog.New(slog.DiscardHandler), Options{Sizing: c.size})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { s.Close() })
			value := make([]byte, 256)
			index, n := uint64(0), 0
			b.ReportAllocs()
			for b.Loop() {
				batch := s.NewBatch()
				for range perBatch {
					index++
					if err := batch.Begin(index); err != nil {
						b.Fatal(err)
					}
					if _, _, err := batch.Put(fmt.Appendf(nil, "key/%08d", n%keys), value, 0, false); err != nil {
						b.Fatal(err)
					}
					n++
				}
				if err := batch.Commit(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/put")
		})
	}
}
