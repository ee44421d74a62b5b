package monitoring

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.yaml.in/yaml/v3"

	"github.com/kvstore/kvstore/node/nodetest"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// ruleFile is the part of a Prometheus rule file the test reads.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert  string `yaml:"alert"`
			Record string `yaml:"record"`
			Expr   string `yaml:"expr"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func readRules(t *testing.T, path string) ruleFile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f ruleFile
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return f
}

// dashboardQueries returns every query of dashboard.json's panels, with
// Grafana's variables filled in as Grafana would for the test's job.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	vars := strings.NewReplacer("$__rate_interval", "30s", "$job", "kvstore")
	var out []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			out = append(out, vars.Replace(tg.Expr))
		}
	}
	return out
}

// promAPI queries a Prometheus server's HTTP API.
type promAPI struct{ base string }

type promResult struct {
	Status    string          `json:"status"`
	Error     string          `json:"error"`
	ErrorType string          `json:"errorType"`
	Data      json.RawMessage `json:"data"`
}

func (p promAPI) get(ctx context.Context, path string, q url.Values) (promResult, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.base+path+"?"+q.Encode(), nil)
	if err != nil {
		return promResult{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return promResult{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return promResult{}, err
	}
	var r promResult
	if err := json.Unmarshal(body, &r); err != nil {
		return promResult{}, fmt.Errorf("%s: %s: %w", path, body, err)
	}
	if r.Status != "success" {
		return r, fmt.Errorf("%s: %s: %s", path, r.ErrorType, r.Error)
	}
	return r, nil
}

// query evaluates expr now and returns how many series it gave.
func (p promAPI) query(ctx context.Context, expr string) (int, error) {
	r, err := p.get(ctx, "/api/v1/query", url.Values{"query": {expr}})
	if err != nil {
		return 0, err
	}
	var data struct {
		ResultType string            `json:"resultType"`
		Result     []json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(r.Data, &data); err != nil {
		return 0, err
	}
	if data.ResultType == "scalar" {
		return 1, nil
	}
	return len(data.Result), nil
}

// freePort returns a loopback address with a port free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// structural are the alerts about the cluster's shape, which must stay
// quiet on a healthy cluster however loaded the machine; the others
// (latency, leader changes) may go off on a slow machine, as they should.
var structural = map[string]bool{
	"KvstoreNoLeader":              true,
	"KvstoreGroupNoLeader":         true,
	"KvstoreMembersDown":           true,
	"KvstoreInsufficientMembers":   true,
	"KvstoreDatabaseQuotaLowSpace": true,
}

// metricName finds the metric names an expression selects.
var metricName = regexp.MustCompile(`\b(kvstore_[a-zA-Z0-9_]+|up)\s*[{\[]`)

// TestPrometheusEvaluatesRulesAndDashboard runs Debian's Prometheus server
// against a 3-node cluster with this directory's rules, and checks through
// Prometheus's HTTP API that every rule loads and evaluates, no alert fires
// on the healthy cluster, every metric an alert names has series, and every
// dashboard query evaluates and returns at least one series.
func TestPrometheusEvaluatesRulesAndDashboard(t *testing.T) {
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("no prometheus on PATH (Debian: apt-get install prometheus); this test needs the real server")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := nodetest.NewCluster(t, 3)
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	// A data group on every node, so that the kvstore_group_* series and
	// the alert on them have something to show.
	if _, err := c.Node("n1").Client().Cluster.CreateGroup(ctx, connect.NewRequest(&kvstorev1.CreateGroupRequest{
		Name: "g", Start: []byte("g/"), End: []byte("g0"), Replicas: []string{"n1", "n2", "n3"},
	})); err != nil {
		t.Fatalf("create a data group: %v", err)
	}
	cl := c.Client()
	load, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	go func() {
		for i := 0; load.Err() == nil; i++ {
			key := fmt.Appendf(nil, "k%03d", i%100)
			if i%2 == 1 {
				key = fmt.Appendf(nil, "g/%03d", i%100)
			}
			_, _ = cl.KV.Put(load, connect.NewRequest(&kvstorev1.PutRequest{Key: key, Value: []byte("v")}))
			_, _ = cl.KV.Get(load, connect.NewRequest(&kvstorev1.GetRequest{Key: key}))
			time.Sleep(10 * time.Millisecond)
		}
	}()

	dir := t.TempDir()
	var targets []string
	for _, nd := range c.Nodes() {
		targets = append(targets, `"`+nd.Addr()+`"`)
	}
	abs := func(p string) string {
		a, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [%q, %q]
scrape_configs:
  - job_name: kvstore
    static_configs:
      - targets: [%s]
`, abs("alerts.yml"), abs("recording.yml"), strings.Join(targets, ", "))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freePort(t)
	cmd := exec.CommandContext(ctx, promBin,
		"--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--log.level=warn")
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "prometheus.log"))
			t.Logf("prometheus log:\n%s", b)
		}
	}()
	api := promAPI{base: "http://" + addr}

	// poll retries check until it returns nil or the deadline passes.
	poll := func(what string, check func() error) {
		t.Helper()
		var err error
		deadline := time.After(60 * time.Second)
		for {
			if err = check(); err == nil {
				return
			}
			select {
			case <-ctx.Done():
				t.Fatalf("%s: %v", what, err)
			case <-deadline:
				t.Fatalf("%s: %v", what, err)
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
	poll("all three nodes scraped", func() error {
		n, err := api.query(ctx, `up{job="kvstore"} == 1`)
		if err == nil && n != 3 {
			err = fmt.Errorf("%d of 3 targets up", n)
		}
		return err
	})

	// The cluster metrics say what a healthy 3-node cluster is.
	for expr, want := range map[string]int{
		`kvstore_cluster_gossip_members{state="alive"} == 3`:                                                                3,
		`kvstore_cluster_raft_members{suffrage="voter"} == 3`:                                                               3,
		`count by (instance) (kvstore_network_peer_round_trip_time_seconds_count) == 2`:                                     3,
		`sum(kvstore_server_is_leader) == 1`:                                                                                1,
		`kvstore_server_has_leader == 1`:                                                                                    3,
		`sum(kvstore_group_is_leader{group_name="g"}) == 1`:                                                                 1,
		`kvstore_group_has_leader{group_name="g"} == 1`:                                                                     3,
		`kvstore_group_replicas_hosted == 1`:                                                                                3,
		`count(count by (grpc_code, grpc_method) (kvstore_grpc_server_handled_total{grpc_service="kvstore.v1.KVService"}))`: 1,
	} {
		poll(expr, func() error {
			n, err := api.query(ctx, expr)
			if err == nil && n != want {
				err = fmt.Errorf("%d series, want %d", n, want)
			}
			return err
		})
	}

	// The rules loaded, and each has been evaluated without an error.
	poll("every rule loaded and evaluated", func() error {
		r, err := api.get(ctx, "/api/v1/rules", nil)
		if err != nil {
			return err
		}
		var data struct {
			Groups []struct {
				Rules []struct {
					Name      string `json:"name"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		}
		if err := json.Unmarshal(r.Data, &data); err != nil {
			return err
		}
		n := 0
		for _, g := range data.Groups {
			for _, rule := range g.Rules {
				n++
				if rule.Health != "ok" {
					return fmt.Errorf("rule %s: health %q %s", rule.Name, rule.Health, rule.LastError)
				}
			}
		}
		if n != 13 {
			return fmt.Errorf("%d rules loaded, want 13 (9 alerts, 4 recording rules)", n)
		}
		return nil
	})

	for _, file := range []string{"alerts.yml", "recording.yml"} {
		for _, g := range readRules(t, file).Groups {
			for _, rule := range g.Rules {
				name := rule.Alert + rule.Record
				names := metricName.FindAllStringSubmatch(rule.Expr, -1)
				if len(names) == 0 {
					t.Errorf("%s: names no metric the test can find in %q", name, rule.Expr)
				}
				for _, m := range names {
					poll(name+": "+m[1]+" has series", func() error {
						n, err := api.query(ctx, m[1])
						if err == nil && n == 0 {
							err = fmt.Errorf("no series of %s", m[1])
						}
						return err
					})
				}
				n, err := api.query(ctx, rule.Expr)
				if err != nil {
					t.Errorf("%s: %v", name, err)
				}
				if structural[rule.Alert] && n != 0 {
					// A member briefly suspect on a loaded machine is what
					// the alert's "for" absorbs: it must clear.
					poll("alert "+rule.Alert+" quiet on a healthy cluster", func() error {
						n, err := api.query(ctx, rule.Expr)
						if err == nil && n != 0 {
							err = fmt.Errorf("%d series", n)
						}
						return err
					})
				}
				if rule.Record != "" {
					poll(name+" has series", func() error {
						n, err := api.query(ctx, rule.Record)
						if err == nil && n == 0 {
							err = fmt.Errorf("recorded %s has no series", rule.Record)
						}
						return err
					})
				}
			}
		}
	}

	queries := dashboardQueries(t)
	if len(queries) < 20 {
		t.Fatalf("the dashboard has %d queries; did dashboard.json change shape?", len(queries))
	}
	for _, q := range queries {
		poll("dashboard query "+q, func() error {
			n, err := api.query(ctx, q)
			if err == nil && n == 0 {
				err = fmt.Errorf("no series")
			}
			return err
		})
	}
	if t.Failed() {
		return
	}
	// None of the alerts about the cluster's shape fired meanwhile.
	r, err := api.get(ctx, "/api/v1/alerts", nil)
	if err != nil {
		t.Fatal(err)
	}
	var alerts struct {
		Alerts []struct {
			Labels map[string]string `json:"labels"`
			State  string            `json:"state"`
		} `json:"alerts"`
	}
	if err := json.Unmarshal(r.Data, &alerts); err != nil {
		t.Fatal(err)
	}
	for _, a := range alerts.Alerts {
		if name := a.Labels["alertname"]; structural[name] && a.State == "firing" {
			t.Errorf("alert %s %s on a healthy cluster: %v", name, a.State, a.Labels)
		} else {
			t.Logf("alert %s %s (the machine is slow): %v", name, a.State, a.Labels)
		}
	}
	t.Logf("%d alert and recording rules and %d dashboard queries evaluated", 13, len(queries))
}
