package node

import (
	"context"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

// scrape returns the node's metrics in the text format, sample line
// (name and labels) to value.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s: %s", resp.Status, body)
	}
	out := map[string]float64{}
	for line := range strings.Lines(string(body)) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad sample line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// TestMetricsEndpoint: /metrics serves the node's own metrics (etcd's
// names under kvstore_), the Go and process collectors and raft's bridged
// go-metrics, in the text format and in OpenMetrics when asked; with
// NoMetrics there is no endpoint.
func TestMetricsEndpoint(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := startNode(t, ctx, t.TempDir())
	defer n.Close(ctx)
	if _, err := kvClient(n).Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("k"), Value: []byte("v")})); err != nil {
		t.Fatal(err)
	}
	m := scrape(t, n.URL())
	for sample, want := range map[string]float64{
		"kvstore_server_has_leader":                      1,
		"kvstore_server_is_leader":                       1,
		`kvstore_cluster_raft_members{suffrage="voter"}`: 1,
		`kvstore_cluster_gossip_members{state="alive"}`:  1,
		`kvstore_server_id{server_id="` + n.ID() + `"}`:  1,
		"kvstore_server_quota_backend_bytes":             DefaultQuotaBytes,
		"kvstore_debugging_mvcc_keys_total":              1,
		"kvstore_mvcc_watcher_total":                     0,
		"kvstore_group_replicas_hosted":                  0,
		"kvstore_group_moves_in_progress":                0,
		`kvstore_grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="kvstore.v1.KVService",grpc_type="unary"}`: 1,
	} {
		if got, ok := m[sample]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", sample, got, ok, want)
		}
	}
	for _, sample := range []string{
		"kvstore_server_term", "kvstore_server_leader_changes_seen_total", "kvstore_server_proposals_committed_total",
		"kvstore_server_proposals_applied_total", "kvstore_mvcc_current_revision", "kvstore_disk_wal_fsync_duration_seconds_count",
		"kvstore_disk_backend_commit_duration_seconds_count", "kvstore_mvcc_db_total_size_in_bytes", "kvstore_mvcc_db_total_size_in_use_in_bytes", "kvstore_disk_raft_log_size_in_bytes", "kvstore_raft_fsm_applyBatch_count",
		"go_goroutines", "process_resident_memory_bytes",
	} {
		if m[sample] <= 0 {
			t.Errorf("%s = %v, want > 0", sample, m[sample])
		}
	}

	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, n.URL()+"/metrics", nil)
	req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/openmetrics-text") || !strings.HasSuffix(strings.TrimSpace(string(body)), "# EOF") {
		t.Errorf("OpenMetrics asked: Content-Type %q, body ends %q", ct, body[max(0, len(body)-20):])
	}

	off, err := Start(ctx, Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", NoMetrics: true})
	if err != nil {
		t.Fatal(err)
	}
	defer off.Close(ctx)
	resp, err = http.Get(off.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("NoMetrics: GET /metrics status %d, want 404", resp.StatusCode)
	}
}

// TestRequestMetricsSameForEveryProtocol makes the same calls over Connect,
// gRPC (grpc-go's client, served by grpc-go), gRPC-Web and JSON, and checks
// that each protocol's calls moved the same request series: one recorder
// serves both RPC stacks.
func TestRequestMetricsSameForEveryProtocol(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n := startNode(t, ctx, t.TempDir())
	defer n.Close(ctx)

	cc, err := grpc.NewClient("passthrough:///"+n.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	grpcKV := kvstorev1.NewKVServiceClient(cc)
	connectKV := func(opts ...connect.ClientOption) func(context.Context, *kvstorev1.PutRequest, *kvstorev1.GetRequest) (error, error) {
		c := kvstorev1connect.NewKVServiceClient(h2cClient(), n.URL(), opts...)
		return func(ctx context.Context, put *kvstorev1.PutRequest, get *kvstorev1.GetRequest) (error, error) {
			_, perr := c.Put(ctx, connect.NewRequest(put))
			_, gerr := c.Get(ctx, connect.NewRequest(get))
			return perr, gerr
		}
	}
	protocols := map[string]func(context.Context, *kvstorev1.PutRequest, *kvstorev1.GetRequest) (error, error){
		"connect":  connectKV(),
		"grpc-web": connectKV(connect.WithGRPCWeb()),
		"json":     connectKV(connect.WithProtoJSON()),
		"grpc-go": func(ctx context.Context, put *kvstorev1.PutRequest, get *kvstorev1.GetRequest) (error, error) {
			_, perr := grpcKV.Put(ctx, put)
			_, gerr := grpcKV.Get(ctx, get)
			return perr, gerr
		},
	}
	var first []string
	firstName := ""
	for _, name := range slices.Sorted(maps.Keys(protocols)) {
		call := protocols[name]
		before := scrape(t, n.URL())
		if perr, gerr := call(ctx, &kvstorev1.PutRequest{Key: []byte("k-" + name), Value: []byte("v")}, &kvstorev1.GetRequest{Key: []byte("k-" + name)}); perr != nil || gerr != nil {
			t.Fatalf("%s: put %v, get %v", name, perr, gerr)
		}
		// An empty key is refused: the code must be the same too.
		if perr, gerr := call(ctx, &kvstorev1.PutRequest{Value: []byte("v")}, &kvstorev1.GetRequest{}); perr == nil || gerr == nil {
			t.Fatalf("%s: empty keys accepted: put %v, get %v", name, perr, gerr)
		}
		after := scrape(t, n.URL())
		var moved []string
		for sample, v := range after {
			if strings.HasPrefix(sample, "kvstore_grpc_server_handled_total{") && v != before[sample] {
				moved = append(moved, sample+" +"+strconv.FormatFloat(v-before[sample], 'f', -1, 64))
			}
		}
		slices.Sort(moved)
		t.Logf("%s: %v", name, moved)
		if len(moved) != 4 {
			t.Errorf("%s: %d series moved, want 4 (Put and Get, each OK and InvalidArgument): %v", name, len(moved), moved)
		}
		if first == nil {
			first, firstName = moved, name
		} else if !slices.Equal(first, moved) {
			t.Errorf("%s moved other series than %s:\n%v\n%v", name, firstName, moved, first)
		}
	}
}

// TestTimedLogStore: the append timer times every append and never makes
// a log look like a raft.MonotonicLogStore (raft then drops the whole log
// after a snapshot install: storage/raftlog's doc.go, gaps).
func TestTimedLogStore(t *testing.T) {
	m := newMetrics()
	inner := raft.NewInmemStore()
	wrapped := m.logStore(inner)
	if _, ok := wrapped.(raft.MonotonicLogStore); ok {
		t.Error("the timed log store claims to be monotonic")
	}
	if err := wrapped.StoreLogs([]*raft.Log{{Index: 1, Term: 1}, {Index: 2, Term: 1}}); err != nil {
		t.Fatal(err)
	}
	if err := wrapped.StoreLog(&raft.Log{Index: 3, Term: 1}); err != nil {
		t.Fatal(err)
	}
	if last, _ := inner.LastIndex(); last != 3 {
		t.Errorf("last index %d, want 3", last)
	}
	if n := testutil.CollectAndCount(m.walFsync); n != 1 {
		t.Fatalf("%d histograms", n)
	}
	var dm dto.Metric
	if err := m.walFsync.Write(&dm); err != nil {
		t.Fatal(err)
	}
	if got := dm.GetHistogram().GetSampleCount(); got != 2 {
		t.Errorf("%d appends timed, want 2", got)
	}
}
