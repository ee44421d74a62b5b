package compat

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/kvstore/kvstore/node/nodetest"
)

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// newClient is an etcd client over every running node of c.
func newClient(t *testing.T, c *nodetest.Cluster) *clientv3.Client {
	t.Helper()
	cl, err := clientv3.New(clientv3.Config{
		Endpoints:   c.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func cluster(t *testing.T, n int) (*nodetest.Cluster, context.Context) {
	ctx := testCtx(t, 3*time.Minute)
	c := nodetest.NewCluster(t, n)
	c.Leader(ctx)
	if err := c.WaitMembers(ctx, n); err != nil {
		t.Fatal(err)
	}
	return c, ctx
}

// retry runs f until it succeeds or ctx ends: requests fail while a killed
// node's clients move to another and a new leader is elected.
func retry(ctx context.Context, f func(ctx context.Context) error) error {
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := f(cctx)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Ten contenders on three nodes increment one counter under a Mutex; the
// leader is killed half-way. Every increment is counted exactly once.
func TestMutexExactCount(t *testing.T) {
	const contenders, each = 10, 5
	c, ctx := cluster(t, 3)
	var done atomic.Int64
	killed := make(chan struct{})
	go func() {
		for done.Load() < contenders*each/2 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
		c.Leader(ctx).Kill()
		close(killed)
	}()
	var wg sync.WaitGroup
	errs := make(chan error, contenders)
	for i := range contenders {
		cl := newClient(t, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- contend(ctx, cl, i, each, &done)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	<-killed
	cl := newClient(t, c)
	var resp *clientv3.GetResponse
	if err := retry(ctx, func(ctx context.Context) (err error) { resp, err = cl.Get(ctx, "counter"); return err }); err != nil {
		t.Fatal(err)
	}
	if got := string(resp.Kvs[0].Value); got != strconv.Itoa(contenders*each) {
		t.Fatalf("counter %s, want %d", got, contenders*each)
	}
}

func contend(ctx context.Context, cl *clientv3.Client, id, n int, done *atomic.Int64) error {
	s, err := concurrency.NewSession(cl, concurrency.WithTTL(15), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("contender %d: session: %w", id, err)
	}
	defer s.Close()
	m := concurrency.NewMutex(s, "/lock")
	for range n {
		if err := retry(ctx, m.Lock); err != nil {
			return fmt.Errorf("contender %d: lock: %w", id, err)
		}
		if err := increment(ctx, cl, m); err != nil {
			return fmt.Errorf("contender %d: %w", id, err)
		}
		if err := retry(ctx, m.Unlock); err != nil {
			return fmt.Errorf("contender %d: unlock: %w", id, err)
		}
		done.Add(1)
	}
	return nil
}

// increment adds one to the counter while m is held: a txn on the
// counter's mod revision and on owning the lock. A txn whose outcome is
// unknown (its node was killed) is checked by reading again: only the
// lock's owner writes the counter.
func increment(ctx context.Context, cl *clientv3.Client, m *concurrency.Mutex) error {
	var read *clientv3.GetResponse
	if err := retry(ctx, func(ctx context.Context) (err error) { read, err = cl.Get(ctx, "counter"); return err }); err != nil {
		return err
	}
	v, rev := 0, int64(0)
	if len(read.Kvs) == 1 {
		v, _ = strconv.Atoi(string(read.Kvs[0].Value))
		rev = read.Kvs[0].ModRevision
	}
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := cl.Txn(cctx).If(m.IsOwner(), clientv3.Compare(clientv3.ModRevision("counter"), "=", rev)).
			Then(clientv3.OpPut("counter", strconv.Itoa(v+1))).Commit()
		cancel()
		if err == nil {
			if !resp.Succeeded {
				return errors.New("increment: lost the lock or the counter moved under it")
			}
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		var now *clientv3.GetResponse
		if err := retry(ctx, func(ctx context.Context) (err error) { now, err = cl.Get(ctx, "counter"); return err }); err != nil {
			return err
		}
		if len(now.Kvs) == 1 && now.Kvs[0].ModRevision != rev {
			return nil // the txn was applied
		}
	}
}

func TestElection(t *testing.T) {
	c, ctx := cluster(t, 3)
	var sessions []*concurrency.Session
	for range 3 {
		s, err := concurrency.NewSession(newClient(t, c), concurrency.WithTTL(10))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		sessions = append(sessions, s)
	}
	obs := concurrency.NewElection(sessions[0], "/elect").Observe(ctx)
	leaders := make(chan int, 3)
	elections := make([]*concurrency.Election, 3)
	for i, s := range sessions {
		elections[i] = concurrency.NewElection(s, "/elect")
		go func() {
			if err := elections[i].Campaign(ctx, fmt.Sprintf("v%d", i)); err == nil {
				leaders <- i
			}
		}()
	}
	seen := map[int]bool{}
	for range 3 {
		var l int
		select {
		case l = <-leaders:
		case <-ctx.Done():
			t.Fatal("no leader elected")
		}
		if seen[l] {
			t.Fatalf("%d elected twice", l)
		}
		seen[l] = true
		// Only one leader at a time: the others still wait.
		select {
		case other := <-leaders:
			t.Fatalf("%d and %d lead together", l, other)
		case <-time.After(200 * time.Millisecond):
		}
		for {
			resp, ok := <-obs
			if !ok {
				t.Fatal("observe ended")
			}
			if string(resp.Kvs[0].Value) == fmt.Sprintf("v%d", l) {
				break
			}
		}
		if err := elections[l].Resign(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// STM transfers between accounts from several clients keep the total.
func TestSTM(t *testing.T) {
	const accounts, clients, transfers = 5, 4, 15
	c, ctx := cluster(t, 3)
	cl := newClient(t, c)
	for i := range accounts {
		if _, err := cl.Put(ctx, fmt.Sprintf("acct%d", i), "100"); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for w := range clients {
		cl := newClient(t, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range transfers {
				from, to := fmt.Sprintf("acct%d", (w+i)%accounts), fmt.Sprintf("acct%d", (w+2*i+1)%accounts)
				if from == to {
					continue
				}
				_, err := concurrency.NewSTM(cl, func(stm concurrency.STM) error {
					a, _ := strconv.Atoi(stm.Get(from))
					b, _ := strconv.Atoi(stm.Get(to))
					stm.Put(from, strconv.Itoa(a-7))
					stm.Put(to, strconv.Itoa(b+7))
					return nil
				}, concurrency.WithAbortContext(ctx), concurrency.WithIsolation(concurrency.Serializable))
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	resp, err := cl.Get(ctx, "acct", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, kv := range resp.Kvs {
		n, _ := strconv.Atoi(string(kv.Value))
		total += n
	}
	if total != accounts*100 {
		t.Fatalf("total %d, want %d", total, accounts*100)
	}
}

// The keep-alive channel keeps a lease alive past its TTL, and once the
// client stops, the lease expires and takes its key.
func TestLeaseKeepAlive(t *testing.T) {
	c, ctx := cluster(t, 3)
	cl := newClient(t, c)
	g, err := cl.Grant(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Put(ctx, "leased", "v", clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	kctx, stop := context.WithCancel(ctx)
	ch, err := cl.KeepAlive(kctx, g.ID)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(7 * time.Second) // more than twice the TTL
	n := 0
	for time.Now().Before(deadline) {
		select {
		case resp, ok := <-ch:
			if !ok {
				t.Fatal("keep-alive channel closed")
			}
			if resp.ID != g.ID || resp.TTL <= 0 {
				t.Fatalf("%v", resp)
			}
			n++
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
	if n < 2 {
		t.Fatalf("%d keep-alives", n)
	}
	if resp, err := cl.Get(ctx, "leased"); err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("%v %v", resp, err)
	}
	stop()
	for {
		ttl, err := cl.TimeToLive(ctx, g.ID)
		if err != nil {
			t.Fatal(err)
		}
		if ttl.TTL == -1 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the lease never expired")
		case <-time.After(200 * time.Millisecond):
		}
	}
	if resp, err := cl.Get(ctx, "leased"); err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("%v %v", resp, err)
	}
	if _, err := cl.Revoke(ctx, g.ID); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Fatalf("revoke of an expired lease: %v", err)
	}
}

// A watch resumes across the kill of the node it was on, missing no
// revision and repeating none; a watch from a compacted revision gets
// ErrCompacted.
func TestWatchResumesAndCompaction(t *testing.T) {
	c, ctx := cluster(t, 3)
	cl := newClient(t, c)
	first, err := cl.Put(ctx, "w", "0")
	if err != nil {
		t.Fatal(err)
	}
	wch := cl.Watch(clientv3.WithRequireLeader(ctx), "w", clientv3.WithRev(first.Header.Revision+1))
	const writes = 30
	writer := newClient(t, c)
	go func() {
		for i := 1; i <= writes; i++ {
			if i == writes/2 {
				c.Leader(ctx).Kill()
			}
			_ = retry(ctx, func(ctx context.Context) error {
				_, err := writer.Put(ctx, "w", strconv.Itoa(i))
				return err
			})
		}
	}()
	// Puts retried after an unknown outcome may repeat a value: what must
	// hold is that revisions strictly increase and the last value comes.
	var last int64
	for got := ""; got != strconv.Itoa(writes); {
		select {
		case resp, ok := <-wch:
			if !ok {
				t.Fatal("watch channel closed")
			}
			if err := resp.Err(); err != nil {
				// WithRequireLeader cancels on a lost leader; resume.
				wch = cl.Watch(clientv3.WithRequireLeader(ctx), "w", clientv3.WithRev(last+1))
				continue
			}
			for _, ev := range resp.Events {
				if ev.Kv.ModRevision <= last {
					t.Fatalf("revision %d after %d", ev.Kv.ModRevision, last)
				}
				last, got = ev.Kv.ModRevision, string(ev.Kv.Value)
			}
		case <-ctx.Done():
			t.Fatalf("watch stopped at revision %d", last)
		}
	}

	if _, err := cl.Compact(ctx, last); err != nil {
		t.Fatal(err)
	}
	// The compaction is applied by each member on its own; the member a
	// request reaches may not have yet.
	for {
		wctx, cancel := context.WithCancel(ctx)
		resp := <-cl.Watch(wctx, "w", clientv3.WithRev(first.Header.Revision))
		cancel()
		if resp.CompactRevision == last && errors.Is(resp.Err(), rpctypes.ErrCompacted) {
			break
		}
		if len(resp.Events) == 0 || ctx.Err() != nil {
			t.Fatalf("watch below the compaction: %+v, %v", resp, resp.Err())
		}
	}
	_, err = cl.Get(ctx, "w", clientv3.WithRev(first.Header.Revision))
	if !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("get below the compaction: %v", err)
	}
}
