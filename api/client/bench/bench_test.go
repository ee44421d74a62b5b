package bench

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
)

// fakeTarget is an in-memory Target that counts calls and can fail or
// block.
type fakeTarget struct {
	delay time.Duration
	fail  func(n int64) error // called with the call number; nil: never fail

	calls, puts, gets, cases, ranges atomic.Int64

	mu   sync.Mutex
	data map[string]string
	keys map[string]bool // every key seen
}

func newFake() *fakeTarget {
	return &fakeTarget{data: map[string]string{}, keys: map[string]bool{}}
}

func (f *fakeTarget) call(ctx context.Context, key []byte) error {
	n := f.calls.Add(1)
	f.mu.Lock()
	f.keys[string(key)] = true
	f.mu.Unlock()
	if f.delay > 0 {
		select {
		case <-time.After(f.delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if f.fail != nil {
		return f.fail(n)
	}
	return nil
}

func (f *fakeTarget) Put(ctx context.Context, key, value []byte) error {
	f.puts.Add(1)
	if err := f.call(ctx, key); err != nil {
		return err
	}
	f.mu.Lock()
	f.data[string(key)] = string(value)
	f.mu.Unlock()
	return nil
}

func (f *fakeTarget) Get(ctx context.Context, key []byte, _ bool) ([]byte, error) {
	f.gets.Add(1)
	if err := f.call(ctx, key); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.data[string(key)]
	if !ok {
		return nil, ErrNotFound
	}
	return []byte(v), nil
}

func (f *fakeTarget) CAS(ctx context.Context, key, old, new []byte) (bool, error) {
	f.cases.Add(1)
	if err := f.call(ctx, key); err != nil {
		return false, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.data[string(key)]
	if (old == nil && ok) || (old != nil && (!ok || v != string(old))) {
		return false, nil
	}
	f.data[string(key)] = string(new)
	return true, nil
}

func (f *fakeTarget) Range(ctx context.Context, start, end []byte, limit int64) error {
	f.ranges.Add(1)
	if bytes.Compare(start, end) >= 0 && !bytes.Equal(end, []byte{0}) {
		return errors.New("empty range")
	}
	if limit <= 0 {
		return errors.New("no limit")
	}
	return f.call(ctx, start)
}

func TestClosedLoopDoesTotal(t *testing.T) {
	for _, w := range Workloads {
		t.Run(w, func(t *testing.T) {
			f := newFake()
			res, err := Run(t.Context(), Config{Workload: w, Clients: 8, Total: 500, Keyspace: 50, KeySize: 4, ValueSize: 8, ReadRatio: 0.9}, []Target{f, f})
			if err != nil {
				t.Fatal(err)
			}
			if res.Ops != 500 || res.ErrorCount() != 0 || res.Hist.Count() != 500 {
				t.Fatalf("ops %d, errors %v, recorded %d; want 500, none, 500", res.Ops, res.Errors, res.Hist.Count())
			}
			calls := f.calls.Load()
			if w == WorkloadTxn {
				if calls != 1000 || f.gets.Load() != 500 || f.cases.Load() != 500 {
					t.Fatalf("txn: %d calls, %d gets, %d cas; want 1000, 500, 500", calls, f.gets.Load(), f.cases.Load())
				}
			} else if calls != 500 {
				t.Fatalf("%d calls, want 500", calls)
			}
			for k := range f.keys {
				if len(k) != 4 || k < "0000" || k > "0049" {
					t.Fatalf("key %q outside the keyspace", k)
				}
			}
			if w == WorkloadGet && res.Misses != 500 {
				t.Fatalf("misses %d, want 500 (nothing was written)", res.Misses)
			}
			if w == WorkloadMixed && (f.puts.Load() == 0 || f.gets.Load() < f.puts.Load()) {
				t.Fatalf("mixed: %d puts, %d gets", f.puts.Load(), f.gets.Load())
			}
		})
	}
}

func TestOpenLoopHitsRate(t *testing.T) {
	f := newFake()
	f.delay = time.Millisecond
	// 2000/s for 0.5s is 1000 requests due; the run sends them all unless
	// the machine stalls for long, so the bound is loose.
	res, err := Run(t.Context(), Config{Workload: WorkloadPut, Clients: 8, Rate: 2000, Duration: 500 * time.Millisecond}, []Target{f})
	if err != nil {
		t.Fatal(err)
	}
	sent := res.Ops + res.ErrorCount()
	if sent > 1000 || sent < 500 {
		t.Fatalf("sent %d requests, want about 1000 and at most 1000", sent)
	}
	if sent+res.Dropped != 1000 {
		t.Fatalf("sent %d + dropped %d, want 1000", sent, res.Dropped)
	}
	if res.Ops != f.calls.Load() {
		t.Fatalf("ops %d, calls %d", res.Ops, f.calls.Load())
	}
}

func TestOpenLoopWithTotal(t *testing.T) {
	f := newFake()
	res, err := Run(t.Context(), Config{Workload: WorkloadGet, Clients: 4, Rate: 10000, Total: 300}, []Target{f})
	if err != nil {
		t.Fatal(err)
	}
	if res.Ops != 300 || f.calls.Load() != 300 {
		t.Fatalf("ops %d, calls %d; want 300", res.Ops, f.calls.Load())
	}
}

// A slow target at a rate it cannot reach: the latency counts from the due
// time, so it grows past the service time.
func TestOpenLoopCountsQueueing(t *testing.T) {
	f := newFake()
	f.delay = 20 * time.Millisecond
	// One loop at 500/s against 20ms calls serves at most 50/s: request k
	// waits k*18ms in the queue.
	res, err := Run(t.Context(), Config{Workload: WorkloadPut, Clients: 1, Rate: 500, Total: 10}, []Target{f})
	if err != nil {
		t.Fatal(err)
	}
	if res.Ops != 10 {
		t.Fatalf("ops %d", res.Ops)
	}
	// The last request was due at 18ms but could only start at 180ms:
	// its latency is at least 9*20ms - 9*2ms.
	if got := res.Hist.Max(); got < 150*time.Millisecond {
		t.Fatalf("max latency %v, want at least 150ms (queueing counted)", got)
	}
}

func TestDurationBoundsClosedLoop(t *testing.T) {
	f := newFake()
	f.delay = time.Millisecond
	res, err := Run(t.Context(), Config{Workload: WorkloadPut, Clients: 4, Duration: 200 * time.Millisecond}, []Target{f})
	if err != nil {
		t.Fatal(err)
	}
	if res.Ops == 0 || res.Ops != f.calls.Load() || res.Interrupted {
		t.Fatalf("ops %d, calls %d, interrupted %v", res.Ops, f.calls.Load(), res.Interrupted)
	}
}

func TestErrorsByCode(t *testing.T) {
	f := newFake()
	f.fail = func(n int64) error {
		switch n % 4 {
		case 0:
			return connect.NewError(connect.CodeUnavailable, errors.New("no leader"))
		case 1:
			return errors.New("plain")
		}
		return nil
	}
	res, err := Run(t.Context(), Config{Workload: WorkloadPut, Clients: 3, Total: 400}, []Target{f})
	if err != nil {
		t.Fatal(err)
	}
	if res.Ops != 200 || res.Errors["unavailable"] != 100 || res.Errors["unknown"] != 100 {
		t.Fatalf("ops %d, errors %v", res.Ops, res.Errors)
	}
	if res.Hist.Count() != 200 {
		t.Fatalf("recorded %d latencies, want the 200 successes", res.Hist.Count())
	}
	var b strings.Builder
	if err := WriteReport(&b, res); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"200 ok, 200 failed", "unavailable", "p99.9", "Histogram:"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
}

func TestCancelStopsAndReports(t *testing.T) {
	f := newFake()
	f.delay = time.Millisecond
	ctx, cancel := context.WithCancel(t.Context())
	var once sync.Once
	f.fail = func(n int64) error {
		if n >= 50 {
			once.Do(cancel)
		}
		return nil
	}
	res, err := Run(ctx, Config{Workload: WorkloadPut, Clients: 4, Total: 1 << 40}, []Target{f})
	if err != nil {
		t.Fatal(err)
	}
	// Calls in flight at the cancel end with context.Canceled, which is
	// not counted as an error.
	if !res.Interrupted || res.Ops == 0 || res.ErrorCount() != 0 {
		t.Fatalf("interrupted %v, ops %d, errors %v", res.Interrupted, res.Ops, res.Errors)
	}
}

func TestProgress(t *testing.T) {
	f := newFake()
	f.delay = time.Millisecond
	var calls atomic.Int64
	_, err := Run(t.Context(), Config{
		Workload: WorkloadPut, Clients: 2, Duration: 100 * time.Millisecond,
		ProgressInterval: 10 * time.Millisecond,
		Progress:         func(Progress) { calls.Add(1) },
	}, []Target{f})
	if err != nil {
		t.Fatal(err)
	}
	if calls.Load() == 0 {
		t.Fatal("progress never called")
	}
}

func TestPreloadWritesEveryKey(t *testing.T) {
	f := newFake()
	if err := Preload(t.Context(), Config{Workload: WorkloadGet, Keyspace: 1000, KeySize: 5, Duration: time.Second}, []Target{f, f}, 16); err != nil {
		t.Fatal(err)
	}
	if len(f.data) != 1000 || f.puts.Load() != 1000 {
		t.Fatalf("%d keys, %d puts; want 1000", len(f.data), f.puts.Load())
	}
	res, err := Run(t.Context(), Config{Workload: WorkloadGet, Keyspace: 1000, KeySize: 5, Total: 100}, []Target{f})
	if err != nil {
		t.Fatal(err)
	}
	if res.Misses != 0 {
		t.Fatalf("%d misses after preload", res.Misses)
	}

	f.fail = func(int64) error { return errors.New("disk full") }
	if err := Preload(t.Context(), Config{Workload: WorkloadGet, Keyspace: 1000, KeySize: 5, Duration: time.Second}, []Target{f}, 4); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("preload error %v, want disk full", err)
	}
}

func TestPreloadRetriesTransientFailures(t *testing.T) {
	cfg := Config{Workload: WorkloadGet, Keyspace: 100, KeySize: 5, Duration: time.Second}

	// A leader election fails the first puts; they are tried again.
	f := newFake()
	f.fail = func(n int64) error {
		if n <= 3 {
			return connect.NewError(connect.CodeUnavailable, errors.New("leadership lost"))
		}
		return nil
	}
	if err := Preload(t.Context(), cfg, []Target{f}, 1); err != nil {
		t.Fatalf("preload: %v", err)
	}
	if len(f.data) != 100 || f.puts.Load() != 103 {
		t.Fatalf("%d keys in %d puts; want 100 in 103", len(f.data), f.puts.Load())
	}

	// One that never ends gives up after preloadAttempts tries.
	f = newFake()
	f.fail = func(int64) error { return connect.NewError(connect.CodeUnavailable, errors.New("no leader")) }
	err := Preload(t.Context(), cfg, []Target{f}, 1)
	if err == nil || !strings.Contains(err.Error(), "no leader") || f.puts.Load() != preloadAttempts {
		t.Fatalf("preload error %v after %d puts; want no leader after %d", err, f.puts.Load(), preloadAttempts)
	}

	// A bad request is not tried again.
	f = newFake()
	f.fail = func(int64) error { return connect.NewError(connect.CodeInvalidArgument, errors.New("key too long")) }
	if err := Preload(t.Context(), cfg, []Target{f}, 1); err == nil || f.puts.Load() != 1 {
		t.Fatalf("preload error %v after %d puts; want an error after 1", err, f.puts.Load())
	}
}

func TestBadConfig(t *testing.T) {
	f := newFake()
	for _, c := range []Config{
		{Workload: "nope", Total: 1},
		{Workload: WorkloadPut},                             // no bound
		{Workload: WorkloadPut, Total: 1, KeySize: 3},       // 100000 keys need 5 digits
		{Workload: WorkloadMixed, Total: 1, ReadRatio: 1.5}, // bad ratio
	} {
		if _, err := Run(t.Context(), c, []Target{f}); err == nil {
			t.Errorf("Run(%+v) did not fail", c)
		}
	}
}

func TestKey(t *testing.T) {
	b := make([]byte, 6)
	Key(b, 4207)
	if string(b) != "004207" {
		t.Fatalf("Key = %q", b)
	}
}

// rangeFake records the bounds of every range it is sent.
type rangeFake struct {
	*fakeTarget
	mu     sync.Mutex
	bounds [][2]string
}

func (f *rangeFake) Range(ctx context.Context, start, end []byte, limit int64) error {
	f.mu.Lock()
	f.bounds = append(f.bounds, [2]string{string(start), string(end)})
	f.mu.Unlock()
	return f.fakeTarget.Range(ctx, start, end, limit)
}

// Prefixes spread the keys over ranges: key i under prefix i%n, both
// prefixes written about equally, and a range stays under its prefix.
func TestPrefixes(t *testing.T) {
	prefixes := []string{"/a/", "/b/"}
	f := newFake()
	cfg := Config{Workload: WorkloadPut, Clients: 4, Total: 2000, Keyspace: 100, KeySize: 3, Prefixes: prefixes}
	if _, err := Run(t.Context(), cfg, []Target{f}); err != nil {
		t.Fatal(err)
	}
	perPrefix := map[string]int{}
	for k := range f.keys {
		checkPrefixedKey(t, k, prefixes)
		perPrefix[k[:3]]++
	}
	// 2000 puts over 100 keys touch nearly all of them: 50 under each.
	if perPrefix["/a/"] < 40 || perPrefix["/b/"] < 40 {
		t.Fatalf("distinct keys per prefix %v, want about 50 each", perPrefix)
	}

	// Preload writes each of the 100 keys once, under its prefix.
	f = newFake()
	cfg.Workload = WorkloadGet
	if err := Preload(t.Context(), cfg, []Target{f}, 4); err != nil {
		t.Fatal(err)
	}
	if len(f.data) != 100 || f.puts.Load() != 100 {
		t.Fatalf("preload wrote %d keys in %d puts, want 100 in 100", len(f.data), f.puts.Load())
	}
	for k := range f.data {
		checkPrefixedKey(t, k, prefixes)
	}

	// Ranges start at a key and end under the same prefix.
	rf := &rangeFake{fakeTarget: newFake()}
	cfg = Config{Workload: WorkloadRange, Clients: 2, Total: 500, Keyspace: 100, KeySize: 3, RangeLimit: 10, Prefixes: prefixes}
	if _, err := Run(t.Context(), cfg, []Target{rf}); err != nil {
		t.Fatal(err)
	}
	ends := map[string]bool{}
	for _, b := range rf.bounds {
		start, end := b[0], b[1]
		checkPrefixedKey(t, start, prefixes)
		if end <= start || end[:3] != start[:3] && end != prefixEndString(start[:3]) {
			t.Fatalf("range [%q, %q) leaves its prefix", start, end)
		}
		ends[end] = true
	}
	if !ends["/a0"] || !ends["/b0"] {
		t.Fatalf("no range ran to the end of a prefix (ends %v)", ends)
	}
}

func prefixEndString(p string) string { return string(prefixEnd([]byte(p))) }

// checkPrefixedKey fails unless k is a prefix then 3 digits whose number
// n has prefix n%len(prefixes).
func checkPrefixedKey(t *testing.T, k string, prefixes []string) {
	t.Helper()
	if len(k) != 6 {
		t.Fatalf("key %q: want a 3-byte prefix and 3 digits", k)
	}
	n, err := strconv.Atoi(k[3:])
	if err != nil || k[:3] != prefixes[n%len(prefixes)] {
		t.Fatalf("key %q: want prefix %q", k, prefixes[n%len(prefixes)])
	}
}

func TestPrefixEnd(t *testing.T) {
	for in, want := range map[string]string{"/a/": "/a0", "a\xff": "b", "\xff\xff": "\x00"} {
		if got := string(prefixEnd([]byte(in))); got != want {
			t.Errorf("prefixEnd(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestBadPrefixes(t *testing.T) {
	for _, p := range [][]string{{"/a/", ""}, {"/a/", "/a/"}} {
		if _, err := Run(t.Context(), Config{Workload: WorkloadPut, Total: 1, Prefixes: p}, []Target{newFake()}); err == nil {
			t.Errorf("prefixes %q: no error", p)
		}
	}
}
