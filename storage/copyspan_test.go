package storage

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// copySpanSource builds a store with keys inside [b, c) and outside it,
// several versions, deletes and a compaction to 3, at index 9.
func copySpanSource(t *testing.T) *KV {
	t.Helper()
	s := kvNew(t)
	big := strings.Repeat("v", 200) // in the value log
	kvApply(t, s, 1, func(b *Batch) {
		kvPut(t, b, "a", "a1")
		kvPut(t, b, "b1", "b1.1")
		kvPut(t, b, "b2", "b2.1")
		kvPut(t, b, "c", "c1")
	})
	kvApply(t, s, 2, func(b *Batch) {
		kvPut(t, b, "b1", "b1.2")
		kvPut(t, b, "b3", "b3.1")
	})
	kvApply(t, s, 3, func(b *Batch) { kvDel(t, b, "b2", "", false) })
	kvApply(t, s, 4, func(b *Batch) {
		kvPut(t, b, "b2", "b2.2")
		kvPut(t, b, "a", "a2")
	})
	kvApply(t, s, 5, func(b *Batch) {
		if err := b.Compact(3, false); err != nil {
			t.Fatal(err)
		}
		kvPut(t, b, "b4", big)
		kvPut(t, b, "bz", "bz1")
	})
	kvApply(t, s, 6, func(b *Batch) {
		kvDel(t, b, "b3", "", false)
		kvPut(t, b, "c", "c2")
		kvDel(t, b, "bz", "", false)
	})
	kvApply(t, s, 7, func(b *Batch) {
		kvPut(t, b, "b1", "b1.3")
		kvPut(t, b, "b4", big+"2")
	})
	// After the copy's revision.
	kvApply(t, s, 8, func(b *Batch) { kvPut(t, b, "b1", "b1.4") })
	kvApply(t, s, 9, func(b *Batch) { kvPut(t, b, "b5", "b5.1") })
	return s
}

// copySpanCheck checks that dst holds s's span [b, c) as of rev 7,
// compacted at 3, and nothing else.
func copySpanCheck(t *testing.T, s, dst *KV) {
	t.Helper()
	if got := dst.AppliedIndex(); got != 7 {
		t.Fatalf("dst applied index %d, want 7", got)
	}
	if got := dst.CompactedRevision(); got != 3 {
		t.Fatalf("dst compacted revision %d, want 3", got)
	}
	for rev := uint64(3); rev <= 7; rev++ {
		want := fmt.Sprint(kvRange(t, s, rev, "b", "c", RangeOptions{}).KVs)
		if got := fmt.Sprint(kvRange(t, dst, rev, "", "\x00", RangeOptions{}).KVs); got != want {
			t.Fatalf("dst at %d:\n got %s\nwant %s", rev, got, want)
		}
		for _, k := range []string{"b1", "b2", "b3", "b4", "bz"} {
			skv, sok := kvGet(t, s, rev, k)
			dkv, dok := kvGet(t, dst, rev, k)
			if sok != dok || !kvEqual(skv, dkv) {
				t.Fatalf("Get(%d, %s): dst %v %v, s %v %v", rev, k, kvString(dkv), dok, kvString(skv), sok)
			}
		}
		for _, k := range []string{"a", "c", "b5"} {
			if kv, ok := kvGet(t, dst, rev, k); ok {
				t.Fatalf("dst at %d has %s, outside the span or after the copy: %s", rev, k, kvString(kv))
			}
		}
	}
	if _, _, err := dst.Get(2, []byte("b1")); !errors.Is(err, ErrCompacted) {
		t.Fatalf("dst read at 2: %v, want ErrCompacted", err)
	}
	if _, _, err := dst.Get(8, []byte("b1")); !errors.Is(err, ErrFutureRevision) {
		t.Fatalf("dst read at 8: %v, want ErrFutureRevision", err)
	}

	// The revision index: the span's history and nothing else.
	span := keyRange{start: []byte("b"), end: []byte("c")}
	want, _, err := s.history(3, 7, span, 1000)
	if err != nil {
		t.Fatal(err)
	}
	got, to, err := dst.history(3, 7, keyRange{start: []byte{}, end: []byte{0}}, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if to != 7 {
		t.Fatalf("dst history covered up to %d", to)
	}
	equalStrings(t, "dst history from 3", evString(got), evString(want))
	if len(want) == 0 {
		t.Fatal("no history in the span")
	}

	// A watch from an old revision sees it, with the values before.
	w, err := dst.Watch(WatchSpec{Key: []byte{}, End: []byte{0}, StartRev: 4, PrevKV: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := s.fillPrev(want); err != nil {
		t.Fatal(err)
	}
	var wantFrom4 []Event
	for _, ev := range want {
		if ev.Revision() >= 4 {
			wantFrom4 = append(wantFrom4, ev)
		}
	}
	equalStrings(t, "dst watch from 4", evString(collect(t, w, len(wantFrom4))), evString(wantFrom4))

	if got, err := dst.RecountLogicalBytes(); err != nil || got == 0 {
		t.Fatalf("dst logical size %d, %v", got, err)
	}
}

func TestCopySpan(t *testing.T) {
	s := copySpanSource(t)
	dir := t.TempDir()
	dst := kvOpen(t, dir)
	stats, err := s.CopySpan(dst, []byte("b"), []byte("c"), 7)
	if err != nil {
		t.Fatal(err)
	}
	if stats.Keys != 3 || stats.Versions < 9 || stats.Bytes <= 0 {
		t.Fatalf("stats %+v: want 3 keys (b1 b2 b4), at least 9 versions", stats)
	}
	// The logical size is right at once, without a recount.
	counted := dst.LogicalBytes()
	if recounted, err := dst.RecountLogicalBytes(); err != nil || recounted != counted {
		t.Fatalf("dst logical size %d after the copy, %d recounted (%v)", counted, recounted, err)
	}
	copySpanCheck(t, s, dst)

	// Durable: a restart serves it as it was.
	kvClose(t, dst)
	dst = kvOpen(t, dir)
	copySpanCheck(t, s, dst)

	// And it takes the new group's entries from rev on.
	kvApply(t, dst, 8, func(b *Batch) { kvPut(t, b, "b1", "b1.4") })
	if kv, _ := kvGet(t, dst, 8, "b1"); string(kv.Value) != "b1.4" || kv.Version != 4 || kv.CreateRevision != 1 {
		t.Fatalf("b1 after a put in dst: %s", kvString(kv))
	}
}

func TestCopySpanNoEnd(t *testing.T) {
	s := copySpanSource(t)
	dst := kvNew(t)
	stats, err := s.CopySpan(dst, []byte("b4"), nil, 9)
	if err != nil {
		t.Fatal(err)
	}
	// b4, b5, c live; bz deleted.
	if stats.Keys != 3 {
		t.Fatalf("stats %+v, want 3 keys", stats)
	}
	want := fmt.Sprint(kvRange(t, s, 9, "b4", "\x00", RangeOptions{}).KVs)
	if got := fmt.Sprint(kvRange(t, dst, 9, "", "\x00", RangeOptions{}).KVs); got != want {
		t.Fatalf("dst:\n got %s\nwant %s", got, want)
	}
}

func TestCopySpanRefusals(t *testing.T) {
	s := copySpanSource(t)

	dst := kvNew(t)
	if _, err := s.CopySpan(dst, []byte("b"), []byte("c"), 10); !errors.Is(err, ErrFutureRevision) {
		t.Fatalf("copy past the applied index: %v, want ErrFutureRevision", err)
	}
	if _, err := s.CopySpan(dst, []byte("b"), []byte("c"), 2); !errors.Is(err, ErrCompacted) {
		t.Fatalf("copy below the compacted revision: %v, want ErrCompacted", err)
	}
	if err := dst.checkEmpty(); err != nil {
		t.Fatalf("after refusals: %v", err)
	}

	// Not empty: refused, and what it holds is left alone.
	kvApply(t, dst, 1, func(b *Batch) { kvPut(t, b, "x", "1") })
	if _, err := s.CopySpan(dst, []byte("b"), []byte("c"), 7); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("copy into a store in use: %v", err)
	}
	if _, ok := kvGet(t, dst, 1, "x"); !ok {
		t.Fatal("the refused copy changed the destination")
	}

	// Leased keys in the span are refused, out of it they do not matter.
	kvApply(t, s, 10, func(b *Batch) {
		if err := b.GrantLease(Lease{ID: 42, TTL: 60}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := b.Put([]byte("b3"), []byte("leased"), 42, false); err != nil {
			t.Fatal(err)
		}
		if _, _, err := b.Put([]byte("a"), []byte("leased"), 42, false); err != nil {
			t.Fatal(err)
		}
	})
	dir := t.TempDir()
	dst = kvOpen(t, dir)
	_, err := s.CopySpan(dst, []byte("b"), []byte("c"), 10)
	if !errors.Is(err, ErrLeasedKeys) || !strings.Contains(err.Error(), `"b3"`) {
		t.Fatalf("copy of a leased key: %v, want ErrLeasedKeys naming b3", err)
	}
	if err := dst.checkEmpty(); err != nil {
		t.Fatalf("after the lease refusal: %v", err)
	}
	// Before the lease, and around the leased key, it copies.
	if _, err := s.CopySpan(dst, []byte("b"), []byte("c"), 9); err != nil {
		t.Fatalf("copy before the lease: %v", err)
	}
	dst2 := kvNew(t)
	if _, err := s.CopySpan(dst2, []byte("b4"), []byte("c"), 10); err != nil {
		t.Fatalf("copy of unleased keys: %v", err)
	}
	// The refused copy wrote nothing: the store reopens.
	kvClose(t, dst)
	kvOpen(t, dir)
}

// TestCopySpanWhileApplying copies while another goroutine applies entries
// to the source, outside the span.
func TestCopySpanWhileApplying(t *testing.T) {
	s := copySpanSource(t)
	done := make(chan struct{})
	stop := make(chan struct{})
	go func() {
		defer close(done)
		for i := uint64(10); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			b := s.NewBatch()
			if err := b.Begin(i); err != nil {
				t.Error(err)
				return
			}
			if _, _, err := b.Put(fmt.Appendf(nil, "z%d", i), []byte("v"), 0, false); err != nil {
				t.Error(err)
				return
			}
			if err := b.Commit(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	defer func() { close(stop); <-done }()
	select {
	case <-s.WaitApplied(20):
	case <-time.After(10 * time.Second):
		t.Fatal("the writer did not reach index 20")
	}
	dst := kvNew(t)
	if _, err := s.CopySpan(dst, []byte("b"), []byte("c"), 7); err != nil {
		t.Fatal(err)
	}
	copySpanCheck(t, s, dst)
}

// BenchmarkCopySpan copies a span of 1,000,000 keys with 100 B values, one
// version each, into an empty store. Run it once: -benchtime=1x.
func BenchmarkCopySpan(b *testing.B) {
	const (
		keys     = 1000000
		perEntry = 10000
	)
	s, err := OpenKV(b.TempDir(), slog.New(slog.DiscardHandler), Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	value := bytes.Repeat([]byte("v"), 100)
	index := uint64(0)
	for i := 0; i < keys; i += perEntry {
		batch := s.NewBatch()
		index++
		if err := batch.Begin(index); err != nil {
			b.Fatal(err)
		}
		for j := range perEntry {
			if _, _, err := batch.Put(fmt.Appendf(nil, "key/%08d", i+j), value, 0, false); err != nil {
				b.Fatal(err)
			}
		}
		if err := batch.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	var copied int64
	var elapsed time.Duration
	for b.Loop() {
		b.StopTimer()
		dst, err := OpenKV(b.TempDir(), slog.New(slog.DiscardHandler), Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		stats, err := s.CopySpan(dst, []byte("key/"), nil, index)
		if err != nil {
			b.Fatal(err)
		}
		elapsed += time.Since(t0)
		b.StopTimer()
		if stats.Keys != keys {
			b.Fatalf("copied %d keys, want %d", stats.Keys, keys)
		}
		copied += stats.Keys
		b.SetBytes(stats.Bytes)
		if err := dst.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(copied)/elapsed.Seconds(), "keys/s")
}
