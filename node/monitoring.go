package node

import (
	"cmp"
	"net"
	"net/http"
	"slices"
	"strings"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/consensus/ranges"
	"github.com/kvstore/kvstore/node/statuspage"
)

// withMonitoring serves /metrics (unless metrics are off) and the status
// page (GET / and /ui/) in front of h, which serves everything else.
func withMonitoring(h http.Handler, n *Node, m *metrics, cfg Config) http.Handler {
	var metricsHandler http.Handler
	if m != nil {
		metricsHandler = m.handler()
	}
	dial := cfg.Dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	page := statuspage.New(n.statusView(cfg.Version), &http.Client{
		// No idle connections left behind: the page is loaded rarely.
		Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true},
	}, cfg.Logger)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		get := r.Method == http.MethodGet || r.Method == http.MethodHead
		switch {
		case !get:
		case r.URL.Path == "/metrics" && metricsHandler != nil:
			metricsHandler.ServeHTTP(w, r)
			return
		case r.URL.Path == "/" || r.URL.Path == "/ui" || r.URL.Path == "/ui/":
			page.ServeHTTP(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// statusView returns what the status page shows of the cluster: the
// members of the raft configuration and those gossip knows, and this
// node's replicas of data groups (as many as /metrics reports).
func (n *Node) statusView(version string) func() statuspage.View {
	return func() statuspage.View {
		v := statuspage.View{NodeID: n.id, ClusterID: n.ident.ID(), Version: version}
		byID := map[string]*statuspage.Member{}
		get := func(id string) *statuspage.Member {
			if m := byID[id]; m != nil {
				return m
			}
			m := &statuspage.Member{ID: id, Self: id == n.id}
			byID[id] = m
			return m
		}
		leader, _ := n.replica.Leader()
		if f := n.replica.Raft().GetConfiguration(); f.Error() == nil {
			for _, s := range f.Configuration().Servers {
				m := get(string(s.ID))
				m.Addr = string(s.Address)
				m.Suffrage = "nonvoter"
				if s.Suffrage == raft.Voter {
					m.Suffrage = "voter"
				}
			}
		}
		for _, g := range n.gossip.Members() {
			m := get(g.ID)
			m.Gossip = g.State.String()
			if m.Addr == "" {
				m.Addr = cmp.Or(g.Meta.Addr, g.Addr)
			}
		}
		for _, m := range byID {
			m.Leader = m.ID == leader && leader != ""
			v.Members = append(v.Members, *m)
		}
		slices.SortFunc(v.Members, func(a, b statuspage.Member) int { return strings.Compare(a.ID, b.ID) })
		var list []hostedGroup
		list, v.GroupsHosted, _ = n.dataGroups.listHosted(ranges.MaxGroupsPerNode)
		for _, g := range list {
			role := strings.ToLower(g.r.Raft().State().String())
			if role == "follower" && slices.Contains(g.NonVoters, ranges.NodeID(n.id)) {
				role = "nonvoter"
			}
			leader, _ := g.r.Leader()
			v.Groups = append(v.Groups, statuspage.Group{ID: uint64(g.ID), Name: g.Name, Role: role, Leader: leader, Applied: g.r.kv.AppliedIndex()})
		}
		return v
	}
}
