package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// evString renders events for comparison: "PUT k=v@rev" / "DEL k@rev".
func evString(evs []Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		if e.Type == EventPut {
			out[i] = fmt.Sprintf("PUT %s=%s@%d", e.KV.Key, e.KV.Value, e.KV.ModRevision)
		} else {
			out[i] = fmt.Sprintf("DEL %s@%d", e.KV.Key, e.KV.ModRevision)
		}
		if e.HasPrev {
			out[i] += fmt.Sprintf(" prev=%s", e.Prev.Value)
		}
	}
	return out
}

// collect reads from w until it has n events, within a deadline.
func collect(t *testing.T, w *Watcher, n int) []Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var got []Event
	for len(got) < n {
		evs, covered, err := w.Next(ctx)
		if err != nil {
			t.Fatalf("Next after %d of %d events: %v", len(got), n, err)
		}
		if covered < evs[len(evs)-1].Revision() {
			t.Fatalf("covered %d, last event at %d", covered, evs[len(evs)-1].Revision())
		}
		got = append(got, evs...)
	}
	return got
}

func equalStrings(t *testing.T, what string, got, want []string) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%s:\n got %v\nwant %v", what, got, want)
	}
}

func TestWatchLiveAndHistory(t *testing.T) {
	s := kvNew(t)
	kvApply(t, s, 1, func(b *Batch) { kvPut(t, b, "a", "1") })
	live, err := s.Watch(WatchSpec{Key: []byte("a"), End: []byte("c"), PrevKV: true})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if live.StartedAt() != 1 {
		t.Fatalf("StartedAt = %d, want 1", live.StartedAt())
	}
	// A multi-entry batch, a txn-like entry touching two keys (in reverse
	// order) and a key out of range.
	b := s.NewBatch()
	for i, fn := range []func(){
		func() { kvPut(t, b, "b", "2"); kvPut(t, b, "a", "2") },
		func() { kvPut(t, b, "z", "x") },
		func() { kvDel(t, b, "a", "", false) },
		func() { kvPut(t, b, "b", "3"); kvPut(t, b, "b", "4") },
	} {
		if err := b.Begin(uint64(2 + i)); err != nil {
			t.Fatal(err)
		}
		fn()
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	want := []string{"PUT a=2@2 prev=1", "PUT b=2@2", "DEL a@4 prev=2", "PUT b=4@5 prev=2"}
	equalStrings(t, "live events", evString(collect(t, live, 4)), want)

	// The same from history, for a watcher starting at 2.
	old, err := s.Watch(WatchSpec{Key: []byte("a"), End: []byte("c"), StartRev: 2, PrevKV: true})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	equalStrings(t, "history events", evString(collect(t, old, 4)), want)
	// And then it is live.
	kvApply(t, s, 6, func(b *Batch) { kvPut(t, b, "a", "6") })
	equalStrings(t, "after history", evString(collect(t, old, 1)), []string{"PUT a=6@6"})
	if rev, ok := old.Progress(); !ok || rev != 6 {
		t.Fatalf("Progress = %d, %v; want 6, true", rev, ok)
	}

	// A single-key watcher sees only its key.
	one, err := s.Watch(WatchSpec{Key: []byte("b"), StartRev: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	equalStrings(t, "single key", evString(collect(t, one, 2)), []string{"PUT b=2@2", "PUT b=4@5"})
}

func TestWatchCompactedAndBehind(t *testing.T) {
	s := kvNew(t)
	for i := uint64(1); i <= 10; i++ {
		kvApply(t, s, i, func(b *Batch) { kvPut(t, b, "k", fmt.Sprint(i)) })
	}
	kvApply(t, s, 11, func(b *Batch) {
		if err := b.Compact(6, true); err != nil {
			t.Fatal(err)
		}
	})
	if err := s.CompactNow(6, true); err != nil {
		t.Fatal(err)
	}
	_, err := s.Watch(WatchSpec{Key: []byte("k"), StartRev: 5})
	var ce *CompactedError
	if !errors.As(err, &ce) || ce.Compacted != 6 || !errors.Is(err, ErrCompacted) {
		t.Fatalf("watch from 5 after compacting to 6: %v", err)
	}
	if _, _, err := s.Get(5, []byte("k")); !errors.Is(err, ErrCompacted) {
		t.Fatalf("Get at 5: %v", err)
	}
	if kv, ok := kvGet(t, s, 6, "k"); !ok || string(kv.Value) != "6" {
		t.Fatalf("Get at 6 = %q %v", kv.Value, ok)
	}
	w, err := s.Watch(WatchSpec{Key: []byte("k"), StartRev: 6, PrevKV: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	got := evString(collect(t, w, 5))
	equalStrings(t, "from the compacted revision", got, []string{"PUT k=6@6 prev=5", "PUT k=7@7 prev=6", "PUT k=8@8 prev=7", "PUT k=9@9 prev=8", "PUT k=10@10 prev=9"})

	// A watcher nobody reads is cancelled once MaxPending events wait.
	slow, err := s.Watch(WatchSpec{Key: []byte("k"), MaxPending: 3})
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(12); i <= 15; i++ {
		kvApply(t, s, i, func(b *Batch) { kvPut(t, b, "k", "x") })
	}
	select {
	case <-slow.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("slow watcher not cancelled")
	}
	if _, _, err := slow.Next(context.Background()); !errors.Is(err, ErrWatcherBehind) {
		t.Fatalf("slow watcher: %v", err)
	}
}

func TestWatchAcrossRestore(t *testing.T) {
	src := kvNew(t)
	for i := uint64(1); i <= 5; i++ {
		kvApply(t, src, i, func(b *Batch) { kvPut(t, b, fmt.Sprint("k", i), "v") })
	}
	var snap bytes.Buffer
	if err := src.Snapshot(&snap, 5); err != nil {
		t.Fatal(err)
	}
	dst := kvNew(t)
	kvApply(t, dst, 1, func(b *Batch) { kvPut(t, b, "k1", "v") })
	w, err := dst.Watch(WatchSpec{Key: []byte("k"), End: []byte("l")})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := dst.Restore(&snap); err != nil {
		t.Fatal(err)
	}
	// Revisions 2..5 came in by snapshot: the watcher still sees them.
	equalStrings(t, "after restore", evString(collect(t, w, 4)), []string{"PUT k2=v@2", "PUT k3=v@3", "PUT k4=v@4", "PUT k5=v@5"})
}

func TestLeaseAttachAndRevoke(t *testing.T) {
	s := kvNew(t)
	kvApply(t, s, 1, func(b *Batch) {
		if err := b.GrantLease(Lease{ID: 7, TTL: 10}); err != nil {
			t.Fatal(err)
		}
	})
	kvApply(t, s, 2, func(b *Batch) {
		for _, k := range []string{"a", "b", "c"} {
			if _, _, err := b.Put([]byte(k), []byte("v"), 7, false); err != nil {
				t.Fatal(err)
			}
		}
	})
	// b moves off the lease, c is deleted: neither goes with it.
	kvApply(t, s, 3, func(b *Batch) {
		kvPut(t, b, "b", "free")
		kvDel(t, b, "c", "", false)
	})
	l, keys, ok, err := s.LeaseKeys(7)
	if err != nil || !ok || l.TTL != 10 || fmt.Sprintf("%q", keys) != `["a"]` {
		t.Fatalf("LeaseKeys = %v %q %v %v", l, keys, ok, err)
	}
	w, err := s.Watch(WatchSpec{Key: []byte{0}, End: []byte{0}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	kvApply(t, s, 4, func(b *Batch) {
		kvPut(t, b, "d", "v")
		if _, _, err := b.Put([]byte("d"), []byte("leased"), 7, false); err != nil {
			t.Fatal(err)
		}
		// Revoking in the same entry sees the attachment just made.
		keys, err := b.RevokeLease(7)
		if err != nil || fmt.Sprintf("%q", keys) != `["a" "d"]` {
			t.Fatalf("RevokeLease = %q, %v", keys, err)
		}
	})
	equalStrings(t, "revoke events", evString(collect(t, w, 2)), []string{"DEL a@4", "DEL d@4"})
	if _, ok := kvGet(t, s, 0, "a"); ok {
		t.Fatal("a survived its lease")
	}
	if kv, ok := kvGet(t, s, 0, "b"); !ok || kv.Lease != 0 {
		t.Fatalf("b = %+v %v", kv, ok)
	}
	if _, _, ok, _ := s.LeaseKeys(7); ok {
		t.Fatal("lease 7 still exists")
	}
	if leases, err := s.Leases(); err != nil || len(leases) != 0 {
		t.Fatalf("Leases = %v %v", leases, err)
	}
}

// Wake is called when a watcher may have something for Next, so that one
// goroutine can serve many watchers: on a publish it holds, and when the
// watcher is cancelled.
func TestWatchWake(t *testing.T) {
	s := kvNew(t)
	woken := make(chan struct{}, 16)
	wake := func() { woken <- struct{}{} }
	w, err := s.Watch(WatchSpec{Key: []byte("a"), Wake: wake, MaxPending: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	other, err := s.Watch(WatchSpec{Key: []byte("b"), Wake: func() { t.Error("woken by a key it does not watch") }})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	kvApply(t, s, 1, func(b *Batch) { kvPut(t, b, "a", "1") })
	select {
	case <-woken:
	default:
		t.Fatal("no wake for a publish")
	}
	// Next without waiting takes what woke it.
	done, cancel := context.WithCancel(context.Background())
	cancel()
	evs, _, err := w.Next(done)
	if err != nil || len(evs) != 1 {
		t.Fatalf("%v %v", evs, err)
	}
	if _, _, err := w.Next(done); !errors.Is(err, context.Canceled) {
		t.Fatalf("nothing pending: %v", err)
	}
	// Over MaxPending, the hub cancels it: a wake tells.
	kvApply(t, s, 2, func(b *Batch) { kvPut(t, b, "a", "2") })
	kvApply(t, s, 3, func(b *Batch) { kvPut(t, b, "a", "3") })
	if len(woken) < 2 {
		t.Fatalf("%d wakes for a publish and a cancel", len(woken))
	}
	if !errors.Is(w.Err(), ErrWatcherBehind) {
		t.Fatalf("err %v", w.Err())
	}
}
