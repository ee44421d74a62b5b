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
	if strings.Contains(body, `id="groups"`) {
		t.Error("a node hosting no data group shows a groups table")
	}
	for _, bad := range []string{"0", "301", "x"} {
		if code, _ := get(t, h, "/?refresh="+bad); code != http.StatusBadRequest {
			t.Errorf("refresh=%s: status %d, want 400", bad, code)
		}
	}
}

// TestPageGroups: the serving node's data group replicas are listed with
// their role, the leader they know (or none) and applied index, and a list
// cut short says how many the node hosts.
func TestPageGroups(t *testing.T) {
	self := member(t, 10, 1)
	view := View{NodeID: "a", ClusterID: "c1", Members: []Member{
		{ID: "a", Addr: strings.TrimPrefix(self.URL, "http://"), Suffrage: "voter", Gossip: "alive", Leader: true, Self: true},
	}, Groups: []Group{
		{ID: 1, Name: "events", Role: "leader", Leader: "a", Applied: 42},
		{ID: 3, Name: "users<b>", Role: "candidate", Applied: 7},
	}, GroupsHosted: 2}
	h := New(func() View { return view }, http.DefaultClient, nil)
	code, body := get(t, h, "/")
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, body)
	}
	for _, want := range []string{
		`<table id="groups">`,
		`<tr class="group" data-id="1" data-role="leader">`,
		"<td>1</td><td class=\"l\">events</td>\n<td class=\"l\"><span class=\"badge leader\">leader</span></td>\n<td class=\"l\">a</td><td>42</td>",
		`<tr class="group" data-id="3" data-role="candidate">`,
		"<td>3</td><td class=\"l\">users&lt;b&gt;</td>\n<td class=\"l\">candidate</td>\n<td class=\"l\"><span class=\"warn\">none</span></td><td>7</td>",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(body, "users<b>") {
		t.Error("a group name reached the page unescaped")
	}
	if strings.Contains(body, "data group replicas; the first") {
		t.Error("a full list says it was cut short")
	}
	view.GroupsHosted = 70
	if _, body = get(t, h, "/"); !strings.Contains(body, "This node hosts 70 data group replicas; the first 2 are shown.") {
		t.Error("a list cut short does not say so")
	}
}
