package statuspage

import (
	"context"
	"embed"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Member is one member as the serving node knows it.
type Member struct {
	ID, Addr string
	// Suffrage is "voter" or "nonvoter"; empty when the member is not in
	// the raft configuration (yet).
	Suffrage string
	// Gossip is the member's gossip state (alive, suspect, dead, left);
	// empty when gossip does not know it.
	Gossip string
	// Leader and Self mark the raft leader and the serving node.
	Leader, Self bool
}

// Group is one replica of a data group the serving node hosts.
type Group struct {
	ID   uint64
	Name string
	// Role is the replica's raft state (leader, follower, candidate,
	// shutdown), or nonvoter for a follower still catching up to vote.
	Role string
	// Leader is the id of the group's leader as the replica knows it;
	// empty when it knows none.
	Leader  string
	Applied uint64
}

// View is what the serving node knows of its cluster.
type View struct {
	NodeID, ClusterID, Version string
	Members                    []Member
	// Groups are the serving node's data group replicas, by id; it hosts
	// GroupsHosted, which is more when the list was cut short.
	Groups       []Group
	GroupsHosted int
}

// Handler serves the page.
type Handler struct {
	view   func() View
	client *http.Client
	logger *slog.Logger

	mu   sync.Mutex
	prev map[string]sample // the previous scrape of each member, by id
}

// New returns the page's handler: view says what the node knows, client
// fetches the members' /metrics.
func New(view func() View, client *http.Client, logger *slog.Logger) *Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Handler{view: view, client: client, logger: logger, prev: map[string]sample{}}
}

// scrapeTimeout bounds one member's scrape: a dead member must not hold the
// page up.
const scrapeTimeout = 2 * time.Second

// maxMetricsBytes bounds one member's /metrics answer.
const maxMetricsBytes = 8 << 20

// sample is what the page reads from one scrape of a member.
type sample struct {
	at                 time.Time
	term, commit       float64
	applied, revision  float64
	keys, dbSize, wal  float64
	requests           float64 // calls handled, public services
	unarySum, unaryCnt float64 // handling seconds of unary calls
}

// row is one member's line on the page.
type row struct {
	Member
	Err                         string
	Term, Commit, Applied, Lag  string
	Revision, Keys, Size        string
	RequestsPerSec, MeanLatency string
	Reachable, Lagging          bool
}

type page struct {
	View
	Rows        []row
	Leader      string
	Refresh     int
	GeneratedAt string
}

//go:embed page.html
var files embed.FS

var tmpl = template.Must(template.ParseFS(files, "page.html"))

// ServeHTTP renders the page; ?refresh=N (1 to 300) sets the reload
// interval in seconds, default 5.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	refresh := 5
	if s := r.URL.Query().Get("refresh"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 300 {
			http.Error(w, "refresh must be a number of seconds from 1 to 300", http.StatusBadRequest)
			return
		}
		refresh = n
	}
	v := h.view()
	p := page{View: v, Refresh: refresh, GeneratedAt: time.Now().UTC().Format(time.RFC3339)}
	samples := make([]sample, len(v.Members))
	errs := make([]error, len(v.Members))
	var wg sync.WaitGroup
	for i, m := range v.Members {
		wg.Go(func() { samples[i], errs[i] = h.scrape(r.Context(), m.Addr) })
	}
	wg.Wait()

	leaderCommit := -1.0
	for i, m := range v.Members {
		if m.Leader {
			p.Leader = m.ID
			if errs[i] == nil {
				leaderCommit = samples[i].commit
			}
		}
	}
	h.mu.Lock()
	for i, m := range v.Members {
		rw := row{Member: m}
		if errs[i] != nil {
			rw.Err = errs[i].Error()
			p.Rows = append(p.Rows, rw)
			continue
		}
		s := samples[i]
		rw.Reachable = true
		rw.Term, rw.Commit, rw.Applied = count(s.term), count(s.commit), count(s.applied)
		rw.Revision, rw.Keys = count(s.revision), count(s.keys)
		rw.Size = bytes(s.dbSize + s.wal)
		rw.Lag = "-"
		if leaderCommit >= 0 {
			lag := max(leaderCommit-s.applied, 0)
			rw.Lag = count(lag)
			rw.Lagging = lag > 1000
		}
		rw.RequestsPerSec, rw.MeanLatency = "-", "-"
		if prev, ok := h.prev[m.ID]; ok && s.at.Sub(prev.at) < 5*time.Minute && s.requests >= prev.requests {
			if dt := s.at.Sub(prev.at).Seconds(); dt > 0 {
				rw.RequestsPerSec = strconv.FormatFloat((s.requests-prev.requests)/dt, 'f', 1, 64)
			}
			if dc := s.unaryCnt - prev.unaryCnt; dc > 0 {
				rw.MeanLatency = latency((s.unarySum - prev.unarySum) / dc)
			}
		}
		h.prev[m.ID] = s
		p.Rows = append(p.Rows, rw)
	}
	// Forget members that are gone, so the map stays bounded.
	for id := range h.prev {
		if !slices.ContainsFunc(v.Members, func(m Member) bool { return m.ID == id }) {
			delete(h.prev, id)
		}
	}
	h.mu.Unlock()

	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	if err := tmpl.Execute(w, p); err != nil {
		h.logger.Warn("status page: render", "error", err)
	}
}

// scrape reads a member's /metrics.
func (h *Handler) scrape(ctx context.Context, addr string) (sample, error) {
	ctx, cancel := context.WithTimeout(ctx, scrapeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return sample{}, fmt.Errorf("unreachable: %w", err)
	}
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := h.client.Do(req)
	if err != nil {
		return sample{}, fmt.Errorf("unreachable: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return sample{}, fmt.Errorf("/metrics answered %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(io.LimitReader(resp.Body, maxMetricsBytes))
	if err != nil {
		return sample{}, fmt.Errorf("/metrics unreadable: %w", err)
	}
	s := sample{at: time.Now()}
	one := func(name string) float64 {
		f := fams[name]
		if f == nil || len(f.Metric) == 0 {
			return 0
		}
		return value(f.Metric[0])
	}
	s.term = one("kvstore_server_term")
	s.commit = one("kvstore_server_proposals_committed_total")
	s.applied = one("kvstore_server_proposals_applied_total")
	s.revision = one("kvstore_mvcc_current_revision")
	s.keys = one("kvstore_debugging_mvcc_keys_total")
	s.dbSize = one("kvstore_mvcc_db_total_size_in_bytes")
	s.wal = one("kvstore_disk_raft_log_size_in_bytes")
	if f := fams["kvstore_grpc_server_handled_total"]; f != nil {
		for _, m := range f.Metric {
			if public(m) {
				s.requests += value(m)
			}
		}
	}
	if f := fams["kvstore_grpc_server_handling_seconds"]; f != nil {
		for _, m := range f.Metric {
			if public(m) && m.Histogram != nil {
				s.unarySum += m.Histogram.GetSampleSum()
				s.unaryCnt += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return s, nil
}

// public tells the calls of clients from those between nodes (the peer
// services) and of health checks.
func public(m *dto.Metric) bool {
	for _, l := range m.Label {
		if l.GetName() == "grpc_service" {
			s := l.GetValue()
			return len(s) > len("kvstore.v1.") && s[:len("kvstore.v1.")] == "kvstore.v1."
		}
	}
	return false
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}

func count(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) }

func bytes(v float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f %s", v, units[i])
	}
	return fmt.Sprintf("%.1f %s", v, units[i])
}

func latency(sec float64) string {
	switch {
	case sec < 0.001:
		return fmt.Sprintf("%.0f µs", sec*1e6)
	case sec < 1:
		return fmt.Sprintf("%.1f ms", sec*1e3)
	}
	return fmt.Sprintf("%.2f s", sec)
}
