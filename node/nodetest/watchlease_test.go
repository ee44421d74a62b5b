package nodetest_test

import (
	"bytes"
	"context"
	cryptorand "crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/kvstore/kvstore/node/nodetest"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

// The tests of watches, leases and compaction on real clusters. They talk
// to the nodes with the raw generated Connect clients: watches over h2c
// (HTTP/2 with prior knowledge) or HTTP/1.1, unary calls over HTTP/1.1.

// wlHTTP returns an http.Client speaking h2c (HTTP/2 with prior knowledge)
// or HTTP/1.1. streamWindow, when set, caps the HTTP/2 flow-control window
// the client grants the server (per stream and per connection).
func wlHTTP(t *testing.T, h2 bool, streamWindow int) *http.Client {
	p := new(http.Protocols)
	if h2 {
		p.SetUnencryptedHTTP2(true)
	} else {
		p.SetHTTP1(true)
	}
	tr := &http.Transport{Protocols: p, MaxIdleConnsPerHost: 64}
	if streamWindow > 0 {
		tr.HTTP2 = &http.HTTP2Config{MaxReceiveBufferPerStream: streamWindow, MaxReceiveBufferPerConnection: streamWindow}
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// wlHTTPFor is wlHTTP for c's nodes: with TLS on, HTTPS with the
// cluster's client certificate (HTTP/2 by ALPN).
func wlHTTPFor(t *testing.T, c *nodetest.Cluster, h2 bool, streamWindow int) *http.Client {
	if c.PKI() == nil {
		return wlHTTP(t, h2, streamWindow)
	}
	p := new(http.Protocols)
	if h2 {
		p.SetHTTP2(true)
	} else {
		p.SetHTTP1(true)
	}
	tr := &http.Transport{Protocols: p, TLSClientConfig: c.PKI().ClientConfig(), MaxIdleConnsPerHost: 64}
	if streamWindow > 0 {
		tr.HTTP2 = &http.HTTP2Config{MaxReceiveBufferPerStream: streamWindow, MaxReceiveBufferPerConnection: streamWindow}
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func wlURL(nd *nodetest.Node) string { return nd.URL() }

func wlKV(t *testing.T, nd *nodetest.Node) kvstorev1connect.KVServiceClient {
	return kvstorev1connect.NewKVServiceClient(wlHTTPFor(t, nd.Cluster(), false, 0), wlURL(nd))
}

func wlLease(t *testing.T, nd *nodetest.Node) kvstorev1connect.LeaseServiceClient {
	return kvstorev1connect.NewLeaseServiceClient(wlHTTPFor(t, nd.Cluster(), false, 0), wlURL(nd))
}

// wlWatcher reads a watch stream in the background and keeps every
// response with the time it arrived.
type wlWatcher struct {
	name    string
	created *kvstorev1.WatchResponse
	cancel  context.CancelFunc
	done    chan struct{}

	mu      sync.Mutex
	resps   []*kvstorev1.WatchResponse
	arrived []time.Time
	err     error // why the stream ended (nil: it has not, or ended cleanly)
	trailer http.Header
	ended   bool
}

// wlStartWatch opens a watch and waits for its created response. An error
// that ends the stream before it (a compacted start revision) is returned
// as is, with the stream's trailer.
func wlStartWatch(ctx context.Context, t *testing.T, hc *http.Client, nd *nodetest.Node, req *kvstorev1.WatchRequest) (*wlWatcher, http.Header, error) {
	t.Helper()
	wctx, cancel := context.WithCancel(ctx)
	wc := kvstorev1connect.NewWatchServiceClient(hc, wlURL(nd))
	stream, err := wc.Watch(wctx, connect.NewRequest(req))
	if err != nil {
		cancel()
		return nil, nil, err
	}
	if !stream.Receive() {
		err := stream.Err()
		tr := stream.ResponseTrailer().Clone()
		stream.Close()
		cancel()
		if err == nil {
			err = errors.New("watch stream ended before its created response")
		}
		return nil, tr, err
	}
	first := stream.Msg()
	if !first.GetCreated() || len(first.GetEvents()) != 0 {
		stream.Close()
		cancel()
		return nil, nil, fmt.Errorf("first watch response is not a bare created response: %v", first)
	}
	w := &wlWatcher{name: nd.Name(), created: first, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for stream.Receive() {
			msg := stream.Msg()
			w.mu.Lock()
			w.resps = append(w.resps, msg)
			w.arrived = append(w.arrived, time.Now())
			w.mu.Unlock()
		}
		err := stream.Err()
		tr := stream.ResponseTrailer().Clone()
		stream.Close()
		w.mu.Lock()
		w.err, w.trailer, w.ended = err, tr, true
		w.mu.Unlock()
	}()
	t.Cleanup(w.stop)
	return w, nil, nil
}

func (w *wlWatcher) stop() {
	w.cancel()
	<-w.done
}

// rev is the revision the watcher has seen everything up to.
func (w *wlWatcher) rev() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if n := len(w.resps); n > 0 {
		return w.resps[n-1].GetHeader().GetRevision()
	}
	return w.created.GetHeader().GetRevision()
}

func (w *wlWatcher) state() (resps []*kvstorev1.WatchResponse, arrived []time.Time, ended bool, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]*kvstorev1.WatchResponse(nil), w.resps...), append([]time.Time(nil), w.arrived...), w.ended, w.err
}

// waitRev waits until the watcher has seen everything up to rev.
func (w *wlWatcher) waitRev(ctx context.Context, rev int64) error {
	return wlPoll(ctx, func() error {
		if got := w.rev(); got < rev {
			_, _, ended, err := w.state()
			if ended {
				return backoffStop{fmt.Errorf("watch on %s ended at revision %d, before %d: %v", w.name, got, rev, err)}
			}
			return fmt.Errorf("watch on %s is at revision %d, want %d", w.name, got, rev)
		}
		return nil
	})
}

// backoffStop is an error from a poll that is final; wlPoll stops on it.
type backoffStop struct{ error }

// wlPoll calls f every 20ms until it returns nil or a backoffStop, or ctx
// ends.
func wlPoll(ctx context.Context, f func() error) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		err := f()
		if err == nil {
			return nil
		}
		var stop backoffStop
		if errors.As(err, &stop) {
			return stop.error
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-t.C:
		}
	}
}

// events are the watcher's events in order; it checks that every response
// holds whole revisions in increasing order and that its header covers
// them.
func (w *wlWatcher) events(t *testing.T) []*kvstorev1.Event {
	t.Helper()
	resps, _, _, _ := w.state()
	return wlEvents(t, w.name, w.created.GetHeader().GetRevision(), resps)
}

func wlEvents(t *testing.T, name string, after int64, resps []*kvstorev1.WatchResponse) []*kvstorev1.Event {
	t.Helper()
	var out []*kvstorev1.Event
	seen := after // everything up to seen was covered
	for i, r := range resps {
		hdr := r.GetHeader().GetRevision()
		if r.GetCreated() {
			t.Errorf("watch on %s: response %d has created set again", name, i)
		}
		if len(r.GetEvents()) == 0 {
			t.Errorf("watch on %s: response %d has no events (no progress was asked for)", name, i)
		}
		prev := int64(0)
		for _, ev := range r.GetEvents() {
			rev := ev.GetKv().GetModRevision()
			if rev <= seen {
				t.Errorf("watch on %s: response %d has an event at revision %d, already covered up to %d", name, i, rev, seen)
			}
			if rev < prev {
				t.Errorf("watch on %s: response %d: events out of order: %d after %d", name, i, rev, prev)
			}
			if rev > hdr {
				t.Errorf("watch on %s: response %d: event at revision %d past its header revision %d", name, i, rev, hdr)
			}
			prev = rev
			out = append(out, ev)
		}
		if hdr < seen {
			t.Errorf("watch on %s: response %d: header revision %d went back from %d", name, i, hdr, seen)
		}
		seen = max(seen, hdr)
	}
	return out
}

func wlShow(ev *kvstorev1.Event) string {
	kv := ev.GetKv()
	return fmt.Sprintf("%s %s=%q@%d(c%d v%d l%d)", strings.TrimPrefix(ev.GetType().String(), "EVENT_TYPE_"), kv.GetKey(), kv.GetValue(), kv.GetModRevision(), kv.GetCreateRevision(), kv.GetVersion(), kv.GetLease())
}

// wlSameEvents reports the first difference between two event sequences.
func wlSameEvents(a, b []*kvstorev1.Event) error {
	for i := range min(len(a), len(b)) {
		if !proto.Equal(a[i], b[i]) {
			return fmt.Errorf("event %d differs: %s vs %s", i, wlShow(a[i]), wlShow(b[i]))
		}
	}
	if len(a) != len(b) {
		return fmt.Errorf("%d events vs %d", len(a), len(b))
	}
	return nil
}

// wlWant is an event an acknowledged write must have produced.
type wlWant struct {
	typ        kvstorev1.EventType
	key, value string
}

// wlAcked is an acknowledged write: its revision and the events it made.
type wlAcked struct {
	rev  int64
	want []wlWant
}

// wlWriter writes through one node, retrying writes that fail, and records
// what was acknowledged.
type wlWriter struct {
	kv       kvstorev1connect.KVServiceClient
	acked    []wlAcked
	failures int // attempts whose outcome is unknown
	last     int64
}

func (wr *wlWriter) do(ctx context.Context, f func(context.Context) (wlAcked, error)) error {
	return pollUntil(ctx, func() error {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		a, err := f(cctx)
		if err != nil {
			wr.failures++
			return err
		}
		wr.acked = append(wr.acked, a)
		wr.last = max(wr.last, a.rev)
		return nil
	})
}

func (wr *wlWriter) put(ctx context.Context, k, v string) error {
	return wr.do(ctx, func(ctx context.Context) (wlAcked, error) {
		resp, err := put(ctx, wr.kv, k, v)
		if err != nil {
			return wlAcked{}, err
		}
		return wlAcked{resp.GetHeader().GetRevision(), []wlWant{{kvstorev1.EventType_EVENT_TYPE_PUT, k, v}}}, nil
	})
}

func (wr *wlWriter) del(ctx context.Context, k string) error {
	return wr.do(ctx, func(ctx context.Context) (wlAcked, error) {
		resp, err := wr.kv.Delete(ctx, connect.NewRequest(&kvstorev1.DeleteRequest{Key: []byte(k)}))
		if err != nil {
			return wlAcked{}, err
		}
		a := wlAcked{rev: resp.Msg.GetHeader().GetRevision()}
		// A retried delete whose first attempt went through deletes nothing.
		if resp.Msg.GetDeleted() == 1 {
			a.want = []wlWant{{kvstorev1.EventType_EVENT_TYPE_DELETE, k, ""}}
		}
		return a, nil
	})
}

// txn puts two keys in one revision.
func (wr *wlWriter) txn(ctx context.Context, k1, v1, k2, v2 string) error {
	return wr.do(ctx, func(ctx context.Context) (wlAcked, error) {
		resp, err := wr.kv.Txn(ctx, connect.NewRequest(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{
			{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: []byte(k1), Value: []byte(v1)}}},
			{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: []byte(k2), Value: []byte(v2)}}},
		}}))
		if err != nil {
			return wlAcked{}, err
		}
		if !resp.Msg.GetSucceeded() {
			return wlAcked{}, errors.New("txn without compares did not succeed")
		}
		return wlAcked{resp.Msg.GetHeader().GetRevision(), []wlWant{
			{kvstorev1.EventType_EVENT_TYPE_PUT, k1, v1}, {kvstorev1.EventType_EVENT_TYPE_PUT, k2, v2},
		}}, nil
	})
}

// ops runs n writes numbered from first: puts, a Txn of two puts, and
// deletes of keys put before, under prefix.
func (wr *wlWriter) ops(ctx context.Context, prefix string, first, n int) error {
	for i := first; i < first+n; i++ {
		var err error
		switch i % 4 {
		case 0:
			err = wr.put(ctx, fmt.Sprintf("%sk%d", prefix, i%5), fmt.Sprintf("v%d", i))
		case 1:
			err = wr.put(ctx, fmt.Sprintf("%sx%d", prefix, i), fmt.Sprintf("v%d", i))
		case 2:
			err = wr.txn(ctx, fmt.Sprintf("%st%d/a", prefix, i), fmt.Sprintf("a%d", i), fmt.Sprintf("%st%d/b", prefix, i), fmt.Sprintf("b%d", i))
		case 3:
			err = wr.del(ctx, fmt.Sprintf("%sx%d", prefix, i-2))
		}
		if err != nil {
			return fmt.Errorf("write %d: %w", i, err)
		}
	}
	return nil
}

// wlCheckAcked checks that every acknowledged write's revision appears
// exactly once in evs with exactly the events it made, and that the events
// of no other revision outnumber the writes whose outcome was unknown.
func wlCheckAcked(t *testing.T, evs []*kvstorev1.Event, wr *wlWriter) {
	t.Helper()
	byRev := map[int64][]*kvstorev1.Event{}
	var order []int64
	for _, ev := range evs {
		rev := ev.GetKv().GetModRevision()
		if _, ok := byRev[rev]; !ok {
			order = append(order, rev)
		}
		byRev[rev] = append(byRev[rev], ev)
	}
	ackedRevs := map[int64]bool{}
	for _, a := range wr.acked {
		if ackedRevs[a.rev] {
			t.Errorf("two acknowledged writes at revision %d", a.rev)
		}
		ackedRevs[a.rev] = true
		got := byRev[a.rev]
		if len(got) != len(a.want) {
			t.Errorf("revision %d: %d events, want %d (%v)", a.rev, len(got), len(a.want), a.want)
			continue
		}
		for i, w := range a.want {
			ev := got[i]
			if ev.GetType() != w.typ || string(ev.GetKv().GetKey()) != w.key || string(ev.GetKv().GetValue()) != w.value {
				t.Errorf("revision %d event %d: %s, want %v", a.rev, i, wlShow(ev), w)
			}
		}
	}
	unknown := 0
	for _, rev := range order {
		if !ackedRevs[rev] {
			unknown++
			t.Logf("revision %d is from a write whose outcome was unknown: %s", rev, wlShow(byRev[rev][0]))
		}
	}
	if unknown > wr.failures {
		t.Errorf("%d revisions in the watch came from no acknowledged write, but only %d attempts failed", unknown, wr.failures)
	}
}

// wlCheckHistory reads every event back at its revision: a put is the
// pair as it was then, a delete leaves the key missing then.
func wlCheckHistory(ctx context.Context, t *testing.T, kv kvstorev1connect.KVServiceClient, evs []*kvstorev1.Event) {
	t.Helper()
	for _, ev := range evs {
		rev := ev.GetKv().GetModRevision()
		resp, err := kv.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: ev.GetKv().GetKey(), Revision: rev}))
		switch ev.GetType() {
		case kvstorev1.EventType_EVENT_TYPE_PUT:
			if err != nil {
				t.Errorf("get %s at revision %d: %v (the watch saw %s)", ev.GetKv().GetKey(), rev, err, wlShow(ev))
			} else if !proto.Equal(resp.Msg.GetKv(), ev.GetKv()) {
				t.Errorf("get %s at revision %d: %v, the watch saw %s", ev.GetKv().GetKey(), rev, resp.Msg.GetKv(), wlShow(ev))
			}
		case kvstorev1.EventType_EVENT_TYPE_DELETE:
			if connect.CodeOf(err) != connect.CodeNotFound {
				t.Errorf("get %s at revision %d, where the watch saw it deleted: %v %v", ev.GetKv().GetKey(), rev, resp, err)
			}
			if _, err := kv.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: ev.GetKv().GetKey(), Revision: rev - 1})); err != nil {
				t.Errorf("get %s at revision %d, before the watch saw it deleted: %v", ev.GetKv().GetKey(), rev-1, err)
			}
		default:
			t.Errorf("event of unknown type: %s", wlShow(ev))
		}
	}
}

func wlOthers(c *nodetest.Cluster, not ...*nodetest.Node) []*nodetest.Node {
	var out []*nodetest.Node
	for _, nd := range c.Running() {
		skip := false
		for _, x := range not {
			skip = skip || nd == x
		}
		if !skip {
			out = append(out, nd)
		}
	}
	return out
}

// TestWatchFollowerAcrossFailures: a watcher on a follower sees exactly
// the events the writes made, while the leader is killed; then the watched
// node is killed and the watch resumes on another node from the revision
// after the last one it saw, with no gap and no duplicate. The combined
// stream must equal a replay of the same revisions on a third node, every
// acknowledged write must appear in it exactly once, and every event must
// match the history read back at its revision.
func TestWatchFollowerAcrossFailures(t *testing.T) { plainAndTLS(t, testWatchFollowerAcrossFailures) }

func testWatchFollowerAcrossFailures(t *testing.T, opts ...nodetest.Option) {
	ctx := testCtx(t, 120*time.Second)
	c := nodetest.NewCluster(t, 3, opts...)
	leader := c.Leader(ctx)
	rest := wlOthers(c, leader)
	watched, via := rest[0], rest[1]
	h2 := wlHTTPFor(t, c, true, 0)
	const prefix = "w/"

	wr := &wlWriter{kv: wlKV(t, via)}
	// A write outside the prefix, which must not show up; once the watched
	// node has applied it, a watch from now is created at its revision or
	// later.
	before, err := put(ctx, wr.kv, "other", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := get(ctx, wlKV(t, watched), "other", kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE); err != nil {
		t.Fatal(err)
	}
	wa, _, err := wlStartWatch(ctx, t, h2, watched, &kvstorev1.WatchRequest{Key: []byte(prefix), Prefix: true})
	if err != nil {
		t.Fatalf("watch on %s: %v", watched.Name(), err)
	}
	start := wa.created.GetHeader().GetRevision()
	if start < before.GetHeader().GetRevision() {
		t.Fatalf("watch created at revision %d on %s, which had applied revision %d", start, watched.Name(), before.GetHeader().GetRevision())
	}
	if _, err := put(ctx, wr.kv, "other", "y"); err != nil {
		t.Fatal(err)
	}
	if err := wr.ops(ctx, prefix, 0, 24); err != nil {
		t.Fatal(err)
	}

	// Kill the leader mid-way; write on once a new one is up.
	leader.Kill()
	newLeader := c.Leader(ctx)
	t.Logf("leader %s killed, %s elected", leader.Name(), newLeader.Name())
	if err := wr.ops(ctx, prefix, 24, 24); err != nil {
		t.Fatal(err)
	}
	if err := wa.waitRev(ctx, wr.last); err != nil {
		t.Fatal(err)
	}
	// The old leader comes back, so that the watched node can die.
	if err := leader.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitMembers(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if err := wr.ops(ctx, prefix, 48, 8); err != nil {
		t.Fatal(err)
	}

	// Kill the watched node while writes go on; resume on the writer's
	// node from the revision after the last one seen.
	wasLeader := c.Leader(ctx) == watched
	killed := make(chan time.Duration, 1)
	killAt := time.Now()
	go func() {
		watched.Kill()
		killed <- time.Since(killAt)
	}()
	failedBefore := wr.failures
	if err := wr.ops(ctx, prefix, 56, 8); err != nil {
		t.Fatal(err)
	}
	t.Logf("8 writes while %s (leader: %v) was killed took %v, %d attempts failed", watched.Name(), wasLeader, time.Since(killAt).Round(time.Millisecond), wr.failures-failedBefore)
	broke := time.Now()
	if err := wlPoll(ctx, func() error {
		if _, _, ended, _ := wa.state(); !ended {
			return errors.New("the stream from the killed node is still open")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// A killed node's connections drop at once, as if its process died:
	// the stream must not outlive the kill by long.
	if d := time.Since(killAt); d > 5*time.Second {
		t.Errorf("the watch stream on %s ended %v after it was killed, want < 5s (Kill/node.Close waits for open watch streams: http.Server.Shutdown does not end them)", watched.Name(), d.Round(time.Millisecond))
	}
	_, _, _, waErr := wa.state()
	t.Logf("stream from the killed %s ended %v after the writes around the kill: %v", watched.Name(), time.Since(broke).Round(time.Millisecond), waErr)
	if waErr == nil {
		t.Error("the stream from a killed node ended without an error")
	}
	resumeAt := wa.rev() + 1
	wb, _, err := wlStartWatch(ctx, t, h2, via, &kvstorev1.WatchRequest{Key: []byte(prefix), Prefix: true, StartRevision: resumeAt})
	if err != nil {
		t.Fatalf("resume on %s from %d: %v", via.Name(), resumeAt, err)
	}
	if got := wb.created.GetHeader().GetRevision(); got != resumeAt-1 {
		t.Errorf("resumed watch created at revision %d, want %d", got, resumeAt-1)
	}
	if err := wr.ops(ctx, prefix, 64, 12); err != nil {
		t.Fatal(err)
	}
	if err := wb.waitRev(ctx, wr.last); err != nil {
		t.Fatal(err)
	}
	t.Logf("killing %s took %v", watched.Name(), (<-killed).Round(time.Millisecond))

	combined := append(wa.events(t), wb.events(t)...)
	if last := wa.rev(); len(wb.events(t)) > 0 && wb.events(t)[0].GetKv().GetModRevision() <= last {
		t.Errorf("the resumed stream repeats revision %d", wb.events(t)[0].GetKv().GetModRevision())
	}

	// A replay of the same revisions on the third node.
	third := leader
	wc, _, err := wlStartWatch(ctx, t, wlHTTPFor(t, c, false, 0), third, &kvstorev1.WatchRequest{Key: []byte(prefix), Prefix: true, StartRevision: start + 1})
	if err != nil {
		t.Fatalf("replay on %s: %v", third.Name(), err)
	}
	if err := wc.waitRev(ctx, wr.last); err != nil {
		t.Fatal(err)
	}
	replay := wc.events(t)
	// The replay may run past what the live watchers were waited for; both
	// were waited up to wr.last, the last write.
	if err := wlSameEvents(combined, replay); err != nil {
		t.Errorf("live watch (%s then %s) and replay on %s differ: %v", watched.Name(), via.Name(), third.Name(), err)
	}
	wlCheckAcked(t, combined, wr)
	wlCheckHistory(ctx, t, wlKV(t, via), combined)
	t.Logf("%d events over %d acknowledged writes (%d failed attempts), revisions %d..%d", len(combined), len(wr.acked), wr.failures, start+1, wr.last)
}

// wlCompactMeta is the compacted revision an OUT_OF_RANGE error names, in
// its metadata or in the stream's trailer.
func wlCompactMeta(err error, trailer http.Header) string {
	var ce *connect.Error
	if errors.As(err, &ce) {
		if v := ce.Meta().Get("Kv-Compact-Revision"); v != "" {
			return v
		}
	}
	return trailer.Get("Kv-Compact-Revision")
}

// TestWatchReplayAndCompaction: a watch from an old revision replays
// exactly the events after it (over HTTP/1.1 and h2c); after a Compact,
// watches and reads below the compacted revision get OUT_OF_RANGE naming
// it, and from it they work.
func TestWatchReplayAndCompaction(t *testing.T) {
	ctx := testCtx(t, 90*time.Second)
	c := nodetest.NewCluster(t, 3)
	leader := c.Leader(ctx)
	follower := wlOthers(c, leader)[0]
	const prefix = "r/"
	wr := &wlWriter{kv: wlKV(t, leader)}
	if err := wr.ops(ctx, prefix, 0, 16); err != nil {
		t.Fatal(err)
	}
	mid := wr.acked[8].rev
	if err := wr.ops(ctx, prefix, 16, 16); err != nil {
		t.Fatal(err)
	}
	kv := wlKV(t, follower)
	// Wait until the follower has applied every write (a linearizable read).
	if _, err := kv.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte(prefix), Prefix: true, CountOnly: true})); err != nil {
		t.Fatal(err)
	}

	// The expected events from mid on: the acknowledged writes (none
	// failed on a healthy cluster).
	if wr.failures != 0 {
		t.Logf("%d write attempts failed; the replay check allows for them", wr.failures)
	}
	replayFrom := func(name string, hc *http.Client, from int64) []*kvstorev1.Event {
		t.Helper()
		w, _, err := wlStartWatch(ctx, t, hc, follower, &kvstorev1.WatchRequest{Key: []byte(prefix), Prefix: true, StartRevision: from})
		if err != nil {
			t.Fatalf("%s watch from %d: %v", name, from, err)
		}
		if got := w.created.GetHeader().GetRevision(); got != from-1 {
			t.Errorf("%s watch from %d: created at revision %d, want %d", name, from, got, from-1)
		}
		if err := w.waitRev(ctx, wr.last); err != nil {
			t.Fatal(err)
		}
		w.stop()
		evs := w.events(t)
		var after []wlAcked
		for _, a := range wr.acked {
			if a.rev >= from {
				after = append(after, a)
			}
		}
		sub := &wlWriter{acked: after, failures: wr.failures}
		wlCheckAcked(t, evs, sub)
		for _, ev := range evs {
			if ev.GetKv().GetModRevision() < from {
				t.Errorf("%s watch from %d replayed %s", name, from, wlShow(ev))
			}
		}
		return evs
	}
	h1 := replayFrom("HTTP/1.1", wlHTTP(t, false, 0), mid)
	h2 := replayFrom("h2c", wlHTTP(t, true, 0), mid)
	if err := wlSameEvents(h1, h2); err != nil {
		t.Errorf("HTTP/1.1 and h2c replays differ: %v", err)
	}
	wlCheckHistory(ctx, t, kv, h1)
	all := replayFrom("full", wlHTTP(t, true, 0), wr.acked[0].rev)
	if len(all) <= len(h1) {
		t.Errorf("a replay from revision %d has %d events, from %d %d", wr.acked[0].rev, len(all), mid, len(h1))
	}

	// Compact at a revision inside the written range.
	compactAt := wr.acked[20].rev
	if _, err := wlKV(t, follower).Compact(ctx, connect.NewRequest(&kvstorev1.CompactRequest{Revision: compactAt})); err != nil {
		t.Fatalf("compact at %d through %s: %v", compactAt, follower.Name(), err)
	}
	want := strconv.FormatInt(compactAt, 10)
	key := []byte(fmt.Sprintf("%sk0", prefix)) // written many times
	// Reads below it (linearizable, so the follower has applied the
	// compaction first), then watches, on the follower.
	_, err := kv.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: key, Revision: compactAt - 1}))
	if connect.CodeOf(err) != connect.CodeOutOfRange || wlCompactMeta(err, nil) != want {
		t.Errorf("get at %d, below the compacted %d: %v (meta %q), want OUT_OF_RANGE naming %s", compactAt-1, compactAt, err, wlCompactMeta(err, nil), want)
	}
	_, err = kv.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte(prefix), Prefix: true, Revision: compactAt - 1}))
	if connect.CodeOf(err) != connect.CodeOutOfRange || wlCompactMeta(err, nil) != want {
		t.Errorf("range at %d, below the compacted %d: %v (meta %q), want OUT_OF_RANGE naming %s", compactAt-1, compactAt, err, wlCompactMeta(err, nil), want)
	}
	for _, h := range []struct {
		name string
		hc   *http.Client
	}{{"HTTP/1.1", wlHTTP(t, false, 0)}, {"h2c", wlHTTP(t, true, 0)}} {
		for _, from := range []int64{compactAt - 1, mid, 1} {
			w, trailer, err := wlStartWatch(ctx, t, h.hc, follower, &kvstorev1.WatchRequest{Key: []byte(prefix), Prefix: true, StartRevision: from})
			if err == nil {
				w.stop()
				t.Errorf("%s watch from %d, below the compacted %d, was created", h.name, from, compactAt)
				continue
			}
			if connect.CodeOf(err) != connect.CodeOutOfRange || wlCompactMeta(err, trailer) != want {
				t.Errorf("%s watch from %d, below the compacted %d: %v (meta %q), want OUT_OF_RANGE naming %s", h.name, from, compactAt, err, wlCompactMeta(err, trailer), want)
			}
		}
	}
	// At the compacted revision, reads and watches work.
	if _, err := kv.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte(prefix), Prefix: true, Revision: compactAt})); err != nil {
		t.Errorf("range at the compacted revision %d: %v", compactAt, err)
	}
	fromC := replayFrom("h2c", wlHTTP(t, true, 0), compactAt)
	for i, ev := range all {
		if ev.GetKv().GetModRevision() >= compactAt {
			if err := wlSameEvents(all[i:], fromC); err != nil {
				t.Errorf("watch from the compacted revision %d differs from the replay before compaction: %v", compactAt, err)
			}
			break
		}
	}
	// The leader agrees.
	_, err = wlKV(t, leader).Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: key, Revision: compactAt - 1}))
	if connect.CodeOf(err) != connect.CodeOutOfRange {
		t.Errorf("get on the leader at %d, below the compacted %d: %v", compactAt-1, compactAt, err)
	}
}

// wlExist counts the keys that exist (linearizable reads through kv).
func wlExist(ctx context.Context, kv kvstorev1connect.KVServiceClient, keys []string) (int, error) {
	n := 0
	for _, k := range keys {
		_, err := get(ctx, kv, k, kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
		switch {
		case err == nil:
			n++
		case connect.CodeOf(err) == connect.CodeNotFound:
		default:
			return 0, err
		}
	}
	return n, nil
}

// wlLeaseKeys grants a lease through ls and puts keys attached to it
// through kv.
func wlLeaseKeys(ctx context.Context, t *testing.T, ls kvstorev1connect.LeaseServiceClient, kv kvstorev1connect.KVServiceClient, ttl int64, keys []string) (int64, time.Time) {
	t.Helper()
	sent := time.Now()
	g, err := ls.Grant(ctx, connect.NewRequest(&kvstorev1.GrantRequest{TtlSeconds: ttl}))
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	if g.Msg.GetId() == 0 || g.Msg.GetTtlSeconds() != ttl {
		t.Fatalf("grant: %v", g.Msg)
	}
	for _, k := range keys {
		resp, err := kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte(k), Value: []byte("v"), Lease: g.Msg.GetId()}))
		if err != nil {
			t.Fatalf("put %s with lease %d: %v", k, g.Msg.GetId(), err)
		}
		got, err := get(ctx, kv, k, kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
		if err != nil || got.GetKv().GetLease() != g.Msg.GetId() || got.GetKv().GetModRevision() != resp.Msg.GetHeader().GetRevision() {
			t.Fatalf("get %s after a put with lease %d: %v %v", k, g.Msg.GetId(), got, err)
		}
	}
	return g.Msg.GetId(), sent
}

// wlDeletes waits for the watcher to report a delete of every key, and
// checks they all came in one revision, in one response. It returns that
// revision and when the response arrived.
func wlDeletes(ctx context.Context, t *testing.T, w *wlWatcher, keys []string) (int64, time.Time) {
	t.Helper()
	want := map[string]bool{}
	for _, k := range keys {
		want[k] = true
	}
	var rev int64
	var at time.Time
	err := wlPoll(ctx, func() error {
		resps, arrived, ended, err := w.state()
		for i, r := range resps {
			n := 0
			for _, ev := range r.GetEvents() {
				if ev.GetType() == kvstorev1.EventType_EVENT_TYPE_DELETE && want[string(ev.GetKv().GetKey())] {
					n++
					if rev == 0 {
						rev = ev.GetKv().GetModRevision()
					}
					if ev.GetKv().GetModRevision() != rev {
						t.Errorf("delete of %s at revision %d, another key of the lease went at %d", ev.GetKv().GetKey(), ev.GetKv().GetModRevision(), rev)
					}
				}
			}
			if n > 0 {
				if n != len(keys) {
					t.Errorf("a response holds %d of the %d deletes of the lease's keys: %v", n, len(keys), r.GetEvents())
				}
				at = arrived[i]
				return nil
			}
		}
		if ended {
			return fmt.Errorf("watch ended: %v", err)
		}
		return errors.New("no delete yet")
	})
	if err != nil {
		t.Fatalf("the lease's keys %v were not deleted: %v", keys, err)
	}
	return rev, at
}

// TestLeaseExpiryKeepAliveAndLeaderKill: a lease's keys all go in one
// revision when it expires, not before its TTL; keep-alives (through a
// follower) keep a lease past its TTL; a lease still expires after the
// leader is killed, but not before a full TTL under the new leader.
func TestLeaseExpiryKeepAliveAndLeaderKill(t *testing.T) {
	ctx := testCtx(t, 90*time.Second)
	c := nodetest.NewCluster(t, 3)
	leader := c.Leader(ctx)
	rest := wlOthers(c, leader)
	f1, f2 := rest[0], rest[1]
	ls := wlLease(t, f1) // lease calls through a follower: forwarded
	kv := wlKV(t, f1)
	const ttl = 3

	// Unknown leases.
	if _, err := ls.KeepAliveOnce(ctx, connect.NewRequest(&kvstorev1.KeepAliveOnceRequest{Id: 12345})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("keep-alive of an unknown lease: %v, want NOT_FOUND", err)
	}
	if _, err := ls.TimeToLive(ctx, connect.NewRequest(&kvstorev1.TimeToLiveRequest{Id: 12345})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("time-to-live of an unknown lease: %v, want NOT_FOUND", err)
	}

	w, _, err := wlStartWatch(ctx, t, wlHTTP(t, true, 0), f2, &kvstorev1.WatchRequest{Key: []byte("l/"), Prefix: true})
	if err != nil {
		t.Fatal(err)
	}

	// Lease A expires with its three keys; lease B is kept alive meanwhile.
	keysA := []string{"l/a1", "l/a2", "l/a3"}
	keysB := []string{"l/b1"}
	idA, sentA := wlLeaseKeys(ctx, t, ls, kv, ttl, keysA)
	idB, sentB := wlLeaseKeys(ctx, t, ls, kv, ttl, keysB)
	ttlResp, err := ls.TimeToLive(ctx, connect.NewRequest(&kvstorev1.TimeToLiveRequest{Id: idA, Keys: true}))
	if err != nil {
		t.Fatal(err)
	}
	if m := ttlResp.Msg; m.GetGrantedTtlSeconds() != ttl || m.GetTtlSeconds() < 1 || m.GetTtlSeconds() > ttl || len(m.GetKeys()) != 3 {
		t.Errorf("time-to-live of lease A: %v", m)
	}
	list, err := wlLease(t, f2).Leases(ctx, connect.NewRequest(&kvstorev1.LeasesRequest{}))
	if err != nil || len(list.Msg.GetLeases()) != 2 {
		t.Errorf("leases: %v %v", list, err)
	}

	var kaErr error
	kaCtx, stopKA := context.WithCancel(ctx)
	kaDone := make(chan struct{})
	var renewals atomic.Int32
	go func() {
		defer close(kaDone)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-kaCtx.Done():
				return
			case <-tick.C:
			}
			cctx, cancel := context.WithTimeout(kaCtx, 2*time.Second)
			r, err := ls.KeepAliveOnce(cctx, connect.NewRequest(&kvstorev1.KeepAliveOnceRequest{Id: idB}))
			cancel()
			if kaCtx.Err() != nil {
				return
			}
			if err != nil || r.Msg.GetTtlSeconds() != ttl {
				kaErr = fmt.Errorf("keep-alive: %v %v", r, err)
				return
			}
			renewals.Add(1)
		}
	}()

	revA, atA := wlDeletes(ctx, t, w, keysA)
	if d := atA.Sub(sentA); d < ttl*time.Second {
		t.Errorf("lease A's keys were deleted %v after the grant was sent, before its TTL of %ds", d, ttl)
	} else if d > (ttl+5)*time.Second {
		t.Errorf("lease A's keys were deleted %v after the grant, long past its TTL of %ds", d, ttl)
	}
	if n, err := wlExist(ctx, kv, keysA); err != nil || n != 0 {
		t.Errorf("%d keys of lease A left after its delete at revision %d: %v", n, revA, err)
	}
	if _, err := ls.TimeToLive(ctx, connect.NewRequest(&kvstorev1.TimeToLiveRequest{Id: idA})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("time-to-live of the expired lease A: %v, want NOT_FOUND", err)
	}
	if _, err := ls.KeepAliveOnce(ctx, connect.NewRequest(&kvstorev1.KeepAliveOnceRequest{Id: idA})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("keep-alive of the expired lease A: %v, want NOT_FOUND", err)
	}

	// B has lived past its TTL: keep it going until 2 TTLs since its grant.
	if err := wlPoll(ctx, func() error {
		if kaErr != nil || renewals.Load() >= 2*ttl && time.Since(sentB) > 2*ttl*time.Second {
			return nil
		}
		select {
		case <-kaDone:
			return backoffStop{errors.New("keep-alive loop stopped")}
		default:
		}
		return fmt.Errorf("%d renewals", renewals.Load())
	}); err != nil {
		t.Fatal(err)
	}
	if n, err := wlExist(ctx, kv, keysB); err != nil || n != 1 {
		t.Errorf("lease B's key after %v of keep-alives (TTL %ds): %d left, %v", time.Since(sentB).Round(time.Millisecond), ttl, n, err)
	}
	// One renewal over the bidi stream, through the other follower (h2c).
	kaStream := kvstorev1connect.NewLeaseServiceClient(wlHTTP(t, true, 0), wlURL(f2)).KeepAlive(ctx)
	if err := kaStream.Send(&kvstorev1.KeepAliveRequest{Id: idB}); err != nil {
		t.Errorf("keep-alive stream send: %v", err)
	} else if r, err := kaStream.Receive(); err != nil || r.GetId() != idB || r.GetTtlSeconds() != ttl {
		t.Errorf("keep-alive stream: %v %v", r, err)
	}
	kaStream.CloseRequest()
	kaStream.CloseResponse()
	stopKA()
	<-kaDone
	if kaErr != nil {
		t.Error(kaErr)
	}
	stopped := time.Now()
	_, atB := wlDeletes(ctx, t, w, keysB)
	if d := atB.Sub(stopped); d > (ttl+5)*time.Second {
		t.Errorf("lease B's key was deleted %v after the keep-alives stopped, TTL %ds", d, ttl)
	}

	// Lease C, then kill the leader once C has used up part of its TTL:
	// the new leader must give it a full TTL again.
	keysC := []string{"l/c1", "l/c2", "l/c3"}
	idC, _ := wlLeaseKeys(ctx, t, ls, kv, ttl, keysC)
	if err := wlPoll(ctx, func() error {
		r, err := wlLease(t, f1).TimeToLive(ctx, connect.NewRequest(&kvstorev1.TimeToLiveRequest{Id: idC}))
		if err != nil {
			return backoffStop{err}
		}
		if r.Msg.GetTtlSeconds() > ttl-1 {
			return fmt.Errorf("%ds left", r.Msg.GetTtlSeconds())
		}
		return nil
	}); err != nil {
		t.Fatalf("time-to-live of lease C: %v", err)
	}
	killAt := time.Now()
	leader.Kill()
	newLeader := c.Leader(ctx)
	elected := time.Now()
	n, err := wlExist(ctx, wlKV(t, newLeader), keysC)
	if err != nil || n != len(keysC) {
		t.Errorf("right after %s was elected (%v after the kill), %d of lease C's %d keys are left: %v", newLeader.Name(), elected.Sub(killAt).Round(time.Millisecond), n, len(keysC), err)
	}
	checked := time.Now()
	_, atC := wlDeletes(ctx, t, w, keysC)
	t.Logf("lease C: leader killed, %s elected after %v, keys checked %v later, deleted %v after the election", newLeader.Name(), elected.Sub(killAt).Round(time.Millisecond), checked.Sub(elected).Round(time.Millisecond), atC.Sub(elected).Round(time.Millisecond))
	// The new leader cannot have been elected before the kill began, and
	// restarts C's full TTL from then.
	if d := atC.Sub(killAt); d < ttl*time.Second {
		t.Errorf("lease C's keys were deleted %v after the leader was killed, before a full TTL (%ds) under the new leader", d, ttl)
	}
	if d := atC.Sub(elected); d > (ttl+5)*time.Second {
		t.Errorf("lease C's keys were deleted %v after %s was elected, TTL %ds", d, newLeader.Name(), ttl)
	}
	if n, err := wlExist(ctx, wlKV(t, newLeader), keysC); err != nil || n != 0 {
		t.Errorf("%d of lease C's keys left after its delete: %v", n, err)
	}
}

// wlWatchHandlers counts the Watch handlers running in this process (the
// nodes run in it): the server side of every open watch stream.
func wlWatchHandlers() int {
	var buf bytes.Buffer
	pprof.Lookup("goroutine").WriteTo(&buf, 2)
	return strings.Count(buf.String(), "api.(*watchService).Watch(")
}

func wlHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestWatchSlowReaderCancelled: a watcher that never reads its stream (a
// 64 KiB HTTP/2 window, so the server's writes block at once) falls more
// than 10,000 events behind: the server cancels it and ends its stream
// without the client reading, and the process's heap stays bounded.
func TestWatchSlowReaderCancelled(t *testing.T) {
	ctx := testCtx(t, 90*time.Second)
	c := nodetest.NewCluster(t, 1)
	leader := c.Leader(ctx)
	follower := leader
	const (
		events    = 13000
		perTxn    = 10
		valueSize = 1 << 10
		prefix    = "s/"
	)
	if n := wlWatchHandlers(); n != 0 {
		t.Fatalf("%d watch handlers running before the test", n)
	}
	heap0 := wlHeap()

	wctx, cancelWatch := context.WithCancel(ctx)
	defer cancelWatch()
	hc := wlHTTP(t, true, 64<<10)
	stream, err := kvstorev1connect.NewWatchServiceClient(hc, wlURL(follower)).Watch(wctx, connect.NewRequest(&kvstorev1.WatchRequest{Key: []byte(prefix), Prefix: true}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	// The created response only; then the stream is not read.
	if !stream.Receive() || !stream.Msg().GetCreated() {
		t.Fatalf("watch: %v %v", stream.Msg(), stream.Err())
	}
	created := stream.Msg().GetHeader().GetRevision()
	if n := wlWatchHandlers(); n != 1 {
		t.Fatalf("%d watch handlers running, want 1", n)
	}

	// Write the events concurrently through the leader, in Txns of
	// perTxn puts (one revision each) to keep the test short. The values
	// are random: the stream is gzipped, and repetitive values would all
	// fit in the window.
	kv := wlKV(t, leader)
	pool := make([]byte, 4<<20)
	cryptorand.Read(pool)
	var next, retries atomic.Int64
	var peak atomic.Uint64
	errs := make(chan error, 32)
	writeStart := time.Now()
	for range 32 {
		go func() {
			for {
				i := next.Add(1) - 1
				if i >= events/perTxn {
					errs <- nil
					return
				}
				var ops []*kvstorev1.RequestOp
				for j := range int64(perTxn) {
					off := (i*perTxn + j) * 7919 % int64(len(pool)-valueSize)
					value := pool[off : off+valueSize]
					ops = append(ops, &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{
						Key: []byte(fmt.Sprintf("%s%06d", prefix, i*perTxn+j)), Value: value,
					}}})
				}
				// The same puts again are harmless: a Txn whose outcome is
				// unknown is retried.
				if err := pollUntil(ctx, func() error {
					_, err := kv.Txn(ctx, connect.NewRequest(&kvstorev1.TxnRequest{Success: ops}))
					if err != nil {
						retries.Add(1)
					}
					return err
				}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	sample := time.NewTicker(100 * time.Millisecond)
	defer sample.Stop()
	for done := 0; done < 32; {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatal(err)
			}
			done++
		case <-sample.C:
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > peak.Load() {
				peak.Store(ms.HeapAlloc)
			}
		}
	}
	t.Logf("%d puts of %d random bytes, %d a Txn, in %v", events, valueSize, perTxn, time.Since(writeStart).Round(time.Millisecond))

	// The server must end the stream by itself: its handler goes within the
	// cancel grace (5s) and some margin, though the client reads nothing.
	cut := time.Now()
	cutCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := wlPoll(cutCtx, func() error {
		if n := wlWatchHandlers(); n != 0 {
			return fmt.Errorf("%d watch handlers still running", n)
		}
		return nil
	}); err != nil {
		t.Errorf("the server did not end the stream of a watcher that never reads: %v", err)
	}
	t.Logf("the watch handler ended %v after the last write", time.Since(cut).Round(time.Millisecond))
	heap1 := wlHeap()
	peakMiB := float64(peak.Load()) / (1 << 20)
	t.Logf("heap: %.1f MiB before, %.1f MiB after (peak sampled %.1f MiB)", float64(heap0)/(1<<20), float64(heap1)/(1<<20), peakMiB)
	if heap1 > heap0 && heap1-heap0 > 200<<20 {
		t.Errorf("heap grew by %.1f MiB", float64(heap1-heap0)/(1<<20))
	}

	// Now read: what was in flight, then an error, never all the events.
	got := 0
	last := created
	keys := map[string]bool{}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		for stream.Receive() {
			for _, ev := range stream.Msg().GetEvents() {
				keys[string(ev.GetKv().GetKey())] = true
			}
			got += len(stream.Msg().GetEvents())
			last = stream.Msg().GetHeader().GetRevision()
		}
	}()
	select {
	case <-readDone:
	case <-time.After(20 * time.Second):
		cancelWatch()
		<-readDone
		t.Fatalf("the stream of the cancelled watcher did not end; %d events read", got)
	}
	err = stream.Err()
	t.Logf("after the cut, the client read %d events up to revision %d, then: %v (code %v)", got, last, err, connect.CodeOf(err))
	if err == nil {
		t.Error("the stream of a cancelled watcher ended without an error")
	}
	if got >= events {
		t.Errorf("the watcher got all %d events: it was not cancelled", got)
	}
	if code := connect.CodeOf(err); code != connect.CodeResourceExhausted {
		// The server cut the blocked write after its grace: the client sees
		// the reset, not the code.
		t.Logf("stream ended with %v rather than RESOURCE_EXHAUSTED: the write was cut after the grace", code)
	}

	// Resume from the revision after the last one read: the events before
	// the cut and after it are every write, once (a Txn retried after an
	// unknown outcome may have put its keys twice).
	w, _, err := wlStartWatch(ctx, t, wlHTTP(t, true, 0), follower, &kvstorev1.WatchRequest{Key: []byte(prefix), Prefix: true, StartRevision: last + 1})
	if err != nil {
		t.Fatalf("resume from %d: %v", last+1, err)
	}
	r, err := kv.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte(prefix), Prefix: true, CountOnly: true}))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.waitRev(ctx, r.Msg.GetHeader().GetRevision()); err != nil {
		t.Fatal(err)
	}
	evs := w.events(t)
	for _, ev := range evs {
		keys[string(ev.GetKv().GetKey())] = true
	}
	if len(keys) != events || got+len(evs) < events || got+len(evs) > events+perTxn*int(retries.Load()) {
		t.Errorf("%d events read before the cut and %d after resuming, %d distinct keys; want %d (%d Txns retried)", got, len(evs), len(keys), events, retries.Load())
	}
}
