package ctl

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

// fakeStore is a tiny in-memory twin of a kvstore node: enough of the
// KVService and ClusterService semantics to check what kvctl sends and how
// it prints the answers. It keeps no history, so --rev is only recorded.
type fakeStore struct {
	// Calls the twin does not implement answer Unimplemented; the new
	// commands are tested against real nodes (see coord_test.go).
	kvstorev1connect.UnimplementedKVServiceHandler

	pageSize int

	mu     sync.Mutex
	rev    int64
	data   map[string]*kvstorev1.KeyValue
	gets   []*kvstorev1.GetRequest
	ranges []*kvstorev1.RangeRequest
}

var errEmptyKey = connect.NewError(connect.CodeInvalidArgument, errors.New("key is empty"))

func (s *fakeStore) header() *kvstorev1.ResponseHeader {
	return &kvstorev1.ResponseHeader{Revision: s.rev, RaftTerm: 2, NodeId: "n1"}
}

func (s *fakeStore) put(r *kvstorev1.PutRequest) (*kvstorev1.PutResponse, error) {
	if len(r.Key) == 0 {
		return nil, errEmptyKey
	}
	s.rev++
	old := s.data[string(r.Key)]
	kv := &kvstorev1.KeyValue{Key: r.Key, Value: r.Value, CreateRevision: s.rev, ModRevision: s.rev, Version: 1}
	if old != nil {
		kv.CreateRevision, kv.Version = old.CreateRevision, old.Version+1
	}
	s.data[string(r.Key)] = kv
	resp := &kvstorev1.PutResponse{Header: s.header()}
	if r.PrevKv {
		resp.PrevKv = old
	}
	return resp, nil
}

// match returns the keys of [key, rangeEnd) or under a prefix, sorted.
func (s *fakeStore) match(key, rangeEnd []byte, prefix bool) []string {
	var keys []string
	for k := range s.data {
		kb := []byte(k)
		var in bool
		switch {
		case prefix:
			in = bytes.HasPrefix(kb, key)
		case len(rangeEnd) == 0:
			in = bytes.Equal(kb, key)
		case bytes.Equal(rangeEnd, []byte{0}):
			in = bytes.Compare(kb, key) >= 0
		default:
			in = bytes.Compare(kb, key) >= 0 && bytes.Compare(kb, rangeEnd) < 0
		}
		if in {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

func (s *fakeStore) get(r *kvstorev1.GetRequest) *kvstorev1.GetResponse {
	return &kvstorev1.GetResponse{Header: s.header(), Kv: s.data[string(r.Key)]}
}

func (s *fakeStore) rangeKVs(r *kvstorev1.RangeRequest) (*kvstorev1.RangeResponse, error) {
	if r.Prefix && len(r.RangeEnd) > 0 {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("range_end with prefix"))
	}
	keys := s.match(r.Key, r.RangeEnd, r.Prefix)
	resp := &kvstorev1.RangeResponse{Header: s.header(), Count: int64(len(keys))}
	if r.CountOnly {
		return resp, nil
	}
	limit := s.pageSize
	if r.Limit > 0 && int(r.Limit) < limit {
		limit = int(r.Limit)
	}
	if len(keys) > limit {
		resp.More, resp.NextKey = true, []byte(keys[limit])
		keys = keys[:limit]
	}
	for _, k := range keys {
		kv := proto.CloneOf(s.data[k])
		if r.KeysOnly {
			kv.Value = nil
		}
		resp.Kvs = append(resp.Kvs, kv)
	}
	return resp, nil
}

func (s *fakeStore) del(r *kvstorev1.DeleteRequest) (*kvstorev1.DeleteResponse, error) {
	if len(r.Key) == 0 && r.Prefix {
		return nil, errEmptyKey
	}
	keys := s.match(r.Key, r.RangeEnd, r.Prefix)
	resp := &kvstorev1.DeleteResponse{Deleted: int64(len(keys))}
	if len(keys) > 0 {
		s.rev++
	}
	for _, k := range keys {
		if r.PrevKv {
			resp.PrevKvs = append(resp.PrevKvs, s.data[k])
		}
		delete(s.data, k)
	}
	resp.Header = s.header()
	return resp, nil
}

func (s *fakeStore) holds(c *kvstorev1.Compare) bool {
	kv := s.data[string(c.Key)]
	var cmp int
	switch t := c.Target.(type) {
	case *kvstorev1.Compare_Version:
		cmp = int(kv.GetVersion() - t.Version)
	case *kvstorev1.Compare_ModRevision:
		cmp = int(kv.GetModRevision() - t.ModRevision)
	case *kvstorev1.Compare_CreateRevision:
		cmp = int(kv.GetCreateRevision() - t.CreateRevision)
	case *kvstorev1.Compare_Value:
		cmp = bytes.Compare(kv.GetValue(), t.Value)
	}
	switch c.Result {
	case kvstorev1.CompareResult_COMPARE_RESULT_EQUAL:
		return cmp == 0
	case kvstorev1.CompareResult_COMPARE_RESULT_NOT_EQUAL:
		return cmp != 0
	case kvstorev1.CompareResult_COMPARE_RESULT_LESS:
		return cmp < 0
	case kvstorev1.CompareResult_COMPARE_RESULT_GREATER:
		return cmp > 0
	}
	return false
}

func (s *fakeStore) Put(_ context.Context, req *connect.Request[kvstorev1.PutRequest]) (*connect.Response[kvstorev1.PutResponse], error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	resp, err := s.put(req.Msg)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(resp), nil
}

// Get answers NotFound for a missing key and, for the key "block", waits
// for the caller to give up, to test --timeout.
func (s *fakeStore) Get(ctx context.Context, req *connect.Request[kvstorev1.GetRequest]) (*connect.Response[kvstorev1.GetResponse], error) {
	if string(req.Msg.Key) == "block" {
		<-ctx.Done()
		return nil, connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gets = append(s.gets, req.Msg)
	resp := s.get(req.Msg)
	if resp.Kv == nil {
		return nil, connect.NewError(connect.CodeNotFound, errors.New("key not found"))
	}
	return connect.NewResponse(resp), nil
}

func (s *fakeStore) Range(_ context.Context, req *connect.Request[kvstorev1.RangeRequest]) (*connect.Response[kvstorev1.RangeResponse], error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ranges = append(s.ranges, req.Msg)
	resp, err := s.rangeKVs(req.Msg)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(resp), nil
}

func (s *fakeStore) Delete(_ context.Context, req *connect.Request[kvstorev1.DeleteRequest]) (*connect.Response[kvstorev1.DeleteResponse], error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	resp, err := s.del(req.Msg)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(resp), nil
}

func (s *fakeStore) Txn(_ context.Context, req *connect.Request[kvstorev1.TxnRequest]) (*connect.Response[kvstorev1.TxnResponse], error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ok := true
	for _, c := range req.Msg.Compare {
		ok = ok && s.holds(c)
	}
	ops := req.Msg.Failure
	if ok {
		ops = req.Msg.Success
	}
	resp := &kvstorev1.TxnResponse{Succeeded: ok}
	for _, op := range ops {
		var r kvstorev1.ResponseOp
		var err error
		switch o := op.Request.(type) {
		case *kvstorev1.RequestOp_Put:
			var p *kvstorev1.PutResponse
			p, err = s.put(o.Put)
			r.Response = &kvstorev1.ResponseOp_Put{Put: p}
		case *kvstorev1.RequestOp_Delete:
			var d *kvstorev1.DeleteResponse
			d, err = s.del(o.Delete)
			r.Response = &kvstorev1.ResponseOp_Delete{Delete: d}
		case *kvstorev1.RequestOp_Get:
			r.Response = &kvstorev1.ResponseOp_Get{Get: s.get(o.Get)}
		case *kvstorev1.RequestOp_Range:
			var g *kvstorev1.RangeResponse
			g, err = s.rangeKVs(o.Range)
			r.Response = &kvstorev1.ResponseOp_Range{Range: g}
		}
		if err != nil {
			return nil, err
		}
		resp.Responses = append(resp.Responses, &r)
	}
	resp.Header = s.header()
	return connect.NewResponse(resp), nil
}

type fakeCluster struct {
	kvstorev1connect.UnimplementedClusterServiceHandler
	// waiting, when set, makes Status the answer of a node waiting for
	// --bootstrap-expect servers.
	waiting bool
}

func (c fakeCluster) Status(context.Context, *connect.Request[kvstorev1.StatusRequest]) (*connect.Response[kvstorev1.StatusResponse], error) {
	if c.waiting {
		return connect.NewResponse(&kvstorev1.StatusResponse{
			Header: &kvstorev1.ResponseHeader{NodeId: "n1"}, NodeId: "n1", Address: "10.0.0.1:7379", RaftState: "Follower",
			BootstrapExpect: 3, BootstrapSeen: 1, BootstrapWaiting: "waiting for 3 servers with bootstrap-expect 3; sees 1 (n1)",
		}), nil
	}
	return connect.NewResponse(&kvstorev1.StatusResponse{
		Header: &kvstorev1.ResponseHeader{Revision: 9, RaftTerm: 2, NodeId: "n1"},
		NodeId: "n1", Address: "10.0.0.1:7379", RaftState: "Leader", LeaderId: "n1",
		LeaderAddress: "10.0.0.1:7379", Term: 2, CommitIndex: 11, AppliedIndex: 10, Revision: 9,
		ClusterId: "5f0c3e8a1b2d4f6071829a3b4c5d6e7f",
	}), nil
}

func (fakeCluster) Members(context.Context, *connect.Request[kvstorev1.MembersRequest]) (*connect.Response[kvstorev1.MembersResponse], error) {
	return connect.NewResponse(&kvstorev1.MembersResponse{Members: []*kvstorev1.Member{
		{Id: "n1", Address: "10.0.0.1:7379", Suffrage: kvstorev1.Suffrage_SUFFRAGE_VOTER, Leader: true, GossipState: "alive"},
		{Id: "n2", Address: "10.0.0.2:7379", Suffrage: kvstorev1.Suffrage_SUFFRAGE_NONVOTER},
	}}), nil
}

// Alarm lists one NOSPACE alarm; a deactivation clears it.
func (fakeCluster) Alarm(_ context.Context, req *connect.Request[kvstorev1.AlarmRequest]) (*connect.Response[kvstorev1.AlarmResponse], error) {
	resp := &kvstorev1.AlarmResponse{Header: &kvstorev1.ResponseHeader{Revision: 9, NodeId: "n1"}}
	switch req.Msg.GetAction() {
	case kvstorev1.AlarmAction_ALARM_ACTION_LIST:
		resp.Alarms = []*kvstorev1.AlarmMember{{
			MemberId: "n3", Alarm: kvstorev1.AlarmType_ALARM_TYPE_NOSPACE,
			Reason: "no space: data dir /d has 3 MiB free, below the 14 MiB margin",
		}}
	case kvstorev1.AlarmAction_ALARM_ACTION_DEACTIVATE:
		if req.Msg.GetMemberId() != "" || req.Msg.GetAlarm() != kvstorev1.AlarmType_ALARM_TYPE_UNSPECIFIED {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("disarm must clear every alarm"))
		}
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("unexpected action"))
	}
	return connect.NewResponse(resp), nil
}

// startServer serves a fresh fakeStore over HTTP/1.1 and h2c, as kvd does,
// and returns it with its host:port.
func startServer(t *testing.T) (*fakeStore, string) {
	t.Helper()
	return startServerWith(t, fakeCluster{})
}

func startServerWith(t *testing.T, cluster fakeCluster) (*fakeStore, string) {
	t.Helper()
	s := &fakeStore{pageSize: 2, data: map[string]*kvstorev1.KeyValue{}}
	mux := http.NewServeMux()
	mux.Handle(kvstorev1connect.NewKVServiceHandler(s))
	mux.Handle(kvstorev1connect.NewClusterServiceHandler(cluster))
	srv := httptest.NewUnstartedServer(mux)
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = p
	srv.Start()
	t.Cleanup(srv.Close)
	return s, srv.Listener.Addr().String()
}

// result is what one kvctl run printed and returned.
type result struct {
	code           int
	stdout, stderr string
}

// kvctl runs the command line args against addr with stdin as input.
func kvctl(t *testing.T, addr, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if addr != "" {
		args = append([]string{"--endpoints", addr}, args...)
	}
	var out, errOut bytes.Buffer
	code := run(ctx, args, strings.NewReader(stdin), &out, &errOut)
	return result{code, out.String(), errOut.String()}
}

// ok runs kvctl and fails the test unless it exits with 0.
func ok(t *testing.T, addr, stdin string, args ...string) string {
	t.Helper()
	r := kvctl(t, addr, stdin, args...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("kvctl %q: exit %d, stderr %q", args, r.code, r.stderr)
	}
	return r.stdout
}

// fails runs kvctl and checks its exit code and the first line of stderr.
func fails(t *testing.T, addr string, code int, wantErr string, args ...string) result {
	t.Helper()
	r := kvctl(t, addr, "", args...)
	first, _, _ := strings.Cut(r.stderr, "\n")
	if r.code != code || first != wantErr {
		t.Fatalf("kvctl %q: exit %d, stderr %q; want exit %d and first line %q", args, r.code, r.stderr, code, wantErr)
	}
	return r
}

func want(t *testing.T, what, got, want string) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: got %q, want %q", what, got, want)
	}
}

// closedAddr returns a port nothing listens on, so dialing it is refused.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func TestPutGet(t *testing.T) {
	t.Parallel()
	_, addr := startServer(t)
	want(t, "put", ok(t, addr, "", "put", "greeting", "hello"), "OK\n")
	want(t, "get", ok(t, addr, "", "get", "greeting"), "hello\n")
	want(t, "put --prev-kv", ok(t, addr, "", "put", "greeting", "bye", "--prev-kv"), "OK\ngreeting\nhello\n")
	want(t, "get after overwrite", ok(t, addr, "", "get", "greeting"), "bye\n")
}

func TestPutFromStdin(t *testing.T) {
	t.Parallel()
	_, addr := startServer(t)
	// Bytes as given, trailing newline and non-UTF-8 included.
	value := "line 1\nline 2\xff\n"
	ok(t, addr, value, "put", "doc")
	want(t, "get", ok(t, addr, "", "get", "doc"), value+"\n")
	ok(t, addr, "dash", "put", "doc2", "-")
	want(t, "get", ok(t, addr, "", "get", "doc2"), "dash\n")
}

func TestGetFlags(t *testing.T) {
	t.Parallel()
	s, addr := startServer(t)
	ok(t, addr, "", "put", "k", "v")
	ok(t, addr, "", "get", "k", "--rev", "1", "--consistency", "s")
	s.mu.Lock()
	got := s.gets[len(s.gets)-1]
	s.mu.Unlock()
	if got.Revision != 1 || got.Consistency != kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE {
		t.Fatalf("get sent %v, want revision 1, serializable", got)
	}
}

func TestGetMissingKey(t *testing.T) {
	t.Parallel()
	_, addr := startServer(t)
	r := fails(t, addr, 1, `kvctl: get: not_found: key "nope" not found`, "get", "nope")
	want(t, "stdout", r.stdout, "")
	want(t, "stderr", r.stderr, "kvctl: get: not_found: key \"nope\" not found\n")
}

func TestRPCErrorNamesCode(t *testing.T) {
	t.Parallel()
	_, addr := startServer(t)
	fails(t, addr, 1, "kvctl: put: invalid_argument: key is empty", "put", "", "v")
}

func TestJSONOutput(t *testing.T) {
	t.Parallel()
	_, addr := startServer(t)
	ok(t, addr, "", "put", "k", "v")
	out := ok(t, addr, "", "get", "k", "-o", "json")
	if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") {
		t.Fatalf("json output is not one line: %q", out)
	}
	// lowerCamelCase names, bytes in base64, zero fields left out.
	for _, s := range []string{`"modRevision"`, `"dg=="`} {
		if !strings.Contains(out, s) {
			t.Fatalf("json output %q lacks %s", out, s)
		}
	}
	var got kvstorev1.GetResponse
	if err := protojson.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("json output does not parse: %v", err)
	}
	wantKV := &kvstorev1.KeyValue{Key: []byte("k"), Value: []byte("v"), CreateRevision: 1, ModRevision: 1, Version: 1}
	if !proto.Equal(got.Kv, wantKV) {
		t.Fatalf("json kv %v, want %v", got.Kv, wantKV)
	}
}

func TestRangePaging(t *testing.T) {
	t.Parallel()
	s, addr := startServer(t)
	for _, k := range []string{"a", "u/1", "u/2", "u/3", "u/4", "u/5", "v"} {
		ok(t, addr, "", "put", k, "val-"+k)
	}
	// The fake serves 2 pairs per page, so these take several pages.
	want(t, "prefix", ok(t, addr, "", "range", "u/", "--prefix"),
		"u/1\nval-u/1\nu/2\nval-u/2\nu/3\nval-u/3\nu/4\nval-u/4\nu/5\nval-u/5\n")
	s.mu.Lock()
	pages := slices.Clone(s.ranges)
	s.mu.Unlock()
	if len(pages) != 3 || pages[1].Revision != 7 || pages[2].Revision != 7 {
		t.Fatalf("pages %v: want 3, the later ones at revision 7", pages)
	}

	want(t, "ls all keys", ok(t, addr, "", "ls", "--keys-only"), "a\nu/1\nu/2\nu/3\nu/4\nu/5\nv\n")
	want(t, "limit", ok(t, addr, "", "range", "u/", "--prefix", "--keys-only", "--limit", "3"), "u/1\nu/2\nu/3\n")
	want(t, "range end", ok(t, addr, "", "range", "u/2", "u/4", "--keys-only"), "u/2\nu/3\n")
	want(t, "from key", ok(t, addr, "", "range", "u/4", "--from-key", "--keys-only"), "u/4\nu/5\nv\n")
	want(t, "single key", ok(t, addr, "", "range", "a"), "a\nval-a\n")
	want(t, "count", ok(t, addr, "", "range", "u/", "--prefix", "--count-only"), "5\n")

	out := ok(t, addr, "", "range", "u/", "--prefix", "--limit", "3", "-o", "json")
	var resp kvstorev1.RangeResponse
	if err := protojson.Unmarshal([]byte(out), &resp); err != nil {
		t.Fatalf("json output does not parse: %v", err)
	}
	if len(resp.Kvs) != 3 || resp.Count != 5 || !resp.More || string(resp.NextKey) != "u/4" {
		t.Fatalf("json range: %d pairs, count %d, more %v, next %q; want 3 5 true u/4", len(resp.Kvs), resp.Count, resp.More, resp.NextKey)
	}
}

func TestDel(t *testing.T) {
	t.Parallel()
	_, addr := startServer(t)
	for _, k := range []string{"u/1", "u/2", "u/3", "w"} {
		ok(t, addr, "", "put", k, "x")
	}
	want(t, "del one", ok(t, addr, "", "del", "w", "--prev-kv"), "1\nw\nx\n")
	want(t, "del missing", ok(t, addr, "", "del", "w"), "0\n")
	want(t, "del range", ok(t, addr, "", "del", "u/1", "--range-end", "u/2"), "1\n")
	want(t, "del prefix", ok(t, addr, "", "delete", "u/", "--prefix"), "2\n")
	want(t, "left", ok(t, addr, "", "range", "--count-only"), "0\n")
}

func TestCAS(t *testing.T) {
	t.Parallel()
	_, addr := startServer(t)
	want(t, "create", ok(t, addr, "", "cas", "lock", "me", "--expect-version", "0"), "SUCCEEDED\n")
	fails(t, addr, 1, `kvctl: cas: compare failed: key "lock" is at version 1, mod revision 1`,
		"cas", "lock", "you", "--expect-version", "0")
	want(t, "swap value", ok(t, addr, "", "cas", "lock", "you", "--expect-value", "me"), "SUCCEEDED\n")
	want(t, "swap mod rev", ok(t, addr, "new", "cas", "lock", "--expect-mod-rev", "2"), "SUCCEEDED\n")
	want(t, "value", ok(t, addr, "", "get", "lock"), "new\n")
	fails(t, addr, 1, `kvctl: cas: compare failed: key "gone" does not exist`, "cas", "gone", "x", "--expect-value", "y")

	r := fails(t, addr, 1, `kvctl: cas: compare failed: key "lock" is at version 3, mod revision 3`,
		"cas", "lock", "x", "--expect-value", "old", "-o", "json")
	var resp kvstorev1.TxnResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &resp); err != nil || resp.Succeeded {
		t.Fatalf("json answer of a failed cas: %q (%v)", r.stdout, err)
	}
}

func TestTxnJSON(t *testing.T) {
	t.Parallel()
	_, addr := startServer(t)
	// foo=bar if foo does not exist, else read foo.
	const req = `{"compare":[{"key":"Zm9v","result":"COMPARE_RESULT_EQUAL","version":"0"}],
		"success":[{"put":{"key":"Zm9v","value":"YmFy"}}],
		"failure":[{"get":{"key":"Zm9v"}}, {"delete":{"key":"eA=="}}]}`
	want(t, "first txn", ok(t, addr, req, "txn", "--json"), "SUCCEEDED\nOK\n")
	want(t, "second txn", ok(t, addr, req, "txn", "--json"), "FAILED\nfoo\nbar\n0\n")

	r := kvctl(t, addr, `{"compare": 1}`, "txn", "--json")
	if r.code != 1 || !strings.HasPrefix(r.stderr, "kvctl: txn: parse request: ") {
		t.Fatalf("bad JSON: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestAlarmCommands(t *testing.T) {
	t.Parallel()
	_, addr := startServer(t)
	want(t, "alarm list", ok(t, addr, "", "alarm", "list"),
		"ALARM    MEMBER  REASON\n"+
			"NOSPACE  n3      no space: data dir /d has 3 MiB free, below the 14 MiB margin\n")
	want(t, "alarm disarm", ok(t, addr, "", "alarm", "disarm"), "no alarms\n")
	if out := ok(t, addr, "", "-o", "json", "alarm", "list"); !strings.Contains(out, `"alarm":"ALARM_TYPE_NOSPACE"`) {
		t.Fatalf("alarm list -o json: %s", out)
	}
}

func TestStatusAndMembers(t *testing.T) {
	t.Parallel()
	_, addr := startServer(t)
	want(t, "status", ok(t, addr, "", "status"),
		"NODE  ADDRESS        STATE   LEADER  LEADER ADDRESS  TERM  COMMIT  APPLIED  REVISION  VERSION  DISK FREE  CLUSTER\n"+
			"n1    10.0.0.1:7379  Leader  n1      10.0.0.1:7379   2     11      10       9         -        -          5f0c3e8a1b2d4f6071829a3b4c5d6e7f\n")
	want(t, "members", ok(t, addr, "", "members"),
		"ID  ADDRESS        SUFFRAGE  LEADER  GOSSIP\n"+
			"n1  10.0.0.1:7379  voter     yes     alive\n"+
			"n2  10.0.0.2:7379  nonvoter  no      -\n")
	var st kvstorev1.StatusResponse
	if err := protojson.Unmarshal([]byte(ok(t, addr, "", "status", "-o", "json")), &st); err != nil || st.CommitIndex != 11 {
		t.Fatalf("status json: %v (%v)", &st, err)
	}
}

// TestStatusWhileWaitingToBootstrap: a node waiting for --bootstrap-expect
// servers says, under its status, how many it sees and waits for.
func TestStatusWhileWaitingToBootstrap(t *testing.T) {
	t.Parallel()
	_, addr := startServerWith(t, fakeCluster{waiting: true})
	want(t, "status", ok(t, addr, "", "status"),
		"NODE  ADDRESS        STATE     LEADER  LEADER ADDRESS  TERM  COMMIT  APPLIED  REVISION  VERSION  DISK FREE  CLUSTER\n"+
			"n1    10.0.0.1:7379  Follower  -       -               0     0       0        0         -        -          -\n"+
			"not ready: waiting for 3 servers with bootstrap-expect 3; sees 1 (n1)\n")
}

func TestProtocols(t *testing.T) {
	t.Parallel()
	_, addr := startServer(t)
	for _, p := range []string{"connect", "grpc", "grpcweb"} {
		ok(t, addr, "", "--protocol", p, "put", "k", p)
		want(t, p, ok(t, addr, "", "--protocol", p, "get", "k"), p+"\n")
	}
}

func TestFailoverBetweenEndpoints(t *testing.T) {
	t.Parallel()
	_, addr := startServer(t)
	ok(t, closedAddr(t)+","+addr, "", "put", "k", "v")
}

// TestEndpointsEnv cannot run in parallel: it sets the environment.
func TestEndpointsEnv(t *testing.T) {
	_, addr := startServer(t)
	dead := closedAddr(t)

	t.Setenv(envEndpoints, addr)
	ok(t, "", "", "put", "k", "v")
	// The flag wins over the environment.
	if r := kvctl(t, dead, "", "get", "k"); r.code != 1 || !strings.HasPrefix(r.stderr, "kvctl: get: unavailable: dial tcp "+dead) {
		t.Fatalf("--endpoints %s: exit %d, stderr %q; want a dial error", dead, r.code, r.stderr)
	}

	t.Setenv(envEndpoints, dead)
	want(t, "flag over env", ok(t, addr, "", "get", "k"), "v\n")
}

func TestTimeout(t *testing.T) {
	t.Parallel()
	_, addr := startServer(t)
	r := kvctl(t, addr, "", "--timeout", "50ms", "get", "block")
	if r.code != 1 || !strings.HasPrefix(r.stderr, "kvctl: get: deadline_exceeded: ") {
		t.Fatalf("exit %d, stderr %q; want a deadline_exceeded error", r.code, r.stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	_, addr := startServer(t)
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"get"}, "kvctl: get: accepts 1 arg(s), received 0"},
		{[]string{"get", "k", "--bogus"}, "kvctl: get: unknown flag: --bogus"},
		{[]string{"get", "k", "--consistency", "x"}, `kvctl: get: invalid --consistency "x": want l (linearizable) or s (serializable)`},
		{[]string{"get", "k", "-o", "yaml"}, `kvctl: get: invalid --output "yaml": want text or json`},
		{[]string{"range", "a", "b", "--prefix"}, "kvctl: range: RANGE_END cannot go with --prefix or --from-key"},
		{[]string{"range", "--limit", "-1"}, "kvctl: range: invalid --limit -1: must not be negative"},
		{[]string{"del", "k", "--prefix", "--range-end", "z"}, "kvctl: del: if any flags in the group [prefix range-end from-key] are set none of the others can be; [prefix range-end] were all set"},
		{[]string{"cas", "k", "v"}, "kvctl: cas: at least one of the flags in the group [expect-value expect-version expect-mod-rev] is required"},
		{[]string{"txn"}, `kvctl: txn: required flag(s) "json" not set`},
		{[]string{"bogus"}, `kvctl: unknown command "bogus" for "kvctl"`},
		{[]string{"--endpoints", "ftp://x", "get", "k"}, `kvctl: get: client: endpoint "ftp://x": scheme "ftp" is not http or https`},
		// Every number and duration flag says what it wants.
		{[]string{"--timeout", "banana", "status"}, `kvctl: status: invalid value "banana" for --timeout: want a duration such as 5s or 1m`},
		{[]string{"get", "k", "--rev", "x"}, `kvctl: get: invalid value "x" for --rev: want a whole number`},
		{[]string{"range", "--limit", "9999999999999999999999"}, `kvctl: range: invalid value "9999999999999999999999" for --limit: want a whole number`},
		{[]string{"bench", "--clients", "lots"}, `kvctl: bench: invalid value "lots" for --clients: want a whole number`},
		{[]string{"bench", "--read-ratio", "most"}, `kvctl: bench: invalid value "most" for --read-ratio: want a number such as 0.5`},
		{[]string{"bench", "--seed", "-1"}, `kvctl: bench: invalid value "-1" for --seed: want a whole number, 0 or more`},
		{[]string{"lock", "l", "--ttl", "long"}, `kvctl: lock: invalid value "long" for --ttl: want a duration such as 5s or 1m`},
		{[]string{"watch", "k", "--progress", "often"}, `kvctl: watch: invalid value "often" for --progress: want a duration such as 5s or 1m`},
		{[]string{"--protocol", "smtp", "get", "k"}, `kvctl: get: client: unknown protocol "smtp" (want connect, grpc or grpcweb)`},
	} {
		a := addr
		if slices.Contains(tc.args, "--endpoints") {
			a = ""
		}
		r := fails(t, a, 2, tc.wantErr, tc.args...)
		if !strings.Contains(r.stderr, "Usage:") {
			t.Errorf("kvctl %q: no usage on stderr: %q", tc.args, r.stderr)
		}
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"--help"}, {"put", "--help"}, {"range", "-h"}, {"help", "cas"}, {}} {
		out := ok(t, "", "", args...)
		if !strings.Contains(out, "Usage:") || !strings.Contains(out, "Example") {
			t.Errorf("kvctl %q: help lacks usage or examples: %q", args, out)
		}
	}
}
