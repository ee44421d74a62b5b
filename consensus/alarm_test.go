package consensus

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	raftcmdv1 "github.com/kvstore/kvstore/proto/kvstore/raftcmd/v1"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

func alarmCmd(action kvstorev1.AlarmAction, member string, typ kvstorev1.AlarmType, reason string) *raftcmdv1.Command {
	return &raftcmdv1.Command{Command: &raftcmdv1.Command_Alarm{Alarm: &kvstorev1.AlarmRequest{
		Action: action, MemberId: member, Alarm: typ, Reason: reason,
	}}}
}

const (
	activate   = kvstorev1.AlarmAction_ALARM_ACTION_ACTIVATE
	deactivate = kvstorev1.AlarmAction_ALARM_ACTION_DEACTIVATE
	nospace    = kvstorev1.AlarmType_ALARM_TYPE_NOSPACE
	corrupt    = kvstorev1.AlarmType_ALARM_TYPE_CORRUPT
)

// resultErr is the error of one ApplyBatch result.
func resultErr(t *testing.T, r any) error {
	t.Helper()
	ar, ok := r.(*applyResult)
	if !ok || ar == nil {
		t.Fatalf("result is %T %v", r, r)
	}
	return ar.err
}

func leaseGrantCmd(id int64) *raftcmdv1.Command {
	return &raftcmdv1.Command{Command: &raftcmdv1.Command_LeaseGrant{LeaseGrant: &kvstorev1.GrantRequest{Id: id, TtlSeconds: 10}}}
}

func leaseRevokeCmd(id int64) *raftcmdv1.Command {
	return &raftcmdv1.Command{Command: &raftcmdv1.Command_LeaseRevoke{LeaseRevoke: &kvstorev1.RevokeRequest{Id: id}}}
}

func compactCmd(rev int64) *raftcmdv1.Command {
	return &raftcmdv1.Command{Command: &raftcmdv1.Command_Compact{Compact: &kvstorev1.CompactRequest{Revision: rev}}}
}

// TestFSMAlarms drives the alarm state machine: what each alarm refuses,
// at apply time and alike on every node, and that alarms are state.
func TestFSMAlarms(t *testing.T) {
	f, kv := newFSM(t, testLimits)
	applyOne[*kvstorev1.PutResponse](t, f, 1, putCmd("a", "1", false))
	applyOne[*kvstorev1.GrantResponse](t, f, 2, leaseGrantCmd(5))

	// One batch: the alarm refuses the writes after it, not those before.
	res := applyBatch(t, f,
		cmdLog(t, 3, putCmd("b", "before", false)),
		cmdLog(t, 4, alarmCmd(activate, "n2", nospace, "no space: data dir /x has 1 MiB free, below the 9 MiB margin")),
		cmdLog(t, 5, putCmd("c", "after", false)),
	)
	result(t, res[0])
	wantProto(t, result(t, res[1]), &kvstorev1.AlarmResponse{Alarms: []*kvstorev1.AlarmMember{
		{MemberId: "n2", Alarm: nospace, Reason: "no space: data dir /x has 1 MiB free, below the 9 MiB margin"},
	}})
	err := resultErr(t, res[2])
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "no space: data dir /x has 1 MiB free, below the 9 MiB margin") ||
		!strings.Contains(err.Error(), "member n2") {
		t.Fatalf("a put under a NOSPACE alarm: %v", err)
	}
	if _, ok, _ := kv.Get(0, []byte("c")); ok {
		t.Fatal("a refused put was written")
	}

	// Under NOSPACE: what adds data is refused, what frees it is not.
	idx := uint64(6)
	apply := func(cmd *raftcmdv1.Command) error {
		t.Helper()
		err := resultErr(t, applyBatch(t, f, cmdLog(t, idx, cmd))[0])
		idx++
		return err
	}
	putInTxn := txnCmd(&kvstorev1.TxnRequest{Failure: []*kvstorev1.RequestOp{opPut("d", "1", false)}})
	delInTxn := txnCmd(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{opDel(&kvstorev1.DeleteRequest{Key: []byte("b")})}})
	for name, c := range map[string]struct {
		cmd  *raftcmdv1.Command
		want error
	}{
		"txn that may put":    {putInTxn, ErrNoSpace},
		"lease grant":         {leaseGrantCmd(6), ErrNoSpace},
		"txn that only reads": {txnCmd(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{opGet("a")}}), nil},
		"txn that deletes":    {delInTxn, nil},
		"delete":              {delCmd(&kvstorev1.DeleteRequest{Key: []byte("a")}), nil},
		"compact":             {compactCmd(2), nil},
	} {
		if err := apply(c.cmd); !errors.Is(err, c.want) || (c.want == nil && err != nil) {
			t.Errorf("%s under NOSPACE: %v, want %v", name, err, c.want)
		}
	}

	// CORRUPT refuses client writes of every kind; housekeeping goes on.
	if err := apply(alarmCmd(activate, "n3", corrupt, "its state at revision 9 hashes to 1, the majority's to 2")); err != nil {
		t.Fatal(err)
	}
	if err := apply(delCmd(&kvstorev1.DeleteRequest{Key: []byte("x")})); !errors.Is(err, ErrCorrupt) {
		t.Errorf("a delete under CORRUPT: %v", err)
	}
	if err := apply(leaseRevokeCmd(5)); err != nil {
		t.Errorf("a lease expiry under CORRUPT: %v", err)
	}

	// Alarms are state: a node that restarts, or installs a snapshot,
	// refuses the same.
	want := []storage.Alarm{
		{Type: int32(nospace), Member: "n2", Reason: "no space: data dir /x has 1 MiB free, below the 9 MiB margin"},
		{Type: int32(corrupt), Member: "n3", Reason: "its state at revision 9 hashes to 1, the majority's to 2"},
	}
	restarted := NewFSM(kv, testLimits, testLogger(t))
	if err := restarted.loadAlarms(); err != nil {
		t.Fatal(err)
	}
	var snap bytes.Buffer
	if err := kv.Snapshot(&snap, kv.AppliedIndex()); err != nil {
		t.Fatal(err)
	}
	installed, _ := newFSM(t, testLimits)
	if err := installed.Restore(io.NopCloser(&snap)); err != nil {
		t.Fatal(err)
	}
	for name, g := range map[string]*FSM{"applied": f, "restarted": restarted, "snapshot": installed} {
		if got := g.alarms.get(); !equalAlarms(got, want) {
			t.Errorf("alarms %s: %v, want %v", name, got, want)
		}
	}

	// Deactivate by member and type, then everything (disarm).
	if err := apply(alarmCmd(deactivate, "n2", nospace, "")); err != nil {
		t.Fatal(err)
	}
	if err := apply(putCmd("e", "1", false)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a put with only CORRUPT left: %v", err)
	}
	if err := apply(alarmCmd(deactivate, "", kvstorev1.AlarmType_ALARM_TYPE_UNSPECIFIED, "")); err != nil {
		t.Fatal(err)
	}
	if err := apply(putCmd("e", "1", false)); err != nil {
		t.Fatalf("a put after disarm: %v", err)
	}
	if list, _ := kv.Alarms(); len(list) != 0 || len(f.alarms.get()) != 0 {
		t.Fatalf("alarms after disarm: %v, %v", list, f.alarms.get())
	}

	// An activation without member or type changes nothing.
	if err := apply(alarmCmd(activate, "", nospace, "")); err == nil {
		t.Fatal("an activation without a member was applied")
	}
}

func equalAlarms(a alarmSet, b []storage.Alarm) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestJudge(t *testing.T) {
	h := func(v uint64) storage.StateHash { return storage.StateHash{Revision: 9, Hash: v} }
	for _, c := range []struct {
		name    string
		hashes  map[string]storage.StateHash
		members int
		corrupt []string
		ok      bool
	}{
		{"all agree", map[string]storage.StateHash{"a": h(1), "b": h(1), "c": h(1)}, 3, nil, true},
		{"one differs", map[string]storage.StateHash{"a": h(1), "b": h(2), "c": h(1)}, 3, []string{"b"}, true},
		{"two of five differ", map[string]storage.StateHash{"a": h(1), "b": h(2), "c": h(1), "d": h(3), "e": h(1)}, 5, []string{"b", "d"}, true},
		{"one silent, two agree", map[string]storage.StateHash{"a": h(1), "c": h(1)}, 3, nil, true},
		{"one silent, two differ", map[string]storage.StateHash{"a": h(1), "c": h(2)}, 3, []string{"a", "c"}, false},
		{"no majority", map[string]storage.StateHash{"a": h(1), "b": h(2), "c": h(3)}, 3, []string{"a", "b", "c"}, false},
	} {
		corrupt, _, ok := judge(c.hashes, c.members)
		if ok != c.ok || strings.Join(corrupt, ",") != strings.Join(c.corrupt, ",") {
			t.Errorf("%s: corrupt %v ok %v, want %v %v", c.name, corrupt, ok, c.corrupt, c.ok)
		}
	}
}
