package nodetest_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/node"
	"github.com/kvstore/kvstore/node/nodetest"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

func put(ctx context.Context, kv kvstorev1connect.KVServiceClient, k, v string) (*kvstorev1.PutResponse, error) {
	resp, err := kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte(k), Value: []byte(v)}))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

func get(ctx context.Context, kv kvstorev1connect.KVServiceClient, k string, c kvstorev1.Consistency) (*kvstorev1.GetResponse, error) {
	resp, err := kv.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte(k), Consistency: c}))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

func members(t *testing.T, ctx context.Context, nd *nodetest.Node) []*kvstorev1.Member {
	t.Helper()
	resp, err := nd.Client().Cluster.Members(ctx, connect.NewRequest(&kvstorev1.MembersRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	return resp.Msg.GetMembers()
}

func voters(ms []*kvstorev1.Member) (v, nv int, leaders int) {
	for _, m := range ms {
		if m.GetSuffrage() == kvstorev1.Suffrage_SUFFRAGE_VOTER {
			v++
		} else {
			nv++
		}
		if m.GetLeader() {
			leaders++
		}
	}
	return
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// plainAndTLS runs f as two subtests: "plaintext", and "tls" with the
// cluster started WithTLS, where everything between nodes (raft, gossip
// streams, forwarded writes, read index, snapshots) goes over TLS with
// peer certificates, and clients show client certificates. For the tests
// of paths between nodes.
func plainAndTLS(t *testing.T, f func(t *testing.T, opts ...nodetest.Option)) {
	t.Run("plaintext", func(t *testing.T) { f(t) })
	t.Run("tls", func(t *testing.T) { f(t, nodetest.WithTLS()) })
}

func TestThreeNodesFormOneCluster(t *testing.T) {
	ctx := testCtx(t, 90*time.Second)
	c := nodetest.NewCluster(t, 3)
	for _, nd := range c.Nodes() {
		v, nv, leaders := voters(members(t, ctx, nd))
		if v != 3 || nv != 0 || leaders != 1 {
			t.Fatalf("%s sees %d voters, %d non-voters, %d leaders; want 3, 0, 1", nd.Name(), v, nv, leaders)
		}
	}
}

// TestAnyNodeTakesAnyRequest writes through every node, followers included,
// and reads each write back linearizably on every other node at once.
func TestAnyNodeTakesAnyRequest(t *testing.T) { plainAndTLS(t, testAnyNodeTakesAnyRequest) }

func testAnyNodeTakesAnyRequest(t *testing.T, opts ...nodetest.Option) {
	ctx := testCtx(t, 90*time.Second)
	c := nodetest.NewCluster(t, 3, opts...)
	leader := c.Leader(ctx)
	for i, w := range c.Nodes() {
		key := fmt.Sprintf("k%d", i)
		resp, err := put(ctx, w.Client().KV, key, w.Name())
		if err != nil {
			t.Fatalf("put through %s: %v", w.Name(), err)
		}
		if resp.GetHeader().GetNodeId() != leader.Name() {
			t.Errorf("put through %s was served by %s, want the leader %s", w.Name(), resp.GetHeader().GetNodeId(), leader.Name())
		}
		for _, r := range c.Nodes() {
			got, err := get(ctx, r.Client().KV, key, kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
			if err != nil {
				t.Fatalf("linearizable get of %s on %s: %v", key, r.Name(), err)
			}
			if string(got.GetKv().GetValue()) != w.Name() || got.GetHeader().GetNodeId() != r.Name() {
				t.Fatalf("get of %s on %s: %v", key, r.Name(), got)
			}
		}
	}
}

// TestFollowerForwardsManyWrites sends many writes at once through each
// follower: they go to the leader in shared batches, and each gets its own
// answer (revision, previous value, error) back.
func TestFollowerForwardsManyWrites(t *testing.T) { plainAndTLS(t, testFollowerForwardsManyWrites) }

func testFollowerForwardsManyWrites(t *testing.T, opts ...nodetest.Option) {
	ctx := testCtx(t, 90*time.Second)
	c := nodetest.NewCluster(t, 3, opts...)
	leader := c.Leader(ctx)
	for _, w := range c.Nodes() {
		if w.Name() == leader.Name() {
			continue
		}
		const n = 100
		revs := make([]int64, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				resp, err := put(ctx, w.Client().KV, fmt.Sprintf("%s/%d", w.Name(), i), strconv.Itoa(i))
				if err != nil {
					errs[i] = err
					return
				}
				if resp.GetHeader().GetNodeId() != leader.Name() {
					errs[i] = fmt.Errorf("served by %s, want the leader %s", resp.GetHeader().GetNodeId(), leader.Name())
				}
				revs[i] = resp.GetHeader().GetRevision()
			})
		}
		wg.Wait()
		seen := map[int64]bool{}
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("put %d through %s: %v", i, w.Name(), errs[i])
			}
			if seen[revs[i]] {
				t.Fatalf("put %d through %s: revision %d answered twice", i, w.Name(), revs[i])
			}
			seen[revs[i]] = true
			got, err := get(ctx, w.Client().KV, fmt.Sprintf("%s/%d", w.Name(), i), kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
			if err != nil || string(got.GetKv().GetValue()) != strconv.Itoa(i) || got.GetKv().GetModRevision() != revs[i] {
				t.Fatalf("get %d through %s: %v, %v; want value %d at revision %d", i, w.Name(), got, err, i, revs[i])
			}
		}
		// A put wanting the previous value goes alone, and gets it.
		resp, err := w.Client().KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte(w.Name() + "/0"), Value: []byte("x"), PrevKv: true}))
		if err != nil || string(resp.Msg.GetPrevKv().GetValue()) != "0" {
			t.Fatalf("put with prev_kv through %s: %v, %v", w.Name(), resp, err)
		}
		// A failed compare-and-swap through a follower keeps its answer.
		txn, err := w.Client().KV.Txn(ctx, connect.NewRequest(&kvstorev1.TxnRequest{
			Compare: []*kvstorev1.Compare{{Key: []byte(w.Name() + "/1"), Result: kvstorev1.CompareResult_COMPARE_RESULT_EQUAL, Target: &kvstorev1.Compare_Value{Value: []byte("nope")}}},
		}))
		if err != nil || txn.Msg.GetSucceeded() {
			t.Fatalf("txn through %s: %v, %v", w.Name(), txn, err)
		}
	}
}

// TestKillLeader kills the leader: a new one is elected, writes go on, and
// every acknowledged write is still there.
// TestWriteThroughFollowerRightAfterLeaderKill: a write sent to a
// follower at once after the leader died waits for the next leader rather
// than failing, with one try and no retry by the caller: the follower's
// forward to the dead leader cannot even dial, so it never reached it.
func TestWriteThroughFollowerRightAfterLeaderKill(t *testing.T) {
	plainAndTLS(t, testWriteThroughFollowerRightAfterLeaderKill)
}

func testWriteThroughFollowerRightAfterLeaderKill(t *testing.T, opts ...nodetest.Option) {
	ctx := testCtx(t, 60*time.Second)
	c := nodetest.NewCluster(t, 3, opts...)
	old := c.Leader(ctx)
	var follower *nodetest.Node
	for _, nd := range c.Nodes() {
		if nd != old {
			follower = nd
		}
	}
	if _, err := put(ctx, follower.Client().KV, "before", "1"); err != nil {
		t.Fatal(err)
	}
	old.Kill()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := put(wctx, follower.Client().KV, "after", "1")
	if err != nil {
		t.Fatalf("put through a follower right after the leader died: %v", err)
	}
	got, err := get(ctx, follower.Client().KV, "after", kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
	if err != nil || got.GetKv().GetModRevision() != resp.GetHeader().GetRevision() {
		t.Fatalf("after = %v, %v; want the put at revision %d", got, err, resp.GetHeader().GetRevision())
	}
}

// TestStopWithForwardStreamsOpen: nodes stop gracefully while the
// followers' forward streams to the leader are open (they close only
// after 30 s without writes): stopping the leader and then the others
// ends those streams instead of waiting for them.
func TestStopWithForwardStreamsOpen(t *testing.T) {
	ctx := testCtx(t, 90*time.Second)
	c := nodetest.NewCluster(t, 3)
	leader := c.Leader(ctx)
	for _, nd := range c.Nodes() {
		if nd != leader {
			if _, err := put(ctx, nd.Client().KV, "via/"+nd.Name(), "1"); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, nd := range append([]*nodetest.Node{leader}, c.Nodes()...) {
		if !nd.Running() {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err := nd.Stop(sctx)
		cancel()
		if err != nil {
			t.Fatalf("stop %s: %v", nd.Name(), err)
		}
	}
}

func TestKillLeader(t *testing.T) { plainAndTLS(t, testKillLeader) }

func testKillLeader(t *testing.T, opts ...nodetest.Option) {
	ctx := testCtx(t, 120*time.Second)
	c := nodetest.NewCluster(t, 3, opts...)
	kv := c.Client().KV
	var acked []string
	for i := range 50 {
		k := fmt.Sprintf("a%d", i)
		if _, err := put(ctx, kv, k, k); err != nil {
			t.Fatal(err)
		}
		acked = append(acked, k)
	}
	old := c.Leader(ctx)
	old.Kill()
	leader := c.Leader(ctx)
	if leader == old {
		t.Fatal("the killed node is still leader")
	}
	kv = c.Client().KV
	for i := range 50 {
		k := fmt.Sprintf("b%d", i)
		if _, err := put(ctx, kv, k, k); err != nil {
			t.Fatalf("put after the leader died: %v", err)
		}
		acked = append(acked, k)
	}
	for _, nd := range c.Running() {
		for _, k := range acked {
			got, err := get(ctx, nd.Client().KV, k, kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
			if err != nil || string(got.GetKv().GetValue()) != k {
				t.Fatalf("%s lost acknowledged key %s: %v %v", nd.Name(), k, got, err)
			}
		}
	}
	// The old leader comes back and catches up.
	if err := old.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitMembers(ctx, 3); err != nil {
		t.Fatal(err)
	}
	last := acked[len(acked)-1]
	if _, err := get(ctx, old.Client().KV, last, kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE); err != nil {
		t.Fatalf("restarted node: %v", err)
	}
}

// TestJoinOneByOne grows a cluster from one node through one seed; with
// MaxVoters 5, the sixth and seventh stay non-voters and serve reads.
func TestJoinOneByOne(t *testing.T) {
	if testing.Short() {
		t.Skip("seven nodes")
	}
	ctx := testCtx(t, 180*time.Second)
	c := nodetest.NewCluster(t, 1, nodetest.WithConfig(func(_ string, cfg *node.Config) { cfg.MaxVoters = 5 }))
	for i := 2; i <= 7; i++ {
		c.Add(ctx)
		if err := c.WaitMembers(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	leader := c.Leader(ctx)
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, nv, _ := voters(members(t, ctx, leader))
		if v == 5 && nv == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d voters and %d non-voters, want 5 and 2", v, nv)
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if _, err := put(ctx, leader.Client().KV, "x", "y"); err != nil {
		t.Fatal(err)
	}
	for _, nd := range c.Nodes() {
		got, err := get(ctx, nd.Client().KV, "x", kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
		if err != nil || string(got.GetKv().GetValue()) != "y" {
			t.Fatalf("%s: %v %v", nd.Name(), got, err)
		}
	}
}

// TestPartition cuts one node off: it can neither write nor serve
// linearizable reads (Unavailable within the deadline), the majority goes
// on, and after healing every node converges.
func TestPartition(t *testing.T) {
	ctx := testCtx(t, 120*time.Second)
	c := nodetest.NewCluster(t, 3)
	leader := c.Leader(ctx)
	var lone *nodetest.Node
	var rest []string
	for _, nd := range c.Nodes() {
		if nd == leader || lone != nil {
			rest = append(rest, nd.Name())
		} else {
			lone = nd
		}
	}
	if _, err := put(ctx, leader.Client().KV, "before", "1"); err != nil {
		t.Fatal(err)
	}
	// A commit needs only a majority: wait until the lone node has it too.
	if err := pollUntil(ctx, func() error {
		_, err := get(ctx, lone.Client().KV, "before", kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	c.Partition([]string{lone.Name()}, rest)

	short, cancel := context.WithTimeout(ctx, 3*time.Second)
	_, err := put(short, lone.Client().KV, "minority", "1")
	cancel()
	if code := connect.CodeOf(err); code != connect.CodeUnavailable && code != connect.CodeDeadlineExceeded {
		t.Fatalf("write on the minority: %v, want unavailable", err)
	}
	short, cancel = context.WithTimeout(ctx, 3*time.Second)
	_, err = get(short, lone.Client().KV, "before", kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
	cancel()
	if code := connect.CodeOf(err); code != connect.CodeUnavailable && code != connect.CodeDeadlineExceeded {
		t.Fatalf("linearizable read on the minority: %v, want unavailable", err)
	}
	// A serializable read is still served, from local state.
	if got, err := get(ctx, lone.Client().KV, "before", kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE); err != nil || string(got.GetKv().GetValue()) != "1" {
		t.Fatalf("serializable read on the minority: %v %v", got, err)
	}
	if _, err := put(ctx, leader.Client().KV, "majority", "1"); err != nil {
		t.Fatalf("write on the majority: %v", err)
	}

	c.Heal()
	if err := pollUntil(ctx, func() error {
		_, err := get(ctx, lone.Client().KV, "majority", kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
		return err
	}); err != nil {
		t.Fatalf("after healing: %v", err)
	}
	if _, err := get(ctx, lone.Client().KV, "minority", kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("the minority's write must not exist: %v", err)
	}
}

// TestGracefulLeave stops a follower with a leave: it is removed from raft
// at once and the cluster keeps serving.
func TestGracefulLeave(t *testing.T) {
	ctx := testCtx(t, 120*time.Second)
	c := nodetest.NewCluster(t, 3)
	leader := c.Leader(ctx)
	follower := c.Other(leader)
	if err := follower.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitMembers(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := put(ctx, leader.Client().KV, "k", "v"); err != nil {
		t.Fatal(err)
	}
	// The leader leaves too: it hands over first.
	if err := leader.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	last := c.Running()
	if len(last) != 1 {
		t.Fatalf("%d nodes running", len(last))
	}
	if ids := last[0].Node().RaftMembers(); !slices.Equal(ids, []string{last[0].Name()}) {
		t.Fatalf("members after two leaves: %v", ids)
	}
	if got, err := get(ctx, last[0].Client().KV, "k", kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE); err != nil || string(got.GetKv().GetValue()) != "v" {
		t.Fatalf("%v %v", got, err)
	}
}

// TestDeadMemberRemoved: a killed node is removed after DeadAfter; with two
// of three dead, nothing is removed and the survivor serves neither writes
// nor linearizable reads.
func TestDeadMemberRemoved(t *testing.T) {
	ctx := testCtx(t, 120*time.Second)
	c := nodetest.NewCluster(t, 5, nodetest.WithConfig(func(_ string, cfg *node.Config) { cfg.DeadAfter = 2 * time.Second }))
	leader := c.Leader(ctx)
	victim := c.Other(leader)
	victim.Kill()
	if err := c.WaitMembers(ctx, 4); err != nil {
		t.Fatalf("dead member not removed: %v", err)
	}
}

func TestNoRemovalBelowQuorum(t *testing.T) {
	ctx := testCtx(t, 120*time.Second)
	c := nodetest.NewCluster(t, 3, nodetest.WithConfig(func(_ string, cfg *node.Config) { cfg.DeadAfter = time.Second }))
	leader := c.Leader(ctx)
	var survivor *nodetest.Node
	for _, nd := range c.Nodes() {
		if nd != leader && survivor == nil {
			survivor = nd
			continue
		}
		nd.Kill()
	}
	// Give the removal every chance: three times DeadAfter.
	wait, cancel := context.WithTimeout(ctx, 3*time.Second)
	<-wait.Done()
	cancel()
	if ids := survivor.Node().RaftMembers(); len(ids) != 3 {
		t.Fatalf("members changed without a quorum: %v", ids)
	}
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := put(short, survivor.Client().KV, "k", "v"); err == nil {
		t.Fatal("a lone survivor of three accepted a write")
	}
	if _, err := get(short, survivor.Client().KV, "k", kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE); err == nil {
		t.Fatal("a lone survivor of three served a linearizable read")
	}
}

func pollUntil(ctx context.Context, f func() error) error {
	var err error
	for {
		if err = f(); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestFiveNodesFormOneCluster(t *testing.T) {
	ctx := testCtx(t, 90*time.Second)
	c := nodetest.NewCluster(t, 5)
	for _, nd := range c.Nodes() {
		v, nv, leaders := voters(members(t, ctx, nd))
		if v != 5 || nv != 0 || leaders != 1 {
			t.Fatalf("%s sees %d voters, %d non-voters, %d leaders; want 5, 0, 1", nd.Name(), v, nv, leaders)
		}
	}
}

// writeMany puts n keys with prefix through kv from 32 concurrent loops.
func writeMany(ctx context.Context, kv kvstorev1connect.KVServiceClient, prefix string, n int) error {
	errs := make(chan error, 32)
	next := make(chan int)
	go func() {
		defer close(next)
		for i := range n {
			select {
			case next <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	for range 32 {
		go func() {
			for i := range next {
				// The same put again is harmless, so a put whose outcome is
				// unknown (the leader changed under load) is retried.
				if err := pollUntil(ctx, func() error {
					_, err := put(ctx, kv, fmt.Sprintf("%s%06d", prefix, i), "v")
					return err
				}); err != nil {
					errs <- err
					for range next {
					}
					return
				}
			}
			errs <- nil
		}()
	}
	var first error
	for range 32 {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// TestFollowerCatchesUpFromSnapshot kills a follower, writes 20,000 keys
// while the log is snapshotted and truncated past what it has, restarts it:
// it must install a snapshot and then serve every key. Then a new node
// joins, and must catch up by a snapshot too.
func TestFollowerCatchesUpFromSnapshot(t *testing.T) {
	plainAndTLS(t, testFollowerCatchesUpFromSnapshot)
}

func testFollowerCatchesUpFromSnapshot(t *testing.T, opts ...nodetest.Option) {
	ctx := testCtx(t, 180*time.Second)
	c := nodetest.NewCluster(t, 3, append(opts, nodetest.WithConfig(func(_ string, cfg *node.Config) {
		cfg.SnapshotThreshold = 2048
		cfg.SnapshotInterval = 200 * time.Millisecond
		cfg.TrailingLogs = 512
	}))...)
	// 20,000 keys without TLS; with it, where only the transport
	// differs, fewer keep the run short (the snapshot is forced all the
	// same: the log keeps 512 entries past one every 2,048).
	keys := 20000
	if c.PKI() != nil {
		keys = 6000
	}
	leader := c.Leader(ctx)
	follower := c.Other(leader)
	follower.Kill()
	if err := writeMany(ctx, leader.Client().KV, "s", keys); err != nil {
		t.Fatal(err)
	}
	if err := pollUntil(ctx, func() error {
		if leader.Node().RaftStats()["last_snapshot_index"] == "0" {
			return errors.New("the leader has not snapshotted yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := follower.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	caughtUp := func(nd *nodetest.Node, what string) {
		t.Helper()
		kv := nd.Client().KV
		if err := pollUntil(ctx, func() error {
			resp, err := kv.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte("s"), Prefix: true, CountOnly: true, Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE}))
			if err != nil {
				return err
			}
			if n := resp.Msg.GetCount(); n != int64(keys) {
				return fmt.Errorf("%d keys", n)
			}
			return nil
		}); err != nil {
			t.Fatalf("%s did not catch up: %v", what, err)
		}
		if nd.Node().RaftStats()["last_snapshot_index"] == "0" {
			t.Errorf("the %s caught up without a snapshot; the test meant to force one", what)
		}
	}
	caughtUp(follower, "follower")
	caughtUp(c.Add(ctx), "new node")
}

// TestLeaveUnderLoad stops a follower and then the leader gracefully while
// a writer runs: writes fail at most briefly around the handover, and none
// that was acknowledged is lost.
func TestLeaveUnderLoad(t *testing.T) {
	ctx := testCtx(t, 120*time.Second)
	c := nodetest.NewCluster(t, 5)
	cl := c.Client()
	var (
		acked  []string
		failed int
	)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			k := fmt.Sprintf("w%06d", i)
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := put(wctx, cl.KV, k, k)
			cancel()
			if err != nil {
				failed++
				if failed <= 5 {
					t.Logf("write %s failed: %v", k, err)
				}
				continue
			}
			acked = append(acked, k)
		}
	}()
	leader := c.Leader(ctx)
	for _, nd := range c.Nodes() {
		if nd != leader {
			if err := nd.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if err := leader.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitMembers(ctx, 3); err != nil {
		t.Fatal(err)
	}
	close(stop)
	<-done
	t.Logf("%d writes acknowledged, %d failed during two graceful leaves", len(acked), failed)
	// The client fails over only when a node refuses connections; a write in
	// flight on the leaving leader may fail once. More is a bug.
	if failed > 3 {
		t.Errorf("%d writes failed across two graceful leaves", failed)
	}
	kv := c.Running()[0].Client().KV
	for _, k := range acked {
		if got, err := get(ctx, kv, k, kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE); err != nil || string(got.GetKv().GetValue()) != k {
			t.Fatalf("acknowledged %s lost: %v %v", k, got, err)
		}
	}
}

// TestRestartOnNewAddress: a node that comes back with its data dir on
// another address keeps its id and its vote.
func TestRestartOnNewAddress(t *testing.T) {
	ctx := testCtx(t, 120*time.Second)
	c := nodetest.NewCluster(t, 3)
	leader := c.Leader(ctx)
	moved := c.Other(leader)
	old := moved.Addr()
	moved.Kill()
	if _, err := put(ctx, leader.Client().KV, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := moved.RestartMoved(ctx); err != nil {
		t.Fatal(err)
	}
	if moved.Addr() == old {
		t.Fatalf("restarted on the same address %s", old)
	}
	if err := pollUntil(ctx, func() error {
		for _, m := range members(t, ctx, leader) {
			if m.GetId() == moved.Name() {
				if m.GetAddress() != moved.Addr() || m.GetSuffrage() != kvstorev1.Suffrage_SUFFRAGE_VOTER {
					return fmt.Errorf("member %v, want voter at %s", m, moved.Addr())
				}
				return nil
			}
		}
		return fmt.Errorf("%s is not a member", moved.Name())
	}); err != nil {
		t.Fatal(err)
	}
	if got, err := get(ctx, moved.Client().KV, "k", kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE); err != nil || string(got.GetKv().GetValue()) != "v" {
		t.Fatalf("moved node: %v %v", got, err)
	}
	if n := len(leader.Node().RaftMembers()); n != 3 {
		t.Fatalf("%d members, want 3", n)
	}
}

// TestAdminCalls: leadership moves to the voter named, through any node;
// a dead member is removed by hand; removing a live voter that would cost
// the quorum is refused.
func TestAdminCalls(t *testing.T) {
	ctx := testCtx(t, 120*time.Second)
	c := nodetest.NewCluster(t, 3)
	leader := c.Leader(ctx)
	var a, b *nodetest.Node
	for _, nd := range c.Nodes() {
		if nd == leader {
			continue
		}
		if a == nil {
			a = nd
		} else {
			b = nd
		}
	}
	// Through a follower, to the other follower.
	resp, err := a.Client().Cluster.TransferLeadership(ctx, connect.NewRequest(&kvstorev1.TransferLeadershipRequest{Id: b.Name()}))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Msg.GetLeaderId() != b.Name() {
		t.Fatalf("new leader %q, want %q", resp.Msg.GetLeaderId(), b.Name())
	}
	if got := c.Leader(ctx); got != b {
		t.Fatalf("cluster agrees on %s, want %s", got.Name(), b.Name())
	}
	if _, err := a.Client().Cluster.RemoveMember(ctx, connect.NewRequest(&kvstorev1.RemoveMemberRequest{Id: "nobody"})); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("removing an unknown member: %v", err)
	}
	// Kill one: removing it by hand is fine, two voters stay alive.
	leader.Kill()
	if _, err := a.Client().Cluster.RemoveMember(ctx, connect.NewRequest(&kvstorev1.RemoveMemberRequest{Id: leader.Name()})); err != nil {
		t.Fatalf("remove the dead member: %v", err)
	}
	if err := c.WaitMembers(ctx, 2); err != nil {
		t.Fatal(err)
	}
	// It stops here: a cluster of two voters that loses one is stuck by
	// design (as etcd's is); the survivor steps down once it has lost its
	// quorum, and from then on no one can remove anything.
}

// TestRemoveRefusedBelowQuorum: with two of five voters dead, removing a
// live voter would leave two live voters of four, no quorum: refused.
func TestRemoveRefusedBelowQuorum(t *testing.T) {
	ctx := testCtx(t, 120*time.Second)
	c := nodetest.NewCluster(t, 5)
	leader := c.Leader(ctx)
	var others []*nodetest.Node
	for _, nd := range c.Nodes() {
		if nd != leader {
			others = append(others, nd)
		}
	}
	others[0].Kill()
	others[1].Kill()
	// Wait until gossip on the leader says they are down.
	if err := pollUntil(ctx, func() error {
		for _, m := range members(t, ctx, leader) {
			if (m.GetId() == others[0].Name() || m.GetId() == others[1].Name()) && m.GetGossipState() == "alive" {
				return fmt.Errorf("%s still alive in gossip", m.GetId())
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	_, err := leader.Client().Cluster.RemoveMember(ctx, connect.NewRequest(&kvstorev1.RemoveMemberRequest{Id: others[2].Name()}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("removing a live voter below quorum: %v, want failed_precondition", err)
	}
	if n := len(leader.Node().RaftMembers()); n != 5 {
		t.Fatalf("%d members, want 5", n)
	}

}

// TestRemovedMemberIsNotAddedBack: a member removed by hand right after it
// died, while gossip still counts it alive, stays removed: the leader
// neither adds it back nor goes on replicating to it (it used to re-add it
// at once and heartbeat it, with an ERROR line each time, until
// --dead-after removed it again). Once it comes back it rejoins.
func TestRemovedMemberIsNotAddedBack(t *testing.T) {
	ctx := testCtx(t, 120*time.Second)
	c := nodetest.NewCluster(t, 3)
	leader := c.Leader(ctx)
	victim := c.Other(leader)
	victim.Kill()
	if _, err := leader.Client().Cluster.RemoveMember(ctx, connect.NewRequest(&kvstorev1.RemoveMemberRequest{Id: victim.Name()})); err != nil {
		t.Fatalf("remove the dead member: %v", err)
	}
	// Fast gossip declares the dead node within about 2 s: watch the
	// configuration well past that.
	watch, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for watch.Err() == nil {
		if slices.Contains(leader.Node().RaftMembers(), victim.Name()) {
			t.Fatalf("%s was added back after its removal: %v", victim.Name(), leader.Node().RaftMembers())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := victim.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitMembers(ctx, 3); err != nil {
		t.Fatalf("the removed member did not rejoin once back: %v", err)
	}
}
