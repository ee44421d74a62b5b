package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func openTestStore(t *testing.T, dir string) *RaftStore {
	t.Helper()
	s, err := OpenRaftStore(dir, testLogger(t), Options{})
	if err != nil {
		t.Fatalf("OpenRaftStore: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func newTestStore(t *testing.T) *RaftStore {
	t.Helper()
	return openTestStore(t, t.TempDir())
}

func mkLog(index uint64) *raft.Log {
	return &raft.Log{
		Index: index,
		Term:  index/10 + 1,
		Type:  raft.LogCommand,
		Data:  fmt.Appendf(nil, "data-%d", index),
	}
}

func mkLogs(from, to uint64) []*raft.Log {
	logs := make([]*raft.Log, 0, to-from+1)
	for i := from; i <= to; i++ {
		logs = append(logs, mkLog(i))
	}
	return logs
}

func assertBounds(t *testing.T, s *RaftStore, wantFirst, wantLast uint64) {
	t.Helper()
	first, err := s.FirstIndex()
	if err != nil {
		t.Fatalf("FirstIndex: %v", err)
	}
	last, err := s.LastIndex()
	if err != nil {
		t.Fatalf("LastIndex: %v", err)
	}
	if first != wantFirst || last != wantLast {
		t.Fatalf("first/last = %d/%d, want %d/%d", first, last, wantFirst, wantLast)
	}
	// The cache must agree with what is really in Badger.
	dbFirst, err := s.firstIndexFromDB()
	if err != nil {
		t.Fatalf("firstIndexFromDB: %v", err)
	}
	dbLast, err := s.lastIndexFromDB()
	if err != nil {
		t.Fatalf("lastIndexFromDB: %v", err)
	}
	if dbFirst != wantFirst || dbLast != wantLast {
		t.Fatalf("first/last in Badger = %d/%d, want %d/%d", dbFirst, dbLast, wantFirst, wantLast)
	}
}

func assertLogEqual(t *testing.T, got, want *raft.Log) {
	t.Helper()
	if got.Index != want.Index || got.Term != want.Term || got.Type != want.Type ||
		!bytes.Equal(got.Data, want.Data) || !bytes.Equal(got.Extensions, want.Extensions) ||
		!got.AppendedAt.Equal(want.AppendedAt) || got.AppendedAt.IsZero() != want.AppendedAt.IsZero() {
		t.Fatalf("log mismatch:\n got %+v\nwant %+v", got, want)
	}
}

func assertPresent(t *testing.T, s *RaftStore, indexes ...uint64) {
	t.Helper()
	for _, i := range indexes {
		var l raft.Log
		if err := s.GetLog(i, &l); err != nil {
			t.Fatalf("GetLog(%d): %v", i, err)
		}
		assertLogEqual(t, &l, mkLog(i))
	}
}

func assertMissing(t *testing.T, s *RaftStore, indexes ...uint64) {
	t.Helper()
	for _, i := range indexes {
		var l raft.Log
		// raft compares with ==, so the sentinel must not be wrapped.
		if err := s.GetLog(i, &l); err != raft.ErrLogNotFound {
			t.Fatalf("GetLog(%d) = %v, want raft.ErrLogNotFound", i, err)
		}
	}
}

// countLogKeys counts log keys by scanning Badger directly.
func countLogKeys(t *testing.T, s *RaftStore) int {
	t.Helper()
	keys, err := s.collectLogKeys(0, math.MaxUint64, math.MaxInt)
	if err != nil {
		t.Fatalf("collectLogKeys: %v", err)
	}
	return len(keys)
}

func TestRaftStoreEmpty(t *testing.T) {
	s := newTestStore(t)
	assertBounds(t, s, 0, 0)
	assertMissing(t, s, 0, 1, math.MaxUint64)
	// Deleting from an empty store is fine.
	if err := s.DeleteRange(1, 100); err != nil {
		t.Fatalf("DeleteRange on empty store: %v", err)
	}
	assertBounds(t, s, 0, 0)
}

func TestRaftStoreStoreLogAndBatch(t *testing.T) {
	s := newTestStore(t)

	if err := s.StoreLog(mkLog(1)); err != nil {
		t.Fatalf("StoreLog: %v", err)
	}
	assertBounds(t, s, 1, 1)
	assertPresent(t, s, 1)

	if err := s.StoreLogs(mkLogs(2, 10)); err != nil {
		t.Fatalf("StoreLogs: %v", err)
	}
	assertBounds(t, s, 1, 10)
	assertPresent(t, s, 1, 2, 5, 10)
	assertMissing(t, s, 0, 11)

	// Overwrite (a follower replacing a conflicting suffix writes the same
	// indexes again) keeps the bounds and replaces the content.
	over := mkLog(10)
	over.Term = 99
	if err := s.StoreLog(over); err != nil {
		t.Fatalf("StoreLog overwrite: %v", err)
	}
	var l raft.Log
	if err := s.GetLog(10, &l); err != nil {
		t.Fatalf("GetLog: %v", err)
	}
	assertLogEqual(t, &l, over)
	assertBounds(t, s, 1, 10)

	// Gaps are allowed (raft leaves one after installing a snapshot).
	if err := s.StoreLogs(mkLogs(100, 101)); err != nil {
		t.Fatalf("StoreLogs after gap: %v", err)
	}
	assertBounds(t, s, 1, 101)
	assertMissing(t, s, 50)

	// Empty batch is a no-op; nil entries and index 0 are rejected.
	if err := s.StoreLogs(nil); err != nil {
		t.Fatalf("StoreLogs(nil): %v", err)
	}
	if err := s.StoreLogs([]*raft.Log{mkLog(200), nil}); err == nil {
		t.Fatal("StoreLogs with nil entry: want error")
	}
	if err := s.StoreLog(&raft.Log{Index: 0}); err == nil {
		t.Fatal("StoreLog index 0: want error")
	}
	assertBounds(t, s, 1, 101)
}

func TestRaftStoreGetLogRoundTrip(t *testing.T) {
	s := newTestStore(t)
	now := time.Now()
	logs := []*raft.Log{
		{Index: 1, Term: 1, Type: raft.LogConfiguration, Data: []byte("cfg")},
		{Index: 2, Term: 1, Type: raft.LogNoop, AppendedAt: now},
		{
			Index:      3,
			Term:       math.MaxUint64,
			Type:       raft.LogCommand,
			Data:       bytes.Repeat([]byte{0, 0xff, 7}, 1000),
			Extensions: []byte("ext\x00bytes"),
			AppendedAt: time.Unix(1700000000, 123456789),
		},
		{Index: 4, Term: 2, Type: raft.LogBarrier, Extensions: []byte{1}, AppendedAt: time.Unix(-1, 5)},
		// Large value: above Badger's value threshold, so it lives in the value log.
		{Index: 5, Term: 3, Type: raft.LogType(200), Data: bytes.Repeat([]byte("x"), 2<<20), AppendedAt: now},
		{Index: math.MaxUint64, Term: 4, Type: raft.LogCommand, Data: []byte("last")},
	}
	if err := s.StoreLogs(logs); err != nil {
		t.Fatalf("StoreLogs: %v", err)
	}
	for _, want := range logs {
		// Pre-fill got so stale fields would show up if GetLog merged.
		got := raft.Log{Data: []byte("stale"), Extensions: []byte("stale"), AppendedAt: now}
		if err := s.GetLog(want.Index, &got); err != nil {
			t.Fatalf("GetLog(%d): %v", want.Index, err)
		}
		assertLogEqual(t, &got, want)
	}
	assertBounds(t, s, 1, math.MaxUint64)
	assertMissing(t, s, 6, math.MaxUint64-1)
}

func TestRaftStoreDeleteRange(t *testing.T) {
	cases := []struct {
		name          string
		min, max      uint64
		first, last   uint64
		present, gone []uint64
	}{
		{"middle", 4, 7, 1, 10, []uint64{1, 3, 8, 10}, []uint64{4, 5, 7}},
		{"prefix", 1, 5, 6, 10, []uint64{6, 10}, []uint64{1, 5}},
		{"prefix beyond first", 0, 3, 4, 10, []uint64{4, 10}, []uint64{1, 3}},
		{"suffix", 8, 10, 1, 7, []uint64{1, 7}, []uint64{8, 10}},
		{"suffix beyond last", 6, math.MaxUint64, 1, 5, []uint64{1, 5}, []uint64{6, 10}},
		{"all", 1, 10, 0, 0, nil, []uint64{1, 10}},
		{"huge range", 0, math.MaxUint64, 0, 0, nil, []uint64{1, 10}},
		{"single", 5, 5, 1, 10, []uint64{4, 6}, []uint64{5}},
		{"none existing", 20, 1 << 62, 1, 10, []uint64{1, 10}, nil},
		{"min > max", 7, 3, 1, 10, []uint64{1, 3, 7, 10}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestStore(t)
			if err := s.StoreLogs(mkLogs(1, 10)); err != nil {
				t.Fatalf("StoreLogs: %v", err)
			}
			if err := s.DeleteRange(tc.min, tc.max); err != nil {
				t.Fatalf("DeleteRange(%d, %d): %v", tc.min, tc.max, err)
			}
			assertBounds(t, s, tc.first, tc.last)
			assertPresent(t, s, tc.present...)
			assertMissing(t, s, tc.gone...)

			// Appending after a delete keeps the bounds right.
			if err := s.StoreLog(mkLog(11)); err != nil {
				t.Fatalf("StoreLog: %v", err)
			}
			wantFirst := tc.first
			if wantFirst == 0 {
				wantFirst = 11
			}
			assertBounds(t, s, wantFirst, 11)
		})
	}
}

// TestRaftStoreDeleteRangeChunked exercises DeleteRange's scan loop over
// several key chunks, including gaps between existing keys.
func TestRaftStoreDeleteRangeChunked(t *testing.T) {
	s := newTestStore(t)
	s.deleteChunk = 7
	var logs []*raft.Log
	for i := uint64(1); i <= 200; i += 3 { // gaps: 1, 4, 7, ...
		logs = append(logs, mkLog(i))
	}
	if err := s.StoreLogs(logs); err != nil {
		t.Fatalf("StoreLogs: %v", err)
	}
	if err := s.DeleteRange(2, 150); err != nil {
		t.Fatalf("DeleteRange: %v", err)
	}
	assertBounds(t, s, 1, 199)
	assertPresent(t, s, 1, 151, 199)
	assertMissing(t, s, 4, 73, 148)
	if got, want := countLogKeys(t, s), 1+(199-151)/3+1; got != want {
		t.Fatalf("%d logs left, want %d", got, want)
	}
	// Exactly a multiple of the chunk left in range.
	if err := s.DeleteRange(0, math.MaxUint64); err != nil {
		t.Fatalf("DeleteRange all: %v", err)
	}
	assertBounds(t, s, 0, 0)
}

// TestRaftStoreBatchLargerThanTxn stores and deletes batches that exceed
// one Badger transaction, by entry count and by byte size, and checks that
// the ErrTxnTooBig split path really ran.
func TestRaftStoreBatchLargerThanTxn(t *testing.T) {
	t.Run("count", func(t *testing.T) {
		s := newTestStore(t)
		// Just past the per-transaction entry limit: the data is tiny, so
		// only the count can trigger ErrTxnTooBig.
		n := uint64(s.db.MaxBatchCount() + 1000)
		logs := mkLogs(1, n)
		if err := s.StoreLogs(logs); err != nil {
			t.Fatalf("StoreLogs(%d logs): %v", n, err)
		}
		splits := s.txnSplits.Load()
		if splits < 1 {
			t.Fatalf("txnSplits = %d after %d logs with MaxBatchCount %d, want >= 1", splits, n, s.db.MaxBatchCount())
		}
		assertBounds(t, s, 1, n)
		if got := countLogKeys(t, s); got != int(n) {
			t.Fatalf("stored %d logs, want %d", got, n)
		}
		assertPresent(t, s, 1, n/2, n)

		// One scan chunk (64Ki keys) holds more deletes than a transaction.
		// A suffix: a prefix is deleted in small transactions of its own.
		if err := s.DeleteRange(2, n); err != nil {
			t.Fatalf("DeleteRange: %v", err)
		}
		if s.txnSplits.Load() < splits+1 {
			t.Fatalf("DeleteRange of %d logs did not split transactions (splits %d -> %d)", n-1, splits, s.txnSplits.Load())
		}
		assertBounds(t, s, 1, 1)
		if got := countLogKeys(t, s); got != 1 {
			t.Fatalf("%d logs left, want 1", got)
		}
	})
	t.Run("size", func(t *testing.T) {
		s := newTestStore(t)
		// Below the value threshold: entries in the value log would count
		// only their pointers towards the transaction size.
		payload := bytes.Repeat([]byte("k"), 512)
		n := uint64(3*s.db.MaxBatchSize()/512 + 10)
		logs := make([]*raft.Log, 0, n)
		for i := uint64(1); i <= n; i++ {
			logs = append(logs, &raft.Log{Index: i, Term: 1, Data: payload})
		}
		if int64(n) >= s.db.MaxBatchCount() {
			t.Fatalf("test setup: %d logs would hit the count limit, not the size limit", n)
		}
		if err := s.StoreLogs(logs); err != nil {
			t.Fatalf("StoreLogs: %v", err)
		}
		if s.txnSplits.Load() < 2 {
			t.Fatalf("txnSplits = %d, want >= 2 for %d entries of 512 B", s.txnSplits.Load(), n)
		}
		assertBounds(t, s, 1, n)
		if got := countLogKeys(t, s); got != int(n) {
			t.Fatalf("stored %d logs, want %d", got, n)
		}
		var l raft.Log
		if err := s.GetLog(n, &l); err != nil || !bytes.Equal(l.Data, payload) {
			t.Fatalf("GetLog(%d) = %v, data len %d", n, err, len(l.Data))
		}
	})
}

func TestRaftStoreStable(t *testing.T) {
	s := newTestStore(t)

	// Missing keys: zero value and nil error, as raft needs on a fresh store.
	if v, err := s.Get([]byte("missing")); err != nil || v != nil {
		t.Fatalf("Get(missing) = %q, %v; want nil, nil", v, err)
	}
	if v, err := s.GetUint64([]byte("missing")); err != nil || v != 0 {
		t.Fatalf("GetUint64(missing) = %d, %v; want 0, nil", v, err)
	}

	if err := s.Set([]byte("LastVoteCand"), []byte("node-1")); err != nil {
		t.Fatalf("Set: %v", err)
	}
	if v, err := s.Get([]byte("LastVoteCand")); err != nil || string(v) != "node-1" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if err := s.Set([]byte("LastVoteCand"), []byte("node-2")); err != nil {
		t.Fatalf("Set overwrite: %v", err)
	}
	if v, err := s.Get([]byte("LastVoteCand")); err != nil || string(v) != "node-2" {
		t.Fatalf("Get after overwrite = %q, %v", v, err)
	}

	// A present empty value stays distinguishable from a missing key.
	if err := s.Set([]byte("empty"), nil); err != nil {
		t.Fatalf("Set empty: %v", err)
	}
	if v, err := s.Get([]byte("empty")); err != nil || v == nil || len(v) != 0 {
		t.Fatalf("Get(empty) = %#v, %v; want non-nil empty", v, err)
	}

	for _, want := range []uint64{0, 1, 42, math.MaxUint64} {
		if err := s.SetUint64([]byte("CurrentTerm"), want); err != nil {
			t.Fatalf("SetUint64: %v", err)
		}
		if got, err := s.GetUint64([]byte("CurrentTerm")); err != nil || got != want {
			t.Fatalf("GetUint64 = %d, %v; want %d", got, err, want)
		}
	}

	// A value kept in Badger's value log reads back exactly, also when its
	// length takes three bytes to encode (16 KiB and more), where Badger's
	// size estimate is off.
	long := bytes.Repeat([]byte("a-long-node-name/"), 1200)
	if err := s.Set([]byte("LastVoteCand"), long); err != nil {
		t.Fatalf("Set long: %v", err)
	}
	if v, err := s.Get([]byte("LastVoteCand")); err != nil || !bytes.Equal(v, long) {
		t.Fatalf("Get(long) = %d bytes starting %q, %v; want %d bytes starting %q", len(v), v[:min(len(v), 16)], err, len(long), long[:16])
	}

	// A value that is not 8 bytes is corruption, not a silent zero.
	if err := s.Set([]byte("short"), []byte{1, 2, 3}); err != nil {
		t.Fatalf("Set: %v", err)
	}
	if _, err := s.GetUint64([]byte("short")); err == nil {
		t.Fatal("GetUint64 of 3-byte value: want error")
	}

	// Stable keys must not show up as logs.
	assertBounds(t, s, 0, 0)
}

func TestRaftStoreReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenRaftStore(dir, testLogger(t), Options{})
	if err != nil {
		t.Fatalf("OpenRaftStore: %v", err)
	}
	appended := time.Unix(1700000000, 42)
	logs := mkLogs(1, 100)
	logs[99].Extensions = []byte("ext")
	logs[99].AppendedAt = appended
	if err := s.StoreLogs(logs); err != nil {
		t.Fatalf("StoreLogs: %v", err)
	}
	if err := s.DeleteRange(1, 20); err != nil {
		t.Fatalf("DeleteRange: %v", err)
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 7); err != nil {
		t.Fatalf("SetUint64: %v", err)
	}
	if err := s.Set([]byte("LastVoteCand"), []byte("me")); err != nil {
		t.Fatalf("Set: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Closed store refuses work instead of letting Badger panic.
	if _, err := s.LastIndex(); !errors.Is(err, errClosed) {
		t.Fatalf("LastIndex after Close = %v, want errClosed", err)
	}
	if err := s.StoreLog(mkLog(101)); !errors.Is(err, errClosed) {
		t.Fatalf("StoreLog after Close = %v, want errClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	s = openTestStore(t, dir)
	assertBounds(t, s, 21, 100)
	assertPresent(t, s, 21, 50, 99)
	assertMissing(t, s, 1, 20, 101)
	var l raft.Log
	if err := s.GetLog(100, &l); err != nil {
		t.Fatalf("GetLog(100): %v", err)
	}
	assertLogEqual(t, &l, logs[99])
	if v, err := s.GetUint64([]byte("CurrentTerm")); err != nil || v != 7 {
		t.Fatalf("GetUint64 after reopen = %d, %v", v, err)
	}
	if v, err := s.Get([]byte("LastVoteCand")); err != nil || string(v) != "me" {
		t.Fatalf("Get after reopen = %q, %v", v, err)
	}
}

func TestRaftLogDecodeCorrupt(t *testing.T) {
	valid := encodeLog(&raft.Log{
		Index: 300, Term: 5, Type: raft.LogCommand,
		Data: []byte("hello"), Extensions: []byte("ext"), AppendedAt: time.Unix(0, 1),
	})
	var l raft.Log
	if err := decodeLog(valid, &l); err != nil {
		t.Fatalf("decode valid: %v", err)
	}

	// Every truncation fails cleanly.
	for i := range valid {
		if err := decodeLog(valid[:i], &l); !errors.Is(err, errCorruptLog) {
			t.Fatalf("decode of %d/%d bytes = %v, want errCorruptLog", i, len(valid), err)
		}
	}

	cases := map[string][]byte{
		"bad version":   append([]byte{9}, valid[1:]...),
		"trailing byte": append(bytes.Clone(valid), 0),
		"unknown flags": append(bytes.Clone(valid[:len(valid)-2]), 0x80),
		// version, index 1, term 1, type 0, then a data length of 2^63.
		"huge length": {logCodecVersion, 1, 1, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01},
		// Uvarint that overflows 64 bits.
		"varint overflow": {logCodecVersion, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		"empty":           {},
	}
	for name, b := range cases {
		if err := decodeLog(b, &l); !errors.Is(err, errCorruptLog) {
			t.Errorf("%s: decode = %v, want errCorruptLog", name, err)
		}
	}

	// Random garbage and bit flips never panic.
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		b := make([]byte, rng.IntN(40))
		for i := range b {
			b[i] = byte(rng.UintN(256))
		}
		if rng.IntN(2) == 0 {
			b = bytes.Clone(valid)
			b[rng.IntN(len(b))] ^= byte(1 << rng.IntN(8))
		}
		_ = decodeLog(b, &l)
	}

	// Corruption in the database surfaces from GetLog as an error, and an
	// entry whose encoded index disagrees with its key is caught too.
	s := newTestStore(t)
	err := s.db.Update(func(txn *badger.Txn) error {
		if err := txn.Set(logKey(1), []byte{logCodecVersion, 1}); err != nil {
			return err
		}
		return txn.Set(logKey(2), encodeLog(mkLog(3)))
	})
	if err != nil {
		t.Fatalf("write corrupt entries: %v", err)
	}
	if err := s.GetLog(1, &l); !errors.Is(err, errCorruptLog) {
		t.Fatalf("GetLog of truncated entry = %v, want errCorruptLog", err)
	}
	if err := s.GetLog(2, &l); err == nil || err == raft.ErrLogNotFound {
		t.Fatalf("GetLog of misplaced entry = %v, want corruption error", err)
	}
}

// TestRaftStoreConcurrent runs appends, prefix compaction and reads at the
// same time, the way raft does, for the race detector and cache invariants.
func TestRaftStoreConcurrent(t *testing.T) {
	s := newTestStore(t)
	const total, batch = 2000, 20
	var wg sync.WaitGroup
	done := make(chan struct{})
	errc := make(chan error, 3)

	wg.Add(1)
	go func() { // leader loop: append
		defer wg.Done()
		defer close(done)
		for i := uint64(1); i <= total; i += batch {
			if err := s.StoreLogs(mkLogs(i, i+batch-1)); err != nil {
				errc <- err
				return
			}
		}
	}()
	wg.Add(1)
	go func() { // snapshot goroutine: compact all but the last 100
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			last, err := s.LastIndex()
			if err != nil {
				errc <- err
				return
			}
			if last > 100 {
				if err := s.DeleteRange(0, last-100); err != nil {
					errc <- err
					return
				}
			}
		}
	}()
	wg.Add(1)
	go func() { // replication: read around the tail
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			first, err1 := s.FirstIndex()
			last, err2 := s.LastIndex()
			if err := errors.Join(err1, err2); err != nil {
				errc <- err
				return
			}
			if last == 0 {
				continue
			}
			var l raft.Log
			// The last log is never compacted (DeleteRange stops 100 short).
			if err := s.GetLog(last, &l); err != nil || l.Index != last {
				errc <- fmt.Errorf("GetLog(last=%d) = %v (first %d)", last, err, first)
				return
			}
		}
	}()
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	last, _ := s.LastIndex()
	if last != total {
		t.Fatalf("last = %d, want %d", last, total)
	}
	first, _ := s.FirstIndex()
	assertBounds(t, s, first, total)
	if got := countLogKeys(t, s); got != int(total-first+1) {
		t.Fatalf("%d keys for range %d-%d", got, first, total)
	}
}

type countingFSM struct {
	mu      sync.Mutex
	applied [][]byte
}

func (f *countingFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = append(f.applied, bytes.Clone(l.Data))
	return len(f.applied)
}

func (f *countingFSM) Snapshot() (raft.FSMSnapshot, error) { return noopSnapshot{}, nil }
func (f *countingFSM) Restore(rc io.ReadCloser) error      { return rc.Close() }

type noopSnapshot struct{}

func (noopSnapshot) Persist(sink raft.SnapshotSink) error { return sink.Close() }
func (noopSnapshot) Release()                             {}

// startRaft starts a single-node raft on store and waits until it leads.
func startRaft(t *testing.T, store *RaftStore, bootstrap bool) (*raft.Raft, *countingFSM) {
	t.Helper()
	conf := raft.DefaultConfig()
	conf.LocalID = "node1"
	conf.HeartbeatTimeout = 50 * time.Millisecond
	conf.ElectionTimeout = 50 * time.Millisecond
	conf.LeaderLeaseTimeout = 50 * time.Millisecond
	conf.CommitTimeout = 5 * time.Millisecond
	conf.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Output: t.Output(), Level: hclog.Warn})

	addr, trans := raft.NewInmemTransport("")
	snaps := raft.NewInmemSnapshotStore()
	if bootstrap {
		cfg := raft.Configuration{Servers: []raft.Server{{ID: conf.LocalID, Address: addr}}}
		// BootstrapCluster first asks HasExistingState, which reads
		// CurrentTerm: a missing key must not be an error.
		if err := raft.BootstrapCluster(conf, store, store, snaps, trans, cfg); err != nil {
			t.Fatalf("BootstrapCluster: %v", err)
		}
	}
	fsm := &countingFSM{}
	r, err := raft.NewRaft(conf, fsm, store, store, snaps, trans)
	if err != nil {
		t.Fatalf("NewRaft: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Shutdown().Error(); err != nil {
			t.Errorf("raft Shutdown: %v", err)
		}
	})

	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for r.State() != raft.Leader {
		select {
		case <-deadline.C:
			t.Fatalf("no leader within deadline; state %v", r.State())
		case <-tick.C:
		}
	}
	return r, fsm
}

func TestRaftSingleNodeOnRaftStore(t *testing.T) {
	dir := t.TempDir()
	store, err := OpenRaftStore(dir, testLogger(t), Options{})
	if err != nil {
		t.Fatalf("OpenRaftStore: %v", err)
	}

	r, fsm := startRaft(t, store, true)
	f := r.Apply([]byte("hello"), 5*time.Second)
	if err := f.Error(); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if resp, ok := f.Response().(int); !ok || resp != 1 {
		t.Fatalf("Apply response = %v, want 1", f.Response())
	}
	applied := f.Index()
	if err := r.Shutdown().Error(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	fsm.mu.Lock()
	if len(fsm.applied) != 1 || string(fsm.applied[0]) != "hello" {
		t.Fatalf("FSM applied %q", fsm.applied)
	}
	fsm.mu.Unlock()

	// Raft persisted its term and the log through the store.
	if term, err := store.GetUint64([]byte("CurrentTerm")); err != nil || term == 0 {
		t.Fatalf("CurrentTerm = %d, %v", term, err)
	}
	if last, err := store.LastIndex(); err != nil || last < applied {
		t.Fatalf("LastIndex = %d, %v; want >= %d", last, err, applied)
	}
	if err := store.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	// Restart from the same directory without bootstrapping: raft recovers
	// its configuration from the log, wins an election and accepts writes.
	store = openTestStore(t, dir)
	if ok, err := raft.HasExistingState(store, store, raft.NewInmemSnapshotStore()); err != nil || !ok {
		t.Fatalf("HasExistingState = %v, %v; want true", ok, err)
	}
	r, fsm = startRaft(t, store, false)
	if err := r.Apply([]byte("again"), 5*time.Second).Error(); err != nil {
		t.Fatalf("Apply after restart: %v", err)
	}
	// The restarted FSM (no snapshot) replays the old command as well.
	if err := r.Barrier(5 * time.Second).Error(); err != nil {
		t.Fatalf("Barrier: %v", err)
	}
	fsm.mu.Lock()
	defer fsm.mu.Unlock()
	if got := fmt.Sprintf("%q", fsm.applied); got != `["hello" "again"]` {
		t.Fatalf("FSM after restart applied %s", got)
	}
}

func TestBadgerLoggerAdapter(t *testing.T) {
	// WithAttrs returns a fresh handler, so record through a shared sink.
	var mu sync.Mutex
	var got []string
	sink := slog.New(slogFunc(func(r slog.Record) {
		var attrs []string
		r.Attrs(func(a slog.Attr) bool {
			attrs = append(attrs, a.String())
			return true
		})
		mu.Lock()
		got = append(got, fmt.Sprintf("%s %s %s", r.Level, r.Message, strings.Join(attrs, " ")))
		mu.Unlock()
	}))
	opts := badgerOptions("/data/x", sink)
	opts.Logger.Errorf("bad %d\n", 1)
	opts.Logger.Warningf("careful %s", "now")
	opts.Logger.Infof("chatty")
	opts.Logger.Debugf("chattier")
	want := []string{
		"ERROR bad 1 component=badger dir=/data/x",
		"WARN careful now component=badger dir=/data/x",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("logged %q, want %q", got, want)
	}
	if opts.NumMemtables != 2 || opts.NumCompactors != 2 {
		t.Fatalf("unexpected options %+v", opts)
	}
}

// slogFunc is a minimal slog.Handler calling a func with each record, with
// handler attributes folded in.
type slogFunc func(slog.Record)

func (f slogFunc) Enabled(context.Context, slog.Level) bool { return true }
func (f slogFunc) Handle(_ context.Context, r slog.Record) error {
	f(r)
	return nil
}
func (f slogFunc) WithAttrs(as []slog.Attr) slog.Handler {
	return slogFunc(func(r slog.Record) {
		r = r.Clone()
		r.AddAttrs(as...)
		f(r)
	})
}
func (f slogFunc) WithGroup(string) slog.Handler { return f }

// Entries past the value threshold live in the value log: they read back
// the same before and after a reopen, and truncation and GC leave the rest.
func TestRaftStoreLargeEntries(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenRaftStore(dir, testLogger(t), Options{})
	if err != nil {
		t.Fatalf("OpenRaftStore: %v", err)
	}
	logs := make([]*raft.Log, 0, 50)
	for i := uint64(1); i <= 50; i++ {
		logs = append(logs, &raft.Log{Index: i, Term: 1, Type: raft.LogCommand,
			Data: bytes.Repeat([]byte{byte(i)}, 4096+int(i))})
	}
	if err := s.StoreLogs(logs); err != nil {
		t.Fatalf("StoreLogs: %v", err)
	}
	if err := s.DeleteRange(1, 10); err != nil {
		t.Fatalf("DeleteRange: %v", err)
	}
	s.RunGC()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s = openTestStore(t, dir)
	assertBounds(t, s, 11, 50)
	assertMissing(t, s, 1, 10)
	for i := uint64(11); i <= 50; i++ {
		var l raft.Log
		if err := s.GetLog(i, &l); err != nil {
			t.Fatalf("GetLog(%d): %v", i, err)
		}
		assertLogEqual(t, &l, logs[i-1])
	}
}

// DeleteRange finds the new bounds past gaps, and a log whose bounds are
// far apart (it must have gaps) is not deleted index by index.
func TestRaftStoreDeleteRangeBoundsAcrossGaps(t *testing.T) {
	s := newTestStore(t)
	if err := s.StoreLogs(append(mkLogs(1, 10), mkLogs(20, 30)...)); err != nil {
		t.Fatalf("StoreLogs: %v", err)
	}
	if err := s.DeleteRange(0, 12); err != nil { // a prefix ending in the gap
		t.Fatalf("DeleteRange: %v", err)
	}
	assertBounds(t, s, 20, 30)
	if err := s.StoreLogs(mkLogs(40, 45)); err != nil {
		t.Fatalf("StoreLogs: %v", err)
	}
	if err := s.DeleteRange(35, 50); err != nil { // a suffix starting in a gap
		t.Fatalf("DeleteRange: %v", err)
	}
	assertBounds(t, s, 20, 30)
	assertPresent(t, s, 20, 30)
	assertMissing(t, s, 10, 40, 45)

	if err := s.StoreLogs([]*raft.Log{mkLog(1 << 40)}); err != nil {
		t.Fatalf("StoreLogs: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.DeleteRange(0, math.MaxUint64) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("DeleteRange: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("DeleteRange over a span of 2^40 indexes did not finish: it deletes index by index")
	}
	assertBounds(t, s, 0, 0)
}

// TestRaftStoreReadsTablesWithoutBlockCache: the log has no block cache
// (see OpenRaftStore), so entries flushed to tables are read from their
// memory maps; after a reopen they all read back.
func TestRaftStoreReadsTablesWithoutBlockCache(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenRaftStore(dir, testLogger(t), Options{})
	if err != nil {
		t.Fatalf("OpenRaftStore: %v", err)
	}
	const n, size = 32768, 400
	batch := make([]*raft.Log, 0, 512)
	for i := uint64(1); i <= n; i++ {
		batch = append(batch, &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: bytes.Repeat([]byte{byte(i)}, size)})
		if len(batch) == cap(batch) {
			if err := s.StoreLogs(batch); err != nil {
				t.Fatalf("StoreLogs: %v", err)
			}
			batch = batch[:0]
		}
	}
	// Close flushes the memtables: after it, the log is in tables.
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s = openTestStore(t, dir)
	if m := s.db.BlockCacheMetrics(); m != nil {
		t.Fatalf("the raft log has a block cache: %v", m)
	}
	if len(s.db.Tables()) == 0 {
		t.Fatal("no table after a reopen: the log was not flushed")
	}
	assertBounds(t, s, 1, n)
	var l raft.Log
	for i := uint64(1); i <= n; i++ {
		if err := s.GetLog(i, &l); err != nil {
			t.Fatalf("GetLog(%d): %v", i, err)
		}
		if l.Index != i || len(l.Data) != size || l.Data[0] != byte(i) {
			t.Fatalf("GetLog(%d) = index %d, %d bytes of %d", i, l.Index, len(l.Data), l.Data[0])
		}
	}
}

// TestRaftStorePrefixDeleteLetsAppendsThrough: raft deletes a prefix after
// every snapshot, tens of thousands of entries under load; appends must not
// wait for it. The hook appends while the delete has started: with the
// write lock still held it would deadlock, and the test time out.
func TestRaftStorePrefixDeleteLetsAppendsThrough(t *testing.T) {
	s := newTestStore(t)
	const n = 3*prefixDeleteChunk + 10 // several delete transactions
	if err := s.StoreLogs(mkLogs(1, n)); err != nil {
		t.Fatal(err)
	}
	appended := make(chan error, 1)
	defer func(f func()) { prefixDeleteStarts = f }(prefixDeleteStarts)
	prefixDeleteStarts = func() {
		// The first index has moved before the keys go.
		if got, err := s.FirstIndex(); err != nil || got != n-4 {
			appended <- fmt.Errorf("first index %d, %v while deleting, want %d", got, err, n-4)
			return
		}
		appended <- s.StoreLogs(mkLogs(n+1, n+5))
	}
	done := make(chan error, 1)
	go func() { done <- s.DeleteRange(1, n-5) }()
	deadline := time.After(30 * time.Second)
	for range 2 {
		select {
		case err := <-appended:
			if err != nil {
				t.Fatalf("append during the delete: %v", err)
			}
		case err := <-done:
			if err != nil {
				t.Fatalf("DeleteRange: %v", err)
			}
		case <-deadline:
			t.Fatal("an append waited for the prefix delete")
		}
	}
	assertBounds(t, s, n-4, n+5)
	assertPresent(t, s, n-4, n, n+5)
	assertMissing(t, s, 1, prefixDeleteChunk, n-5)
	if got := countLogKeys(t, s); got != 10 {
		t.Fatalf("%d logs left, want 10", got)
	}
	// Reopened, the store finds the same bounds.
	if err := s.reloadIndexesLocked(); err != nil {
		t.Fatal(err)
	}
	assertBounds(t, s, n-4, n+5)
}
