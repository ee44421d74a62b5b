package nodetest_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/node"
	"github.com/kvstore/kvstore/node/nodetest"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// TestSpaceQuota: a cluster whose key-value state grows past the space
// quota raises a NOSPACE alarm that names the quota; every node refuses
// puts and transactions that put with ResourceExhausted, while reads,
// deletes and compaction go on; a disarm is refused while the state is
// still over; once the keys are deleted and the history compacted, the
// state is back under the quota, a disarm clears the alarm and writes
// resume on every node.
func TestSpaceQuota(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	const quota = 24 << 20
	c := nodetest.NewCluster(t, 3, nodetest.WithConfig(func(_ string, cfg *node.Config) {
		cfg.QuotaBytes = quota
	}))
	for _, nd := range c.Nodes() {
		if got := nd.Node().StateBytes(); got >= quota/2 {
			t.Fatalf("%s: the state takes %d bytes at rest; the test wants it well under the quota of %d", nd.Name(), got, quota)
		}
	}
	n1 := c.Node("n1")
	kv := n1.Client().KV
	value := bytes.Repeat([]byte("q"), 256<<10)
	var refused error
	for i := 0; refused == nil; i++ {
		if i > 400 {
			t.Fatalf("wrote %d MiB and no put was refused; state sizes %d %d %d", i/4,
				c.Node("n1").Node().StateBytes(), c.Node("n2").Node().StateBytes(), c.Node("n3").Node().StateBytes())
		}
		_, err := kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: fmt.Appendf(nil, "big/%04d", i), Value: value}))
		switch {
		case connect.CodeOf(err) == connect.CodeResourceExhausted:
			refused = err
		case err != nil:
			t.Fatal(err)
		}
	}
	if !strings.Contains(refused.Error(), "quota") || !strings.Contains(refused.Error(), "--quota-bytes") {
		t.Fatalf("the refusal %q does not name the quota", refused)
	}
	for _, nd := range c.Nodes() {
		eventually(t, ctx, nd.Name()+" refuses puts and txns that put", func() error {
			_, err := put(ctx, nd.Client().KV, "small", "x")
			if connect.CodeOf(err) != connect.CodeResourceExhausted {
				return fmt.Errorf("put: %v", err)
			}
			_, err = nd.Client().KV.Txn(ctx, connect.NewRequest(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{
				{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: []byte("small"), Value: []byte("x")}}}}}))
			if connect.CodeOf(err) != connect.CodeResourceExhausted {
				return fmt.Errorf("txn: %v", err)
			}
			return nil
		})
		if got, err := get(ctx, nd.Client().KV, "big/0000", kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE); err != nil || len(got.GetKv().GetValue()) != len(value) {
			t.Fatalf("read on %s over quota: %v", nd.Name(), err)
		}
	}
	var quotaAlarm bool
	for _, a := range alarmList(t, ctx, n1) {
		quotaAlarm = quotaAlarm || a.GetAlarm() == kvstorev1.AlarmType_ALARM_TYPE_NOSPACE && strings.HasPrefix(a.GetReason(), "quota: ")
	}
	if !quotaAlarm {
		t.Fatalf("alarms: %v, want a NOSPACE alarm of the quota", alarmList(t, ctx, n1))
	}
	disarm := func() error {
		_, err := n1.Client().Cluster.Alarm(ctx, connect.NewRequest(&kvstorev1.AlarmRequest{Action: kvstorev1.AlarmAction_ALARM_ACTION_DEACTIVATE}))
		return err
	}
	if err := disarm(); connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "quota") {
		t.Fatalf("disarm while over quota: %v, want FailedPrecondition naming the quota", err)
	}

	// Delete and compact: the state shrinks back under the quota.
	del, err := kv.Delete(ctx, connect.NewRequest(&kvstorev1.DeleteRequest{Key: []byte("big/"), RangeEnd: []byte("big0")}))
	if err != nil {
		t.Fatalf("a delete over quota: %v", err)
	}
	if _, err := kv.Compact(ctx, connect.NewRequest(&kvstorev1.CompactRequest{Revision: del.Msg.GetHeader().GetRevision()})); err != nil {
		t.Fatalf("a compaction over quota: %v", err)
	}
	for _, nd := range c.Nodes() {
		eventually(t, ctx, nd.Name()+" back under the quota", func() error {
			if got := nd.Node().StateBytes(); got > quota {
				return fmt.Errorf("state holds %d bytes", got)
			}
			return nil
		})
	}
	// The quota's alarm stays until disarmed.
	if l := alarmList(t, ctx, n1); len(l) == 0 {
		t.Fatal("the quota's alarm cleared itself")
	}
	eventually(t, ctx, "disarm", disarm)
	for _, nd := range c.Nodes() {
		eventually(t, ctx, nd.Name()+" takes puts again", func() error {
			_, err := put(ctx, nd.Client().KV, "small", "x")
			return err
		})
	}
	if l := alarmList(t, ctx, n1); len(l) != 0 {
		t.Fatalf("alarms after the disarm: %v", l)
	}
}
