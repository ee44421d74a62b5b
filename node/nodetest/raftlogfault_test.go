package nodetest_test

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/node/nodetest"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// TestRaftLogSyncFailureStopsWrites: when the leader's raft log fails an
// fsync, that node refuses every later write with a clear error instead of
// carrying on as if its entries were on disk (after a failed fsync the
// kernel may report the next ones as fine); the other two elect a leader
// and keep serving every acknowledged write; restarted on a healthy disk,
// the node catches up.
func TestRaftLogSyncFailureStopsWrites(t *testing.T) {
	ctx := testCtx(t, 120*time.Second)
	c := nodetest.NewCluster(t, 3)
	var acked []string
	for i := range 20 {
		k := fmt.Sprintf("a%d", i)
		if _, err := put(ctx, c.Client().KV, k, k); err != nil {
			t.Fatal(err)
		}
		acked = append(acked, k)
	}
	bad := c.Leader(ctx)
	badKV := bad.Client().KV
	bad.FailRaftLogSync(syscall.EIO)

	// The write that meets the failed fsync is not acknowledged, and
	// neither is any after it, whichever node leads by then.
	if _, err := put(ctx, badKV, "lost", "lost"); err == nil {
		t.Fatal("a put whose raft log fsync failed was acknowledged")
	}
	for i := range 5 {
		_, err := put(ctx, badKV, fmt.Sprintf("after%d", i), "x")
		if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "raft log failed") || !strings.Contains(err.Error(), "input/output error") {
			t.Fatalf("put %d on the node whose raft log failed: %v; want Unavailable naming the raft log and the fsync's error", i, err)
		}
	}
	if err := bad.Node().Ready(); err == nil || !strings.Contains(err.Error(), "raft log failed") {
		t.Fatalf("the failed node says it is ready: %v", err)
	}

	// The others go on without it.
	var others []*nodetest.Node
	for _, nd := range c.Running() {
		if nd != bad {
			others = append(others, nd)
		}
	}
	for i := range 20 {
		k := fmt.Sprintf("b%d", i)
		err := pollUntil(ctx, func() error {
			_, err := put(ctx, others[i%2].Client().KV, k, k)
			return err
		})
		if err != nil {
			t.Fatalf("put on %s after %s's raft log failed: %v", others[i%2].Name(), bad.Name(), err)
		}
		acked = append(acked, k)
	}
	checkAcked := func(nodes []*nodetest.Node) {
		t.Helper()
		for _, nd := range nodes {
			kv := nd.Client().KV
			for _, k := range acked {
				got, err := get(ctx, kv, k, kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
				if err != nil || string(got.GetKv().GetValue()) != k {
					t.Fatalf("%s lost acknowledged key %s: %v %v", nd.Name(), k, got, err)
				}
			}
		}
	}
	checkAcked(others)

	// Restarted with a healthy disk, it reads its log back from what the
	// disk holds and catches up.
	bad.Kill()
	bad.FailRaftLogSync(nil)
	if err := bad.Restart(ctx); err != nil {
		t.Fatalf("restart after the raft log failed: %v", err)
	}
	if err := pollUntil(ctx, func() error {
		got, err := get(ctx, bad.Client().KV, acked[len(acked)-1], kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
		if err == nil && got.GetKv() == nil {
			err = errors.New("not caught up")
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	checkAcked(c.Running())
}
