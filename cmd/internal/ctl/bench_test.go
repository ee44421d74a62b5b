package ctl

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvstore/kvstore/node"
)

// TestBenchAgainstNode runs kvctl bench against a real single node and
// checks the JSON report.
func TestBenchAgainstNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	n, err := node.Start(ctx, node.Config{
		DataDir:          t.TempDir(),
		Listen:           "127.0.0.1:0",
		HeartbeatTimeout: 100 * time.Millisecond,
		ElectionTimeout:  100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close(context.Background())
	if err := n.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}

	var r struct {
		Workload  string           `json:"workload"`
		Clients   int              `json:"clients"`
		Ops       int64            `json:"ops"`
		Errors    map[string]int64 `json:"errors"`
		DurationS float64          `json:"duration_s"`
		OpsPerS   float64          `json:"ops_per_s"`
		P50Ms     *float64         `json:"p50_ms"`
		P90Ms     *float64         `json:"p90_ms"`
		P99Ms     *float64         `json:"p99_ms"`
		P999Ms    *float64         `json:"p999_ms"`
		MaxMs     *float64         `json:"max_ms"`
		Protocol  string           `json:"protocol"`
		Target    string           `json:"target"`
	}
	out := ok(t, n.Addr(), "", "bench", "--workload", "put", "--total", "200", "--clients", "8", "--keyspace", "1000", "-o", "json")
	if strings.Count(out, "\n") != 1 {
		t.Fatalf("want one line, got %q", out)
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if r.Workload != "put" || r.Clients != 8 || r.Ops != 200 || len(r.Errors) != 0 || r.Protocol != "grpc" || r.Target != "all" {
		t.Fatalf("report %s", out)
	}
	if r.DurationS <= 0 || r.OpsPerS <= 0 || r.P50Ms == nil || r.P90Ms == nil || r.P99Ms == nil || r.P999Ms == nil || r.MaxMs == nil {
		t.Fatalf("report %s", out)
	}
	if !(0 < *r.P50Ms && *r.P50Ms <= *r.P90Ms && *r.P90Ms <= *r.P99Ms && *r.P99Ms <= *r.P999Ms && *r.P999Ms <= *r.MaxMs) {
		t.Fatalf("quantiles out of order: %s", out)
	}

	// The keys are there now: a serializable get over Connect to the
	// leader, as text, finds them.
	out = ok(t, n.Addr(), "", "--protocol", "connect", "bench", "--workload", "get", "--consistency", "s",
		"--target", "leader", "--preload", "--keyspace", "300", "--total", "100")
	for _, want := range []string{"Requests:    100 ok, 0 failed", "Preload:     300 keys", "p99.9", "Histogram:", "(connect, 1 conns)"} {
		if !strings.Contains(out, want) {
			t.Errorf("text report lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "Misses") {
		t.Errorf("misses after preload:\n%s", out)
	}

	// --prefixes spreads the keys over the prefixes, equally: 20 keys,
	// 10 under each, and none outside them.
	out = ok(t, n.Addr(), "", "bench", "--workload", "get", "--preload", "--prefixes", "/a/,/b/",
		"--keyspace", "20", "--key-size", "2", "--total", "10", "-o", "json")
	if !strings.Contains(out, `"prefixes":["/a/","/b/"]`) {
		t.Errorf("report lacks the prefixes: %s", out)
	}
	for _, p := range []string{"/a/", "/b/"} {
		if got := ok(t, n.Addr(), "", "range", p, "--prefix", "--count-only"); strings.TrimSpace(got) != "10" {
			t.Errorf("%q keys under %s, want 10", got, p)
		}
	}
	if got := ok(t, n.Addr(), "", "range", "/", "--prefix", "--keys-only"); strings.Count(got, "/a/") != 10 || strings.Count(got, "/b/") != 10 {
		t.Errorf("keys under /:\n%s", got)
	}

	// --cpuprofile writes a profile: gzipped protobuf, as pprof reads it.
	prof := filepath.Join(t.TempDir(), "gen.prof")
	ok(t, n.Addr(), "", "bench", "--workload", "put", "--total", "100", "--keyspace", "100", "--cpuprofile", prof)
	f, err := os.Open(prof)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("--cpuprofile: %v", err)
	}
	if b, err := io.ReadAll(zr); err != nil || len(b) == 0 {
		t.Fatalf("--cpuprofile: %d bytes, %v", len(b), err)
	}
}

func TestBenchUsage(t *testing.T) {
	for _, args := range [][]string{
		{"bench", "--workload", "scan"},
		{"bench", "--consistency", "x"},
		{"bench", "--target", "follower"},
		{"bench", "--duration", "0"},
		{"bench", "--clients", "0"},
		{"bench", "--read-ratio", "2"},
		{"bench", "--keyspace", "100000", "--key-size", "3"},
		{"bench", "--prefixes", "/a/,/a/"},
		{"bench", "--prefixes", "/a/,,/b/"},
	} {
		if r := kvctl(t, closedAddr(t), "", args...); r.code != exitUsage {
			t.Errorf("kvctl %q: exit %d, want %d; stderr %q", args, r.code, exitUsage, r.stderr)
		}
	}
}

// A node that is down: every request fails, the report still comes out,
// and the exit code says so.
func TestBenchAllFail(t *testing.T) {
	r := kvctl(t, closedAddr(t), "", "bench", "--total", "20", "--clients", "2", "-o", "json")
	if r.code != exitFailure || !strings.Contains(r.stdout, `"unavailable":20`) {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}
