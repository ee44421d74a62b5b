package consensus

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	raftcmdv1 "github.com/kvstore/kvstore/proto/kvstore/raftcmd/v1"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

// fuzzCommands are valid commands of every kind, the seed corpus of
// FuzzApplyCommand.
func fuzzCommands() []*raftcmdv1.Command {
	return []*raftcmdv1.Command{
		putCmd("a", "1", true),
		{Command: &raftcmdv1.Command_Put{Put: &kvstorev1.PutRequest{Key: []byte("l"), Value: []byte("v"), Lease: 5}}},
		delCmd(&kvstorev1.DeleteRequest{Key: []byte("a"), RangeEnd: []byte("z"), PrevKv: true}),
		delCmd(&kvstorev1.DeleteRequest{Key: []byte("p/"), Prefix: true}),
		txnCmd(&kvstorev1.TxnRequest{
			Compare: []*kvstorev1.Compare{
				cmpVersion("a", kvstorev1.CompareResult_COMPARE_RESULT_GREATER, 0),
				cmpValue("a", kvstorev1.CompareResult_COMPARE_RESULT_EQUAL, "1"),
				{Key: []byte("a"), RangeEnd: []byte("b"), Result: kvstorev1.CompareResult_COMPARE_RESULT_LESS, Target: &kvstorev1.Compare_Lease{Lease: 3}},
			},
			Success: []*kvstorev1.RequestOp{opPut("b", "2", false), opGet("a"), opRange(&kvstorev1.RangeRequest{Key: []byte("a"), Prefix: true, Limit: 2})},
			Failure: []*kvstorev1.RequestOp{opDel(&kvstorev1.DeleteRequest{Key: []byte("b")}),
				{Request: &kvstorev1.RequestOp_Txn{Txn: &kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{opPut("c", "3", true)}}}}},
		}),
		{Command: &raftcmdv1.Command_Compact{Compact: &kvstorev1.CompactRequest{Revision: 2}}},
		{Command: &raftcmdv1.Command_AutoCompact{AutoCompact: &kvstorev1.CompactRequest{Revision: 3}}},
		{Command: &raftcmdv1.Command_LeaseGrant{LeaseGrant: &kvstorev1.GrantRequest{Id: 5, TtlSeconds: 60}}},
		{Command: &raftcmdv1.Command_LeaseRevoke{LeaseRevoke: &kvstorev1.RevokeRequest{Id: 5}}},
		{Command: &raftcmdv1.Command_SetClusterId{SetClusterId: &raftcmdv1.SetClusterID{ClusterId: "0123456789abcdef0123456789abcdef"}}},
		{Command: &raftcmdv1.Command_Alarm{Alarm: &kvstorev1.AlarmRequest{Action: kvstorev1.AlarmAction_ALARM_ACTION_ACTIVATE, MemberId: "n1", Alarm: kvstorev1.AlarmType_ALARM_TYPE_NOSPACE}}},
		{Command: &raftcmdv1.Command_Alarm{Alarm: &kvstorev1.AlarmRequest{Action: kvstorev1.AlarmAction_ALARM_ACTION_DEACTIVATE}}},
		// A key and a value past what the API lets through by default:
		// the state machine must refuse them, not stop.
		putCmd(string(bytes.Repeat([]byte("k"), 70_000)), "v", false),
		{},
	}
}

// FuzzApplyCommand applies arbitrary bytes as a raft command entry to a
// state machine over a real store. A command the state machine cannot or
// will not apply must be refused with an error in its result, the same on
// every node, never panic and never stop the state machine: a command in
// the log is applied by every node, so one that stopped one would stop
// them all.
func FuzzApplyCommand(f *testing.F) {
	for _, c := range fuzzCommands() {
		b, err := proto.Marshal(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f})
	// One store for the whole run: opening Badger takes far longer than
	// applying a command. Each input gets the next index.
	kv, err := storage.OpenKV(f.TempDir(), slog.New(slog.DiscardHandler), storage.Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { kv.Close() })
	fsm := NewFSM(kv, testLimits, slog.New(slog.DiscardHandler))
	var index uint64
	f.Fuzz(func(t *testing.T, data []byte) {
		index++
		res := fsm.ApplyBatch([]*raft.Log{{Index: index, Term: 1, Type: raft.LogCommand, Data: data}})
		if len(res) != 1 {
			t.Fatalf("%d results for one entry", len(res))
		}
		if _, ok := res[0].(*applyResult); !ok {
			t.Fatalf("result %T %v, want *applyResult", res[0], res[0])
		}
		if err := fsm.Err(); err != nil {
			t.Fatalf("a command stopped the state machine: %v", err)
		}
		// Writes refused by an alarm would hide the rest: clear them.
		if len(fsm.alarms.get()) > 0 {
			index++
			clear, _ := proto.Marshal(&raftcmdv1.Command{Command: &raftcmdv1.Command_Alarm{Alarm: &kvstorev1.AlarmRequest{Action: kvstorev1.AlarmAction_ALARM_ACTION_DEACTIVATE}}})
			fsm.ApplyBatch([]*raft.Log{{Index: index, Term: 1, Type: raft.LogCommand, Data: clear}})
		}
	})
}

// FuzzCommandRoundTrip decodes arbitrary bytes as a command: what decodes
// must encode and decode to the same command, so a leader's proposal means
// the same to every node.
func FuzzCommandRoundTrip(f *testing.F) {
	for _, c := range fuzzCommands() {
		b, _ := proto.Marshal(c)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var c raftcmdv1.Command
		if proto.Unmarshal(data, &c) != nil {
			return
		}
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(&c)
		if err != nil {
			t.Fatalf("a decoded command does not encode: %v", err)
		}
		var c2 raftcmdv1.Command
		if err := proto.Unmarshal(b, &c2); err != nil {
			t.Fatalf("an encoded command does not decode: %v", err)
		}
		if !proto.Equal(&c, &c2) {
			t.Fatalf("round trip changed the command:\n%v\n%v", &c, &c2)
		}
		if kindOf(&c) != kindOf(&c2) {
			t.Fatalf("round trip changed the kind of write")
		}
	})
}
