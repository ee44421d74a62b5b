package api_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kvstore/kvstore/api"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
	"github.com/kvstore/kvstore/storage"
)

// checkingStore answers every call at once and records the first request
// that reached it although validation should have refused it: requests
// reach the Store already validated (api.Store's contract).
type checkingStore struct {
	lim api.Limits

	mu  sync.Mutex
	bad error
}

func (s *checkingStore) violation(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bad == nil {
		s.bad = fmt.Errorf(format, args...)
	}
}

// take returns and clears the recorded violation.
func (s *checkingStore) take() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.bad
	s.bad = nil
	return err
}

func (s *checkingStore) key(what string, k []byte) {
	if len(k) == 0 || len(k) > s.lim.MaxKeyBytes {
		s.violation("%s: a key of %d bytes reached the store", what, len(k))
	}
}

func (s *checkingStore) span(what string, key, end []byte, prefix bool) {
	if len(key) > s.lim.MaxKeyBytes || len(end) > s.lim.MaxKeyBytes {
		s.violation("%s: key %d bytes, range_end %d bytes reached the store", what, len(key), len(end))
	}
	if prefix && len(end) > 0 {
		s.violation("%s: prefix with range_end reached the store", what)
	}
	if !prefix && len(end) == 0 && len(key) == 0 {
		s.violation("%s: an empty key with no range reached the store", what)
	}
	if len(end) > 0 && !(len(end) == 1 && end[0] == 0) && bytes.Compare(end, key) <= 0 {
		s.violation("%s: an empty range reached the store", what)
	}
}

func (s *checkingStore) put(what string, r *kvstorev1.PutRequest) {
	s.key(what, r.GetKey())
	if len(r.GetValue()) > s.lim.MaxValueBytes || r.GetLease() < 0 {
		s.violation("%s: value of %d bytes, lease %d reached the store", what, len(r.GetValue()), r.GetLease())
	}
}

func (s *checkingStore) txn(r *kvstorev1.TxnRequest, depth int) {
	if depth > 16 || len(r.GetCompare()) > s.lim.MaxTxnOps || len(r.GetSuccess()) > s.lim.MaxTxnOps || len(r.GetFailure()) > s.lim.MaxTxnOps {
		s.violation("txn: depth %d, %d compares, %d and %d ops reached the store", depth, len(r.GetCompare()), len(r.GetSuccess()), len(r.GetFailure()))
	}
	for _, c := range r.GetCompare() {
		s.key("txn compare", c.GetKey())
		if c.GetTarget() == nil {
			s.violation("txn: a compare with no target reached the store")
		}
	}
	for _, op := range append(append([]*kvstorev1.RequestOp(nil), r.GetSuccess()...), r.GetFailure()...) {
		switch o := op.GetRequest().(type) {
		case *kvstorev1.RequestOp_Put:
			s.put("txn put", o.Put)
		case *kvstorev1.RequestOp_Delete:
			s.span("txn delete", o.Delete.GetKey(), o.Delete.GetRangeEnd(), o.Delete.GetPrefix())
		case *kvstorev1.RequestOp_Get:
			s.key("txn get", o.Get.GetKey())
		case *kvstorev1.RequestOp_Range:
			s.span("txn range", o.Range.GetKey(), o.Range.GetRangeEnd(), o.Range.GetPrefix())
		case *kvstorev1.RequestOp_Txn:
			s.txn(o.Txn, depth+1)
		default:
			s.violation("txn: an empty op reached the store")
		}
	}
}

func (s *checkingStore) header() *kvstorev1.ResponseHeader {
	return &kvstorev1.ResponseHeader{Revision: 1}
}

func (s *checkingStore) Put(_ context.Context, r *kvstorev1.PutRequest) (*kvstorev1.PutResponse, error) {
	s.put("put", r)
	return &kvstorev1.PutResponse{Header: s.header()}, nil
}

func (s *checkingStore) Get(_ context.Context, r *kvstorev1.GetRequest) (*kvstorev1.GetResponse, error) {
	s.key("get", r.GetKey())
	if r.GetRevision() < 0 {
		s.violation("get: revision %d reached the store", r.GetRevision())
	}
	return &kvstorev1.GetResponse{Header: s.header()}, nil
}

func (s *checkingStore) Range(_ context.Context, r *kvstorev1.RangeRequest) (*kvstorev1.RangeResponse, error) {
	s.span("range", r.GetKey(), r.GetRangeEnd(), r.GetPrefix())
	if r.GetLimit() < 0 || r.GetLimit() > s.lim.MaxRangePairs || r.GetRevision() < 0 {
		s.violation("range: limit %d, revision %d reached the store", r.GetLimit(), r.GetRevision())
	}
	return &kvstorev1.RangeResponse{Header: s.header()}, nil
}

func (s *checkingStore) Delete(_ context.Context, r *kvstorev1.DeleteRequest) (*kvstorev1.DeleteResponse, error) {
	s.span("delete", r.GetKey(), r.GetRangeEnd(), r.GetPrefix())
	return &kvstorev1.DeleteResponse{Header: s.header()}, nil
}

func (s *checkingStore) Txn(_ context.Context, r *kvstorev1.TxnRequest) (*kvstorev1.TxnResponse, error) {
	s.txn(r, 0)
	return &kvstorev1.TxnResponse{Header: s.header()}, nil
}

func (s *checkingStore) Status(context.Context) (*kvstorev1.StatusResponse, error) {
	return &kvstorev1.StatusResponse{Header: s.header()}, nil
}

func (s *checkingStore) Members(context.Context) (*kvstorev1.MembersResponse, error) {
	return &kvstorev1.MembersResponse{Header: s.header()}, nil
}

func (s *checkingStore) Compact(_ context.Context, r *kvstorev1.CompactRequest) (*kvstorev1.CompactResponse, error) {
	if r.GetRevision() <= 0 {
		s.violation("compact: revision %d reached the store", r.GetRevision())
	}
	return &kvstorev1.CompactResponse{Header: s.header()}, nil
}

func (s *checkingStore) Watch(w storage.WatchSpec) (*storage.Watcher, error) {
	if len(w.Key) > s.lim.MaxKeyBytes || len(w.End) > s.lim.MaxKeyBytes+1 {
		s.violation("watch: key %d bytes, end %d bytes reached the store", len(w.Key), len(w.End))
	}
	return nil, errors.New("no watches here")
}

func (s *checkingStore) Header(uint64) *kvstorev1.ResponseHeader { return s.header() }

func (s *checkingStore) LeaseGrant(_ context.Context, r *kvstorev1.GrantRequest) (*kvstorev1.GrantResponse, error) {
	if r.GetId() < 0 || r.GetTtlSeconds() <= 0 {
		s.violation("lease grant: id %d, ttl %d reached the store", r.GetId(), r.GetTtlSeconds())
	}
	return &kvstorev1.GrantResponse{Header: s.header(), Id: 1, TtlSeconds: r.GetTtlSeconds()}, nil
}

func (s *checkingStore) LeaseRevoke(_ context.Context, r *kvstorev1.RevokeRequest) (*kvstorev1.RevokeResponse, error) {
	if r.GetId() <= 0 {
		s.violation("lease revoke: id %d reached the store", r.GetId())
	}
	return &kvstorev1.RevokeResponse{Header: s.header()}, nil
}

func (s *checkingStore) LeaseKeepAlive(_ context.Context, id int64) (int64, *kvstorev1.ResponseHeader, error) {
	if id <= 0 {
		s.violation("lease keep-alive: id %d reached the store", id)
	}
	return 10, s.header(), nil
}

func (s *checkingStore) LeaseTimeToLive(_ context.Context, r *kvstorev1.TimeToLiveRequest) (*kvstorev1.TimeToLiveResponse, error) {
	if r.GetId() <= 0 {
		s.violation("lease time-to-live: id %d reached the store", r.GetId())
	}
	return &kvstorev1.TimeToLiveResponse{Header: s.header(), Id: r.GetId()}, nil
}

func (s *checkingStore) Leases(context.Context) (*kvstorev1.LeasesResponse, error) {
	return &kvstorev1.LeasesResponse{Header: s.header()}, nil
}

func (s *checkingStore) Alarm(_ context.Context, r *kvstorev1.AlarmRequest) (*kvstorev1.AlarmResponse, error) {
	// A list ignores the alarm type; a change must name a known one.
	list := r.GetAction() == kvstorev1.AlarmAction_ALARM_ACTION_UNSPECIFIED || r.GetAction() == kvstorev1.AlarmAction_ALARM_ACTION_LIST
	if _, ok := kvstorev1.AlarmType_name[int32(r.GetAlarm())]; !ok && !list {
		s.violation("alarm: type %d reached the store", r.GetAlarm())
	}
	return &kvstorev1.AlarmResponse{Header: s.header()}, nil
}

func (s *checkingStore) StateHash(context.Context, uint64) (storage.StateHash, error) {
	return storage.StateHash{Revision: 1}, nil
}

func (s *checkingStore) Ready() error { return nil }

func (s *checkingStore) Notices() []string { return nil }

// fuzzProcedure is one RPC the fuzz target calls, with a valid request for
// the seed corpus.
type fuzzProcedure struct {
	path   string
	stream bool // a server stream: the request is enveloped
	seed   proto.Message
}

var fuzzProcedures = []fuzzProcedure{
	{kvstorev1connect.KVServicePutProcedure, false, &kvstorev1.PutRequest{Key: []byte("k"), Value: []byte("v"), Lease: 7, PrevKv: true}},
	{kvstorev1connect.KVServiceGetProcedure, false, &kvstorev1.GetRequest{Key: []byte("k"), Revision: 3, Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE}},
	{kvstorev1connect.KVServiceRangeProcedure, false, &kvstorev1.RangeRequest{Key: []byte("a"), RangeEnd: []byte("b"), Limit: 10, KeysOnly: true}},
	{kvstorev1connect.KVServiceDeleteProcedure, false, &kvstorev1.DeleteRequest{Key: []byte("p/"), Prefix: true}},
	{kvstorev1connect.KVServiceTxnProcedure, false, &kvstorev1.TxnRequest{
		Compare: []*kvstorev1.Compare{{Key: []byte("k"), Result: kvstorev1.CompareResult_COMPARE_RESULT_EQUAL, Target: &kvstorev1.Compare_Version{Version: 1}}},
		Success: []*kvstorev1.RequestOp{
			{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: []byte("k"), Value: []byte("v")}}},
			{Request: &kvstorev1.RequestOp_Txn{Txn: &kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{
				{Request: &kvstorev1.RequestOp_Delete{Delete: &kvstorev1.DeleteRequest{Key: []byte("x"), RangeEnd: []byte("y")}}},
			}}}},
		},
		Failure: []*kvstorev1.RequestOp{{Request: &kvstorev1.RequestOp_Range{Range: &kvstorev1.RangeRequest{Key: []byte("a"), Prefix: true}}}},
	}},
	{kvstorev1connect.KVServiceCompactProcedure, false, &kvstorev1.CompactRequest{Revision: 5}},
	{kvstorev1connect.LeaseServiceGrantProcedure, false, &kvstorev1.GrantRequest{TtlSeconds: 10}},
	{kvstorev1connect.LeaseServiceRevokeProcedure, false, &kvstorev1.RevokeRequest{Id: 1}},
	{kvstorev1connect.LeaseServiceKeepAliveOnceProcedure, false, &kvstorev1.KeepAliveOnceRequest{Id: 1}},
	{kvstorev1connect.LeaseServiceTimeToLiveProcedure, false, &kvstorev1.TimeToLiveRequest{Id: 1, Keys: true}},
	{kvstorev1connect.LeaseServiceLeasesProcedure, false, &kvstorev1.LeasesRequest{}},
	{kvstorev1connect.ClusterServiceStatusProcedure, false, &kvstorev1.StatusRequest{}},
	{kvstorev1connect.ClusterServiceMembersProcedure, false, &kvstorev1.MembersRequest{}},
	{kvstorev1connect.ClusterServiceRemoveMemberProcedure, false, &kvstorev1.RemoveMemberRequest{Id: "n1"}},
	{kvstorev1connect.ClusterServiceTransferLeadershipProcedure, false, &kvstorev1.TransferLeadershipRequest{Id: "n2"}},
	{kvstorev1connect.ClusterServiceAlarmProcedure, false, &kvstorev1.AlarmRequest{Action: kvstorev1.AlarmAction_ALARM_ACTION_ACTIVATE, MemberId: "n1", Alarm: kvstorev1.AlarmType_ALARM_TYPE_NOSPACE}},
	{kvstorev1connect.ClusterServiceAlarmHashProcedure, false, &kvstorev1.AlarmHashRequest{Revision: 2}},
	{kvstorev1connect.WatchServiceWatchProcedure, true, &kvstorev1.WatchRequest{Key: []byte("a"), Prefix: true, PrevKv: true, ProgressInterval: durationpb.New(time.Second)}},
	{kvstorev1connect.MaintenanceServiceSnapshotProcedure, true, &kvstorev1.SnapshotRequest{}},
}

// FuzzRequest sends arbitrary bodies to every RPC of the API, as the
// Connect protocol's binary or JSON encoding (streams enveloped), through
// NewHandler: Connect's decoding, the interceptors, the body rules and the
// validation. None may panic, answer a server error (the store answers
// every call, so an error is the request's fault), or let a request the
// limits refuse reach the store. grpc-go's path decodes with the same
// protobuf library and runs the same validation.
func FuzzRequest(f *testing.F) {
	for i, p := range fuzzProcedures {
		b, err := proto.Marshal(p.seed)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(byte(i), false, b)
		j, err := protojson.Marshal(p.seed)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(byte(i), true, j)
	}
	lim := api.DefaultLimits()
	store := &checkingStore{lim: lim}
	h := api.NewHandler(store, api.Options{})
	f.Fuzz(func(t *testing.T, which byte, json bool, body []byte) {
		p := fuzzProcedures[int(which)%len(fuzzProcedures)]
		ct := "application/proto"
		if json {
			ct = "application/json"
		}
		if p.stream {
			ct = "application/connect+" + ct[len("application/"):]
			env := make([]byte, 5, 5+len(body))
			binary.BigEndian.PutUint32(env[1:], uint32(len(body)))
			body = append(env, body...)
		}
		req := httptest.NewRequest(http.MethodPost, p.path, bytes.NewReader(body))
		req.Header.Set("Content-Type", ct)
		ctx, cancel := context.WithTimeout(req.Context(), 10*time.Second)
		defer cancel()
		rec := httptest.NewRecorder()
		done := make(chan struct{})
		go func() {
			defer close(done)
			h.ServeHTTP(rec, req.WithContext(ctx))
		}()
		select {
		case <-done:
		case <-time.After(30 * time.Second): // past the call's own deadline: a hang
			buf := make([]byte, 1<<20)
			t.Fatalf("%s %s %q: no answer\n%s", p.path, ct, body, buf[:runtime.Stack(buf, true)])
		}
		if err := store.take(); err != nil {
			t.Fatalf("%s: %v", p.path, err)
		}
		if !p.stream && rec.Code >= 500 {
			t.Fatalf("%s: a request answered %d: %s", p.path, rec.Code, rec.Body.String())
		}
	})
}
