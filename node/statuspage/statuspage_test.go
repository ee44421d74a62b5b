package statuspage

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// member serves a /metrics page with the given applied index and request
// count.
func member(t *testing.T, applied, requests int) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, `# TYPE kvstore_server_term gauge
kvstore_server_term 4
# TYPE kvstore_server_proposals_committed_total gauge
kvstore_server_proposals_committed_total 5000
# TYPE kvstore_server_proposals_applied_total gauge
kvstore_server_proposals_applied_total %d
# TYPE kvstore_mvcc_current_revision gauge
kvstore_mvcc_current_revision %d
# TYPE kvstore_debugging_mvcc_keys_total gauge
kvstore_debugging_mvcc_keys_total 12
# TYPE kvstore_mvcc_db_total_size_in_bytes gauge
kvstore_mvcc_db_total_size_in_bytes 1048576
# TYPE kvstore_disk_raft_log_size_in_bytes gauge
kvstore_disk_raft_log_size_in_bytes 1048576
# TYPE kvstore_grpc_server_handled_total counter
kvstore_grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="kvstore.v1.KVService",grpc_type="unary"} %d
kvstore_grpc_server_handled_total{grpc_code="OK",grpc_method="ReadIndex",grpc_service="kvstore.peer.v1.PeerService",grpc_type="unary"} 99999
`, applied, applied, requests)
	}))
	t.Cleanup(s.Close)
	return s
}

func get(t *testing.T, h http.Handler, target string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(b)
}

// TestPage: every member is on the page with what its /metrics says, the
// lag behind the leader's commit index, an unreachable member is shown as
// such, names are escaped, and a bad refresh is refused.
func TestPage(t *testing.T) {
	leader, follower := member(t, 5000, 100), member(t, 3000, 50)
	dead := httptest.NewServer(http.NotFoundHandler())
	deadAddr := strings.TrimPrefix(dead.URL, "http://")
	dead.Close()
	view := View{NodeID: "a", ClusterID: "c1", Members: []Member{
		{ID: "a", Addr: strings.TrimPrefix(leader.URL, "http://"), Suffrage: "voter", Gossip: "alive", Leader: true, Self: true},
		{ID: "b<script>", Addr: strings.TrimPrefix(follower.URL, "http://"), Suffrage: "nonvoter", Gossip: "alive"},
		{ID: "c", Addr: deadAddr, Suffrage: "voter", Gossip: "dead"},
	}}
	h := New(func() View { return view }, http.DefaultClient, nil)
	code, body := get(t, h, "/?refresh=2")
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, body)
	}
	for _, want := range []string{
		`<meta http-equiv="refresh" content="2">`,
		`data-id="a"`, `data-id="b&lt;script&gt;"`, `<b id="leader">a</b>`,
		`<td>5000</td><td>3000</td><td class="warn">2000</td>`, // commit, applied, lag
		`2.0 MiB`, `nonvoter`, `data-id="c" data-gossip="dead" data-reachable="false"`, "unreachable",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(body, "<script>") {
		t.Error("a member name reached the page unescaped")
	}
	for _, bad := range []string{"0", "301", "x"} {
		if code, _ := get(t, h, "/?refresh="+bad); code != http.StatusBadRequest {
			t.Errorf("refresh=%s: status %d, want 400", bad, code)
		}
	}
}
