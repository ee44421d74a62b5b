package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/consensus"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

// ok is the "no error" code of the tables below; Connect codes start at 1.
const ok connect.Code = 0

// small limits keep the tables short.
var small = Limits{MaxKeyBytes: 4, MaxValueBytes: 8, MaxRequestBytes: 64, MaxRangePairs: 10, MaxTxnOps: 2}

// checkErr asserts err is nil for ok, else a Connect error with code whose
// message contains every part of msg ("|"-separated).
func checkErr(t *testing.T, err error, code connect.Code, msg string) {
	t.Helper()
	if code == ok {
		if err != nil {
			t.Errorf("unexpected error: %v", err)
		}
		return
	}
	if err == nil {
		t.Errorf("no error, want %v %q", code, msg)
		return
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		t.Errorf("%T %v is not a *connect.Error", err, err)
		return
	}
	if ce.Code() != code {
		t.Errorf("code %v (%v), want %v", ce.Code(), err, code)
	}
	if msg == "" {
		return
	}
	for part := range strings.SplitSeq(msg, "|") {
		if !strings.Contains(ce.Message(), part) {
			t.Errorf("message %q does not contain %q", ce.Message(), part)
		}
	}
}

func n(b byte, count int) []byte { return bytes.Repeat([]byte{b}, count) }

func TestDefaultLimits(t *testing.T) {
	want := Limits{MaxKeyBytes: 4096, MaxValueBytes: 1 << 20, MaxRequestBytes: 2 << 20, MaxRangePairs: 10_000, MaxTxnOps: 128}
	if got := DefaultLimits(); got != want {
		t.Errorf("DefaultLimits() = %+v, want %+v", got, want)
	}
}

func TestKey(t *testing.T) {
	d := DefaultLimits()
	for _, tc := range []struct {
		name string
		l    Limits
		key  []byte
		code connect.Code
		msg  string
	}{
		{"nil", small, nil, connect.CodeInvalidArgument, "the key is empty"},
		{"empty", small, []byte{}, connect.CodeInvalidArgument, "the key is empty"},
		{"one byte", small, []byte("a"), ok, ""},
		{"at the limit", small, n('a', 4), ok, ""},
		{"over the limit", small, n('a', 5), connect.CodeInvalidArgument, "the key is 5 bytes|limit of 4 bytes|--max-key-bytes"},
		{"default: 4 KiB", d, n('a', 4096), ok, ""},
		{"default: 4 KiB + 1", d, n('a', 4097), connect.CodeInvalidArgument, "4097 bytes|limit of 4096 bytes"},
		{"a zero byte is a key", small, []byte{0}, ok, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkErr(t, tc.l.key("the key", tc.key), tc.code, tc.msg)
		})
	}
}

func TestValue(t *testing.T) {
	d := DefaultLimits()
	for _, tc := range []struct {
		name  string
		l     Limits
		value []byte
		code  connect.Code
		msg   string
	}{
		{"nil", small, nil, ok, ""},
		{"at the limit", small, n('v', 8), ok, ""},
		{"over the limit", small, n('v', 9), connect.CodeResourceExhausted, "value is 9 bytes|limit of 8 bytes|--max-value-bytes"},
		{"default: 1 MiB", d, n('v', 1<<20), ok, ""},
		{"default: 1 MiB + 1", d, n('v', 1<<20+1), connect.CodeResourceExhausted, "1048577 bytes|limit of 1048576 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkErr(t, tc.l.value(tc.value), tc.code, tc.msg)
		})
	}
}

func TestConsistency(t *testing.T) {
	for _, tc := range []struct {
		c    kvstorev1.Consistency
		code connect.Code
		msg  string
	}{
		{kvstorev1.Consistency_CONSISTENCY_UNSPECIFIED, ok, ""},
		{kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE, ok, ""},
		{kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE, ok, ""},
		{3, connect.CodeInvalidArgument, "unknown consistency 3"},
		{-1, connect.CodeInvalidArgument, "unknown consistency -1"},
	} {
		t.Run(fmt.Sprint(int32(tc.c)), func(t *testing.T) {
			checkErr(t, consistency(tc.c), tc.code, tc.msg)
		})
	}
}

func TestRevision(t *testing.T) {
	for _, tc := range []struct {
		rev  int64
		code connect.Code
		msg  string
	}{
		{0, ok, ""},
		{1, ok, ""},
		{1 << 62, ok, ""}, // the future is the store's to refuse: OutOfRange
		{-1, connect.CodeInvalidArgument, "revision -1 is negative"},
		{-1 << 63, connect.CodeInvalidArgument, "negative"},
	} {
		t.Run(fmt.Sprint(tc.rev), func(t *testing.T) {
			checkErr(t, revision(tc.rev), tc.code, tc.msg)
		})
	}
}

func TestSpan(t *testing.T) {
	for _, tc := range []struct {
		name          string
		key, rangeEnd []byte
		prefix        bool
		code          connect.Code
		msg           string
	}{
		{"prefix and range_end", []byte("a"), []byte("b"), true, connect.CodeInvalidArgument, "prefix and range_end cannot be used together"},
		{"prefix and range_end zero", []byte("a"), []byte{0}, true, connect.CodeInvalidArgument, "prefix and range_end"},
		{"key over the limit", n('a', 5), []byte("b"), false, connect.CodeInvalidArgument, "key is 5 bytes|limit of 4 bytes|--max-key-bytes"},
		{"key over the limit with prefix", n('a', 5), nil, true, connect.CodeInvalidArgument, "key is 5 bytes"},
		{"key over the limit alone", n('a', 5), nil, false, connect.CodeInvalidArgument, "key is 5 bytes"},
		{"range_end over the limit", []byte("a"), n('b', 5), false, connect.CodeInvalidArgument, "range_end is 5 bytes|limit of 4 bytes"},
		{"key and range_end at the limit", n('a', 4), n('b', 4), false, ok, ""},
		{"prefix with a key", []byte("a/"), nil, true, ok, ""},
		{"prefix with an empty key: everything", nil, nil, true, ok, ""},
		{"single key", []byte("a"), nil, false, ok, ""},
		{"single empty key", nil, nil, false, connect.CodeInvalidArgument, "key is empty"},
		{`key to "\x00"`, []byte("a"), []byte{0}, false, ok, ""},
		{`empty key to "\x00": everything`, nil, []byte{0}, false, ok, ""},
		{"range", []byte("a"), []byte("b"), false, ok, ""},
		{"range from the empty key", nil, []byte("b"), false, ok, ""},
		{"range_end just after key", []byte("a"), []byte("a\x00"), false, ok, ""},
		{"range_end equal to key", []byte("b"), []byte("b"), false, connect.CodeInvalidArgument, `range_end "b" is not after key "b"`},
		{"range_end before key", []byte("b"), []byte("a"), false, connect.CodeInvalidArgument, `range_end "a" is not after key "b"`},
		{"range_end a prefix of key", []byte("ab"), []byte("a"), false, connect.CodeInvalidArgument, "not after key"},
		{`range_end "\x00\x00" is not "no end"`, []byte("a"), []byte{0, 0}, false, connect.CodeInvalidArgument, "not after key"},
		{`range_end "\x00\x00" after the empty key`, nil, []byte{0, 0}, false, ok, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkErr(t, small.span(tc.key, tc.rangeEnd, tc.prefix), tc.code, tc.msg)
		})
	}
}

func TestPutValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  *kvstorev1.PutRequest
		code connect.Code
		msg  string
	}{
		{"ok", &kvstorev1.PutRequest{Key: []byte("k"), Value: []byte("v"), PrevKv: true}, ok, ""},
		{"empty value", &kvstorev1.PutRequest{Key: []byte("k")}, ok, ""},
		{"nil request", nil, connect.CodeInvalidArgument, "key is empty"},
		{"empty key", &kvstorev1.PutRequest{Value: []byte("v")}, connect.CodeInvalidArgument, "key is empty"},
		{"key over the limit", &kvstorev1.PutRequest{Key: n('k', 5)}, connect.CodeInvalidArgument, "key is 5 bytes"},
		{"value over the limit", &kvstorev1.PutRequest{Key: []byte("k"), Value: n('v', 9)}, connect.CodeResourceExhausted, "value is 9 bytes"},
		// The key is checked first.
		{"both over", &kvstorev1.PutRequest{Key: n('k', 5), Value: n('v', 9)}, connect.CodeInvalidArgument, "key is 5 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkErr(t, small.put(tc.req), tc.code, tc.msg)
		})
	}
}

func TestGetValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  *kvstorev1.GetRequest
		code connect.Code
		msg  string
	}{
		{"ok", &kvstorev1.GetRequest{Key: []byte("k")}, ok, ""},
		{"ok at a revision, serializable", &kvstorev1.GetRequest{Key: []byte("k"), Revision: 3, Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE}, ok, ""},
		{"empty key", &kvstorev1.GetRequest{}, connect.CodeInvalidArgument, "key is empty"},
		{"key over the limit", &kvstorev1.GetRequest{Key: n('k', 5)}, connect.CodeInvalidArgument, "key is 5 bytes"},
		{"negative revision", &kvstorev1.GetRequest{Key: []byte("k"), Revision: -2}, connect.CodeInvalidArgument, "revision -2 is negative"},
		{"unknown consistency", &kvstorev1.GetRequest{Key: []byte("k"), Consistency: 9}, connect.CodeInvalidArgument, "unknown consistency 9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkErr(t, small.get(tc.req), tc.code, tc.msg)
		})
	}
}

func TestRangeValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  *kvstorev1.RangeRequest
		code connect.Code
		msg  string
	}{
		{"ok prefix", &kvstorev1.RangeRequest{Key: []byte("a"), Prefix: true}, ok, ""},
		{"ok everything, all options", &kvstorev1.RangeRequest{RangeEnd: []byte{0}, Limit: 10, Revision: 5, Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE, KeysOnly: true}, ok, ""},
		{"ok count_only", &kvstorev1.RangeRequest{Key: []byte("a"), CountOnly: true}, ok, ""},
		{"span error", &kvstorev1.RangeRequest{Key: []byte("b"), RangeEnd: []byte("a")}, connect.CodeInvalidArgument, "not after key"},
		{"empty single key", &kvstorev1.RangeRequest{}, connect.CodeInvalidArgument, "key is empty"},
		{"negative limit", &kvstorev1.RangeRequest{Key: []byte("a"), Limit: -1}, connect.CodeInvalidArgument, "limit -1 is negative"},
		{"limit at the maximum", &kvstorev1.RangeRequest{Key: []byte("a"), Prefix: true, Limit: 10}, ok, ""},
		{"limit over the maximum", &kvstorev1.RangeRequest{Key: []byte("a"), Prefix: true, Limit: 11}, connect.CodeInvalidArgument, "limit 11|page limit of 10 pairs|--max-range-pairs|next_key"},
		{"keys_only and count_only", &kvstorev1.RangeRequest{Key: []byte("a"), KeysOnly: true, CountOnly: true}, connect.CodeInvalidArgument, "keys_only and count_only cannot be used together"},
		{"negative revision", &kvstorev1.RangeRequest{Key: []byte("a"), Revision: -1}, connect.CodeInvalidArgument, "revision -1 is negative"},
		{"unknown consistency", &kvstorev1.RangeRequest{Key: []byte("a"), Consistency: 3}, connect.CodeInvalidArgument, "unknown consistency 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkErr(t, small.rangeReq(tc.req), tc.code, tc.msg)
		})
	}
	// The default page limit.
	d := DefaultLimits()
	checkErr(t, d.rangeReq(&kvstorev1.RangeRequest{Key: []byte("a"), Limit: 10_000}), ok, "")
	checkErr(t, d.rangeReq(&kvstorev1.RangeRequest{Key: []byte("a"), Limit: 10_001}), connect.CodeInvalidArgument, "10000")
}

func TestDeleteValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  *kvstorev1.DeleteRequest
		code connect.Code
		msg  string
	}{
		{"ok key", &kvstorev1.DeleteRequest{Key: []byte("k"), PrevKv: true}, ok, ""},
		{"ok range", &kvstorev1.DeleteRequest{Key: []byte("a"), RangeEnd: []byte("b")}, ok, ""},
		{"ok prefix", &kvstorev1.DeleteRequest{Key: []byte("a/"), Prefix: true}, ok, ""},
		{`ok everything: "" to "\x00"`, &kvstorev1.DeleteRequest{RangeEnd: []byte{0}}, ok, ""},
		{`ok key to "\x00"`, &kvstorev1.DeleteRequest{Key: []byte("a"), RangeEnd: []byte{0}}, ok, ""},
		{"prefix with an empty key", &kvstorev1.DeleteRequest{Prefix: true}, connect.CodeInvalidArgument, `prefix delete with an empty key would delete everything|range_end "\x00"`},
		{"prefix with an empty key and range_end", &kvstorev1.DeleteRequest{Prefix: true, RangeEnd: []byte{0}}, connect.CodeInvalidArgument, "prefix delete with an empty key"},
		{"empty key", &kvstorev1.DeleteRequest{}, connect.CodeInvalidArgument, "key is empty"},
		// As in Range, a range may start at the empty key.
		{"empty key with a range_end", &kvstorev1.DeleteRequest{RangeEnd: []byte("b")}, ok, ""},
		{`empty key with "\x00\x00"`, &kvstorev1.DeleteRequest{RangeEnd: []byte{0, 0}}, ok, ""},
		{"span: prefix and range_end", &kvstorev1.DeleteRequest{Key: []byte("a"), RangeEnd: []byte("b"), Prefix: true}, connect.CodeInvalidArgument, "prefix and range_end"},
		{"span: range_end before key", &kvstorev1.DeleteRequest{Key: []byte("b"), RangeEnd: []byte("a")}, connect.CodeInvalidArgument, "not after key"},
		{"span: key over the limit", &kvstorev1.DeleteRequest{Key: n('k', 5)}, connect.CodeInvalidArgument, "key is 5 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkErr(t, small.deleteReq(tc.req), tc.code, tc.msg)
		})
	}
}

func cmpV(key string, r kvstorev1.CompareResult, v int64) *kvstorev1.Compare {
	return &kvstorev1.Compare{Key: []byte(key), Result: r, Target: &kvstorev1.Compare_Version{Version: v}}
}

func put(key, value string) *kvstorev1.RequestOp {
	return &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: []byte(key), Value: []byte(value)}}}
}

func del(req *kvstorev1.DeleteRequest) *kvstorev1.RequestOp {
	return &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Delete{Delete: req}}
}

func get(req *kvstorev1.GetRequest) *kvstorev1.RequestOp {
	return &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Get{Get: req}}
}

func rng(req *kvstorev1.RangeRequest) *kvstorev1.RequestOp {
	return &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Range{Range: req}}
}

func TestTxnValidation(t *testing.T) {
	const eq = kvstorev1.CompareResult_COMPARE_RESULT_EQUAL
	for _, tc := range []struct {
		name string
		req  *kvstorev1.TxnRequest
		code connect.Code
		msg  string
	}{
		{"empty", &kvstorev1.TxnRequest{}, ok, ""},
		{"nil", nil, ok, ""},
		{"compares at the limit", &kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{cmpV("a", eq, 0), cmpV("b", eq, 0)}}, ok, ""},
		{"compares over the limit", &kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{cmpV("a", eq, 0), cmpV("b", eq, 0), cmpV("c", eq, 0)}}, connect.CodeInvalidArgument, "txn has 3 compares|limit of 2|--max-txn-ops"},
		{"compare with an empty key", &kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{cmpV("a", eq, 0), cmpV("", eq, 0)}}, connect.CodeInvalidArgument, "compare 1: compare key is empty"},
		{"compare key over the limit", &kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{cmpV("abcde", eq, 0)}}, connect.CodeInvalidArgument, "compare 0: compare key is 5 bytes"},
		{"compare result unspecified", &kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{cmpV("a", kvstorev1.CompareResult_COMPARE_RESULT_UNSPECIFIED, 0)}}, connect.CodeInvalidArgument, "compare 0: result must be EQUAL, NOT_EQUAL, LESS or GREATER"},
		{"compare result past GREATER", &kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{cmpV("a", 5, 0)}}, connect.CodeInvalidArgument, "result must be"},
		{"compare result negative", &kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{cmpV("a", -1, 0)}}, connect.CodeInvalidArgument, "result must be"},
		{"compare every result", &kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{cmpV("a", kvstorev1.CompareResult_COMPARE_RESULT_NOT_EQUAL, 0), cmpV("a", kvstorev1.CompareResult_COMPARE_RESULT_LESS, 0)}}, ok, ""},
		{"compare GREATER", &kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{cmpV("a", kvstorev1.CompareResult_COMPARE_RESULT_GREATER, 0)}}, ok, ""},
		{"compare without a target", &kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{{Key: []byte("a"), Result: eq}}}, connect.CodeInvalidArgument, "compare 0: no target"},
		{"compare on create_revision", &kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{{Key: []byte("a"), Result: eq, Target: &kvstorev1.Compare_CreateRevision{CreateRevision: 1}}}}, ok, ""},
		{"compare on mod_revision", &kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{{Key: []byte("a"), Result: eq, Target: &kvstorev1.Compare_ModRevision{ModRevision: 1}}}}, ok, ""},
		{"compare on a value at the limit", &kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{{Key: []byte("a"), Result: eq, Target: &kvstorev1.Compare_Value{Value: n('v', 8)}}}}, ok, ""},
		{"compare on an empty value", &kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{{Key: []byte("a"), Result: eq, Target: &kvstorev1.Compare_Value{}}}}, ok, ""},
		{"compare on a value over the limit", &kvstorev1.TxnRequest{Compare: []*kvstorev1.Compare{{Key: []byte("a"), Result: eq, Target: &kvstorev1.Compare_Value{Value: n('v', 9)}}}}, connect.CodeResourceExhausted, "compare 0: value is 9 bytes"},
		{"success error", &kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{put("", "v")}}, connect.CodeInvalidArgument, "txn success op 0: key is empty"},
		{"failure error", &kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{put("a", "v")}, Failure: []*kvstorev1.RequestOp{put("a", "v"), {}}}, connect.CodeInvalidArgument, "txn failure op 1: empty operation"},
		{"failure over the limit", &kvstorev1.TxnRequest{Failure: []*kvstorev1.RequestOp{put("a", ""), put("b", ""), put("c", "")}}, connect.CodeInvalidArgument, "txn failure has 3 operations|limit of 2"},
		// Each branch may put a key once.
		{"same put in both branches", &kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{put("a", "1")}, Failure: []*kvstorev1.RequestOp{put("a", "2")}}, ok, ""},
		// Only one branch runs: a put in one and a delete in the other are fine.
		{"put and delete in different branches", &kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{put("a", "1")}, Failure: []*kvstorev1.RequestOp{del(&kvstorev1.DeleteRequest{Key: []byte("a")})}}, ok, ""},
		{"put and delete in the failure branch", &kvstorev1.TxnRequest{Failure: []*kvstorev1.RequestOp{put("a", "1"), del(&kvstorev1.DeleteRequest{Key: []byte("a")})}}, connect.CodeInvalidArgument, `txn failure op 1: key "a" is put by op 0 and deleted by op 1`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkErr(t, small.txn(tc.req), tc.code, tc.msg)
		})
	}
}

func TestOpsValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		ops  []*kvstorev1.RequestOp
		code connect.Code
		msg  string
	}{
		{"none", nil, ok, ""},
		{"at the limit", []*kvstorev1.RequestOp{put("a", ""), put("b", "")}, ok, ""},
		{"over the limit", []*kvstorev1.RequestOp{get(&kvstorev1.GetRequest{Key: []byte("a")}), put("b", ""), put("c", "")}, connect.CodeInvalidArgument, "txn success has 3 operations, over the limit of 2 (--max-txn-ops)"},
		{"put: bad key", []*kvstorev1.RequestOp{put("abcde", "")}, connect.CodeInvalidArgument, "txn success op 0: key is 5 bytes"},
		{"put: value over the limit keeps its code", []*kvstorev1.RequestOp{put("a", ""), put("b", "123456789")}, connect.CodeResourceExhausted, "txn success op 1: value is 9 bytes"},
		{"put twice", []*kvstorev1.RequestOp{put("a", "1"), put("a", "2")}, connect.CodeInvalidArgument, `txn success op 1: key "a" is put twice`},
		// As etcd: a branch may not both put and delete one key, in any
		// order, nor put a key inside a range it deletes.
		{"put then delete of one key", []*kvstorev1.RequestOp{put("a", "1"), del(&kvstorev1.DeleteRequest{Key: []byte("a")})}, connect.CodeInvalidArgument, `txn success op 1: key "a" is put by op 0 and deleted by op 1`},
		{"delete then put of one key", []*kvstorev1.RequestOp{del(&kvstorev1.DeleteRequest{Key: []byte("a")}), put("a", "1")}, connect.CodeInvalidArgument, `txn success op 1: key "a" is put by op 1 and deleted by op 0`},
		{"put inside a deleted prefix", []*kvstorev1.RequestOp{put("ab", "1"), del(&kvstorev1.DeleteRequest{Key: []byte("a"), Prefix: true})}, connect.CodeInvalidArgument, `key "ab" is put by op 0 and deleted by op 1`},
		{"put inside a deleted range", []*kvstorev1.RequestOp{del(&kvstorev1.DeleteRequest{Key: []byte("a"), RangeEnd: []byte("c")}), put("b", "1")}, connect.CodeInvalidArgument, `key "b" is put by op 1 and deleted by op 0`},
		{"put at a deleted range's end", []*kvstorev1.RequestOp{del(&kvstorev1.DeleteRequest{Key: []byte("a"), RangeEnd: []byte("c")}), put("c", "1")}, ok, ""},
		{"put before a deleted range", []*kvstorev1.RequestOp{del(&kvstorev1.DeleteRequest{Key: []byte("b"), RangeEnd: []byte("c")}), put("a", "1")}, ok, ""},
		{"put beside a deleted prefix", []*kvstorev1.RequestOp{del(&kvstorev1.DeleteRequest{Key: []byte("ab"), Prefix: true}), put("ac", "1")}, ok, ""},
		{"put in an open-ended deleted range", []*kvstorev1.RequestOp{del(&kvstorev1.DeleteRequest{Key: []byte("a"), RangeEnd: []byte{0}}), put("zz", "1")}, connect.CodeInvalidArgument, `key "zz" is put by op 1 and deleted by op 0`},
		{"overlapping deletes", []*kvstorev1.RequestOp{del(&kvstorev1.DeleteRequest{Key: []byte("a"), Prefix: true}), del(&kvstorev1.DeleteRequest{Key: []byte("ab")})}, ok, ""},
		{"delete: ok range", []*kvstorev1.RequestOp{del(&kvstorev1.DeleteRequest{Key: []byte("a"), RangeEnd: []byte("b")})}, ok, ""},
		{"delete: prefix with an empty key", []*kvstorev1.RequestOp{del(&kvstorev1.DeleteRequest{Prefix: true})}, connect.CodeInvalidArgument, "txn success op 0: prefix delete with an empty key"},
		{"delete: empty key", []*kvstorev1.RequestOp{del(&kvstorev1.DeleteRequest{})}, connect.CodeInvalidArgument, "txn success op 0: key is empty"},
		{"get: ok", []*kvstorev1.RequestOp{get(&kvstorev1.GetRequest{Key: []byte("a")})}, ok, ""},
		{"get: empty key", []*kvstorev1.RequestOp{get(&kvstorev1.GetRequest{})}, connect.CodeInvalidArgument, "txn success op 0: key is empty"},
		{"get: negative revision is refused as such", []*kvstorev1.RequestOp{get(&kvstorev1.GetRequest{Key: []byte("a"), Revision: -1})}, connect.CodeInvalidArgument, "revision -1 is negative"},
		{"get: revision", []*kvstorev1.RequestOp{get(&kvstorev1.GetRequest{Key: []byte("a"), Revision: 1})}, connect.CodeInvalidArgument, "txn success op 0: revision and consistency cannot be set inside a txn"},
		{"get: consistency", []*kvstorev1.RequestOp{get(&kvstorev1.GetRequest{Key: []byte("a"), Consistency: kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE})}, connect.CodeInvalidArgument, "cannot be set inside a txn"},
		{"get: unknown consistency is refused as such", []*kvstorev1.RequestOp{get(&kvstorev1.GetRequest{Key: []byte("a"), Consistency: 7})}, connect.CodeInvalidArgument, "unknown consistency 7"},
		{"range: ok", []*kvstorev1.RequestOp{rng(&kvstorev1.RangeRequest{Key: []byte("a"), Prefix: true, Limit: 10})}, ok, ""},
		{"range: bad span", []*kvstorev1.RequestOp{rng(&kvstorev1.RangeRequest{Key: []byte("b"), RangeEnd: []byte("a")})}, connect.CodeInvalidArgument, "txn success op 0: range_end"},
		{"range: limit", []*kvstorev1.RequestOp{rng(&kvstorev1.RangeRequest{Key: []byte("a"), Limit: 11})}, connect.CodeInvalidArgument, "page limit of 10"},
		{"range: revision", []*kvstorev1.RequestOp{rng(&kvstorev1.RangeRequest{Key: []byte("a"), Revision: 4})}, connect.CodeInvalidArgument, "cannot be set inside a txn"},
		{"range: consistency", []*kvstorev1.RequestOp{rng(&kvstorev1.RangeRequest{Key: []byte("a"), Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE})}, connect.CodeInvalidArgument, "cannot be set inside a txn"},
		{"empty op", []*kvstorev1.RequestOp{{}}, connect.CodeInvalidArgument, "txn success op 0: empty operation"},
		{"nil op", []*kvstorev1.RequestOp{put("a", ""), nil}, connect.CodeInvalidArgument, "txn success op 1: empty operation"},
		{"op with a nil put", []*kvstorev1.RequestOp{{Request: &kvstorev1.RequestOp_Put{}}}, connect.CodeInvalidArgument, "key is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkErr(t, small.ops("success", tc.ops), tc.code, tc.msg)
		})
	}
}

// TestMessagesCutKeysShort: messages quote keys cut short, so a 4 KiB binary
// key does not become a 16 KiB message (a grpc-message trailer over gRPC).
func TestMessagesCutKeysShort(t *testing.T) {
	d := DefaultLimits()
	hi, lo := n(0xff, 4096), n(0x01, 4096)
	for name, err := range map[string]error{
		"range_end": d.span(hi, lo, false),
		"put twice": d.ops("success", []*kvstorev1.RequestOp{put(string(hi), ""), put(string(hi), "")}),
		"not found": connect.NewError(connect.CodeNotFound, errKeyNotFound(hi)),
		"service":   connect.NewError(connect.CodeNotFound, errUnknownService(strings.Repeat("s", 1<<20))),
	} {
		var ce *connect.Error
		if !errors.As(err, &ce) {
			t.Fatalf("%s: %v", name, err)
		}
		if len(ce.Message()) > 1024 {
			t.Errorf("%s: message is %d bytes", name, len(ce.Message()))
		}
		if !strings.Contains(ce.Message(), "...") {
			t.Errorf("%s: message %.100q... does not show it was cut", name, ce.Message())
		}
	}
}

func TestQuote(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		want string
	}{
		{nil, `""`},
		{[]byte("foo"), `"foo"`},
		{[]byte{0, 0xff, '"'}, `"\x00\xff\""`},
		{n('a', 64), `"` + strings.Repeat("a", 64) + `"`},
		{n('a', 65), `"` + strings.Repeat("a", 64) + `"...`},
	} {
		if got := quote(tc.in); got != tc.want {
			t.Errorf("quote(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestPrefixed(t *testing.T) {
	err := prefixed("txn success op 3", tooBig("value is %d bytes", 9))
	checkErr(t, err, connect.CodeResourceExhausted, "txn success op 3: value is 9 bytes")
	// A plain error stays plain, wrapped.
	plain := errors.New("boom")
	err = prefixed("here", plain)
	if !errors.Is(err, plain) || err.Error() != "here: boom" {
		t.Errorf("prefixed plain error = %v", err)
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		t.Errorf("prefixed plain error became a Connect error: %v", err)
	}
}

func TestToConnect(t *testing.T) {
	logger := slog.New(slog.DiscardHandler)
	passthrough := connect.NewError(connect.CodeAborted, errors.New("as is"))
	for _, tc := range []struct {
		err  error
		code connect.Code
	}{
		{passthrough, connect.CodeAborted},
		{fmt.Errorf("wrapped: %w", consensus.ErrNotLeader), connect.CodeUnavailable},
		{consensus.ErrShutdown, connect.CodeUnavailable},
		{consensus.ErrTimeout, connect.CodeDeadlineExceeded},
		{consensus.ErrStateMachineFailed, connect.CodeUnavailable},
		{fmt.Errorf("read: %w", storage.ErrFutureRevision), connect.CodeOutOfRange},
		{context.DeadlineExceeded, connect.CodeDeadlineExceeded},
		{context.Canceled, connect.CodeCanceled},
		{storage.ErrCorrupt, connect.CodeUnavailable},
		{errors.New("disk on fire"), connect.CodeInternal},
	} {
		err := toConnect(logger, "op", tc.err)
		if got := connect.CodeOf(err); got != tc.code {
			t.Errorf("toConnect(%v) = %v, want %v", tc.err, got, tc.code)
		}
		if tc.err != passthrough && !errors.Is(err, tc.err) {
			t.Errorf("toConnect(%v) = %v: lost the cause", tc.err, err)
		}
	}
	if err := toConnect(logger, "op", passthrough); err != passthrough {
		t.Errorf("a Connect error was rewrapped: %v", err)
	}
}
