package consensus

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	raftcmdv1 "github.com/kvstore/kvstore/proto/kvstore/raftcmd/v1"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func openKV(t *testing.T) *storage.KV {
	t.Helper()
	kv, err := storage.OpenKV(t.TempDir(), testLogger(t), storage.Options{})
	if err != nil {
		t.Fatalf("OpenKV: %v", err)
	}
	t.Cleanup(func() {
		if err := kv.Close(); err != nil {
			t.Errorf("close kv: %v", err)
		}
	})
	return kv
}

func newFSM(t *testing.T, lim Limits) (*FSM, *storage.KV) {
	t.Helper()
	kv := openKV(t)
	return NewFSM(kv, lim, testLogger(t)), kv
}

var testLimits = Limits{MaxRangePairs: 1000, MaxRangeBytes: 1 << 20}

// Command builders.

func putCmd(key, value string, prev bool) *raftcmdv1.Command {
	return &raftcmdv1.Command{Command: &raftcmdv1.Command_Put{Put: &kvstorev1.PutRequest{
		Key: []byte(key), Value: []byte(value), PrevKv: prev,
	}}}
}

func delCmd(req *kvstorev1.DeleteRequest) *raftcmdv1.Command {
	return &raftcmdv1.Command{Command: &raftcmdv1.Command_Delete{Delete: req}}
}

func txnCmd(req *kvstorev1.TxnRequest) *raftcmdv1.Command {
	return &raftcmdv1.Command{Command: &raftcmdv1.Command_Txn{Txn: req}}
}

func opPut(key, value string, prev bool) *kvstorev1.RequestOp {
	return &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{
		Key: []byte(key), Value: []byte(value), PrevKv: prev,
	}}}
}

func opDel(req *kvstorev1.DeleteRequest) *kvstorev1.RequestOp {
	return &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Delete{Delete: req}}
}

func opGet(key string) *kvstorev1.RequestOp {
	return &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Get{Get: &kvstorev1.GetRequest{Key: []byte(key)}}}
}

func opRange(req *kvstorev1.RangeRequest) *kvstorev1.RequestOp {
	return &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Range{Range: req}}
}

func cmpVersion(key string, r kvstorev1.CompareResult, v int64) *kvstorev1.Compare {
	return &kvstorev1.Compare{Key: []byte(key), Result: r, Target: &kvstorev1.Compare_Version{Version: v}}
}

func cmpCreate(key string, r kvstorev1.CompareResult, v int64) *kvstorev1.Compare {
	return &kvstorev1.Compare{Key: []byte(key), Result: r, Target: &kvstorev1.Compare_CreateRevision{CreateRevision: v}}
}

func cmpMod(key string, r kvstorev1.CompareResult, v int64) *kvstorev1.Compare {
	return &kvstorev1.Compare{Key: []byte(key), Result: r, Target: &kvstorev1.Compare_ModRevision{ModRevision: v}}
}

func cmpValue(key string, r kvstorev1.CompareResult, v string) *kvstorev1.Compare {
	return &kvstorev1.Compare{Key: []byte(key), Result: r, Target: &kvstorev1.Compare_Value{Value: []byte(v)}}
}

const (
	eq  = kvstorev1.CompareResult_COMPARE_RESULT_EQUAL
	neq = kvstorev1.CompareResult_COMPARE_RESULT_NOT_EQUAL
	lt  = kvstorev1.CompareResult_COMPARE_RESULT_LESS
	gt  = kvstorev1.CompareResult_COMPARE_RESULT_GREATER
)

func kvp(key, value string, create, mod, version int64) *kvstorev1.KeyValue {
	return &kvstorev1.KeyValue{Key: []byte(key), Value: []byte(value), CreateRevision: create, ModRevision: mod, Version: version}
}

// Log builders and apply helpers.

func cmdLog(t *testing.T, index uint64, cmd *raftcmdv1.Command) *raft.Log {
	t.Helper()
	data, err := proto.Marshal(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: data}
}

func applyBatch(t *testing.T, f *FSM, logs ...*raft.Log) []any {
	t.Helper()
	res := f.ApplyBatch(logs)
	if len(res) != len(logs) {
		t.Fatalf("ApplyBatch returned %d results for %d entries", len(res), len(logs))
	}
	return res
}

// result unwraps one ApplyBatch result and fails on an error.
func result(t *testing.T, r any) proto.Message {
	t.Helper()
	ar, ok := r.(*applyResult)
	if !ok || ar == nil {
		t.Fatalf("result is %T %v, want *applyResult", r, r)
	}
	if ar.err != nil {
		t.Fatalf("result error: %v", ar.err)
	}
	return ar.resp
}

// applyOne applies cmd at index in its own batch and returns its response.
func applyOne[T proto.Message](t *testing.T, f *FSM, index uint64, cmd *raftcmdv1.Command) T {
	t.Helper()
	resp := result(t, applyBatch(t, f, cmdLog(t, index, cmd))[0])
	out, ok := resp.(T)
	if !ok {
		t.Fatalf("response is %T", resp)
	}
	return out
}

func wantProto(t *testing.T, got, want proto.Message) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Fatalf("got  %v\nwant %v", got, want)
	}
}

func wantKey(t *testing.T, kv *storage.KV, key string, want *kvstorev1.KeyValue) {
	t.Helper()
	got, ok, err := kv.Get(0, []byte(key))
	if err != nil {
		t.Fatal(err)
	}
	if want == nil {
		if ok {
			t.Fatalf("key %q = %+v, want missing", key, got)
		}
		return
	}
	if !ok {
		t.Fatalf("key %q missing, want %v", key, want)
	}
	wantProto(t, KeyValueProto(got), want)
}

// dump is every key of kv at rev, as protos.
func dump(t *testing.T, kv *storage.KV, rev uint64) []*kvstorev1.KeyValue {
	t.Helper()
	res, err := kv.Range(rev, nil, []byte{0}, storage.RangeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return toProtos(res.KVs)
}

func wantSameState(t *testing.T, got, want *storage.KV, revs ...uint64) {
	t.Helper()
	if got.AppliedIndex() != want.AppliedIndex() {
		t.Fatalf("applied index %d, want %d", got.AppliedIndex(), want.AppliedIndex())
	}
	for _, rev := range append(revs, 0) {
		g, w := dump(t, got, rev), dump(t, want, rev)
		if !protoSliceEqual(g, w) {
			t.Fatalf("state at %d:\n got %v\nwant %v", rev, g, w)
		}
	}
}

func protoSliceEqual(a, b []*kvstorev1.KeyValue) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

func TestFSMPut(t *testing.T) {
	f, kv := newFSM(t, testLimits)

	resp := applyOne[*kvstorev1.PutResponse](t, f, 3, putCmd("a", "1", true))
	// No previous pair, and no header: the replica adds it.
	wantProto(t, resp, &kvstorev1.PutResponse{})
	wantKey(t, kv, "a", kvp("a", "1", 3, 3, 1))
	if kv.AppliedIndex() != 3 {
		t.Fatalf("applied %d", kv.AppliedIndex())
	}

	resp = applyOne[*kvstorev1.PutResponse](t, f, 4, putCmd("a", "2", true))
	wantProto(t, resp, &kvstorev1.PutResponse{PrevKv: kvp("a", "1", 3, 3, 1)})
	wantKey(t, kv, "a", kvp("a", "2", 3, 4, 2))

	// prev_kv not asked for: not returned.
	resp = applyOne[*kvstorev1.PutResponse](t, f, 5, putCmd("a", "3", false))
	wantProto(t, resp, &kvstorev1.PutResponse{})
	wantKey(t, kv, "a", kvp("a", "3", 3, 5, 3))

	// An empty value is a value.
	applyOne[*kvstorev1.PutResponse](t, f, 6, putCmd("e", "", false))
	got, ok, err := kv.Get(0, []byte("e"))
	if err != nil || !ok || len(got.Value) != 0 || got.Version != 1 {
		t.Fatalf("empty value: %+v %v %v", got, ok, err)
	}

	// Delete, then put again: version and create revision start over.
	applyOne[*kvstorev1.DeleteResponse](t, f, 7, delCmd(&kvstorev1.DeleteRequest{Key: []byte("a")}))
	resp = applyOne[*kvstorev1.PutResponse](t, f, 9, putCmd("a", "4", true))
	wantProto(t, resp, &kvstorev1.PutResponse{})
	wantKey(t, kv, "a", kvp("a", "4", 9, 9, 1))

	// Past revisions read as they were.
	for rev, want := range map[uint64]*kvstorev1.KeyValue{
		3: kvp("a", "1", 3, 3, 1),
		4: kvp("a", "2", 3, 4, 2),
		6: kvp("a", "3", 3, 5, 3),
		7: nil,
		8: nil,
		9: kvp("a", "4", 9, 9, 1),
	} {
		got, ok, err := kv.Get(rev, []byte("a"))
		if err != nil {
			t.Fatal(err)
		}
		if want == nil {
			if ok {
				t.Fatalf("rev %d: a exists", rev)
			}
			continue
		}
		if !ok {
			t.Fatalf("rev %d: a missing", rev)
		}
		wantProto(t, KeyValueProto(got), want)
	}
}

func TestFSMDelete(t *testing.T) {
	setup := func(t *testing.T) (*FSM, *storage.KV) {
		f, kv := newFSM(t, testLimits)
		var logs []*raft.Log
		for i, k := range []string{"a", "ab", "abc", "b", "c", "c\xff", "d"} {
			logs = append(logs, cmdLog(t, uint64(i+1), putCmd(k, "v"+k, false)))
		}
		for _, r := range applyBatch(t, f, logs...) {
			result(t, r)
		}
		return f, kv
	}
	keys := func(t *testing.T, kv *storage.KV) []string {
		out := []string{}
		for _, p := range dump(t, kv, 0) {
			out = append(out, string(p.Key))
		}
		return out
	}
	cases := []struct {
		name    string
		req     *kvstorev1.DeleteRequest
		deleted int64
		left    []string
	}{
		{"single", &kvstorev1.DeleteRequest{Key: []byte("ab")}, 1, []string{"a", "abc", "b", "c", "c\xff", "d"}},
		{"single missing", &kvstorev1.DeleteRequest{Key: []byte("zz")}, 0, []string{"a", "ab", "abc", "b", "c", "c\xff", "d"}},
		{"range", &kvstorev1.DeleteRequest{Key: []byte("ab"), RangeEnd: []byte("c")}, 3, []string{"a", "c", "c\xff", "d"}},
		{"range to end", &kvstorev1.DeleteRequest{Key: []byte("c"), RangeEnd: []byte{0}}, 3, []string{"a", "ab", "abc", "b"}},
		{"everything", &kvstorev1.DeleteRequest{Key: nil, RangeEnd: []byte{0}}, 7, []string{}},
		{"prefix", &kvstorev1.DeleteRequest{Key: []byte("a"), Prefix: true}, 3, []string{"b", "c", "c\xff", "d"}},
		{"prefix ab", &kvstorev1.DeleteRequest{Key: []byte("ab"), Prefix: true}, 2, []string{"a", "b", "c", "c\xff", "d"}},
		{"prefix 0xff tail", &kvstorev1.DeleteRequest{Key: []byte("c\xff"), Prefix: true}, 1, []string{"a", "ab", "abc", "b", "c", "d"}},
		{"prefix none", &kvstorev1.DeleteRequest{Key: []byte("x"), Prefix: true}, 0, []string{"a", "ab", "abc", "b", "c", "c\xff", "d"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, kv := setup(t)
			resp := applyOne[*kvstorev1.DeleteResponse](t, f, 10, delCmd(c.req))
			wantProto(t, resp, &kvstorev1.DeleteResponse{Deleted: c.deleted})
			if got := keys(t, kv); !reflect.DeepEqual(got, c.left) {
				t.Fatalf("left %q, want %q", got, c.left)
			}
			if kv.AppliedIndex() != 10 {
				t.Fatalf("applied %d", kv.AppliedIndex())
			}
		})
	}
	t.Run("prev_kv", func(t *testing.T) {
		f, kv := setup(t)
		applyOne[*kvstorev1.PutResponse](t, f, 8, putCmd("ab", "again", false))
		resp := applyOne[*kvstorev1.DeleteResponse](t, f, 9, delCmd(&kvstorev1.DeleteRequest{Key: []byte("a"), Prefix: true, PrevKv: true}))
		wantProto(t, resp, &kvstorev1.DeleteResponse{Deleted: 3, PrevKvs: []*kvstorev1.KeyValue{
			kvp("a", "va", 1, 1, 1), kvp("ab", "again", 2, 8, 2), kvp("abc", "vabc", 3, 3, 1),
		}})
		// The deleted keys are still there at the revision before.
		res, err := kv.Range(8, []byte("a"), []byte("b"), storage.RangeOptions{CountOnly: true})
		if err != nil || res.Count != 3 {
			t.Fatalf("count at 8 = %d, %v", res.Count, err)
		}
		// Deleting nothing with prev_kv gives no pairs.
		resp = applyOne[*kvstorev1.DeleteResponse](t, f, 10, delCmd(&kvstorev1.DeleteRequest{Key: []byte("a"), PrevKv: true}))
		wantProto(t, resp, &kvstorev1.DeleteResponse{})
	})
}

// TestFSMTxnCompare runs every compare target with every result against an
// existing key (version 2, create 3, mod 5, value "m") and a missing one.
func TestFSMTxnCompare(t *testing.T) {
	f, kv := newFSM(t, testLimits)
	applyOne[*kvstorev1.PutResponse](t, f, 3, putCmd("k", "l", false))
	applyOne[*kvstorev1.PutResponse](t, f, 5, putCmd("k", "m", false))
	wantKey(t, kv, "k", kvp("k", "m", 3, 5, 2))

	type cs struct {
		name string
		cmp  *kvstorev1.Compare
		held bool
	}
	var cases []cs
	// For a number target n against actual a: EQUAL a==n, NOT_EQUAL a!=n,
	// LESS a<n, GREATER a>n.
	nums := []struct {
		name string
		mk   func(string, kvstorev1.CompareResult, int64) *kvstorev1.Compare
		have int64
	}{
		{"version", cmpVersion, 2},
		{"create", cmpCreate, 3},
		{"mod", cmpMod, 5},
	}
	for _, n := range nums {
		for _, target := range []int64{n.have - 1, n.have, n.have + 1} {
			cases = append(cases,
				cs{fmt.Sprintf("%s == %d", n.name, target), n.mk("k", eq, target), n.have == target},
				cs{fmt.Sprintf("%s != %d", n.name, target), n.mk("k", neq, target), n.have != target},
				cs{fmt.Sprintf("%s < %d", n.name, target), n.mk("k", lt, target), n.have < target},
				cs{fmt.Sprintf("%s > %d", n.name, target), n.mk("k", gt, target), n.have > target},
			)
		}
		// A missing key has 0 for every number.
		cases = append(cases,
			cs{"missing " + n.name + " == 0", n.mk("missing", eq, 0), true},
			cs{"missing " + n.name + " != 0", n.mk("missing", neq, 0), false},
			cs{"missing " + n.name + " < 1", n.mk("missing", lt, 1), true},
			cs{"missing " + n.name + " > 0", n.mk("missing", gt, 0), false},
			cs{"missing " + n.name + " > -1", n.mk("missing", gt, -1), true},
		)
	}
	for _, v := range []struct {
		target     string
		eq, lt, gt bool
	}{
		{"l", false, false, true},
		{"m", true, false, false},
		{"mm", false, true, false},
		{"n", false, true, false},
		{"", false, false, true},
	} {
		cases = append(cases,
			cs{fmt.Sprintf("value == %q", v.target), cmpValue("k", eq, v.target), v.eq},
			cs{fmt.Sprintf("value != %q", v.target), cmpValue("k", neq, v.target), !v.eq},
			cs{fmt.Sprintf("value < %q", v.target), cmpValue("k", lt, v.target), v.lt},
			cs{fmt.Sprintf("value > %q", v.target), cmpValue("k", gt, v.target), v.gt},
		)
	}
	// A value compare on a missing key never holds, whatever the result.
	for _, r := range []kvstorev1.CompareResult{eq, neq, lt, gt} {
		for _, target := range []string{"", "x"} {
			cases = append(cases, cs{fmt.Sprintf("missing value %v %q", r, target), cmpValue("missing", r, target), false})
		}
	}
	// Unspecified result or target: never holds.
	cases = append(cases,
		cs{"unspecified result", cmpVersion("k", kvstorev1.CompareResult_COMPARE_RESULT_UNSPECIFIED, 2), false},
		cs{"no target", &kvstorev1.Compare{Key: []byte("k"), Result: eq}, false},
	)

	index := uint64(10)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			index++
			resp := applyOne[*kvstorev1.TxnResponse](t, f, index, txnCmd(&kvstorev1.TxnRequest{
				Compare: []*kvstorev1.Compare{c.cmp},
				Success: []*kvstorev1.RequestOp{opPut("branch", "success", false)},
				Failure: []*kvstorev1.RequestOp{opPut("branch", "failure", false)},
			}))
			if resp.GetSucceeded() != c.held {
				t.Fatalf("succeeded = %v, want %v", resp.GetSucceeded(), c.held)
			}
			if resp.GetHeader() != nil {
				t.Fatal("FSM response carries a header")
			}
			want := "failure"
			if c.held {
				want = "success"
			}
			got, ok, err := kv.Get(0, []byte("branch"))
			if err != nil || !ok || string(got.Value) != want || got.ModRevision != int64(index) {
				t.Fatalf("branch = %+v %v %v, want %q at %d", got, ok, err, want, index)
			}
			// The compared key is untouched.
			wantKey(t, kv, "k", kvp("k", "m", 3, 5, 2))
		})
	}

	// Several compares: all must hold; an empty list holds.
	for _, c := range []struct {
		name string
		cmps []*kvstorev1.Compare
		held bool
	}{
		{"none", nil, true},
		{"all hold", []*kvstorev1.Compare{cmpVersion("k", eq, 2), cmpValue("k", eq, "m"), cmpCreate("missing", eq, 0)}, true},
		{"last fails", []*kvstorev1.Compare{cmpVersion("k", eq, 2), cmpValue("k", eq, "m"), cmpMod("k", lt, 5)}, false},
		{"first fails", []*kvstorev1.Compare{cmpValue("missing", eq, ""), cmpVersion("k", eq, 2)}, false},
	} {
		index++
		resp := applyOne[*kvstorev1.TxnResponse](t, f, index, txnCmd(&kvstorev1.TxnRequest{Compare: c.cmps}))
		if resp.GetSucceeded() != c.held {
			t.Fatalf("%s: succeeded = %v", c.name, resp.GetSucceeded())
		}
		if len(resp.GetResponses()) != 0 {
			t.Fatalf("%s: responses %v", c.name, resp.GetResponses())
		}
	}
}

// TestFSMTxnOps checks that the ops of a txn see the ones before them, and
// that every change shares the entry's revision.
func TestFSMTxnOps(t *testing.T) {
	f, kv := newFSM(t, testLimits)
	applyOne[*kvstorev1.PutResponse](t, f, 1, putCmd("a", "a1", false))
	applyOne[*kvstorev1.PutResponse](t, f, 2, putCmd("b", "b1", false))
	applyOne[*kvstorev1.PutResponse](t, f, 3, putCmd("c", "c1", false))

	resp := applyOne[*kvstorev1.TxnResponse](t, f, 7, txnCmd(&kvstorev1.TxnRequest{
		Compare: []*kvstorev1.Compare{cmpValue("a", eq, "a1")},
		Success: []*kvstorev1.RequestOp{
			opPut("a", "a7", true),
			opGet("a"),
			opPut("n", "n7", true),
			opRange(&kvstorev1.RangeRequest{Key: []byte(""), RangeEnd: []byte{0}}),
			opDel(&kvstorev1.DeleteRequest{Key: []byte("b"), PrevKv: true}),
			opGet("b"),
			opRange(&kvstorev1.RangeRequest{Key: []byte("a"), RangeEnd: []byte("c"), CountOnly: true}),
			opDel(&kvstorev1.DeleteRequest{Key: []byte("n"), PrevKv: true}),
			opPut("b", "b7", true),
			opRange(&kvstorev1.RangeRequest{Key: []byte(""), RangeEnd: []byte{0}, KeysOnly: true, Limit: 2}),
			{}, // an empty op does nothing
		},
		Failure: []*kvstorev1.RequestOp{opPut("failure", "ran", false)},
	}))
	want := &kvstorev1.TxnResponse{Succeeded: true, Responses: []*kvstorev1.ResponseOp{
		{Response: &kvstorev1.ResponseOp_Put{Put: &kvstorev1.PutResponse{PrevKv: kvp("a", "a1", 1, 1, 1)}}},
		{Response: &kvstorev1.ResponseOp_Get{Get: &kvstorev1.GetResponse{Kv: kvp("a", "a7", 1, 7, 2)}}},
		{Response: &kvstorev1.ResponseOp_Put{Put: &kvstorev1.PutResponse{}}},
		{Response: &kvstorev1.ResponseOp_Range{Range: &kvstorev1.RangeResponse{Count: 4, Kvs: []*kvstorev1.KeyValue{
			kvp("a", "a7", 1, 7, 2), kvp("b", "b1", 2, 2, 1), kvp("c", "c1", 3, 3, 1), kvp("n", "n7", 7, 7, 1),
		}}}},
		{Response: &kvstorev1.ResponseOp_Delete{Delete: &kvstorev1.DeleteResponse{Deleted: 1, PrevKvs: []*kvstorev1.KeyValue{kvp("b", "b1", 2, 2, 1)}}}},
		{Response: &kvstorev1.ResponseOp_Get{Get: &kvstorev1.GetResponse{}}},
		{Response: &kvstorev1.ResponseOp_Range{Range: &kvstorev1.RangeResponse{Count: 1}}},
		{Response: &kvstorev1.ResponseOp_Delete{Delete: &kvstorev1.DeleteResponse{Deleted: 1, PrevKvs: []*kvstorev1.KeyValue{kvp("n", "n7", 7, 7, 1)}}}},
		{Response: &kvstorev1.ResponseOp_Put{Put: &kvstorev1.PutResponse{}}},
		{Response: &kvstorev1.ResponseOp_Range{Range: &kvstorev1.RangeResponse{Count: 3, More: true, NextKey: []byte("b\x00"), Kvs: []*kvstorev1.KeyValue{
			{Key: []byte("a"), CreateRevision: 1, ModRevision: 7, Version: 2},
			{Key: []byte("b"), CreateRevision: 7, ModRevision: 7, Version: 1},
		}}}},
		{},
	}}
	wantProto(t, resp, want)

	// Every change is at revision 7; nothing of the failure branch ran.
	got := dump(t, kv, 0)
	wantAll := []*kvstorev1.KeyValue{kvp("a", "a7", 1, 7, 2), kvp("b", "b7", 7, 7, 1), kvp("c", "c1", 3, 3, 1)}
	if !protoSliceEqual(got, wantAll) {
		t.Fatalf("state %v\nwant %v", got, wantAll)
	}
	// Revision 6 is the state before the txn: no partial view of it exists.
	if before := dump(t, kv, 6); !protoSliceEqual(before, []*kvstorev1.KeyValue{
		kvp("a", "a1", 1, 1, 1), kvp("b", "b1", 2, 2, 1), kvp("c", "c1", 3, 3, 1),
	}) {
		t.Fatalf("state at 6: %v", before)
	}
	if kv.AppliedIndex() != 7 {
		t.Fatalf("applied %d", kv.AppliedIndex())
	}
}

// TestFSMTxnAllOrNothing: a failing compare runs the failure branch only.
func TestFSMTxnAllOrNothing(t *testing.T) {
	f, kv := newFSM(t, testLimits)
	applyOne[*kvstorev1.PutResponse](t, f, 1, putCmd("lock", "held", false))
	applyOne[*kvstorev1.PutResponse](t, f, 2, putCmd("x", "x2", false))

	resp := applyOne[*kvstorev1.TxnResponse](t, f, 3, txnCmd(&kvstorev1.TxnRequest{
		Compare: []*kvstorev1.Compare{cmpVersion("x", eq, 1), cmpVersion("lock", eq, 0)},
		Success: []*kvstorev1.RequestOp{
			opPut("x", "success", false),
			opPut("y", "success", false),
			opDel(&kvstorev1.DeleteRequest{Key: []byte("lock")}),
		},
		Failure: []*kvstorev1.RequestOp{opGet("lock"), opGet("y")},
	}))
	wantProto(t, resp, &kvstorev1.TxnResponse{Succeeded: false, Responses: []*kvstorev1.ResponseOp{
		{Response: &kvstorev1.ResponseOp_Get{Get: &kvstorev1.GetResponse{Kv: kvp("lock", "held", 1, 1, 1)}}},
		{Response: &kvstorev1.ResponseOp_Get{Get: &kvstorev1.GetResponse{}}},
	}})
	wantKey(t, kv, "x", kvp("x", "x2", 2, 2, 1))
	wantKey(t, kv, "y", nil)
	wantKey(t, kv, "lock", kvp("lock", "held", 1, 1, 1))
	// The entry is applied even though it changed nothing.
	if kv.AppliedIndex() != 3 {
		t.Fatalf("applied %d", kv.AppliedIndex())
	}

	// An empty failure branch: nothing at all.
	resp = applyOne[*kvstorev1.TxnResponse](t, f, 4, txnCmd(&kvstorev1.TxnRequest{
		Compare: []*kvstorev1.Compare{cmpValue("x", eq, "nope")},
		Success: []*kvstorev1.RequestOp{opPut("x", "success", false)},
	}))
	wantProto(t, resp, &kvstorev1.TxnResponse{Responses: []*kvstorev1.ResponseOp{}})
	if got := dump(t, kv, 0); len(got) != 2 {
		t.Fatalf("state %v", got)
	}
}

func TestFSMTxnRangeLimits(t *testing.T) {
	setup := func(t *testing.T, lim Limits) *FSM {
		f, _ := newFSM(t, lim)
		var logs []*raft.Log
		for i := range 10 {
			logs = append(logs, cmdLog(t, uint64(i+1), putCmd(fmt.Sprintf("k%d", i), "0123456789", false)))
		}
		applyBatch(t, f, logs...)
		return f
	}
	rangeIn := func(t *testing.T, f *FSM, index uint64, req *kvstorev1.RangeRequest) *kvstorev1.RangeResponse {
		t.Helper()
		resp := applyOne[*kvstorev1.TxnResponse](t, f, index, txnCmd(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{opRange(req)}}))
		return resp.GetResponses()[0].GetRange()
	}
	keysOf := func(r *kvstorev1.RangeResponse) []string {
		out := []string{}
		for _, kv := range r.GetKvs() {
			out = append(out, string(kv.Key))
		}
		return out
	}
	all := &kvstorev1.RangeRequest{Key: []byte("k"), Prefix: true}

	f := setup(t, Limits{MaxRangePairs: 3, MaxRangeBytes: 1 << 20})
	for i, c := range []struct {
		limit int64
		want  int
	}{{0, 3}, {-1, 3}, {2, 2}, {3, 3}, {10, 3}} {
		req := proto.Clone(all).(*kvstorev1.RangeRequest)
		req.Limit = c.limit
		r := rangeIn(t, f, 20+uint64(i), req)
		if len(r.GetKvs()) != c.want || !r.GetMore() || r.GetCount() != 10 {
			t.Fatalf("limit %d: %d pairs, more %v, count %d", c.limit, len(r.GetKvs()), r.GetMore(), r.GetCount())
		}
		last := r.GetKvs()[len(r.GetKvs())-1].GetKey()
		if !bytes.Equal(r.GetNextKey(), append(bytes.Clone(last), 0)) {
			t.Fatalf("limit %d: next_key %q after %q", c.limit, r.GetNextKey(), last)
		}
	}
	// Paging through with next_key, same prefix end.
	var got []string
	req := &kvstorev1.RangeRequest{Key: []byte("k"), RangeEnd: storage.PrefixEnd([]byte("k"))}
	for i := uint64(0); ; i++ {
		if i > 10 {
			t.Fatal("paging does not end")
		}
		r := rangeIn(t, f, 40+i, req)
		got = append(got, keysOf(r)...)
		if !r.GetMore() {
			if len(r.GetNextKey()) != 0 {
				t.Fatalf("next_key %q on the last page", r.GetNextKey())
			}
			break
		}
		req.Key = r.GetNextKey()
	}
	if len(got) != 10 || got[0] != "k0" || got[9] != "k9" {
		t.Fatalf("pages %q", got)
	}
	// Count only ignores the page size.
	r := rangeIn(t, f, 60, &kvstorev1.RangeRequest{Key: []byte("k"), Prefix: true, CountOnly: true})
	if r.GetCount() != 10 || len(r.GetKvs()) != 0 || r.GetMore() || len(r.GetNextKey()) != 0 {
		t.Fatalf("count only: %v", r)
	}

	// The byte budget ends a page early (12 bytes a pair: 25 bytes fill
	// after three pairs).
	f = setup(t, Limits{MaxRangePairs: 100, MaxRangeBytes: 25})
	r = rangeIn(t, f, 20, all)
	if got := keysOf(r); !reflect.DeepEqual(got, []string{"k0", "k1", "k2"}) || !r.GetMore() {
		t.Fatalf("byte-limited page: %q more %v", got, r.GetMore())
	}

	// Zero limits mean no server cap: the request's own limit still holds.
	f = setup(t, Limits{})
	r = rangeIn(t, f, 20, &kvstorev1.RangeRequest{Key: []byte("k"), Prefix: true, Limit: 2})
	if got := keysOf(r); !reflect.DeepEqual(got, []string{"k0", "k1"}) || !r.GetMore() || r.GetCount() != 10 {
		t.Fatalf("limit 2 with zero Limits: %q more %v count %d", got, r.GetMore(), r.GetCount())
	}
	r = rangeIn(t, f, 21, all)
	if len(r.GetKvs()) != 10 || r.GetMore() {
		t.Fatalf("no limit with zero Limits: %d pairs, more %v", len(r.GetKvs()), r.GetMore())
	}
}

// TestFSMNonCommandEntries: configuration and other entries take a result
// slot each and advance the applied index.
func TestFSMNonCommandEntries(t *testing.T) {
	f, kv := newFSM(t, testLimits)
	logs := []*raft.Log{
		{Index: 1, Term: 1, Type: raft.LogConfiguration, Data: []byte("not a command")},
		{Index: 2, Term: 1, Type: raft.LogNoop},
		cmdLog(t, 3, putCmd("a", "1", false)),
		{Index: 4, Term: 1, Type: raft.LogBarrier},
		{Index: 5, Term: 2, Type: raft.LogConfiguration},
	}
	res := applyBatch(t, f, logs...)
	for _, i := range []int{0, 1, 3, 4} {
		if ar, ok := res[i].(*applyResult); ok && ar != nil && ar.err != nil {
			t.Fatalf("entry %d: %v", i+1, ar.err)
		}
	}
	result(t, res[2])
	if kv.AppliedIndex() != 5 {
		t.Fatalf("applied %d, want 5", kv.AppliedIndex())
	}
	wantKey(t, kv, "a", kvp("a", "1", 3, 3, 1))

	// A batch of configuration entries alone advances it too.
	applyBatch(t, f, &raft.Log{Index: 6, Type: raft.LogConfiguration})
	if kv.AppliedIndex() != 6 {
		t.Fatalf("applied %d, want 6", kv.AppliedIndex())
	}
	// And so does Apply, the single-entry path.
	if r := f.Apply(cmdLog(t, 7, putCmd("b", "2", false))); r == nil {
		t.Fatal("Apply returned nil")
	} else {
		result(t, r)
	}
	if kv.AppliedIndex() != 7 {
		t.Fatalf("applied %d, want 7", kv.AppliedIndex())
	}
	if f.Err() != nil {
		t.Fatal(f.Err())
	}
}

// TestFSMReplay: entries at or below the applied index were applied before
// and are skipped, results nil, state untouched.
func TestFSMReplay(t *testing.T) {
	f, kv := newFSM(t, testLimits)
	var logs []*raft.Log
	for i := uint64(1); i <= 5; i++ {
		logs = append(logs, cmdLog(t, i, putCmd("k", fmt.Sprint(i), true)))
	}
	applyBatch(t, f, logs...)
	wantKey(t, kv, "k", kvp("k", "5", 1, 5, 5))

	// The whole batch again: all skipped.
	for i, r := range applyBatch(t, f, logs...) {
		if r != nil {
			t.Fatalf("replayed entry %d gave %v", i+1, r)
		}
	}
	wantKey(t, kv, "k", kvp("k", "5", 1, 5, 5))
	if kv.AppliedIndex() != 5 {
		t.Fatalf("applied %d", kv.AppliedIndex())
	}

	// A batch straddling the applied index: the old part skipped, the new
	// part applied against the right state.
	more := append(logs[2:], cmdLog(t, 6, putCmd("k", "6", true)), cmdLog(t, 7, putCmd("k", "7", true)))
	res := applyBatch(t, f, more...)
	for i := range 3 {
		if res[i] != nil {
			t.Fatalf("entry %d not skipped: %v", i+3, res[i])
		}
	}
	wantProto(t, result(t, res[3]), &kvstorev1.PutResponse{PrevKv: kvp("k", "5", 1, 5, 5)})
	wantProto(t, result(t, res[4]), &kvstorev1.PutResponse{PrevKv: kvp("k", "6", 1, 6, 6)})
	wantKey(t, kv, "k", kvp("k", "7", 1, 7, 7))
}

// TestFSMBadCommands: an undecodable or unknown command is answered with an
// error and changes nothing; the rest of the batch applies.
func TestFSMBadCommands(t *testing.T) {
	f, kv := newFSM(t, testLimits)
	// Bytes that are no protobuf message, and a command cut short.
	garbage := &raft.Log{Index: 2, Term: 1, Type: raft.LogCommand, Data: []byte{0xff, 0xff, 0xff}}
	truncated := cmdLog(t, 3, putCmd("c", "3", false))
	truncated.Data = truncated.Data[:len(truncated.Data)-1]
	res := applyBatch(t, f,
		cmdLog(t, 1, putCmd("a", "1", false)),
		garbage,
		truncated,
		cmdLog(t, 4, putCmd("b", "4", false)),
	)
	result(t, res[0])
	result(t, res[3])
	for _, i := range []int{1, 2} {
		ar, ok := res[i].(*applyResult)
		if !ok || ar == nil || ar.err == nil {
			t.Fatalf("entry %d: %v, want an error result", i+1, res[i])
		}
		if ar.resp != nil {
			t.Fatalf("entry %d: response %v with the error", i+1, ar.resp)
		}
	}
	if f.Err() != nil {
		t.Fatalf("a bad command stopped the state machine: %v", f.Err())
	}
	wantKey(t, kv, "a", kvp("a", "1", 1, 1, 1))
	wantKey(t, kv, "b", kvp("b", "4", 4, 4, 1))
	wantKey(t, kv, "c", nil)
	if kv.AppliedIndex() != 4 {
		t.Fatalf("applied %d", kv.AppliedIndex())
	}
	// The entries' revisions hold no change of their own.
	for _, rev := range []uint64{2, 3} {
		if got := dump(t, kv, rev); len(got) != 1 {
			t.Fatalf("state at %d: %v", rev, got)
		}
	}
}

// TestFSMEmptyCommand: nil data (the read path's no-op) does nothing and
// answers with neither error nor response.
func TestFSMEmptyCommand(t *testing.T) {
	f, kv := newFSM(t, testLimits)
	res := applyBatch(t, f,
		&raft.Log{Index: 1, Term: 1, Type: raft.LogCommand},
		&raft.Log{Index: 2, Term: 1, Type: raft.LogCommand, Data: []byte{}},
		cmdLog(t, 3, &raftcmdv1.Command{}),
	)
	for i, r := range res {
		ar, ok := r.(*applyResult)
		if !ok || ar == nil || ar.err != nil || ar.resp != nil {
			t.Fatalf("entry %d: %#v", i+1, r)
		}
	}
	if kv.AppliedIndex() != 3 || len(dump(t, kv, 0)) != 0 {
		t.Fatalf("applied %d, keys %v", kv.AppliedIndex(), dump(t, kv, 0))
	}
	// And nil Data through Apply, as Replica.noop sends it.
	if ar, ok := f.Apply(&raft.Log{Index: 4, Type: raft.LogCommand}).(*applyResult); !ok || ar.err != nil {
		t.Fatalf("Apply(nil data) = %v", ar)
	}
	if kv.AppliedIndex() != 4 {
		t.Fatalf("applied %d", kv.AppliedIndex())
	}
}

// TestFSMFailedStore: when the store cannot be written the FSM stops, every
// result of the batch and of later batches is an error, and nothing more is
// applied.
func TestFSMFailedStore(t *testing.T) {
	dir := t.TempDir()
	kv, err := storage.OpenKV(dir, testLogger(t), storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := NewFSM(kv, testLimits, testLogger(t))
	applyOne[*kvstorev1.PutResponse](t, f, 1, putCmd("a", "1", false))
	if err := kv.Close(); err != nil {
		t.Fatal(err)
	}
	func() {
		defer func() {
			if p := recover(); p != nil {
				t.Skipf("badger panics on a closed store: %v", p)
			}
		}()
		res := applyBatch(t, f, cmdLog(t, 2, putCmd("b", "2", false)), cmdLog(t, 3, putCmd("c", "3", false)))
		for i, r := range res {
			ar, ok := r.(*applyResult)
			if !ok || ar == nil || !errors.Is(ar.err, ErrStateMachineFailed) {
				t.Fatalf("entry %d: %v, want ErrStateMachineFailed", i+2, r)
			}
		}
	}()
	if !errors.Is(f.Err(), ErrStateMachineFailed) {
		t.Fatalf("Err() = %v", f.Err())
	}
	res := applyBatch(t, f, cmdLog(t, 4, putCmd("d", "4", false)))
	if ar, ok := res[0].(*applyResult); !ok || !errors.Is(ar.err, ErrStateMachineFailed) {
		t.Fatalf("later batch: %v", res[0])
	}
	if _, err := f.Snapshot(); err == nil {
		t.Fatal("Snapshot of a failed FSM succeeded")
	}
	// The store reopens at the last applied index: replay starts there.
	kv, err = storage.OpenKV(dir, testLogger(t), storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer kv.Close()
	if kv.AppliedIndex() != 1 {
		t.Fatalf("reopened applied %d, want 1", kv.AppliedIndex())
	}
}

// script is a mixed history for the snapshot and batching tests.
func script(t *testing.T) []*raft.Log {
	cmds := []*raftcmdv1.Command{
		putCmd("a", "1", false),
		putCmd("b", "1", false),
		putCmd("a", "2", true),
		delCmd(&kvstorev1.DeleteRequest{Key: []byte("b"), PrevKv: true}),
		txnCmd(&kvstorev1.TxnRequest{
			Compare: []*kvstorev1.Compare{cmpVersion("a", eq, 2)},
			Success: []*kvstorev1.RequestOp{opPut("c", "3", false), opPut("b", "again", true), opRange(&kvstorev1.RangeRequest{Key: []byte{}, RangeEnd: []byte{0}})},
		}),
		putCmd("pre/1", "x", false),
		putCmd("pre/2", "y", false),
		delCmd(&kvstorev1.DeleteRequest{Key: []byte("pre/"), Prefix: true, PrevKv: true}),
		putCmd("pre/1", "z", true),
		txnCmd(&kvstorev1.TxnRequest{
			Compare: []*kvstorev1.Compare{cmpValue("c", eq, "nope")},
			Success: []*kvstorev1.RequestOp{opPut("never", "x", false)},
			Failure: []*kvstorev1.RequestOp{opDel(&kvstorev1.DeleteRequest{Key: []byte("a"), PrevKv: true}), opGet("a")},
		}),
	}
	var logs []*raft.Log
	for i, c := range cmds {
		logs = append(logs, cmdLog(t, uint64(i+1), c))
	}
	return logs
}

type testSink struct {
	bytes.Buffer
	closed, canceled bool
}

func (s *testSink) ID() string    { return "test" }
func (s *testSink) Close() error  { s.closed = true; return nil }
func (s *testSink) Cancel() error { s.canceled = true; return nil }

// A snapshot is a checkpoint marker; opening it through the snapshot
// store copies the store as it is then, which restores anywhere.
func TestFSMSnapshotRestore(t *testing.T) {
	src, srcKV := newFSM(t, testLimits)
	logs := script(t)
	applyBatch(t, src, logs...)
	last := logs[len(logs)-1].Index

	snap, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	// Raft persists alongside new applies.
	applyOne[*kvstorev1.PutResponse](t, src, last+1, putCmd("late", "x", false))

	inner := raft.NewInmemSnapshotStore()
	_, trans := raft.NewInmemTransport("")
	sink, err := inner.Create(raft.SnapshotVersionMax, last, 1, raft.Configuration{}, 1, trans)
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	list, err := inner.List()
	if err != nil || len(list) != 1 {
		t.Fatalf("snapshots %v, %v", list, err)
	}
	_, raw, err := inner.Open(list[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	marker, _ := io.ReadAll(raw)
	if !isCheckpointMarker(marker) {
		t.Fatalf("persisted snapshot is %d bytes, not a checkpoint marker", len(marker))
	}

	tempDir := t.TempDir()
	store := newSnapshotStore(inner, srcKV, func() error { return nil }, tempDir, nil, testLogger(t))
	open := func() io.ReadCloser {
		meta, rc, err := store.Open(list[0].ID)
		if err != nil {
			t.Fatal(err)
		}
		if meta.Index != last || meta.Size <= int64(checkpointMarkerLen) {
			t.Fatalf("opened snapshot: index %d size %d, want index %d and a copy", meta.Index, meta.Size, last)
		}
		return rc
	}

	// Into a fresh FSM: the copy is of the store when opened, past the
	// marker's index, and replaying from the marker skips what it holds.
	dst, dstKV := newFSM(t, testLimits)
	if err := dst.Restore(open()); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(tempDir, "*")); len(left) != 0 {
		t.Fatalf("copies left after the restore read them: %q", left)
	}
	wantSameState(t, dstKV, srcKV, 1, 4, 8, last, last+1)
	for rev := uint64(1); rev <= last+1; rev++ {
		if g, w := dump(t, dstKV, rev), dump(t, srcKV, rev); !protoSliceEqual(g, w) {
			t.Fatalf("state at %d:\n got %v\nwant %v", rev, g, w)
		}
	}
	applyBatch(t, dst, append(logs[len(logs)-1:], cmdLog(t, last+1, putCmd("late", "x", false)))...)
	wantSameState(t, dstKV, srcKV, last+1)
	applyOne[*kvstorev1.PutResponse](t, dst, last+2, putCmd("later", "y", false))
	applyOne[*kvstorev1.PutResponse](t, src, last+2, putCmd("later", "y", false))
	wantSameState(t, dstKV, srcKV, last+1, last+2)

	// Into an FSM with other, newer data: replaced.
	other, otherKV := newFSM(t, testLimits)
	for i := uint64(1); i <= last+5; i++ {
		applyOne[*kvstorev1.PutResponse](t, other, i, putCmd(fmt.Sprintf("other-%d", i), "x", false))
	}
	if err := other.Restore(open()); err != nil {
		t.Fatal(err)
	}
	wantSameState(t, otherKV, srcKV, 1, last, last+2)

	// A marker is refused, and the store is left alone.
	if err := other.Restore(io.NopCloser(bytes.NewReader(marker))); !errors.Is(err, errCheckpointMarker) {
		t.Fatalf("Restore of a marker: %v, want errCheckpointMarker", err)
	}
	wantSameState(t, otherKV, srcKV, last)

	// A store behind its own checkpoint cannot be copied.
	behind := newSnapshotStore(inner, openKV(t), func() error { return nil }, tempDir, nil, testLogger(t))
	if _, _, err := behind.Open(list[0].ID); err == nil || !strings.Contains(err.Error(), "behind its own checkpoint") {
		t.Fatalf("Open with the store behind the marker: %v", err)
	}

	// A plain sink works too, and is closed, not canceled.
	snap2, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var ts testSink
	if err := snap2.Persist(&ts); err != nil {
		t.Fatal(err)
	}
	if !ts.closed || ts.canceled || !isCheckpointMarker(ts.Bytes()) {
		t.Fatalf("sink closed %v canceled %v, %d bytes", ts.closed, ts.canceled, ts.Len())
	}

	// A copy of an empty store restores to an empty store.
	emptyKV := openKV(t)
	var es bytes.Buffer
	if err := emptyKV.Snapshot(&es, emptyKV.AppliedIndex()); err != nil {
		t.Fatal(err)
	}
	third, thirdKV := newFSM(t, testLimits)
	applyOne[*kvstorev1.PutResponse](t, third, 1, putCmd("x", "1", false))
	if err := third.Restore(io.NopCloser(&es)); err != nil {
		t.Fatal(err)
	}
	if thirdKV.AppliedIndex() != 0 || len(dump(t, thirdKV, 0)) != 0 {
		t.Fatalf("after empty restore: applied %d, %d keys", thirdKV.AppliedIndex(), len(dump(t, thirdKV, 0)))
	}
}

// TestFSMBatchingIsInvisible applies one random history three ways (all in
// one batch, one entry per batch, random chunks) and wants the same results
// and the same state at every revision.
func TestFSMBatchingIsInvisible(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	keys := []string{"a", "b", "c", "d", "e", "f"}
	key := func() string { return keys[rng.IntN(len(keys))] }
	var cmds []*raftcmdv1.Command
	for i := range 300 {
		switch rng.IntN(6) {
		case 0, 1:
			cmds = append(cmds, putCmd(key(), fmt.Sprint(i), rng.IntN(2) == 0))
		case 2:
			cmds = append(cmds, delCmd(&kvstorev1.DeleteRequest{Key: []byte(key()), PrevKv: true}))
		case 3:
			lo, hi := key(), key()
			if lo > hi {
				lo, hi = hi, lo
			}
			cmds = append(cmds, delCmd(&kvstorev1.DeleteRequest{Key: []byte(lo), RangeEnd: []byte(hi), PrevKv: rng.IntN(2) == 0}))
		case 4, 5:
			k := key()
			cmds = append(cmds, txnCmd(&kvstorev1.TxnRequest{
				Compare: []*kvstorev1.Compare{cmpVersion(k, kvstorev1.CompareResult(1+rng.IntN(4)), int64(rng.IntN(3)))},
				Success: []*kvstorev1.RequestOp{
					opPut(k, fmt.Sprint("s", i), true),
					opRange(&kvstorev1.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}, Limit: 3}),
					opDel(&kvstorev1.DeleteRequest{Key: []byte(key()), PrevKv: true}),
					opGet(key()),
				},
				Failure: []*kvstorev1.RequestOp{
					opRange(&kvstorev1.RangeRequest{Key: []byte(k), Prefix: true, CountOnly: true}),
					opPut(key(), fmt.Sprint("f", i), true),
				},
			}))
		}
	}
	logs := make([]*raft.Log, len(cmds))
	for i, c := range cmds {
		logs[i] = cmdLog(t, uint64(i+1), c)
	}
	// Sprinkle non-command entries in.
	for _, i := range []int{0, 17, 150, 299} {
		logs[i] = &raft.Log{Index: logs[i].Index, Type: raft.LogConfiguration}
	}

	run := func(chunks func() int) ([]proto.Message, *storage.KV) {
		f, kv := newFSM(t, testLimits)
		var out []proto.Message
		for i := 0; i < len(logs); {
			n := min(chunks(), len(logs)-i)
			for _, r := range applyBatch(t, f, logs[i:i+n]...) {
				if r == nil {
					out = append(out, nil)
					continue
				}
				out = append(out, result(t, r))
			}
			i += n
		}
		return out, kv
	}
	oneRes, oneKV := run(func() int { return len(logs) })
	eachRes, eachKV := run(func() int { return 1 })
	chunkRes, chunkKV := run(func() int { return 1 + rng.IntN(20) })

	for i := range oneRes {
		for _, other := range [][]proto.Message{eachRes, chunkRes} {
			if !protoEqualNil(oneRes[i], other[i]) {
				t.Fatalf("entry %d: result\n %v\nvs %v", i+1, oneRes[i], other[i])
			}
		}
	}
	for rev := uint64(1); rev <= uint64(len(logs)); rev++ {
		w := dump(t, oneKV, rev)
		if g := dump(t, eachKV, rev); !protoSliceEqual(g, w) {
			t.Fatalf("one-by-one state at %d:\n got %v\nwant %v", rev, g, w)
		}
		if g := dump(t, chunkKV, rev); !protoSliceEqual(g, w) {
			t.Fatalf("chunked state at %d:\n got %v\nwant %v", rev, g, w)
		}
	}
	// Sanity: the history took both branches and changed keys.
	var succeeded, failed, changed int
	for _, r := range oneRes {
		if tr, ok := r.(*kvstorev1.TxnResponse); ok {
			if tr.GetSucceeded() {
				succeeded++
			} else {
				failed++
			}
		}
	}
	for rev := uint64(2); rev <= uint64(len(logs)); rev++ {
		if !protoSliceEqual(dump(t, oneKV, rev), dump(t, oneKV, rev-1)) {
			changed++
		}
	}
	if succeeded < 10 || failed < 10 || changed < 100 {
		t.Fatalf("weak history: %d txns succeeded, %d failed, %d revisions changed state", succeeded, failed, changed)
	}
}

func protoEqualNil(a, b proto.Message) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return proto.Equal(a, b)
}

func setClusterIDCmd(id string) *raftcmdv1.Command {
	return &raftcmdv1.Command{Command: &raftcmdv1.Command_SetClusterId{SetClusterId: &raftcmdv1.SetClusterID{ClusterId: id}}}
}

// TestFSMSetClusterID: set_cluster_id entries reach Config.OnClusterID in
// log order; one whose id is malformed is refused the same way everywhere
// and reaches nobody; a failure to keep the id stops the state machine.
func TestFSMSetClusterID(t *testing.T) {
	f, kv := newFSM(t, testLimits)
	var got []string
	f.onClusterID = func(id string) error {
		got = append(got, id)
		return nil
	}
	a, b := strings.Repeat("a", 32), strings.Repeat("b", 32)
	res := applyBatch(t, f,
		cmdLog(t, 1, setClusterIDCmd(a)),
		cmdLog(t, 2, setClusterIDCmd("not-hex")),
		cmdLog(t, 3, setClusterIDCmd(strings.Repeat("A", 32))),
		cmdLog(t, 4, setClusterIDCmd(b)),
	)
	result(t, res[0])
	result(t, res[3])
	for _, i := range []int{1, 2} {
		if ar, ok := res[i].(*applyResult); !ok || ar.err == nil {
			t.Fatalf("entry %d: %v, want an error result", i+1, res[i])
		}
	}
	if !slices.Equal(got, []string{a, b}) {
		t.Fatalf("OnClusterID heard %q, want %q", got, []string{a, b})
	}
	// Replayed entries (at or below the applied index) are not heard again.
	applyBatch(t, f, cmdLog(t, 4, setClusterIDCmd(b)))
	if len(got) != 2 || kv.AppliedIndex() != 4 {
		t.Fatalf("after a replay: heard %q, applied %d", got, kv.AppliedIndex())
	}

	f.onClusterID = func(string) error { return errors.New("disk full") }
	applyBatch(t, f, cmdLog(t, 5, setClusterIDCmd(a)))
	if !errors.Is(f.Err(), ErrStateMachineFailed) {
		t.Fatalf("a cluster id that could not be kept: state machine error %v", f.Err())
	}
}
