// Command raftceiling measures what hashicorp/raft alone sustains on this
// machine, as an upper bound for kvd's puts: three nodes in three
// processes on loopback, raft configured as kvd configures it (batched
// applies, 256 entries per append, no pipelining), the raft log in kvd's
// log store (storage/raftlog with its cache; -store inmem: in memory), and
// a state machine that only counts. No gRPC, no client, no key-value store: the
// leader runs the load itself, -clients goroutines calling raft.Apply with
// commands of -size bytes, and reports applies per second, latency and the
// CPU time of each process per apply (utime+stime from /proc, Linux only).
//
//	go run ./bench/raftceiling -clients 64 -duration 10s
package main

import (
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/storage/raftlog"
)

// countFSM counts the entries it applies and keeps nothing.
type countFSM struct{ n atomic.Uint64 }

func (f *countFSM) Apply(l *raft.Log) any { f.n.Add(1); return nil }
func (f *countFSM) ApplyBatch(ls []*raft.Log) []any {
	f.n.Add(uint64(len(ls)))
	return make([]any, len(ls))
}
func (f *countFSM) Snapshot() (raft.FSMSnapshot, error) { return nil, fmt.Errorf("no snapshots") }
func (f *countFSM) Restore(io.ReadCloser) error         { return nil }

func main() {
	id := flag.Int("id", 0, "node index 1-3 (internal)")
	base := flag.Int("port", 7950, "the nodes listen on 127.0.0.1 at port+1 to port+3")
	dir := flag.String("dir", "", "data dir (internal)")
	store := flag.String("store", "badger", "raft log store: badger (kvd's, synced) or inmem")
	clients := flag.Int("clients", 64, "concurrent Apply loops on the leader")
	dur := flag.Duration("duration", 10*time.Second, "load duration")
	size := flag.Int("size", 300, "command bytes")
	followers := flag.String("followers", "", "the followers' process ids (internal)")
	flag.Parse()
	if *store != "badger" && *store != "inmem" {
		fatal(fmt.Errorf("-store %q: want badger or inmem", *store))
	}
	if *id == 0 {
		parent(*base, *store, *clients, *dur, *size)
		return
	}
	var pids []int
	for _, p := range strings.Split(*followers, ",") {
		if n, err := strconv.Atoi(p); err == nil {
			pids = append(pids, n)
		}
	}
	if err := node(*id, *base, *dir, *store, *clients, *dur, *size, pids); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// parent starts the followers (nodes 2 and 3), then node 1, which
// bootstraps the cluster, leads, runs the load and exits.
func parent(base int, store string, clients int, dur time.Duration, size int) {
	tmp, err := os.MkdirTemp("", "raftceiling")
	if err != nil {
		fatal(err)
	}
	defer os.RemoveAll(tmp)
	self, err := os.Executable()
	if err != nil {
		fatal(err)
	}
	cmd := func(id int, followers string) *exec.Cmd {
		c := exec.Command(self, "-id", strconv.Itoa(id), "-port", strconv.Itoa(base), "-dir", filepath.Join(tmp, strconv.Itoa(id)),
			"-store", store, "-clients", strconv.Itoa(clients), "-duration", dur.String(), "-size", strconv.Itoa(size),
			"-followers", followers)
		c.Stdout, c.Stderr = os.Stdout, os.Stderr
		return c
	}
	var pids []string
	var followers []*exec.Cmd
	defer func() {
		for _, c := range followers {
			c.Process.Kill()
			c.Wait()
		}
	}()
	for id := 2; id <= 3; id++ {
		c := cmd(id, "")
		if err := c.Start(); err != nil {
			fatal(err)
		}
		followers = append(followers, c)
		pids = append(pids, strconv.Itoa(c.Process.Pid))
	}
	if err := cmd(1, strings.Join(pids, ",")).Run(); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "raftceiling:", err)
	os.Exit(1)
}

func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+2:])
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
}

func node(id, base int, dir, store string, clients int, dur time.Duration, size int, pids []int) error {
	logger := slog.New(slog.DiscardHandler)
	addr := fmt.Sprintf("127.0.0.1:%d", base+id)
	trans, err := raft.NewTCPTransport(addr, nil, 3, 10*time.Second, io.Discard)
	if err != nil {
		return err
	}
	var logs raft.LogStore
	var stable raft.StableStore
	if store == "inmem" {
		m := raft.NewInmemStore()
		logs, stable = m, m
	} else {
		s, err := raftlog.Open(filepath.Join(dir, "raftlog"), raftlog.Options{Logger: logger})
		if err != nil {
			return err
		}
		defer s.Close()
		logs, stable = raftlog.NewCache(s, 16<<20), s
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(strconv.Itoa(id))
	rc.LogOutput = io.Discard
	rc.NoSnapshotRestoreOnStart = true
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 256
	rc.CommitTimeout = 10 * time.Millisecond
	rc.HeartbeatTimeout = 500 * time.Millisecond
	rc.ElectionTimeout = 500 * time.Millisecond
	rc.LeaderLeaseTimeout = 250 * time.Millisecond
	rc.SnapshotThreshold = 1 << 40
	fsm := &countFSM{}
	r, err := raft.NewRaft(rc, fsm, logs, stable, raft.NewInmemSnapshotStore(), trans)
	if err != nil {
		return err
	}
	if id != 1 {
		select {} // followers serve until the parent kills them
	}
	var servers []raft.Server
	for i := 1; i <= 3; i++ {
		servers = append(servers, raft.Server{ID: raft.ServerID(strconv.Itoa(i)), Address: raft.ServerAddress(fmt.Sprintf("127.0.0.1:%d", base+i))})
	}
	if err := r.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
		return err
	}
	for r.State() != raft.Leader {
		time.Sleep(10 * time.Millisecond)
	}
	// Wait until an entry committed: the followers are up.
	if err := r.Barrier(10 * time.Second).Error(); err != nil {
		return err
	}
	cmd := make([]byte, size)
	_, _ = rand.Read(cmd)
	var ops atomic.Int64
	lat := make([][]time.Duration, clients)
	t0 := cpuTicks(os.Getpid())
	f0 := int64(0)
	for _, p := range pids {
		f0 += cpuTicks(p)
	}
	start := time.Now()
	end := start.Add(dur)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for time.Now().Before(end) {
				s := time.Now()
				if err := r.Apply(cmd, 5*time.Second).Error(); err != nil {
					fmt.Fprintln(os.Stderr, "apply:", err)
					return
				}
				lat[c] = append(lat[c], time.Since(s))
				ops.Add(1)
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	t1 := cpuTicks(os.Getpid())
	f1 := int64(0)
	for _, p := range pids {
		f1 += cpuTicks(p)
	}
	n := ops.Load()
	if n == 0 {
		return fmt.Errorf("no apply finished in %v", dur)
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	q := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))].Microseconds()) / 1000 }
	// /proc counts CPU time in ticks of 10 ms (CLK_TCK is 100 on Linux).
	fmt.Printf("store=%s clients=%d size=%d: %.0f applies/s, p50 %.2f ms, p99 %.2f ms, CPU us/op leader %.0f followers %.0f\n",
		store, clients, size, float64(n)/el.Seconds(), q(.5), q(.99),
		float64(t1-t0)*1e4/float64(n), float64(f1-f0)*1e4/float64(n))
	_ = r.Shutdown().Error()
	return trans.Close()
}
