package consensus

import (
	"errors"
	"strings"
	"testing"

	raftcmdv1 "github.com/kvstore/kvstore/proto/kvstore/raftcmd/v1"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

// TestFSMRefusesKeysTooLongForTheStore: a put whose key the store cannot
// hold (Badger's key limit) is refused with ErrKeyTooLong and writes
// nothing, alone or inside a txn after another put; the state machine
// keeps applying. FuzzApplyCommand found that such a put stopped the state
// machine (on every node, since every node applies it).
func TestFSMRefusesKeysTooLongForTheStore(t *testing.T) {
	f, kv := newFSM(t, testLimits)
	long := strings.Repeat("k", storage.MaxKeyBytes+1)
	applyOne[*kvstorev1.PutResponse](t, f, 1, putCmd("a", "1", false))

	index := uint64(1)
	for _, tc := range []struct {
		name string
		cmd  *raftcmdv1.Command
	}{
		{"put", putCmd(long, "v", false)},
		{"txn", txnCmd(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{opPut("a", "2", false), opPut(long, "v", false)}})},
		{"nested txn", txnCmd(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{opPut("a", "2", false),
			{Request: &kvstorev1.RequestOp_Txn{Txn: &kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{opPut(long, "v", false)}}}}}})},
	} {
		index++
		res := applyBatch(t, f, cmdLog(t, index, tc.cmd))
		ar, ok := res[0].(*applyResult)
		if !ok || !errors.Is(ar.err, ErrKeyTooLong) {
			t.Fatalf("%s: result %#v, want ErrKeyTooLong", tc.name, res[0])
		}
		if len(ar.err.Error()) > 200 {
			t.Errorf("%s: the error holds %d bytes: %.100s...", tc.name, len(ar.err.Error()), ar.err)
		}
		if err := f.Err(); err != nil {
			t.Fatalf("%s stopped the state machine: %v", tc.name, err)
		}
		wantKey(t, kv, "a", kvp("a", "1", 1, 1, 1))
	}
	// The state machine still applies, and the longest key the store
	// holds is written.
	edge := strings.Repeat("e", storage.MaxKeyBytes)
	applyOne[*kvstorev1.PutResponse](t, f, index+1, putCmd(edge, "v", false))
	wantKey(t, kv, edge, kvp(edge, "v", int64(index+1), int64(index+1), 1))
}
