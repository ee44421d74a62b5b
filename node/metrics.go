package node

import (
	"io/fs"
	"net/http"
	"path/filepath"
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
	bool01 := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
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
