package node

import (
	"io/fs"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	gometrics "github.com/hashicorp/go-metrics"
	gometricsprom "github.com/hashicorp/go-metrics/prometheus"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kvstore/kvstore/api"
	"github.com/kvstore/kvstore/consensus"
	"github.com/kvstore/kvstore/consensus/ranges"
	"github.com/kvstore/kvstore/membership"
	"github.com/kvstore/kvstore/storage"
)

// metrics are one node's Prometheus metrics, in a registry of its own:
// tests run several nodes in one process, and each must report its own.
// Values that exist anyway (raft's indexes, the store's revision, the
// members) are read when Prometheus scrapes, so the request path pays
// only for the histograms and counters below.
type metrics struct {
	reg *prometheus.Registry

	requests      *api.RequestMetrics
	walFsync      prometheus.Histogram
	backendCommit prometheus.Histogram
	snapshot      prometheus.Histogram
	readIndex     prometheus.Histogram
	readIndexFail prometheus.Counter
	leaderChanges prometheus.Counter
	peerRTT       *prometheus.HistogramVec
}

// diskBuckets are etcd's for its disk histograms: 1 ms to 8 s.
var diskBuckets = prometheus.ExponentialBuckets(0.001, 2, 14)

func newMetrics() *metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	m := &metrics{
		reg:      reg,
		requests: api.NewRequestMetrics(reg),
		walFsync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kvstore_disk_wal_fsync_duration_seconds",
			Help:    "Latency of raft log appends, each one write and one fdatasync.",
			Buckets: diskBuckets,
		}),
		backendCommit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kvstore_disk_backend_commit_duration_seconds",
			Help:    "Latency of the key-value state's commit of one applied batch.",
			Buckets: diskBuckets,
		}),
		snapshot: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kvstore_disk_backend_snapshot_duration_seconds",
			Help:    "Latency of the checkpoint of the key-value state that each raft snapshot takes.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}),
		readIndex: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kvstore_server_read_index_duration_seconds",
			Help:    "Time a linearizable read waited for its read index (on a follower: the leader's answer).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 17),
		}),
		readIndexFail: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kvstore_server_read_indexes_failed_total",
			Help: "Read index requests that failed.",
		}),
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kvstore_server_leader_changes_seen_total",
			Help: "Leaders this node has seen take office.",
		}),
		peerRTT: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kvstore_network_peer_round_trip_time_seconds",
			Help:    "Round-trip time of gossip probes to each peer.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}, []string{"To"}),
	}
	reg.MustRegister(m.walFsync, m.backendCommit, m.snapshot, m.readIndex, m.readIndexFail, m.leaderChanges, m.peerRTT)
	return m
}

// observer gives the replica the hooks that feed the histograms.
func (m *metrics) observer() consensus.Observer {
	if m == nil {
		return consensus.Observer{}
	}
	return consensus.Observer{
		BackendCommit: func(d time.Duration) { m.backendCommit.Observe(d.Seconds()) },
		Snapshot:      func(d time.Duration) { m.snapshot.Observe(d.Seconds()) },
		ReadIndex: func(d time.Duration, err error) {
			m.readIndex.Observe(d.Seconds())
			if err != nil {
				m.readIndexFail.Inc()
			}
		},
	}
}

// onPing feeds the peers' round-trip times.
func (m *metrics) onPing() func(id string, rtt time.Duration) {
	if m == nil {
		return nil
	}
	return func(id string, rtt time.Duration) { m.peerRTT.WithLabelValues(id).Observe(rtt.Seconds()) }
}

// requestMetrics is nil when metrics are off.
func (m *metrics) requestMetrics() *api.RequestMetrics {
	if m == nil {
		return nil
	}
	return m.requests
}

// handler serves the node's metrics and the raft and gossip metrics of
// the process (see goMetricsRegistry), in the Prometheus text format or
// OpenMetrics as the scraper asks.
func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(prometheus.Gatherers{m.reg, goMetricsRegistry()}, promhttp.HandlerOpts{
		EnableOpenMetrics: true,
		// A scrape that finds one bad collector still gets the others.
		ErrorHandling: promhttp.ContinueOnError,
		Timeout:       10 * time.Second,
	})
}

var (
	goMetricsOnce sync.Once
	goMetricsReg  *prometheus.Registry
)

// goMetricsRegistry bridges what hashicorp/raft and memberlist measure
// with github.com/hashicorp/go-metrics (raft.commitTime,
// memberlist.gossip, ...) into Prometheus, once per process: go-metrics
// has one global sink, which both libraries write to without saying which
// raft or memberlist instance measured. So these series are the process's
// (named kvstore_raft_*, kvstore_memberlist_*): a kvd process runs one
// node, and there they are that node's; in a test process that runs
// several nodes, every node's /metrics shows the sum of them all.
func goMetricsRegistry() *prometheus.Registry {
	goMetricsOnce.Do(func() {
		goMetricsReg = prometheus.NewRegistry()
		sink, err := gometricsprom.NewPrometheusSinkFrom(gometricsprom.PrometheusOpts{Registerer: goMetricsReg})
		if err != nil {
			return // only a registration conflict, impossible in a fresh registry
		}
		cfg := gometrics.DefaultConfig("kvstore")
		cfg.EnableHostname = false
		cfg.EnableRuntimeMetrics = false // the Go collector has them
		cfg.EnableServiceLabel = false
		// The sink flattens and hashes the key on every call, which costs
		// more than most of what is measured. Blocked:
		// raft's two measures of every entry, which our own metrics cover
		// (kvstore_server_proposals_*, the request and disk histograms),
		// and its two of every heartbeat, which a cluster at rest sends
		// all the time and whose failures raft logs. Raft's per-batch and
		// per-append measures stay.
		cfg.BlockedPrefixes = []string{"kvstore.raft.apply", "kvstore.raft.commitTime",
			"kvstore.raft.replication.heartbeat", "kvstore.raft.rpc.processHeartbeat"}
		_, _ = gometrics.NewGlobal(cfg, sink)
	})
	return goMetricsReg
}

// watchLeader counts leader changes until stop is closed.
func (m *metrics) watchLeader(r *raft.Raft, stop <-chan struct{}) {
	ch := make(chan raft.Observation, 4)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	r.RegisterObserver(obs)
	defer r.DeregisterObserver(obs)
	for {
		select {
		case <-stop:
			return
		case o := <-ch:
			// A lost leader is observed too (empty); count the new ones.
			if l, ok := o.Data.(raft.LeaderObservation); ok && l.LeaderID != "" {
				m.leaderChanges.Inc()
			}
		}
	}
}

// registerNode adds the metrics read from the node's state at scrape
// time.
func (m *metrics) registerNode(n *Node, version string) {
	r := n.replica
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	counter := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f)
	}
	keys := &keyCounter{kv: n.kv}
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "kvstore_server_version",
			Help:        "Which version is running: 1 for the version label.",
			ConstLabels: prometheus.Labels{"server_version": orNone(version)},
		}, func() float64 { return 1 }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "kvstore_server_id",
			Help:        "This node's id: 1 for the server_id label.",
			ConstLabels: prometheus.Labels{"server_id": n.id},
		}, func() float64 { return 1 }),
		gauge("kvstore_server_has_leader", "Whether a leader exists: 1 if this node knows one, 0 if not.",
			func() float64 { addr, _ := r.Raft().LeaderWithID(); return bool01(addr != "") }),
		gauge("kvstore_server_is_leader", "Whether this node is the leader: 1 if so, 0 if not.",
			func() float64 { return bool01(r.Raft().State() == raft.Leader) }),
		gauge("kvstore_server_term", "The raft term this node is in.",
			func() float64 { return float64(r.Raft().CurrentTerm()) }),
		gauge("kvstore_server_proposals_committed_total", "The raft commit index: the entries this node knows committed.",
			func() float64 { return float64(r.Raft().CommitIndex()) }),
		gauge("kvstore_server_proposals_applied_total", "The index of the last entry applied to the key-value state.",
			func() float64 { return float64(n.kv.AppliedIndex()) }),
		gauge("kvstore_server_proposals_pending", "Proposals this node made that wait to be applied.",
			func() float64 { p, _ := r.ProposalStats(); return float64(p) }),
		counter("kvstore_server_proposals_failed_total", "Proposals this node made that failed.",
			func() float64 { _, f := r.ProposalStats(); return float64(f) }),
		counter("kvstore_server_state_rebuilds_total", "Times this node found its key-value state corrupt and rebuilt it from another member.",
			func() float64 { return float64(r.StateRebuilds()) }),
		counter("kvstore_server_forwarded_writes_total", "Writes this node forwarded to the leader.",
			func() float64 { return float64(n.peers.ForwardedWrites()) }),
		gauge("kvstore_server_quota_backend_bytes", "The space quota of the key-value state in bytes (--quota-bytes); 0: no quota.",
			func() float64 { return float64(n.QuotaBytes()) }),
		gauge("kvstore_mvcc_db_total_size_in_use_in_bytes", "The logical size of the key-value state, as the quota measures it.",
			func() float64 { return float64(n.StateBytes()) }),
		gauge("kvstore_mvcc_db_total_size_in_bytes", "Disk space the key-value state's files take.",
			func() float64 { return float64(dirSize(n.kv.Dir())) }),
		gauge("kvstore_disk_raft_log_size_in_bytes", "Disk space the raft log's files take.",
			func() float64 { return float64(dirSize(n.raftDir)) }),
		gauge("kvstore_mvcc_current_revision", "The revision of the key-value state this node has applied.",
			func() float64 { return float64(n.kv.AppliedIndex()) }),
		gauge("kvstore_mvcc_compact_revision", "The revision below which history is compacted.",
			func() float64 { return float64(n.kv.CompactedRevision()) }),
		gauge("kvstore_debugging_mvcc_keys_total", "Live keys in the key-value state (counted at most every 15 s).",
			keys.count),
		gauge("kvstore_mvcc_watcher_total", "Open watchers.",
			func() float64 { return float64(n.kv.WatchStats().Watchers) }),
		gauge("kvstore_mvcc_slow_watcher_total", "Watchers still catching up from history (not yet synced with live changes).",
			func() float64 { return float64(n.kv.WatchStats().Unsynced) }),
		counter("kvstore_mvcc_watchers_cut_total", "Watchers cancelled because their reader fell too far behind.",
			func() float64 { return float64(n.kv.WatchStats().Cut) }),
		gauge("kvstore_lease_active", "Leases the key-value state holds.",
			func() float64 { return float64(r.LeaseCount()) }),
		&membersCollector{n: n},
		&groupsCollector{h: n.dataGroups},
	)
}

// keyCounter counts the live keys, at most every keyCountEvery: counting
// reads every key.
type keyCounter struct {
	kv   *storage.KV
	mu   sync.Mutex
	at   time.Time
	keys float64
}

const keyCountEvery = 15 * time.Second

func (k *keyCounter) count() float64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.at.IsZero() && time.Since(k.at) < keyCountEvery {
		return k.keys
	}
	res, err := k.kv.Range(k.kv.AppliedIndex(), []byte{0}, []byte{0}, storage.RangeOptions{CountOnly: true})
	if err == nil {
		k.keys, k.at = float64(res.Count), time.Now()
	}
	return k.keys
}

// dirSize is the disk space the files under dir take: allocated blocks,
// not lengths, since Badger's files are sparse until written.
func dirSize(dir string) int64 {
	var total int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			total += st.Blocks * 512
		} else {
			total += info.Size()
		}
		return nil
	})
	return total
}

// membersCollector counts the members by gossip state and by raft
// suffrage, as this node sees them.
type membersCollector struct{ n *Node }

var (
	gossipMembersDesc = prometheus.NewDesc("kvstore_cluster_gossip_members",
		"Members gossip knows, by state (alive, suspect, dead, left), as this node sees them.", []string{"state"}, nil)
	raftMembersDesc = prometheus.NewDesc("kvstore_cluster_raft_members",
		"Members of the raft configuration, by suffrage (voter, nonvoter).", []string{"suffrage"}, nil)
)

func (c *membersCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- gossipMembersDesc
	ch <- raftMembersDesc
}

func (c *membersCollector) Collect(ch chan<- prometheus.Metric) {
	states := map[membership.State]int{membership.StateAlive: 0, membership.StateSuspect: 0, membership.StateDead: 0, membership.StateLeft: 0}
	for _, m := range c.n.gossip.Members() {
		states[m.State]++
	}
	for s, v := range states {
		ch <- prometheus.MustNewConstMetric(gossipMembersDesc, prometheus.GaugeValue, float64(v), s.String())
	}
	f := c.n.replica.Raft().GetConfiguration()
	if f.Error() != nil {
		return
	}
	var voters, nonvoters int
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			voters++
		} else {
			nonvoters++
		}
	}
	ch <- prometheus.MustNewConstMetric(raftMembersDesc, prometheus.GaugeValue, float64(voters), "voter")
	ch <- prometheus.MustNewConstMetric(raftMembersDesc, prometheus.GaugeValue, float64(nonvoters), "nonvoter")
}

// groupsCollector reports this node's replicas of data groups, each
// series labelled with the group's id (group) and name (group_name). The
// meta group keeps its etcd-named kvstore_server_* series without these
// labels; a data group's are the kvstore_group_* family, so that a query
// or alert written for the meta group never mixes data groups in.
//
// What must hold: the series are built at scrape time from the replicas
// hosted then, so a group that leaves the node leaves with its replica
// (no stale labels), and at most ranges.MaxGroupsPerNode groups are
// reported (the lowest ids), which bounds the cardinality even if an
// operator placed more here; kvstore_group_replicas_hosted counts them
// all.
type groupsCollector struct{ h *groupHost }

var (
	groupLabels = []string{"group", "group_name"}

	groupsHostedDesc = prometheus.NewDesc("kvstore_group_replicas_hosted",
		"Data group replicas this node hosts.", nil, nil)
	groupsMovingDesc = prometheus.NewDesc("kvstore_group_moves_in_progress",
		"Data groups hosted here whose move to new replicas (kvctl group move) is under way.", nil, nil)
	groupIsLeaderDesc = prometheus.NewDesc("kvstore_group_is_leader",
		"Whether this node's replica leads the data group: 1 if so, 0 if not.", groupLabels, nil)
	groupHasLeaderDesc = prometheus.NewDesc("kvstore_group_has_leader",
		"Whether this node's replica of the data group knows a leader: 1 if so, 0 if not.", groupLabels, nil)
	groupStateDesc = prometheus.NewDesc("kvstore_group_raft_state",
		"The raft state of this node's replica of the data group: 1 for the state it is in, 0 for the others.",
		append(slices.Clone(groupLabels), "state"), nil)
	groupTermDesc = prometheus.NewDesc("kvstore_group_term",
		"The raft term of this node's replica of the data group.", groupLabels, nil)
	groupCommitDesc = prometheus.NewDesc("kvstore_group_commit_index",
		"The raft commit index of this node's replica of the data group.", groupLabels, nil)
	groupAppliedDesc = prometheus.NewDesc("kvstore_group_applied_index",
		"The index of the last entry this node's replica of the data group applied to its key-value state.", groupLabels, nil)
	groupRevisionDesc = prometheus.NewDesc("kvstore_group_current_revision",
		"The revision of the data group's key-value state this node's replica has applied (the group's own revisions).", groupLabels, nil)
	groupContactDesc = prometheus.NewDesc("kvstore_group_last_contact_seconds",
		"Seconds since this node's replica of the data group last heard from its leader: 0 on the leader; since the replica started if it never has.", groupLabels, nil)
)

// raftStates are the values of kvstore_group_raft_state's state label.
var raftStates = []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown}

// Describe implements prometheus.Collector.
func (c *groupsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{groupsHostedDesc, groupsMovingDesc, groupIsLeaderDesc, groupHasLeaderDesc,
		groupStateDesc, groupTermDesc, groupCommitDesc, groupAppliedDesc, groupRevisionDesc, groupContactDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *groupsCollector) Collect(ch chan<- prometheus.Metric) {
	list, hosted, moving := c.h.listHosted(ranges.MaxGroupsPerNode)
	ch <- prometheus.MustNewConstMetric(groupsHostedDesc, prometheus.GaugeValue, float64(hosted))
	ch <- prometheus.MustNewConstMetric(groupsMovingDesc, prometheus.GaugeValue, float64(moving))
	for _, g := range list {
		labels := []string{strconv.FormatUint(uint64(g.ID), 10), g.Name}
		gauge := func(d *prometheus.Desc, v float64, extra ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append(labels, extra...)...)
		}
		r := g.r.Raft()
		state := r.State()
		leader, _ := g.r.Leader()
		gauge(groupIsLeaderDesc, bool01(state == raft.Leader))
		gauge(groupHasLeaderDesc, bool01(leader != ""))
		for _, s := range raftStates {
			gauge(groupStateDesc, bool01(state == s), strings.ToLower(s.String()))
		}
		gauge(groupTermDesc, float64(r.CurrentTerm()))
		gauge(groupCommitDesc, float64(r.CommitIndex()))
		gauge(groupAppliedDesc, float64(g.r.kv.AppliedIndex()))
		gauge(groupRevisionDesc, float64(g.r.kv.AppliedIndex()))
		gauge(groupContactDesc, g.r.sinceContact(state).Seconds())
	}
}

// sinceContact is how long ago this replica last heard from its leader:
// 0 on the leader, and since the replica started if it never has.
func (r *groupReplica) sinceContact(state raft.RaftState) time.Duration {
	if state == raft.Leader {
		return 0
	}
	last := r.Raft().LastContact()
	if last.IsZero() {
		last = r.started
	}
	return time.Since(last)
}

// bool01 is a boolean as a gauge's value.
func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// timedLogStore times the appends of a raft log (any raft.LogStore): one
// StoreLogs is a write and its fdatasync. It is not a
// raft.MonotonicLogStore: storage/raftlog must not be taken for one (its
// doc.go, gaps).
type timedLogStore struct {
	raft.LogStore
	appends prometheus.Observer
}

func (s *timedLogStore) StoreLogs(logs []*raft.Log) error {
	start := time.Now()
	err := s.LogStore.StoreLogs(logs)
	s.appends.Observe(time.Since(start).Seconds())
	return err
}

func (s *timedLogStore) StoreLog(l *raft.Log) error {
	start := time.Now()
	err := s.LogStore.StoreLog(l)
	s.appends.Observe(time.Since(start).Seconds())
	return err
}

// logStore returns logs with its appends timed; logs itself when metrics
// are off.
func (m *metrics) logStore(logs raft.LogStore) raft.LogStore {
	if m == nil {
		return logs
	}
	return &timedLogStore{LogStore: logs, appends: m.walFsync}
}
