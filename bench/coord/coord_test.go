// Package coord measures kvd's watches and compaction with real kvd
// processes on loopback (issue 5's figures). It is its own module so that
// `go test ./...` at the top does not run it. Run from here:
//
//	(cd ../.. && go build -o /tmp/coord-kvd ./cmd/kvd)
//	KVD=/tmp/coord-kvd go test -count=1 -v -timeout 20m .
//
// Each test prints its figures; none asserts a timing.
package coord

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

// h2c is a client for gRPC-style HTTP/2 without TLS; each call makes its
// own transport, so its own connections.
func h2c() *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: p}}
}

// kvd is the kvd binary the tests run.
func kvd(t *testing.T) string {
	p := os.Getenv("KVD")
	if p == "" {
		t.Skip("set KVD to a kvd binary: (cd ../.. && go build -o /tmp/coord-kvd ./cmd/kvd)")
	}
	return p
}

func startCluster(t *testing.T, extra ...string) []string {
	extra = append(extra, "--pprof")
	dir := t.TempDir()
	addrs := []string{"127.0.0.1:17401", "127.0.0.1:17402", "127.0.0.1:17403"}
	for i, a := range addrs {
		args := append([]string{"--data-dir", filepath.Join(dir, fmt.Sprint(i)), "--listen", a, "--bootstrap-expect", "3", "--join", strings.Join(addrs, ","), "--log-level", "warn"}, extra...)
		cmd := exec.Command(kvd(t), args...)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	kv := kvstorev1connect.NewKVServiceClient(h2c(), "http://"+addrs[0])
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("hello"), Value: []byte("x")}))
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return addrs
}

func leaderAndFollower(t *testing.T, addrs []string) (leader, follower string) {
	c := kvstorev1connect.NewClusterServiceClient(h2c(), "http://"+addrs[0])
	st, err := c.Status(context.Background(), connect.NewRequest(&kvstorev1.StatusRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	leader = st.Msg.GetLeaderAddress()
	for _, a := range addrs {
		if a != leader {
			return leader, a
		}
	}
	return
}

func rss(t *testing.T, addr string) (int, int) {
	out, _ := exec.Command("sh", "-c", "ss -ltnp | grep '"+addr+" ' | sed -E 's/.*pid=([0-9]+).*/\\1/'").Output()
	pid := strings.TrimSpace(string(out))
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			n, _ := strconv.Atoi(f[1])
			p, _ := strconv.Atoi(pid)
			return n / 1024, p
		}
	}
	return 0, 0
}

func pct(d []time.Duration, p float64) time.Duration {
	slices.Sort(d)
	return d[int(float64(len(d)-1)*p)]
}

// Put ack -> event on a watcher on another node.
func TestWatchLatency(t *testing.T) {
	addrs := startCluster(t)
	leader, follower := leaderAndFollower(t, addrs)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	wc := kvstorev1connect.NewWatchServiceClient(h2c(), "http://"+follower)
	st, err := wc.Watch(ctx, connect.NewRequest(&kvstorev1.WatchRequest{Key: []byte("lat/"), Prefix: true}))
	if err != nil {
		t.Fatal(err)
	}
	st.Receive() // created
	arrived := make(chan time.Time, 10000)
	go func() {
		for st.Receive() {
			for range st.Msg().GetEvents() {
				arrived <- time.Now()
			}
		}
	}()
	kv := kvstorev1connect.NewKVServiceClient(h2c(), "http://"+leader)
	var lat []time.Duration
	for i := range 500 {
		_, err := kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte(fmt.Sprint("lat/", i%100)), Value: bytes.Repeat([]byte("v"), 256)}))
		ack := time.Now()
		if err != nil {
			t.Fatal(err)
		}
		var at time.Time
		select {
		case at = <-arrived:
		case <-time.After(5 * time.Second):
			t.Fatalf("event %d never arrived (put at rev ?)", i)
		}
		lat = append(lat, at.Sub(ack))
	}
	fmt.Printf("watch latency put-ack -> event on follower (n=%d, sequential puts via leader): p50 %v p99 %v max %v\n", len(lat), pct(lat, 0.5), pct(lat, 0.99), pct(lat, 1))
}

// 10,000 watchers on one node, each receiving one update per second.
func TestManyWatchers(t *testing.T) {
	addrs := startCluster(t)
	leader, follower := leaderAndFollower(t, addrs)
	before, pid := rss(t, follower)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const watchers, keys = 10000, 100
	var got atomic.Int64
	var wg sync.WaitGroup
	var clients []*http.Client
	for range watchers / 200 {
		clients = append(clients, h2c())
	}
	var created atomic.Int64
	for i := range watchers {
		wc := kvstorev1connect.NewWatchServiceClient(clients[i/200], "http://"+follower)
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := wc.Watch(ctx, connect.NewRequest(&kvstorev1.WatchRequest{Key: []byte(fmt.Sprint("w/", i%keys))}))
			if err != nil {
				t.Error(err)
				return
			}
			st.Receive()
			created.Add(1)
			for st.Receive() {
				got.Add(int64(len(st.Msg().GetEvents())))
			}
		}()
	}
	for created.Load() < watchers {
		time.Sleep(50 * time.Millisecond)
	}
	afterOpen, _ := rss(t, follower)
	if os.Getenv("HEAP") != "" {
		out, _ := exec.Command("sh", "-c", "curl -s http://"+follower+"/debug/pprof/heap > /tmp/coord-heap.pb; curl -s 'http://"+follower+"/debug/pprof/goroutine?debug=1' | head -60 > /tmp/coord-goroutines.txt").CombinedOutput()
		fmt.Println(string(out))
	}
	kv := kvstorev1connect.NewKVServiceClient(h2c(), "http://"+leader)
	start := time.Now()
	cpu0 := cpuTicks(pid)
	for sec := range 30 {
		for k := range keys {
			go kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte(fmt.Sprint("w/", k)), Value: bytes.Repeat([]byte("v"), 256)}))
		}
		time.Sleep(time.Until(start.Add(time.Duration(sec+1) * time.Second)))
	}
	cpu1 := cpuTicks(pid)
	deadline := time.Now().Add(10 * time.Second)
	for got.Load() < 30*watchers && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	during, _ := rss(t, follower)
	fmt.Printf("watchers: %d on one follower, %d keys each updated 1/s for 30s; events received %d of %d; RSS before %d MiB, after opening %d MiB, after 30s of updates %d MiB; follower CPU %.1f%% of one core\n",
		watchers, keys, got.Load(), 30*watchers, before, afterOpen, during, float64(cpu1-cpu0)/30.0)
	cancel()
	wg.Wait()
}

func cpuTicks(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	f := strings.Fields(string(b))
	u, _ := strconv.ParseInt(f[13], 10, 64)
	s, _ := strconv.ParseInt(f[14], 10, 64)
	return u + s
}

func dirSize(p string) int64 {
	var n int64
	filepath.Walk(p, func(_ string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			n += info.Sys().(*syscall.Stat_t).Blocks * 512
		}
		return nil
	})
	return n
}

// Space recovered by compaction after overwriting 100k keys ten times.
func TestCompactionSpace(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(kvd(t), "--data-dir", dir, "--listen", "127.0.0.1:17410", "--log-level", "warn", "--auto-compact-retention", "0")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	kv := kvstorev1connect.NewKVServiceClient(h2c(), "http://127.0.0.1:17410")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for {
		_, err := kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("x"), Value: []byte("x")}))
		if err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	val := bytes.Repeat([]byte("v"), 256)
	var last int64
	start := time.Now()
	for round := range 10 {
		var wg sync.WaitGroup
		var next atomic.Int64
		for range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := next.Add(1) - 1
					if i >= 100000 {
						return
					}
					v := make([]byte, len(val))
					for j := range v {
						v[j] = byte(rand.IntN(256))
					}
					r, err := kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte(fmt.Sprintf("key/%06d", i)), Value: v}))
					if err != nil {
						t.Error(err)
						return
					}
					if i == 99999 {
						atomic.StoreInt64(&last, r.Msg.GetHeader().GetRevision())
					}
				}
			}()
		}
		wg.Wait()
		fmt.Printf("round %d done at %v\n", round, time.Since(start))
	}
	st, _ := kv.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("x")}))
	rev := st.Msg.GetHeader().GetRevision()
	kvDir := filepath.Join(dir, "kv")
	if _, err := os.Stat(kvDir); err != nil {
		kvDir = dir
	}
	b1 := dirSize(dir)
	kv1 := dirSize(filepath.Join(dir, "kv"))
	out0, _ := exec.Command("sh", "-c", "du -sm "+dir+"/*").CombinedOutput()
	fmt.Print("before:\n", string(out0))
	t0 := time.Now()
	if _, err := kv.Compact(ctx, connect.NewRequest(&kvstorev1.CompactRequest{Revision: rev})); err != nil {
		t.Fatal(err)
	}
	// Wait for the physical compaction: the size settles.
	var b2 int64
	prev := int64(-1)
	for i := 0; i < 120; i++ {
		time.Sleep(3 * time.Second)
		b2 = dirSize(filepath.Join(dir, "kv"))
		if b2 == prev {
			break
		}
		prev = b2
	}
	fmt.Printf("compaction: data dir %d MiB before Compact(%d); kv store %d MiB before, %d MiB after (settled %v after the call)\n", b1>>20, rev, kv1>>20, b2>>20, time.Since(t0).Round(time.Second))
	out, _ := exec.Command("sh", "-c", "du -sm "+dir+"/*").CombinedOutput()
	fmt.Print(string(out))
}
