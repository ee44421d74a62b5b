package client_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kvstore/kvstore/api/client"
	"github.com/kvstore/kvstore/node/nodetest"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// These tests run against real nodes (node/nodetest), which is why they
// live in the external test package: nodetest imports this package.

// pollUntil checks cond every 20ms until it holds, failing the test when
// ctx ends first.
func pollUntil(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-tick.C:
		}
	}
}

func newClient(t *testing.T, endpoints ...string) *client.Client {
	t.Helper()
	c, err := client.New(endpoints)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// ev is an event reduced to what the tests compare.
type ev struct {
	typ   kvstorev1.EventType
	key   string
	value string
	rev   int64
}

func (e ev) String() string {
	return fmt.Sprintf("%d %s %s=%s", e.rev, e.typ, e.key, e.value)
}

func evOf(e *kvstorev1.Event) ev {
	return ev{e.GetType(), string(e.GetKv().GetKey()), string(e.GetKv().GetValue()), e.GetKv().GetModRevision()}
}

// collect receives from w into a list until w ends, recording the node
// that served each response.
type collector struct {
	mu     sync.Mutex
	events []ev
	nodes  []string
	rev    int64
	err    error
	done   chan struct{}
}

func collect(w *client.Watcher) *collector {
	c := &collector{done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for w.Receive() {
			m := w.Msg()
			c.mu.Lock()
			for _, e := range m.GetEvents() {
				c.events = append(c.events, evOf(e))
			}
			if id := m.GetHeader().GetNodeId(); len(c.nodes) == 0 || c.nodes[len(c.nodes)-1] != id {
				c.nodes = append(c.nodes, id)
			}
			c.rev = w.Revision()
			c.mu.Unlock()
		}
		c.mu.Lock()
		c.err = w.Err()
		c.mu.Unlock()
	}()
	return c
}

func (c *collector) snapshot() ([]ev, []string, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.events), slices.Clone(c.nodes), c.rev
}

// TestWatchResumesAcrossNodeKill watches through a follower while a writer
// works through the other nodes, kills the follower mid-stream, and checks
// that the watcher, resumed on another node, got exactly the history: every
// event once, in revision order, the same as a replay of that history and
// the same as the writes made.
func TestWatchResumesAcrossNodeKill(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 120*time.Second)
	defer cancel()
	cl := nodetest.NewCluster(t, 3)
	leader := cl.Leader(ctx)
	var followers []*nodetest.Node
	for _, n := range cl.Nodes() {
		if n != leader {
			followers = append(followers, n)
		}
	}
	watched := followers[0]
	wc := newClient(t, watched.Addr(), followers[1].Addr(), leader.Addr())
	writer := newClient(t, followers[1].Addr(), leader.Addr())

	w := wc.Watch(ctx, &kvstorev1.WatchRequest{Key: []byte("w/"), Prefix: true})
	defer w.Close()
	if !w.Receive() {
		t.Fatalf("watch: %v", w.Err())
	}
	created := w.Msg()
	if !created.GetCreated() || created.GetHeader().GetNodeId() != watched.Name() {
		t.Fatalf("first response %v, want created by %s", created, watched.Name())
	}
	startRev := created.GetHeader().GetRevision()
	col := collect(w)

	// The writer: puts, deletes of existing keys, and two-put txns (two
	// events in one revision), one after the other, so the order of the
	// writes is the order of the revisions.
	const total = 300
	var wrote []ev
	exists := map[string]bool{}
	var lastRev int64
	// uncertain: the cluster could not tell whether the write applied
	// (its leader was deposed under it, as a loaded machine can make
	// happen).
	uncertain := func(err error) bool {
		return connect.CodeOf(err) == connect.CodeUnavailable && strings.Contains(err.Error(), "may or may not have been applied")
	}
	// settled reads key linearizably after an uncertain write, which by
	// then is applied or never will be: the key's kv, nil if not found.
	settled := func(key string) *kvstorev1.KeyValue {
		for {
			gctx, gcancel := context.WithTimeout(ctx, 10*time.Second)
			resp, err := writer.KV.Get(gctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte(key)}))
			gcancel()
			switch {
			case err == nil:
				return resp.Msg.GetKv()
			case connect.CodeOf(err) == connect.CodeNotFound:
				return nil
			}
			select {
			case <-ctx.Done():
				t.Fatalf("settle a write to %s: %v", key, err)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	// tryWrite makes write i; false: it was never applied, make it again.
	tryWrite := func(wctx context.Context, i int, key, val string) (done bool) {
		switch {
		case i%5 == 4 && exists[key]:
			resp, err := writer.KV.Delete(wctx, connect.NewRequest(&kvstorev1.DeleteRequest{Key: []byte(key)}))
			if uncertain(err) {
				if settled(key) != nil {
					return false // never applied: again
				}
				// Applied, at a revision the watch will tell.
				err, resp = nil, nil
			}
			if err != nil {
				t.Fatalf("write %d: %v", i, err)
			}
			delete(exists, key)
			if resp != nil {
				lastRev = resp.Msg.GetHeader().GetRevision()
			}
			wrote = append(wrote, ev{kvstorev1.EventType_EVENT_TYPE_DELETE, key, "", 0})
		case i%11 == 10:
			other := fmt.Sprintf("w/t%d", i%3)
			put := func(k string) *kvstorev1.RequestOp {
				return &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: []byte(k), Value: []byte(val)}}}
			}
			resp, err := writer.KV.Txn(wctx, connect.NewRequest(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{put(key), put(other)}}))
			if uncertain(err) {
				kv := settled(key)
				if string(kv.GetValue()) != val {
					return false
				}
				err, resp = nil, connect.NewResponse(&kvstorev1.TxnResponse{Header: &kvstorev1.ResponseHeader{Revision: kv.GetModRevision()}})
			}
			if err != nil {
				t.Fatalf("write %d: %v", i, err)
			}
			exists[key], exists[other] = true, true
			lastRev = resp.Msg.GetHeader().GetRevision()
			wrote = append(wrote, ev{kvstorev1.EventType_EVENT_TYPE_PUT, key, val, 0}, ev{kvstorev1.EventType_EVENT_TYPE_PUT, other, val, 0})
		default:
			resp, err := writer.KV.Put(wctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte(key), Value: []byte(val)}))
			if uncertain(err) {
				kv := settled(key)
				if string(kv.GetValue()) != val {
					return false
				}
				err, resp = nil, connect.NewResponse(&kvstorev1.PutResponse{Header: &kvstorev1.ResponseHeader{Revision: kv.GetModRevision()}})
			}
			if err != nil {
				t.Fatalf("write %d: %v", i, err)
			}
			exists[key] = true
			lastRev = resp.Msg.GetHeader().GetRevision()
			wrote = append(wrote, ev{kvstorev1.EventType_EVENT_TYPE_PUT, key, val, 0})
		}
		return true
	}
	write := func(i int) {
		key := fmt.Sprintf("w/k%d", i%7)
		val := strconv.Itoa(i)
		for {
			wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
			done := tryWrite(wctx, i, key, val)
			wcancel()
			if done {
				return
			}
		}
	}
	// Writes go on while the node dies: the kill happens from another
	// goroutine once the watcher has seen a third of them.
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			evs, _, _ := col.snapshot()
			if len(evs) >= total/3 {
				watched.Kill()
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	for i := range total {
		write(i)
	}
	// The last write a put, so that lastRev is its exact revision.
	write(total)
	<-killed
	if watched.Running() {
		t.Fatal("the watched node was never killed")
	}

	pollUntil(t, ctx, "the watcher to catch up", func() bool {
		_, _, rev := col.snapshot()
		return rev >= lastRev
	})
	got, nodes, _ := col.snapshot()
	if len(nodes) < 2 || nodes[0] != watched.Name() || slices.Contains(nodes[1:], watched.Name()) {
		t.Errorf("served by %v: want %s, then other nodes", nodes, watched.Name())
	}

	// Every event once, in revision order.
	for i := 1; i < len(got); i++ {
		if got[i].rev < got[i-1].rev || got[i] == got[i-1] {
			t.Fatalf("event %d (%v) after %v", i, got[i], got[i-1])
		}
	}
	// The same as the writes made.
	if len(got) != len(wrote) {
		t.Errorf("got %d events, wrote %d", len(got), len(wrote))
	}
	for i := range min(len(got), len(wrote)) {
		g := got[i]
		g.rev = 0
		if g != wrote[i] {
			t.Fatalf("event %d: got %v, wrote %v", i, got[i], wrote[i])
		}
	}
	// The same as the history replayed from a surviving node.
	rctx, rcancel := context.WithCancel(ctx)
	defer rcancel()
	replay := writer.Watch(rctx, &kvstorev1.WatchRequest{Key: []byte("w/"), Prefix: true, StartRevision: startRev + 1})
	defer replay.Close()
	var history []ev
	for (len(history) == 0 || history[len(history)-1].rev < lastRev) && replay.Receive() {
		for _, e := range replay.Msg().GetEvents() {
			history = append(history, evOf(e))
		}
	}
	if err := replay.Err(); err != nil {
		t.Fatalf("replay: %v", err)
	}
	if !slices.Equal(got, history) {
		t.Fatalf("watched events differ from the replayed history:\n got %v\nwant %v", got, history)
	}
}

// TestWatchCompacted checks that a watch from a compacted revision fails
// with a CompactedError naming the compacted revision, and does not retry.
func TestWatchCompacted(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cl := nodetest.NewCluster(t, 1)
	c := cl.Client()
	var revs []int64
	for i := range 5 {
		resp, err := c.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("c"), Value: []byte(strconv.Itoa(i))}))
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, resp.Msg.GetHeader().GetRevision())
	}
	if _, err := c.KV.Compact(ctx, connect.NewRequest(&kvstorev1.CompactRequest{Revision: revs[3]})); err != nil {
		t.Fatal(err)
	}
	w := c.Watch(ctx, &kvstorev1.WatchRequest{Key: []byte("c"), StartRevision: revs[1]})
	defer w.Close()
	if w.Receive() {
		t.Fatalf("watch below the compacted revision got %v", w.Msg())
	}
	var ce *client.CompactedError
	if !errors.As(w.Err(), &ce) || ce.CompactRevision != revs[3] || ce.StartRevision != revs[1] || connect.CodeOf(w.Err()) != connect.CodeOutOfRange {
		t.Fatalf("err %v (%T), want a CompactedError at %d from %d", w.Err(), w.Err(), revs[3], revs[1])
	}

	// From the compacted revision on, history is there.
	w2 := c.Watch(ctx, &kvstorev1.WatchRequest{Key: []byte("c"), StartRevision: revs[3]})
	defer w2.Close()
	var got []string
	for len(got) < 2 && w2.Receive() {
		for _, e := range w2.Msg().GetEvents() {
			got = append(got, string(e.GetKv().GetValue()))
		}
	}
	if !slices.Equal(got, []string{"3", "4"}) {
		t.Fatalf("replay from %d: %q (%v)", revs[3], got, w2.Err())
	}
}

// TestWatchProgressAndFilters checks progress responses and the put and
// delete filters through the Watcher.
func TestWatchProgressAndFilters(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cl := nodetest.NewCluster(t, 1)
	c := cl.Client()
	w := c.Watch(ctx, &kvstorev1.WatchRequest{Key: []byte("f"), NoPut: true, PrevKv: true})
	defer w.Close()
	if !w.Receive() || !w.Msg().GetCreated() {
		t.Fatalf("created: %v %v", w.Msg(), w.Err())
	}
	if _, err := c.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("f"), Value: []byte("v")})); err != nil {
		t.Fatal(err)
	}
	del, err := c.KV.Delete(ctx, connect.NewRequest(&kvstorev1.DeleteRequest{Key: []byte("f")}))
	if err != nil {
		t.Fatal(err)
	}
	if !w.Receive() {
		t.Fatal(w.Err())
	}
	evs := w.Msg().GetEvents()
	if len(evs) != 1 || evs[0].GetType() != kvstorev1.EventType_EVENT_TYPE_DELETE || string(evs[0].GetPrevKv().GetValue()) != "v" ||
		evs[0].GetKv().GetModRevision() != del.Msg.GetHeader().GetRevision() {
		t.Fatalf("events %v, want the delete at %d with its previous value", evs, del.Msg.GetHeader().GetRevision())
	}
	if w.Revision() != del.Msg.GetHeader().GetRevision() {
		t.Fatalf("Revision() %d, want %d", w.Revision(), del.Msg.GetHeader().GetRevision())
	}
}

// TestSessionKeepsLeaseAlive checks that a session outlives its TTL while
// kept alive, that an orphaned session's keys expire with the lease, and
// that Close revokes at once.
func TestSessionKeepsLeaseAlive(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cl := nodetest.NewCluster(t, 3)
	c := cl.Client()
	s, err := c.NewSession(ctx, client.WithSessionTTL(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("s/a"), Value: []byte("x"), Lease: s.Lease()})); err != nil {
		t.Fatal(err)
	}
	exists := func(key string) bool {
		resp, err := c.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte(key)}))
		if connect.CodeOf(err) == connect.CodeNotFound {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		return resp.Msg.GetKv() != nil
	}
	// Three TTLs: without keep-alives the key would be gone.
	until := time.Now().Add(6 * time.Second)
	for time.Now().Before(until) {
		if !exists("s/a") {
			t.Fatal("key of a kept-alive session expired")
		}
		select {
		case <-s.Done():
			t.Fatalf("session ended: %v", s.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	s.Orphan()
	if !errors.Is(s.Err(), client.ErrSessionClosed) {
		t.Fatalf("Err after Orphan: %v", s.Err())
	}
	pollUntil(t, ctx, "the orphaned lease to expire", func() bool { return !exists("s/a") })
	if err := c.KeepAlive(ctx, s.Lease(), nil); !errors.Is(err, client.ErrLeaseLost) {
		t.Fatalf("KeepAlive of an expired lease: %v, want ErrLeaseLost", err)
	}

	s2, err := c.NewSession(ctx, client.WithSessionTTL(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("s/b"), Lease: s2.Lease()})); err != nil {
		t.Fatal(err)
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if exists("s/b") {
		t.Fatal("key still there after Close revoked its lease")
	}
}

// TestSessionLostOnRevoke checks that a session notices its lease is gone.
func TestSessionLostOnRevoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cl := nodetest.NewCluster(t, 1)
	c := cl.Client()
	s, err := c.NewSession(ctx, client.WithSessionTTL(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := c.Lease.Revoke(ctx, connect.NewRequest(&kvstorev1.RevokeRequest{Id: s.Lease()})); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	case <-ctx.Done():
		t.Fatal("session did not end after its lease was revoked")
	}
	if !errors.Is(s.Err(), client.ErrLeaseLost) {
		t.Fatalf("Err %v, want ErrLeaseLost", s.Err())
	}
}

// counterKey is the key the lock tests increment.
const counterKey = "lock-test/counter"

// increment reads the counter and writes it back plus one, fenced by the
// mutex: the write happens only while m holds the lock. It reports whether
// the write happened.
func increment(ctx context.Context, c *client.Client, m *client.Mutex) (bool, error) {
	resp, err := c.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte(counterKey)}))
	var n int
	switch {
	case connect.CodeOf(err) == connect.CodeNotFound:
	case err != nil:
		return false, fmt.Errorf("get counter: %w", err)
	default:
		if n, err = strconv.Atoi(string(resp.Msg.GetKv().GetValue())); err != nil {
			return false, fmt.Errorf("counter %q: %w", resp.Msg.GetKv().GetValue(), err)
		}
	}
	txn, err := c.KV.Txn(ctx, connect.NewRequest(&kvstorev1.TxnRequest{
		Compare: []*kvstorev1.Compare{m.IsOwner()},
		Success: []*kvstorev1.RequestOp{{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{
			Key: []byte(counterKey), Value: []byte(strconv.Itoa(n + 1)),
		}}}},
	}))
	if err != nil {
		return false, fmt.Errorf("put counter: %w", err)
	}
	return txn.Msg.GetSucceeded(), nil
}

// contend takes the lock n times, incrementing the counter once each time.
func contend(ctx context.Context, s *client.Session, n int) error {
	m := client.NewMutex(s, "lock-test/lock")
	for i := range n {
		if err := m.Lock(ctx); err != nil {
			return fmt.Errorf("lock %d: %w", i, err)
		}
		ok, err := increment(ctx, s.Client(), m)
		if err != nil {
			return fmt.Errorf("increment %d: %w", i, err)
		}
		if !ok {
			return fmt.Errorf("increment %d: not the owner while holding the lock", i)
		}
		if err := m.Unlock(ctx); err != nil {
			return fmt.Errorf("unlock %d: %w", i, err)
		}
	}
	return nil
}

func readCounter(t *testing.T, ctx context.Context, c *client.Client) int {
	t.Helper()
	resp, err := c.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte(counterKey)}))
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(string(resp.Msg.GetKv().GetValue()))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestMutexCounter has 10 contenders, spread over the 3 nodes, each
// increment a shared counter 50 times under the lock with a read, then a
// write fenced by IsOwner. Any overlap of two holders would lose an
// increment (or fail a fenced write).
func TestMutexCounter(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 180*time.Second)
	defer cancel()
	cl := nodetest.NewCluster(t, 3)
	nodes := cl.Nodes()
	const contenders, each = 10, 50
	errs := make(chan error, contenders)
	for i := range contenders {
		c := nodes[i%len(nodes)].Client()
		go func() {
			s, err := c.NewSession(ctx, client.WithSessionTTL(10*time.Second))
			if err != nil {
				errs <- err
				return
			}
			defer s.Close()
			errs <- contend(ctx, s, each)
		}()
	}
	for range contenders {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if n := readCounter(t, ctx, cl.Client()); n != contenders*each {
		t.Fatalf("counter %d, want %d", n, contenders*each)
	}
}

// TestMutexHolderDies is TestMutexCounter where one contender dies while
// it holds the lock: its keep-alives stop and it never unlocks or revokes,
// so only the expiry of its lease frees the lock. A replacement does its
// remaining increments. The dead holder's late write, fenced by IsOwner,
// must fail.
func TestMutexHolderDies(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 180*time.Second)
	defer cancel()
	cl := nodetest.NewCluster(t, 3)
	nodes := cl.Nodes()
	const contenders, each, diesAfter = 10, 50, 20
	errs := make(chan error, contenders+1)
	for i := range contenders - 1 {
		c := nodes[i%len(nodes)].Client()
		go func() {
			s, err := c.NewSession(ctx, client.WithSessionTTL(10*time.Second))
			if err != nil {
				errs <- err
				return
			}
			defer s.Close()
			errs <- contend(ctx, s, each)
		}()
	}

	// The one that dies: diesAfter increments, then it takes the lock once
	// more and dies holding it.
	c := nodes[(contenders-1)%len(nodes)].Client()
	s, err := c.NewSession(ctx, client.WithSessionTTL(4*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := contend(ctx, s, diesAfter); err != nil {
		t.Fatal(err)
	}
	m := client.NewMutex(s, "lock-test/lock")
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	s.Orphan() // dead: no unlock, no revoke, no keep-alive
	died := time.Now()

	// Its replacement, on another node.
	go func() {
		rc := nodes[contenders%len(nodes)].Client()
		rs, err := rc.NewSession(ctx, client.WithSessionTTL(10*time.Second))
		if err != nil {
			errs <- err
			return
		}
		defer rs.Close()
		errs <- contend(ctx, rs, each-diesAfter)
	}()

	// Once its key is gone (the lease expired), the dead holder's fenced
	// write must not go through.
	pollUntil(t, ctx, "the dead holder's key to expire", func() bool {
		resp, err := c.KV.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte(m.Key()), CountOnly: true}))
		return err == nil && resp.Msg.GetCount() == 0
	})
	if time.Since(died) < 2*time.Second {
		t.Errorf("the dead holder's key went %v after it died, before its 4s TTL", time.Since(died))
	}
	if ok, err := increment(ctx, c, m); err != nil || ok {
		t.Fatalf("the dead holder's fenced write: succeeded %v, err %v", ok, err)
	}

	for range contenders {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if n := readCounter(t, ctx, cl.Client()); n != contenders*each {
		t.Fatalf("counter %d, want %d", n, contenders*each)
	}
}

// TestMutexLockCancelled checks that a Lock given up by its context leaves
// no key behind, and that a waiter gets the lock when the holder unlocks.
func TestMutexLockCancelled(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cl := nodetest.NewCluster(t, 1)
	c := cl.Client()
	newSession := func() *client.Session {
		s, err := c.NewSession(ctx, client.WithSessionTTL(10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	holder := client.NewMutex(newSession(), "cancel/lock")
	if err := holder.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	waiter := client.NewMutex(newSession(), "cancel/lock")
	wctx, wcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer wcancel()
	if err := waiter.Lock(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock with a short deadline: %v", err)
	}
	resp, err := c.KV.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte("cancel/lock/"), Prefix: true, KeysOnly: true}))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Msg.GetKvs()) != 1 || string(resp.Msg.GetKvs()[0].GetKey()) != holder.Key() {
		t.Fatalf("keys under the lock %v, want only the holder's %s", resp.Msg.GetKvs(), holder.Key())
	}

	got := make(chan error, 1)
	go func() { got <- waiter.Lock(ctx) }()
	// Wait until the waiter has queued, then release.
	pollUntil(t, ctx, "the waiter to queue", func() bool {
		resp, err := c.KV.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte("cancel/lock/"), Prefix: true, CountOnly: true}))
		return err == nil && resp.Msg.GetCount() == 2
	})
	select {
	case err := <-got:
		t.Fatalf("Lock returned %v while the lock was held", err)
	default:
	}
	if err := holder.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
}

// TestWatchProgressWhileFilteredOut: a watch whose filter leaves out every
// change still gets its progress messages while those changes keep coming.
func TestWatchProgressWhileFilteredOut(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cl := nodetest.NewCluster(t, 1)
	c := cl.Client()
	first, err := c.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("p"), Value: []byte("0")}))
	if err != nil {
		t.Fatal(err)
	}
	w := c.Watch(ctx, &kvstorev1.WatchRequest{Key: []byte("p"), NoPut: true, ProgressInterval: durationpb.New(200 * time.Millisecond)})
	defer w.Close()
	if !w.Receive() || !w.Msg().GetCreated() {
		t.Fatalf("created: %v %v", w.Msg(), w.Err())
	}
	// Puts, which the watch filters out, until a progress message past
	// them arrives.
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() {
		for wctx.Err() == nil {
			if _, err := c.KV.Put(wctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("p"), Value: []byte("x")})); err != nil && wctx.Err() == nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for w.Receive() {
		if len(w.Msg().GetEvents()) > 0 {
			t.Fatalf("a filtered-out put came through: %v", w.Msg())
		}
		if w.Msg().GetHeader().GetRevision() > first.Msg.GetHeader().GetRevision() {
			break // progress past the puts, while they go on
		}
	}
	if w.Err() != nil {
		t.Fatalf("watch: %v", w.Err())
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("writer: %v", err)
	}
}
